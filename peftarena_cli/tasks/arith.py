"""The built-in procedural arithmetic word-problem task (the default target).

Problems are multi-step integer word problems with an exact answer. Each problem is generated
from ``(split seed, index)``; train and test are made disjoint by construction: a problem belongs
to the test split iff a hash of its question text falls in the test bucket, so the same question
can never appear in both, whatever the seeds.

Records: ``id``, ``question``, ``answer`` (an integer, as a string), ``solution`` (a worked
solution ending in "The answer is N.").

Difficulty levels (``level``; task names ``arith-1`` ... ``arith-3``, docs/finetune.md): the default
(``level=None``, task ``arith``) is the original mix of 1-3 steps with addition, subtraction and
multiplication, and its problems are unchanged. Easier levels exist so that RLVR (GRPO) gets a
reward signal from a small base model (its completions must sometimes be right):

* 1: one addition, start 2-20, add 1-10;
* 2: one addition or subtraction, start 3-40;
* 3: two steps of addition or subtraction, start 3-40.
"""

from __future__ import annotations

import hashlib
import random

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Max",
         "Nora", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Zoe"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards"]
SPLITS = ("train", "test")
_TEST_BUCKETS = 5  # 1 in 5 question texts is test-only
_SPLIT_SEED = {"train": 1_000_003, "test": 7}


def _bucket(question: str) -> str:
    h = int(hashlib.sha1(question.encode()).hexdigest(), 16)
    return "test" if h % _TEST_BUCKETS == 0 else "train"


LEVELS = (1, 2, 3)


def parse_task_name(name: str) -> int | None:
    """``arith`` -> None (the default mix), ``arith-L`` -> L; anything else raises ValueError."""
    if name == "arith":
        return None
    if name.startswith("arith-") and name[6:].isdigit() and int(name[6:]) in LEVELS:
        return int(name[6:])
    raise ValueError(f"unknown arithmetic task {name!r}: use arith or arith-1 ... arith-{LEVELS[-1]}")


def is_task_name(name: str) -> bool:
    try:
        parse_task_name(name)
        return True
    except ValueError:
        return False


def _problem(rng: random.Random, level: int | None = None) -> tuple[str, int, str]:
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    value = rng.randint(2, 20) if level == 1 else rng.randint(3, 40)
    text = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    n_steps = rng.choice([1, 2, 2, 3]) if level is None else (2 if level == 3 else 1)
    for _ in range(n_steps):
        if level == 1:
            op = "add"
        elif level is not None:
            op = rng.choice(["add", "sub"])
        else:
            op = rng.choice(["add", "sub", "mul"] if value <= 12 else ["add", "sub"])
        if op == "add":
            k = rng.randint(1, 10) if level == 1 else rng.randint(2, 30)
            text.append(rng.choice([f"Then {name} gets {k} more.", f"A friend gives {name} {k} more."]))
            steps.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "sub":
            k = rng.randint(1, max(1, value - 1))
            text.append(rng.choice([f"Then {name} gives away {k}.", f"Then {name} loses {k}."]))
            steps.append(f"{value} - {k} = {value - k}.")
            value -= k
        else:
            k = rng.randint(2, 4)
            text.append(f"Then the number of {item} is multiplied by {k}.")
            steps.append(f"{value} * {k} = {value * k}.")
            value *= k
    text.append(f"How many {item} does {name} have now?")
    steps.append(f"The answer is {value}.")
    return " ".join(text), value, " ".join(steps)


def generate(split: str = "test", n: int = 100, seed: int = 0, level: int | None = None) -> list[dict]:
    """``n`` problems of ``split`` at difficulty ``level`` (None: the default mix); deterministic in
    ``(split, n, seed, level)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None")
    rng = random.Random(_SPLIT_SEED[split] * 1_000_033 + seed + (0 if level is None else 7919 * level))
    prefix = f"arith-{split}" if level is None else f"arith{level}-{split}"
    out: list[dict] = []
    seen: set[str] = set()
    while len(out) < n:
        q, a, sol = _problem(rng, level)
        if q in seen or _bucket(q) != split:
            continue
        seen.add(q)
        out.append({"id": f"{prefix}-{seed}-{len(out)}", "question": q, "answer": str(a), "solution": sol})
    return out

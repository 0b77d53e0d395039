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

from peftarena_cli.errors import DataError

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


def _stall_limit(found: int) -> int:
    """Draws in a row without a new problem after which a level counts as exhausted.

    At levels 1 and 2 every question text has a chance of at least p = 1 / 1,185,600 per draw
    (20 names x 10 items x 38 starts x 2 operations x 39 amounts x 2 phrasings at most). A level is
    only near exhaustion once most of its texts are found (level 1: ~61,000 train texts, level 2:
    ~600,000), where this limit is 1M + 20 x found (2.2M, 13M); the chance that a text still left is
    missed that many times in a row is at most (1 - p)^limit (e^-1.9 at level 1's end, where p is in
    fact 1/76,000 so e^-29; e^-11 at level 2's). The harder levels have many millions of texts.
    """
    return 1_000_000 + 20 * found


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
    misses = 0  # draws in a row that gave no new problem of this split
    while len(out) < n:
        q, a, sol = _problem(rng, level)
        if q in seen or _bucket(q) != split:
            misses += 1
            if misses > _stall_limit(len(seen)):
                raise DataError(
                    f"arith{'' if level is None else f'-{level}'} has only about {len(out)} distinct {split} problems; "
                    f"{n} were asked for", hint="ask for fewer examples (--num-examples / --limit) or use a harder level")
            continue
        misses = 0
        seen.add(q)
        out.append({"id": f"{prefix}-{seed}-{len(out)}", "question": q, "answer": str(a), "solution": sol})
    return out

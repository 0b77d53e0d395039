"""The built-in offline general suite: written by the project, deterministic per seed.

* ``ifeval`` part: procedural verifiable-instruction prompts. Each pairs a short writing topic
  with one or two instructions drawn from the IFEval instruction ids (with kwargs), phrased by
  this project, checked by the same scorer as the real IFEval;
* ``bbh`` part: procedural versions of the algorithmic BBH formats (boolean expressions,
  multistep arithmetic, dyck languages, word sorting, object counting, navigate, web of lies,
  tracking shuffled objects), zero-shot, answer after "So the answer is";
* ``facts`` part: factual recall from :mod:`peftarena_cli.tasks.facts_table`, asked in the NQ-open
  format; correct when an accepted answer occurs (whole words, SQuAD-normalised) in the answer
  line (small models answer in sentences), unlike NQ-open's exact match.
"""

from __future__ import annotations

import random

from peftarena_cli.tasks.facts_table import FACTS, FACTS_MORE
from peftarena_cli.tasks.spec import Item, Task

BUILTIN_PARTS = ("ifeval", "bbh", "facts")
ALL_FACTS = FACTS + FACTS_MORE
DEFAULT_N = {"ifeval": 20, "bbh": 24, "facts": 40}   # bbh: 3 per format

TOPICS = ["a rainy afternoon", "your favourite fruit", "learning to ride a bicycle", "the ocean", "a busy market",
          "why sleep matters", "a trip to the mountains", "the history of bread", "a friendly robot", "autumn leaves",
          "how to plant a tree", "a library at night", "the benefits of walking", "a lost cat", "a summer festival",
          "the moon", "making tea", "a city park", "an old clock", "learning a new language"]
WORDS = ["river", "light", "garden", "window", "music", "stone", "journey", "bridge", "cloud", "honey"]


def _ifeval_instruction(iid: str, rng: random.Random) -> tuple[str, dict]:
    if iid == "punctuation:no_comma":
        return "Do not use any commas in your response.", {}
    if iid == "change_case:english_lowercase":
        return "Write your entire response in English, using only lowercase letters.", {}
    if iid == "change_case:english_capital":
        return "Write your entire response in English, in capital letters only.", {}
    if iid == "keywords:existence":
        kw = rng.sample(WORDS, 2)
        return f"Include the words \"{kw[0]}\" and \"{kw[1]}\" in your response.", {"keywords": kw}
    if iid == "keywords:forbidden_words":
        kw = rng.sample(["very", "good", "nice", "thing", "really"], 2)
        return f"Do not use the words \"{kw[0]}\" or \"{kw[1]}\".", {"forbidden_words": kw}
    if iid == "keywords:frequency":
        kw = rng.choice(WORDS)
        n = rng.choice([2, 3])
        return f"Use the word \"{kw}\" at least {n} times.", {"keyword": kw, "frequency": n, "relation": "at least"}
    if iid == "length_constraints:number_words":
        n = rng.choice([40, 50, 60])
        return f"Answer in fewer than {n} words.", {"num_words": n, "relation": "less than"}
    if iid == "length_constraints:number_sentences":
        n = rng.choice([2, 3])
        return f"Your response must have fewer than {n + 1} sentences.", {"num_sentences": n + 1, "relation": "less than"}
    if iid == "detectable_format:title":
        return "Give your answer a title wrapped in double angular brackets, such as <<my title>>.", {}
    if iid == "detectable_format:number_bullet_lists":
        n = rng.choice([2, 3])
        return f"Answer with exactly {n} bullet points in markdown, such as:\n* point one\n* point two", {"num_bullets": n}
    if iid == "detectable_format:number_highlighted_sections":
        return "Highlight at least one part of your answer with markdown, i.e. *highlighted part*.", {"num_highlights": 1}
    if iid == "detectable_format:constrained_response":
        return "Answer with one of the following options: (\"My answer is yes.\", \"My answer is no.\", \"My answer is maybe.\")", {}
    if iid == "detectable_format:json_format":
        return "Wrap your entire output in JSON format.", {}
    if iid == "detectable_content:postscript":
        return "At the end of your response, add a postscript starting with P.S.", {"postscript_marker": "P.S."}
    if iid == "detectable_content:number_placeholders":
        return "Include at least 1 placeholder in square brackets, such as [name].", {"num_placeholders": 1}
    if iid == "startend:end_checker":
        phrase = rng.choice(["Is there anything else I can help with?", "That is all."])
        return f"Finish your response with this exact phrase: {phrase}", {"end_phrase": phrase}
    if iid == "startend:quotation":
        return "Wrap your entire response with double quotation marks.", {}
    if iid == "combination:repeat_prompt":
        raise ValueError("repeat_prompt is built from the request itself")
    raise KeyError(iid)


BUILTIN_IFEVAL_IDS = (
    "punctuation:no_comma", "change_case:english_lowercase", "change_case:english_capital", "keywords:existence",
    "keywords:forbidden_words", "keywords:frequency", "length_constraints:number_words",
    "length_constraints:number_sentences", "detectable_format:title", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:constrained_response",
    "detectable_format:json_format", "detectable_content:postscript", "detectable_content:number_placeholders",
    "startend:end_checker", "startend:quotation",
)


def builtin_ifeval(n: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed * 7919 + 11)
    items = []
    for i in range(n):
        topic = TOPICS[rng.randrange(len(TOPICS))]
        if rng.random() < 0.5:
            task = f"Write a short paragraph about {topic}."
        else:
            task = f"Describe {topic} in a few sentences."
        ids = [BUILTIN_IFEVAL_IDS[(i + rng.randrange(len(BUILTIN_IFEVAL_IDS))) % len(BUILTIN_IFEVAL_IDS)]]
        if rng.random() < 0.4:
            other = rng.choice([x for x in BUILTIN_IFEVAL_IDS if x.split(":")[0] != ids[0].split(":")[0]
                                and "english" not in x and "json" not in x and "constrained" not in x
                                and "english" not in ids[0] and "json" not in ids[0] and "constrained" not in ids[0]]
                               or [ids[0]])
            if other != ids[0]:
                ids.append(other)
        texts, kws = [], []
        for iid in ids:
            t, kw = _ifeval_instruction(iid, rng)
            texts.append(t)
            kws.append(kw)
        items.append(Item(f"ifeval_builtin-{seed}-{i}", task + " " + " ".join(texts), None,
                          {"instruction_id_list": ids, "kwargs": kws}))
    return items


# --- procedural BBH formats --------------------------------------------------------------------
def _bool_expr(rng):
    def term(d):
        if d == 0 or rng.random() < 0.3:
            v = rng.choice(["True", "False"])
            return ("not " + v) if rng.random() < 0.3 else v
        a, b = term(d - 1), term(d - 1)
        op = rng.choice(["and", "or"])
        return f"( {a} {op} {b} )" if rng.random() < 0.5 else f"{a} {op} {b}"
    e = f"{term(1)} {rng.choice(['and', 'or'])} {term(1)}"
    return f"Evaluate the Boolean expression: {e}", str(eval(e))


def _multistep(rng):
    nums = [rng.randint(-9, 9) for _ in range(4)]
    ops = [rng.choice("+-*") for _ in range(3)]
    e = f"(({nums[0]} {ops[0]} {nums[1]}) {ops[1]} ({nums[2]} {ops[2]} {nums[3]}))"
    return f"Compute: {e} =", str(eval(e))


def _dyck(rng):
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    stack, seq = [], []
    for _ in range(rng.randint(3, 6)):
        if stack and rng.random() < 0.35:
            seq.append(pairs[stack.pop()])
        else:
            o = rng.choice(list(pairs))
            stack.append(o)
            seq.append(o)
    if not stack:
        stack.append("(")
        seq.append("(")
    closing = " ".join(pairs[o] for o in reversed(stack))
    return ("Complete the rest of the sequence, making sure that the parentheses are closed properly. "
            f"Input: {' '.join(seq)}"), closing


_SORT_WORDS = ["apple", "zebra", "mango", "kite", "delta", "orbit", "pencil", "banjo", "quartz", "river", "silk",
               "tiger", "violet", "walnut", "yacht", "ember", "falcon", "grape", "harbor", "island"]


def _word_sort(rng):
    ws = rng.sample(_SORT_WORDS, rng.randint(3, 5))
    return f"Sort the following words alphabetically: List: {' '.join(ws)}", " ".join(sorted(ws))


def _object_count(rng):
    objs = ["an apple", "a banana", "a carrot", "a grape", "a peach", "a potato", "an onion", "a plum"]
    chosen = rng.sample(objs, rng.randint(2, 4))
    counts = [rng.randint(1, 3) for _ in chosen]
    words = {1: "", 2: "two ", 3: "three "}
    parts = []
    for o, c in zip(chosen, counts):
        noun = o.split(" ", 1)[1]
        plural = noun + ("es" if noun.endswith(("ch", "o")) else "s")
        parts.append(o if c == 1 else f"{words[c]}{plural}")
    return f"I have {', '.join(parts[:-1])}, and {parts[-1]}. How many objects do I have?", str(sum(counts))


def _navigate(rng):
    steps, x = [], 0
    for _ in range(rng.randint(2, 4)):
        k = rng.randint(1, 6)
        d = rng.choice(["forward", "backward"])
        x += k if d == "forward" else -k
        steps.append(f"Take {k} step{'s' if k > 1 else ''} {d}.")
    if rng.random() < 0.5 and x != 0:  # make it return half the time
        steps.append(f"Take {abs(x)} step{'s' if abs(x) > 1 else ''} {'backward' if x > 0 else 'forward'}.")
        x = 0
    return ("If you follow these instructions, do you return to the starting point? Always face forward. "
            + " ".join(steps) + " Options: Yes or No"), ("Yes" if x == 0 else "No")


_PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Gina", "Hank"]


def _web_of_lies(rng):
    names = rng.sample(_PEOPLE, rng.randint(3, 4))
    truth = rng.random() < 0.5
    parts = [f"{names[0]} {'tells the truth' if truth else 'lies'}."]
    for a, b in zip(names, names[1:]):
        says_truth = rng.random() < 0.5
        parts.append(f"{b} says {a} {'tells the truth' if says_truth else 'lies'}.")
        truth = truth == says_truth
    return f"Question: {' '.join(parts)} Does {names[-1]} tell the truth? Options: Yes or No", ("Yes" if truth else "No")


def _shuffled(rng):
    names = rng.sample(_PEOPLE, 3)
    balls = rng.sample(["a red ball", "a blue ball", "a green ball", "a yellow ball"], 3)
    have = dict(zip(names, balls))
    swaps = []
    for _ in range(3):
        a, b = rng.sample(names, 2)
        have[a], have[b] = have[b], have[a]
        swaps.append(f"{a} and {b} swap balls.")
    who = rng.choice(names)
    start = ", ".join(f"{n} has {b}" for n, b in zip(names, balls))
    return (f"{start}. Then: {' '.join(swaps)} At the end, what does {who} have? Answer with the colour."), have[who].split()[1]


BBH_FORMATS = {
    "boolean_expressions": _bool_expr, "multistep_arithmetic": _multistep, "dyck_languages": _dyck,
    "word_sorting": _word_sort, "object_counting": _object_count, "navigate": _navigate, "web_of_lies": _web_of_lies,
    "tracking_shuffled_objects": _shuffled,
}
BBH_INSTRUCTION = "Think step by step, then finish with the sentence \"So the answer is\" followed by your answer."


def builtin_bbh(n: int, seed: int = 0) -> list[Item]:
    """``n`` items spread evenly over the formats (round robin)."""
    rng = random.Random(seed * 104729 + 3)
    names = list(BBH_FORMATS)
    items = []
    for i in range(n):
        fmt = names[i % len(names)]
        q, a = BBH_FORMATS[fmt](rng)
        items.append(Item(f"bbh_builtin-{fmt}-{seed}-{i}", f"{q}\n{BBH_INSTRUCTION}", a, {"subtask": fmt}))
    return items


def builtin_facts(n: int, seed: int = 0) -> list[Item]:
    from peftarena_cli.tasks.general_tasks import NQ_PROMPT

    # The first block in its own shuffled order (so small n draws the same items as before the second
    # block existed), then the second block shuffled; ids index the concatenated table.
    order = list(range(len(FACTS)))
    random.Random(seed * 31 + 5).shuffle(order)
    more = list(range(len(FACTS), len(ALL_FACTS)))
    random.Random(seed * 31 + 6).shuffle(more)
    return [Item(f"facts-{j}", NQ_PROMPT.format(q=ALL_FACTS[j][0]), list(ALL_FACTS[j][1])) for j in (order + more)[:n]]


def builtin_task(part: str, limit: int | None = None, seed: int = 0) -> Task:
    from peftarena_cli.tasks.general_tasks import NQ_STOP

    n = DEFAULT_N[part] if limit is None else int(limit)
    if part == "ifeval":
        return Task("ifeval_builtin", builtin_ifeval(n, seed), "ifeval", 128)
    if part == "bbh":
        return Task("bbh_builtin", builtin_bbh(n, seed), "bbh", 128, subtask_key="subtask")
    if part == "facts":
        return Task("facts", builtin_facts(min(n, len(ALL_FACTS)), seed), "facts", 16, NQ_STOP, chat=False)
    raise KeyError(part)

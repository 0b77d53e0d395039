"""One home per benchmark (tasks/benchmarks.py) and per scorer kind (scorer_kinds.py): benchmark
names appear nowhere else in the code, and a new benchmark with both protocols takes the registry
only (docs/design.md, "How to add")."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "peftarena_cli"
NAMES = ("ifeval", "bbh", "nq_open", "facts", "gsm8k", "math500", "aime24", "amc23", "medmcqa", "medqa",
         "pubmedqa", "arith")

# The homes of benchmark names: the registry, the scorer kinds, the loaders and the scorers.
HOMES = {
    "tasks/benchmarks.py", "scorer_kinds.py",
    "tasks/target_tasks.py", "tasks/general_tasks.py", "tasks/builtin_general.py", "tasks/facts_table.py",
    "tasks/arith.py", "tasks/answers.py", "tasks/spec.py",
    "evaluation/scorers/bbh.py", "evaluation/scorers/choice.py", "evaluation/scorers/ifeval.py",
    "evaluation/scorers/math.py", "evaluation/scorers/math_lmeval.py", "evaluation/scorers/math_study.py",
    "evaluation/scorers/nq.py", "evaluation/scorers/text_utils.py",
}
# Files that still name benchmarks outside their homes, and why. This list may only shrink: a file
# that newly names a benchmark fails the test (read the registry instead).
KNOWN: dict[str, str] = {}


def _code_words(src: str) -> str:
    """The identifiers and string literals of a module's code: docstrings and comments are prose
    (they may cite the benchmarks an estimator was made for) and do not count."""
    tree = ast.parse(src)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docs.add(id(first.value))
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words.append(node.value)
        elif isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words.append(node.name)
        elif isinstance(node, ast.alias):
            words.append(node.name)
    return "\n".join(words)


PAT = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(NAMES) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def _files_naming_benchmarks(prose: bool = False) -> dict[str, list[str]]:
    """{file: names} of the package's modules whose code (``prose``: also docstrings and comments)
    names a benchmark."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        src = f.read_text(encoding="utf-8")
        found = sorted({m.group(1).lower() for m in PAT.finditer(src if prose else _code_words(src))})
        if found:
            out[rel] = found
    return out


def test_benchmark_names_live_in_the_registry_and_loaders_only():
    spread = _files_naming_benchmarks()
    outside = {f: n for f, n in spread.items() if f not in HOMES and f not in KNOWN}
    assert not outside, f"benchmark names outside the registry and loaders (read tasks/benchmarks.py): {outside}"
    # the dispatch modules name none, not even in docstrings
    prose = _files_naming_benchmarks(prose=True)
    for f in ("stats.py", "evaluation/scoring.py", "evaluation/intervals.py"):
        assert f not in prose, f"{f} names {prose[f]}"
    # the known list only shrinks: an entry that no longer names a benchmark must be removed
    stale = sorted(f for f in KNOWN if f not in spread)
    assert not stale, f"remove from KNOWN (they name no benchmark any more): {stale}"


def test_stats_and_scoring_dispatch_on_the_spec_not_on_names():
    """No comparison of a scorer against a literal in the dispatch modules."""
    for f in ("stats.py", "evaluation/scoring.py", "evaluation/intervals.py"):
        tree = ast.parse((PKG / f).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id in ("scorer", "sc"):
                lits = [c for c in node.comparators
                        if isinstance(c, (ast.Tuple, ast.Set)) or (isinstance(c, ast.Constant) and c.value is not None)]
                assert not lits, f"{f}:{node.lineno} compares {node.left.id} with a literal"


def test_registry_entries_cover_what_the_layers_read():
    from peftarena_cli import scorer_kinds
    from peftarena_cli.evaluation.protocols import FAMILY, LM_EVAL, STUDY
    from peftarena_cli.tasks import benchmarks
    from peftarena_cli.tasks.limits import LIMIT_PARTS
    from peftarena_cli.tasks.target_tasks import TARGET_TASKS

    assert set(TARGET_TASKS) == {b.name for b in benchmarks.REGISTRY.values() if b.part == "target"}
    assert LIMIT_PARTS == ("ifeval", "bbh", "facts", "nq_open")
    for b in benchmarks.REGISTRY.values():
        assert b.scorer in scorer_kinds.KINDS, b.name
        if b.family is not None:
            assert FAMILY[b.name] == b.family
            assert STUDY.settings[b.family] is b.protocols["study"] and LM_EVAL.settings[b.family] is b.protocols["lm-eval"]
            for s in b.protocols.values():  # every protocol scorer belongs to the benchmark's kind
                assert scorer_kinds.kind_of(s.scorer).name == b.scorer, (b.name, s.scorer)
    assert STUDY.target_mean == ("aime24", "amc23", "math500", "medmcqa", "medqa", "mmlu_medical", "pubmedqa")


# --- a toy benchmark, with both protocols, through the registry only ----------------------------------
def _toy_loader(path=None, limit=None, seed=0):
    from peftarena_cli.tasks.spec import Item, Task

    rows = [("2+2", "4"), ("3*3", "9"), ("10-7", "3"), ("6/2", "3"), ("5+8", "13")]
    items = [Item(f"toy-{i}", q, a, {"fields": {"expr": q}}) for i, (q, a) in enumerate(rows)]
    return Task("toy", items[:limit] if limit else items, "toykind", raw=True)


def _toy_score(completion: str, reference, meta: dict) -> dict:
    """Correct when the last whitespace-separated token of the completion is the reference."""
    last = completion.split()[-1] if completion.split() else ""
    return {"correct": last == str(reference), "extracted": last}


@pytest.fixture
def toy():
    from peftarena_cli import scorer_kinds
    from peftarena_cli.tasks import benchmarks
    from peftarena_cli.tasks.benchmarks import Settings

    kind = scorer_kinds.register_kind(scorer_kinds.ScorerKind(
        "toykind", summary="exact_match", strata="first_sample", primary="exact_match", general=False,
        scorers={"toykind": scorer_kinds.Scorer(_toy_score, "item"),
                 "toykind:study": scorer_kinds.Scorer(_toy_score, "item"),
                 "toykind:lm-eval": scorer_kinds.Scorer(_toy_score, "item")}))
    b = benchmarks.register(benchmarks.Benchmark(
        "toy", "target", "math", "toykind", family="toy", loader=_toy_loader, protocols={
            "study": Settings("Compute {expr}.", "toykind:study", 16, chat=True, system="Be brief."),
            "lm-eval": Settings("Q: {expr}\nA:", "toykind:lm-eval", 8, chat=False, stop=("\n",)),
        }))
    yield b
    benchmarks.unregister("toy")
    scorer_kinds.KINDS.pop(kind.name)


def test_a_toy_benchmark_with_both_protocols_needs_the_registry_only(toy):
    from peftarena_cli.evaluation.api import load_target_tasks, rescore_table, score_responses
    from peftarena_cli.evaluation.protocols import get_protocol
    from peftarena_cli.tasks.target_tasks import load_target_task

    for proto, prompt0, chat, budget in (("study", "Compute 2+2.", True, 16), ("lm-eval", "Q: 2+2\nA:", False, 8)):
        (t,) = load_target_tasks("toy", protocol=proto)
        assert t.items[0].prompt == prompt0 and t.chat is chat and t.max_new_tokens == budget
        assert t.scorer == f"toykind:{proto}" and t.protocol == get_protocol(proto).label
    raw = load_target_task("toy")
    # 3 of 5 right: items 0, 1 and 4
    records = [{"id": "toy-0", "response": "it is 4"}, {"id": "toy-1", "response": "9"},
               {"id": "toy-2", "response": "maybe 4"}, {"id": "toy-3", "response": ""},
               {"id": "toy-4", "response": "= 13"}]
    df, summ = score_responses(raw, records, protocol="lm-eval")
    assert df["correct"].tolist() == [True, True, False, False, True]
    row = summ[(summ["task"] == "toy") & (summ["metric"] == "exact_match")].iloc[0]
    assert row["value"] == pytest.approx(60.0)
    # Wilson 95 % interval of 3/5, by hand
    z, n, p = 1.959963984540054, 5, 0.6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert row["estimator"] == "wilson"
    assert row["ci_low"] == pytest.approx(100 * (centre - half)) and row["ci_high"] == pytest.approx(100 * (centre + half))
    # not a study target: target_score is the mean over every task, i.e. this one
    ts = summ[summ["metric"] == "target_score"].iloc[0]
    assert ts["value"] == pytest.approx(60.0)
    # re-scored under the other protocol through the registry as well
    df2, summ2 = rescore_table(df, protocol="study")
    assert df2["correct"].tolist() == df["correct"].tolist()
    assert summ2[summ2["metric"] == "exact_match"].iloc[0]["protocol"] == "study@2"


def test_toy_strata_come_from_its_kind(toy):
    from peftarena_cli import stats
    from peftarena_cli.evaluation.api import score_responses
    from peftarena_cli.tasks.target_tasks import load_target_task

    raw = load_target_task("toy")
    # two samples of item 0: the "first_sample" strata keep the first only
    records = [{"id": "toy-0", "response": "4"}, {"id": "toy-0", "response": "5"}, {"id": "toy-1", "response": "8"}]
    df, _ = score_responses(raw, records, protocol="study")
    # stats reads the strata of a per-sample table whose scorer is the kind's own name (a built-in
    # suite's rows): here the first sample of each item, binary
    df_named = df.assign(meta=df["meta"].str.replace('"toykind:study"', '"toykind"', regex=False))
    m = stats.measure_of(df_named)
    assert m.kind == "target"
    (s,) = m.strata
    assert s.y.tolist() == [1.0, 0.0] and s.binary


def test_registering_twice_or_a_bad_kind_is_refused():
    from peftarena_cli import scorer_kinds
    from peftarena_cli.tasks import benchmarks

    with pytest.raises(ValueError, match="exists"):
        benchmarks.register(benchmarks.get("gsm8k"))
    with pytest.raises(ValueError, match="summary"):
        scorer_kinds.ScorerKind("x", summary="median", strata="item_mean", primary="accuracy", general=False)
    with pytest.raises(ValueError, match="reuses"):
        scorer_kinds.register_kind(scorer_kinds.ScorerKind("x", "samples", "item_mean", "avg@n", False,
                                                           scorers={"math:study": scorer_kinds.Scorer("math:score_math")}))
    assert "x" not in scorer_kinds.KINDS

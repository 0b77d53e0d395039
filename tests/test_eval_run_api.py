"""The evaluation commands' core entry points: ``run_eval(EvalConfig)`` (eval-target, eval-general,
--responses) and ``run_drift(DriftConfig)`` give exactly the tables the CLI writes for the same
inputs; the CLI holds no loop over models or adapters and imports no private name of the core; the
README's Python example runs."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from peftarena_cli.artifacts.tables import read_table, write_table

ROOT = Path(__file__).resolve().parent.parent
CLI_DIR = ROOT / "peftarena_cli" / "cli"


def _roundtrip(df, tmp_path: Path, name: str):
    """``df`` written and read back as the CLI's tables are (Parquet turns list cells into arrays and
    keeps the nullable dtypes): the in-memory result and the CLI's file compare like for like."""
    p = tmp_path / f"{name}.parquet"
    write_table(df, p)
    return read_table(p)[0]


def _same_tables(res, out: Path, tmp_path: Path) -> None:
    per, prov = read_table(out)
    summ, sprov = read_table(out.with_name(out.stem + ".summary.parquet"))
    assert _roundtrip(res.per_sample, tmp_path, "per").equals(per)
    assert _roundtrip(res.summary, tmp_path, "summ").equals(summ)
    # what run_eval says the provenance holds is what the CLI wrote (the same inputs and identities)
    assert {r: f"{spec}@{ident}" for r, (spec, ident) in res.inputs.items()} == prov["inputs"]
    assert prov == sprov


# --- run_eval against the CLI ------------------------------------------------------------------------

def test_run_eval_target_gives_the_cli_tables(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    out = tmp_path / "t.parquet"
    r = cli("eval-target", tiny_model_dir, "--adapter", tiny_lora_dir, "--include-base", "--limit", "2",
            "-n", "2", "--temperature", "0.7", "--k", "1,2", "--max-new-tokens", "8", "--batch-size", "2", "-o", out)
    assert r.returncode == 0, r.stderr
    logs, bars = [], []

    class Bar:
        def __init__(self, description):
            bars.append([description, 0])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def callback(self, done, total=None, label=""):
            bars[-1][1] = max(bars[-1][1], done)

    res = run_eval(EvalConfig(kind="target", base=str(tiny_model_dir), adapters=[str(tiny_lora_dir)], include_base=True,
                              limit=2, n_samples=2, temperature=0.7, ks="1,2", max_new_tokens=8, batch_size=2),
                   progress=Bar, log=logs.append)
    _same_tables(res, out, tmp_path)
    assert list(res.per_sample["model"].unique()) == ["base", str(tiny_lora_dir)]
    # one progress bar per model, each run to its end (2 items x 2 samples), and one line per model
    assert bars == [["eval-target base", 4], [f"eval-target {tiny_lora_dir}", 4]]
    assert [run.label for run in res.runs] == ["base", str(tiny_lora_dir)]
    assert sum(m.startswith("loaded ") for m in logs) == 1 and sum(" tokens in " in m for m in logs) == 2
    assert res.extra["protocols"] == ["builtin@1"] and res.extra["world_size"] == 1


def test_run_eval_general_gives_the_cli_tables(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    out = tmp_path / "g.parquet"
    r = cli("eval-general", tiny_model_dir, "--adapter", tiny_lora_dir, "--no-merge", "--limit", "ifeval=1,bbh=1,facts=2",
            "--max-new-tokens", "6", "-o", out)
    assert r.returncode == 0, r.stderr
    res = run_eval(EvalConfig(kind="general", base=str(tiny_model_dir), adapters=[str(tiny_lora_dir)], merge=False,
                              limit="ifeval=1,bbh=1,facts=2", max_new_tokens=6))
    _same_tables(res, out, tmp_path)
    assert set(res.per_sample["model"]) == {str(tiny_lora_dir)}  # no base rows without include_base
    assert res.provenance().extra["suite"] == "builtin"  # the default suite, recorded as the CLI does


# --- --responses through run_eval ---------------------------------------------------------------------

def test_run_eval_scores_responses_as_the_cli_does(cli, tmp_path):
    from peftarena_cli.evaluation.run import EvalConfig, run_eval
    from peftarena_cli.tasks.target_tasks import load_target_task

    items = load_target_task("arith", limit=4, seed=0).items
    resp = tmp_path / "arith.jsonl"  # items 0 and 2 answered right, 1 and 3 wrong: 50 % by hand
    resp.write_text("\n".join(json.dumps({"id": it.id, "response": f"The answer is {it.reference if i % 2 == 0 else 'none'}."})
                              for i, it in enumerate(items)) + "\n")
    out = tmp_path / "r.parquet"
    r = cli("eval-target", "--task", "arith", "--responses", resp, "-o", out)
    assert r.returncode == 0, r.stderr
    res = run_eval(EvalConfig(kind="target", task="arith", responses=resp))
    _same_tables(res, out, tmp_path)
    assert res.per_sample["correct"].tolist() == [True, False, True, False]
    ts = res.summary.set_index(["task", "metric"])["value"]
    assert ts[("target", "target_score")] == pytest.approx(50.0)
    assert res.dtype is None and res.device is None and not res.runs  # no model was loaded

    # the per-sample Parquet the CLI wrote, re-scored through run_eval and through the CLI
    out2 = tmp_path / "re.parquet"
    r = cli("eval-target", "--responses", out, "--k", "1", "-o", out2)
    assert r.returncode == 0, r.stderr
    re_res = run_eval(EvalConfig(kind="target", responses=out, ks="1"))
    _same_tables(re_res, out2, tmp_path)
    assert re_res.per_sample["correct"].tolist() == [True, False, True, False]


def test_general_responses_carrying_the_benchmark_fields_are_read_as_the_task(cli, tmp_path):
    """The registry says which fields a benchmark's records hold: NQ-open records with question and
    answer are the task itself (no hub download), scored against their own answers."""
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    resp = tmp_path / "nq.jsonl"
    rows = [{"question": "who wrote hamlet", "answer": ["William Shakespeare"], "response": "The answer is William Shakespeare."},
            {"question": "capital of france", "answer": ["Paris"], "response": "The answer is Lyon."}]
    resp.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    out = tmp_path / "nq.parquet"
    r = cli("eval-general", "--suite", "nq_open", "--responses", resp, "-o", out)
    assert r.returncode == 0, r.stderr
    res = run_eval(EvalConfig(kind="general", suite="nq_open", responses=resp))
    _same_tables(res, out, tmp_path)
    assert res.per_sample["correct"].tolist() == [True, False]


def test_a_folder_benchmark_needs_its_folder_for_responses(tmp_path):
    from peftarena_cli.errors import DataError
    from peftarena_cli.evaluation.run import EvalConfig, run_eval
    from peftarena_cli.tasks import benchmarks

    resp = tmp_path / "r.jsonl"
    resp.write_text(json.dumps({"id": "x", "response": "(A)"}) + "\n")
    folder = [b.name for b in benchmarks.REGISTRY.values() if b.local == "folder"]
    assert folder, "the registry names a benchmark read from a folder"
    with pytest.raises(DataError, match="folder for targets"):
        run_eval(EvalConfig(kind="general", suite=folder[0], responses=resp))


# --- the checks, from Python as from the command line --------------------------------------------------

@pytest.mark.parametrize("cfg, message", [
    (dict(kind="target", ks="1,,2"), "--k"),
    (dict(kind="target", protocol="nosuch"), "nosuch"),
    (dict(kind="general", max_new_tokens=0), "--max-new-tokens"),
    (dict(kind="sideways"), "kind"),
    (dict(kind="target", backend="nosuch"), "backend"),
    (dict(kind="general", limit="ifeval=x"), "ifeval=x"),
    (dict(kind="target"), "missing BASE"),
])
def test_run_eval_refuses_bad_options_before_any_load(cfg, message, monkeypatch):
    import peftarena_cli.artifacts.loading as loading
    from peftarena_cli.errors import UsageError
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UsageError) as e:
        run_eval(EvalConfig(**cfg))
    assert message in str(e.value)


# --- run_drift against the CLI --------------------------------------------------------------------------

def test_run_drift_gives_the_cli_table(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.evaluation.drift import drift_summary
    from peftarena_cli.interpolation.drift_run import DriftConfig, run_drift

    out = tmp_path / "d.parquet"
    r = cli("drift", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--limit", "2", "--max-new-tokens", "4", "-o", out)
    assert r.returncode == 0, r.stderr
    cli_df, prov = read_table(out)
    res = run_drift(DriftConfig(base=str(tiny_model_dir), finetuned=str(tiny_lora_dir), alphas="0,1", limit=2,
                                max_new_tokens=4))
    assert _roundtrip(res.table, tmp_path, "d").equals(cli_df)
    assert res.summary.equals(drift_summary(cli_df))
    assert (res.table.loc[res.table["alpha"] == 0.0, "kl"] == 0.0).all()  # α = 0 is the base itself
    assert res.sets == ["target", "general"] and res.grid == [0.0, 1.0]
    assert res.extra == prov["extra"]
    assert {r: f"{spec}@{ident}" for r, (spec, ident) in res.inputs.items()} == prov["inputs"]


def test_run_drift_refuses_bad_sets_before_any_load(monkeypatch):
    import peftarena_cli.interpolation.sweep as sweep
    from peftarena_cli.errors import UsageError
    from peftarena_cli.interpolation.drift_run import DriftConfig, run_drift

    monkeypatch.setattr(sweep, "open_path_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UsageError, match="--sets"):
        run_drift(DriftConfig(base="b", finetuned="f", sets="target,sideways"))


# --- the CLI layer: no model loop, no private core name ---------------------------------------------------

LOADERS = {"load_model", "applied_adapter", "load_adapter", "open_path_model", "attach_adapter", "open_finetuned",
           "check_adapter_fits", "evaluate_target", "evaluate_general", "measure_drift"}


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # __version__ is public


def cli_layer_violations(src: str, rel: str) -> list[str]:
    """What a CLI module must not do: import a private (underscore) name or module of the core, call
    a model loader or a per-model evaluation, or loop over models or adapters."""
    tree = ast.parse(src)
    out = []
    modules = set()  # names bound to imported modules (e.g. cli's own ``models`` command module)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peftarena_cli"):
            core = not node.module.startswith("peftarena_cli.cli")
            for a in node.names:
                modules.add(a.asname or a.name)
                if core and (_private(a.name) or any(_private(p) for p in node.module.split("."))):
                    out.append(f"{rel}:{node.lineno}: imports {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                modules.add((a.asname or a.name).split(".")[0])
                if a.name.startswith("peftarena_cli") and any(_private(p) for p in a.name.split(".")[1:]):
                    out.append(f"{rel}:{node.lineno}: imports {a.name}")
        elif isinstance(node, ast.Call) and _called_name(node) in LOADERS:
            out.append(f"{rel}:{node.lineno}: calls {_called_name(node)}")
    for node in ast.walk(tree):
        iters = [node.iter] if isinstance(node, (ast.For, ast.AsyncFor)) else \
            [g.iter for g in node.generators] if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)) else []
        for it in iters:
            words = [n.id for n in ast.walk(it) if isinstance(n, ast.Name) and n.id not in modules]
            words += [_called_name(n) for n in ast.walk(it) if isinstance(n, ast.Call)]
            if any(re.search(r"adapter|model", w, re.IGNORECASE) for w in words):
                out.append(f"{rel}:{node.lineno}: loops over {ast.unparse(it)}")
    return out


def test_the_cli_layer_has_no_model_loop_and_no_private_core_import():
    found = []
    for f in sorted(CLI_DIR.glob("*.py")):
        found += cli_layer_violations(f.read_text(encoding="utf-8"), f.relative_to(ROOT).as_posix())
    assert not found, "the CLI calls the core's run_* entry points (evaluation/run.py): " + "; ".join(found)


def test_the_cli_layer_check_sees_what_it_forbids():
    """The AST check itself: each forbidden form is reported, the allowed ones are not."""
    bad = ("from peftarena_cli.evaluation.api import _check_ks\n"
           "for label, ps in _run_models(base):\n    pass\n"
           "for a in adapters:\n    load_adapter(a)\n"
           "m, tok, ref = load_model(base)\n")
    got = cli_layer_violations(bad, "x.py")
    assert len(got) == 5 and any("_check_ks" in g for g in got) and any("load_model" in g for g in got)
    ok = ("from peftarena_cli.cli import models\nfrom peftarena_cli.cli.evaluate import _summary_path\n"
          "for c in models.app.registered_commands:\n    pass\nfor r in res.summary.to_dict('records'):\n    pass\n")
    assert cli_layer_violations(ok, "y.py") == []


# --- README: the Python example runs -------------------------------------------------------------------------

def test_readme_python_example_runs(tiny_model_dir, tiny_lora_dir):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"From Python.*?```python\n(.*?)```", text, re.DOTALL)
    assert m, "README has a 'From Python' example"
    code = m.group(1)
    assert "run_eval" in code and "run_drift" in code
    # the example's model and adapter are the real ones; here the tiny stand-ins (same kinds of path)
    code = code.replace('"smollm2-135m"', repr(str(tiny_model_dir))).replace('"runs/lora/train/final"', repr(str(tiny_lora_dir)))
    code = re.sub(r"limit=\d+", "limit=2", code)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    res, drift = ns["res"], ns["drift"]
    assert set(res.per_sample["model"]) == {"base", str(tiny_lora_dir)}
    assert "target_score" in set(res.summary["metric"]) and len(drift.table) > 0

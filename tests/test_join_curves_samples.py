"""scripts/join_curves.py writes the joined curve's per-item rows beside it (curve.target-samples.parquet,
curve.general-samples.parquet: the interpolation parts' rows plus the ends' eval rows at α = 0 and 1), so
the arena's `rewind --curve` picks α on one half of the items and reports it on the other
(docs/report.md, "`make demo` and `make arena`"; docs/rewind.md, "Selection-safe picks")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "join_curves.py"
# 12 arithmetic items fall 9 / 3 into the two halves (a split needs 2 in each); 8 built-in IFEval items
# 4 / 4. The tiny random model answers no arithmetic item, but follows some one-instruction IFEval prompts
# (no commas, forbidden words), so the general scores are not all zero.
TARGET_LIMIT, GENERAL_LIMIT = "12", "8"
GENERAL_SUITE = "builtin.ifeval"
GEN = ["--max-new-tokens", "4", "--device", "cpu"]


def _peftarena(*args) -> None:
    """The CLI in-process (a module-scoped fixture cannot take conftest's function-scoped `cli`)."""
    from peftarena_cli.cli.app import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    assert code == 0, f"peftarena {' '.join(map(str, args))} exited {code}"


def _evals(model, run_dir: Path, adapter=None, target_limit=TARGET_LIMIT) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    ad = ["--adapter", adapter] if adapter is not None else []
    _peftarena("eval-target", model, *ad, "--limit", target_limit, *GEN, "-o", run_dir / "eval_target.parquet",
               "--summary", run_dir / "eval_target_summary.parquet")
    _peftarena("eval-general", model, *ad, "--suite", GENERAL_SUITE, "--limit", GENERAL_LIMIT, *GEN,
               "-o", run_dir / "eval_general.parquet", "--summary", run_dir / "eval_general_summary.parquet")


@pytest.fixture(scope="module")
def arena(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    """What scripts/arena.mk has made when the curve stage runs: the interpolation parts (target and
    general swept separately at α = 0.5, with the evals' limits) and the base's and the method's evals."""
    runs = tmp_path_factory.mktemp("arena") / "runs"
    interp = runs / "lora" / "interp"
    interp.mkdir(parents=True)
    _peftarena("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0.5", "--eval", "target",
               "--limit", TARGET_LIMIT, *GEN, "-o", interp / "target.parquet")
    _peftarena("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0.5", "--eval", "general",
               "--general-suite", GENERAL_SUITE, "--limit", GENERAL_LIMIT, *GEN, "-o", interp / "general.parquet")
    _evals(tiny_model_dir, runs / "base")
    _evals(tiny_model_dir, runs / "lora", adapter=tiny_lora_dir)
    return runs


def _join(runs: Path, base: Path, out: Path):
    interp = runs / "lora" / "interp"
    return subprocess.run([sys.executable, str(SCRIPT), str(interp / "target.parquet"), str(interp / "general.parquet"),
                           "--ends", str(base), str(runs / "lora"), "-o", str(out)], capture_output=True, text=True)


def _inputs(runs: Path) -> dict:
    return {p: p.read_bytes() for p in runs.rglob("*.parquet")}


def _rewind_meta(directory: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        return json.loads(f.metadata()["peftarena_rewind"])


def _rows(path: Path, model=None) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df if model is None else df[df["model"] == model]


def test_the_joined_curve_gets_a_held_out_rewind(arena, cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.report.selection import item_half

    before = _inputs(arena)
    curve = arena / "lora" / "curve.parquet"
    r = _join(arena, arena / "base", curve)
    assert r.returncode == 0, r.stderr
    assert {p: p.read_bytes() for p in before} == before  # parts and evals untouched
    tables = {k: pd.read_parquet(arena / "lora" / f"curve.{k}-samples.parquet") for k in ("target", "general")}
    n_items = {"target": int(TARGET_LIMIT), "general": int(GENERAL_LIMIT)}

    # every α of the joined curve has its items, and the ends' rows are the evals' own rows
    ends = {0.0: arena / "base", 1.0: arena / "lora"}
    c = pd.read_parquet(curve)
    assert sorted(c["alpha"]) == [0.0, 0.5, 1.0]
    for kind, df in tables.items():
        assert "model" not in df.columns and sorted(set(df["alpha"])) == [0.0, 0.5, 1.0]
        for a, g in df.groupby("alpha"):
            assert len(g) == n_items[kind] and g["id"].is_unique
            if a in ends:
                ev = pd.read_parquet(ends[a] / f"eval_{kind}.parquet")
                assert dict(zip(g["id"], g["correct"])) == dict(zip(ev["id"], ev["correct"]))
            else:
                part = pd.read_parquet(arena / "lora" / "interp" / f"{kind}.{kind}-samples.parquet")
                assert dict(zip(g["id"], g["correct"])) == dict(zip(part["id"], part["correct"]))
            # one greedy sample per item, one task per kind and one instruction per IFEval item: the
            # curve's score is the percentage of correct items (the ends' from the eval summaries,
            # α = 0.5 from the sweep)
            assert c.loc[c["alpha"] == a, kind].iloc[0] == pytest.approx(100.0 * g["correct"].mean(), abs=1e-9)

    # the hand check below means something only when the general items are neither all right nor all wrong
    assert 0.0 < tables["general"]["correct"].mean() < 1.0
    assert (tables["general"]["instruction_id_list"].map(len) == 1).all()

    # the joined tables name the fine-tune the curve was measured on (rewind checks it)
    from peftarena_cli.artifacts.tables import read_table

    _, cprov = read_table(curve)
    for kind in tables:
        _, sprov = read_table(arena / "lora" / f"curve.{kind}-samples.parquet")
        assert sprov["command"] == "join_curves" and sprov["inputs"]["finetuned"] == cprov["inputs"]["finetuned"]

    out = tmp_path / "rewound"
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "keep-target:0.8", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "in-sample" not in r.stderr
    m = _rewind_meta(out)
    assert m["selection_mode"] == "split" and m["reported_on"] == "held-out"
    assert m["selection"].startswith(f"split on {TARGET_LIMIT} target + {GENERAL_LIMIT} general items")
    # the held-out score by hand: the mean correctness, in percent, of the picked α's items in half 1
    salt = m.get("salt", "")
    for kind, df in tables.items():
        g = df[df["alpha"] == m["alpha"]]
        held = [bool(item_half((t, i), salt)) for t, i in zip(g["task"], g["id"])]
        assert 2 <= sum(held) <= len(held) - 2
        assert m["n_items"][kind] == sum(held)
        # a mean of at most 12 zeros and ones: both sides are exact to a few ulps of 100
        assert m[kind] == pytest.approx(100.0 * g["correct"][held].mean(), abs=1e-9)
    assert m["curve"].startswith(str(curve))


def test_ends_on_other_items_are_refused(arena, tiny_model_dir, tmp_path):
    other = tmp_path / "base"
    _evals(tiny_model_dir, other, target_limit="11")
    before = _inputs(arena) | _inputs(other)
    curve = tmp_path / "curve.parquet"
    r = _join(arena, other, curve)
    assert r.returncode == 1
    assert r.stderr.startswith("error: join_curves: ") and "not on the items" in r.stderr
    assert "eval_target.parquet" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("curve*.parquet"))  # nothing written, not even the curve
    assert (_inputs(arena) | _inputs(other)) == before


def test_an_end_of_another_fine_tune_is_refused(arena, tmp_path):
    """The method's eval table re-labelled as made on another adapter: not this curve's α = 1."""
    import shutil

    from peftarena_cli.artifacts.tables import Provenance, read_table, write_table

    runs = tmp_path / "runs"
    shutil.copytree(arena, runs)
    for leftover in (runs / "lora").glob("curve*.parquet"):
        leftover.unlink()
    q = runs / "lora" / "eval_target.parquet"
    df, prov = read_table(q)
    inputs = {k: (v.rpartition("@")[0] + "@0123456789abcdef" if k.startswith("adapter") else v)
              for k, v in prov["inputs"].items()}
    write_table(df, q, Provenance(command=prov["command"], inputs=inputs))
    r = _join(runs, runs / "base", runs / "lora" / "curve.parquet")
    assert r.returncode == 1 and "not measured on the fine-tune" in r.stderr, r.stderr
    assert not list((runs / "lora").glob("curve*.parquet"))


def test_parts_without_per_item_rows_join_as_before(tmp_path):
    """Hand-made parts with no per-sample tables: the curve is joined, no tables are written beside it,
    and tables an earlier join left there are removed (they would be read as this curve's items)."""
    from peftarena_cli.artifacts.tables import Provenance, read_table, write_table

    write_table(pd.DataFrame({"path": ["native"] * 2, "alpha": [0.0, 1.0], "target": [10.0, 30.0]}),
                tmp_path / "t.parquet", Provenance(command="interpolate"))
    write_table(pd.DataFrame({"path": ["native"] * 2, "alpha": [0.0, 1.0], "general": [50.0, 40.0]}),
                tmp_path / "g.parquet", Provenance(command="interpolate"))
    stale = tmp_path / "c.target-samples.parquet"
    write_table(pd.DataFrame({"alpha": [0.5]}), stale, Provenance(command="join_curves"))
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "t.parquet"), str(tmp_path / "g.parquet"),
                        "-o", str(tmp_path / "c.parquet")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    curve, _ = read_table(tmp_path / "c.parquet")
    assert curve[["alpha", "target", "general"]].to_numpy().tolist() == [[0.0, 10.0, 50.0], [1.0, 30.0, 40.0]]
    assert not stale.exists() and not (tmp_path / "c.general-samples.parquet").exists()
    assert "in-sample" in r.stderr

    # a table there that no join wrote is not removed: the join is refused instead
    keep = tmp_path / "d.general-samples.parquet"
    write_table(pd.DataFrame({"alpha": [0.5]}), keep, Provenance(command="interpolate"))
    data = keep.read_bytes()
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "t.parquet"), str(tmp_path / "g.parquet"),
                        "-o", str(tmp_path / "d.parquet")], capture_output=True, text=True)
    assert r.returncode == 1 and "error: join_curves:" in r.stderr and keep.read_bytes() == data
    assert not (tmp_path / "d.parquet").exists()


def test_the_report_reads_each_item_once(arena, cli, tmp_path):
    """The joined per-item rows beside RUNS/M/curve.parquet repeat rows the report already reads (the
    interp/ parts, the ends' own evals): `report RUNS` reads the interpolation's rows once, as before."""
    from peftarena_cli.report.collect import collect_results

    if not (arena / "lora" / "curve.target-samples.parquet").exists():
        assert _join(arena, arena / "base", arena / "lora" / "curve.parquet").returncode == 0
    lora = collect_results([str(arena)])["lora"]
    assert sorted(p.name for p in lora.files["curve_samples"]) == ["general.general-samples.parquet",
                                                                    "target.target-samples.parquet"]
    rows = lora.tables["curve_samples"]
    assert sorted(set(rows["alpha"])) == [0.5] and len(rows) == int(TARGET_LIMIT) + int(GENERAL_LIMIT)
    out = tmp_path / "report"
    r = cli("report", arena, "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out / "leaderboard.md").is_file()


def test_make_joins_again_a_run_set_whose_curve_has_no_item_rows(tmp_path):
    """scripts/arena.mk: the joined rows are targets of the curve's rule and prerequisites of the rewind,
    so a run set joined before they existed gets them (join, rewind, report: nothing else reruns), and a
    complete run set is left alone."""
    import os
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    r = tmp_path / "runs"
    order = ["lora/train/.done", "_stats/csd_stats.safetensors", "base/eval_target.parquet", "base/eval_general.parquet",
             "lora/eval_target.parquet", "lora/eval_general.parquet", "lora/spectrum.parquet", "lora/csd.parquet",
             "lora/act_geom.parquet", "lora/drift.parquet", "lora/interp/target.parquet", "lora/interp/general.parquet",
             "lora/curve.parquet", "lora/rewound/.done", "report/leaderboard.parquet"]

    def stamp(names):  # each file one second newer than the one before, as a finished run leaves them
        for i, name in enumerate(names):
            p = r / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
            os.utime(p, (1_000_000 + i, 1_000_000 + i))

    def plan():
        out = subprocess.run(["make", "-n", "--no-print-directory", "arena-stages", f"RUNS={r}", "METHODS=lora",
                              "INTERP=lora"], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        plan.text = out.stdout
        return [x for x in out.stdout.splitlines() if "join_curves.py" in x or "bin/peftarena " in x]

    stamp(order)
    lines = plan()
    assert [("join_curves" if "join_curves.py" in x else x.split("bin/peftarena ")[1].split()[0]) for x in lines] == \
        ["join_curves", "rewind", "report"]
    assert f"--ends {r}/base {r}/lora -o {r}/lora/curve.parquet" in plan.text  # the curve, not a rows file
    items = ["lora/curve.target-samples.parquet", "lora/curve.general-samples.parquet"]
    stamp(order[:12] + items + order[12:])  # join_curves writes the rows, then the curve
    assert plan() == []

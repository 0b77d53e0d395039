"""The bf16-against-float32 evaluation benchmark (benchmarks/bf16_eval_bench.py), SWEEP_EVAL_DTYPE in
scripts/sweep.mk, the sweep report's dtype check, and the decode-step roofline of benchmarks/eval_bench.py."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from peftarena_cli.artifacts.tables import Provenance, read_table, write_table

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("bf16_eval_bench")


@pytest.fixture(scope="module")
def eval_bench():
    return _load("eval_bench")


# ---------------------------------------------------------------- hand-built per-sample tables
def _target(correct, completions=None, samples=1):
    """arith rows: ``correct`` is one list per item (its samples' 0/1) or one 0/1 per item."""
    rows = []
    for i, c in enumerate(correct):
        cs = c if isinstance(c, list) else [c]
        assert len(cs) == samples
        for s, v in enumerate(cs):
            comp = completions[i] if completions is not None else f"answer {i}/{s}"
            rows.append({"model": "base", "task": "arith", "subtask": None, "id": f"t{i}", "sample": s,
                         "prompt": "p", "completion": comp, "extracted": "1", "reference": "1",
                         "correct": bool(v), "meta": json.dumps({"scorer": "math"})})
    return pd.DataFrame(rows)


def _general(facts, nq):
    """Two general parts of first-sample exact match (facts, nq_open), ``facts`` / ``nq`` 0/1 per item."""
    rows = []
    for task, scorer, ys in (("facts", "facts", facts), ("nq_open", "nq", nq)):
        for i, v in enumerate(ys):
            rows.append({"model": "base", "task": task, "subtask": None, "id": f"{task[0]}{i}", "sample": 0,
                         "prompt": "p", "completion": f"{task} {i} {v}", "extracted": "x", "reference": "x",
                         "correct": bool(v), "meta": json.dumps({"scorer": scorer, "protocol": "builtin@1"})})
    return pd.DataFrame(rows)


def test_identical_share_and_a_binary_paired_difference_by_hand(bench):
    # 5 items; bf16 loses item 2 (its completion differs), the other 4 completions are identical
    fp = _target([1, 1, 1, 0, 0], completions=["a", "b", "c", "d", "e"])
    bf = _target([1, 1, 0, 0, 0], completions=["a", "b", "X", "d", "e"])
    res = bench.compare_sets({"target": fp}, {"target": bf})
    v = res["target"]
    assert (v["identical"], v["shared"]) == (4, 5)
    assert (v["fp32"], v["bf16"]) == pytest.approx((60.0, 40.0), abs=1e-9)
    d = v["diff"]
    assert d.diff == pytest.approx(-20.0, abs=1e-9)
    # McNemar exact: 0 items right only in bf16, 1 right only in fp32 -> p = min(1, 2 * 0.5**1) = 1
    assert d.test == "mcnemar exact" and d.p_value == pytest.approx(1.0)
    # bootstrap: a resample's difference is -20 k points, k ~ Binomial(5, 0.2) draws of item 2.
    # P(k >= 4) = 0.0067 and P(k >= 3) = 0.058 put the 2.5 % quantile at k = 3 (-60); P(k = 0) = 0.33
    # puts the 97.5 % one at k = 0 (0). With 2000 resamples the quantile ranks (50 and 1950) sit far
    # inside those blocks (expected counts 13 and 116 below -40; 655 at 0).
    assert (d.low, d.high) == pytest.approx((-60.0, 0.0), abs=1e-9)
    assert d.n == 5 and v["within"] is False
    assert bench.allowed(res) is False


def test_a_constant_per_item_difference_has_a_degenerate_interval(bench):
    # 10 items, 4 samples each: fp32 gets 1 of 4 right on every item, bf16 2 of 4, so every item's
    # avg@4 moves by exactly +25 points: each bootstrap resample gives +25
    fp = _target([[1, 0, 0, 0]] * 10, samples=4)
    bf = _target([[1, 1, 0, 0]] * 10, samples=4)
    d = bench.compare_sets({"target": fp}, {"target": bf})["target"]["diff"]
    assert (d.diff, d.low, d.high) == pytest.approx((25.0, 25.0, 25.0), abs=1e-9)
    # sign-flip test: only the two flips that keep every item on one side reach |T| (probability
    # 2 / 2**10 = 0.002 per flip); p = (1 + count) / (R + 1) with R = 10000 has mean ~0.002 and
    # binomial SD ~0.0004, so 0.01 is far above any draw
    assert d.test == "sign-flip permutation" and d.p_value < 0.01


def test_identical_evaluations_pass_the_rule_and_a_general_difference_is_the_mean_of_parts(bench):
    fp = {"target": _target([1, 0, 1, 0, 1, 1]), "general": _general([1, 1, 1, 1], [0, 1, 0, 1])}
    same = {k: v.copy() for k, v in fp.items()}
    res = bench.compare_sets(fp, same)
    for k, n in (("target", 6), ("general", 8)):
        v = res[k]
        assert (v["identical"], v["shared"]) == (n, n)
        assert (v["diff"].diff, v["diff"].low, v["diff"].high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
        assert v["within"] is True
    assert bench.allowed(res) is True
    lines = bench.format_report(res)
    assert lines[-1].startswith("every paired difference's interval within ±1 point: yes")

    # bf16 loses one facts item: facts 100 -> 75, nq unchanged at 50; the general score is the mean of the
    # two parts, 75 -> 62.5, a paired difference of -12.5 points
    bf = {"target": same["target"], "general": _general([1, 1, 1, 0], [0, 1, 0, 1])}
    res = bench.compare_sets(fp, bf)
    g = res["general"]
    assert (g["fp32"], g["bf16"]) == pytest.approx((75.0, 62.5), abs=1e-9)
    assert g["diff"].diff == pytest.approx(-12.5, abs=1e-9)
    assert (g["identical"], g["shared"]) == (7, 8)
    assert g["within"] is False and bench.allowed(res) is False
    assert "no: sweeps stay in float32" in bench.format_report(res)[-1]


def test_other_items_are_refused_not_aligned(bench):
    from peftarena_cli.errors import IncompatibleInputs

    with pytest.raises(IncompatibleInputs):
        bench.compare_sets({"target": _target([1, 0, 1])}, {"target": _target([1, 0, 1, 1])})


def test_speed_and_memory_ratios_by_hand(bench):
    runs = {"float32": {"sets": {"target": {"tokens": 100, "seconds": 10.0}, "general": {"tokens": 200, "seconds": 20.0}},
                        "peak_rss_mib": 1000.0},
            "bfloat16": {"sets": {"target": {"tokens": 120, "seconds": 6.0}, "general": {"tokens": 180, "seconds": 9.0}},
                         "peak_rss_mib": 600.0}}
    p = bench.speed_memory(runs)
    assert p["tok_s"] == pytest.approx({"float32": 10.0, "bfloat16": 20.0})
    assert p["speed_ratio"] == pytest.approx(2.0) and p["rss_ratio"] == pytest.approx(0.6)


# ---------------------------------------------------------------- SWEEP_EVAL_DTYPE in make sweep
def _make_n(*extra):
    if shutil.which("make") is None:
        pytest.skip("no make")
    cmd = ["make", "-n", "--no-print-directory", "sweep-stages", "SWEEP_RUNS=/nonexistent-sweep", "SWEEP_METHODS=lora",
           "SEEDS=1", "SWEEP_LRS_lora=0.001", "SWEEP_INTERP_POINTS=lora/lr0.001/s1", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _stage_commands(out: str) -> dict:
    """{stage: the whole command} of every eval stage make -n prints (continuation lines joined)."""
    text = out.replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        for stage in ("eval-target", "eval-general", "interpolate", "drift"):
            if f"peftarena {stage} " in line:
                found.setdefault(stage, []).append(line)
    return found


@pytest.mark.parametrize("screen", ["0", "1"])
def test_make_sweep_passes_the_eval_dtype_to_every_eval_stage(screen):
    stages = _stage_commands(_make_n("SWEEP_EVAL_DTYPE=bfloat16", f"SCREEN={screen}"))
    want = {"eval-target": 2, "eval-general": 2, "interpolate": 2} | ({"drift": 1} if screen == "1" else {})
    assert {k: len(v) for k, v in stages.items()} == want
    for cmds in stages.values():
        for c in cmds:
            assert re.search(r" --dtype bfloat16(\s|;|$)", c), c
    # the default is float32, on every stage too
    for cmds in _stage_commands(_make_n()).values():
        assert all(re.search(r" --dtype float32(\s|;|$)", c) for c in cmds)


# ---------------------------------------------------------------- the sweep report and mixed dtypes
def _set_dtype(path: Path, dtype):
    df, prov = read_table(path)
    write_table(df, path, Provenance(command=prov.get("command", ""), inputs=prov.get("inputs") or {}, dtype=dtype))


def _eval_files(root: Path):
    return sorted(p for p in root.rglob("eval_*.parquet"))


def test_sweep_report_refuses_mixed_eval_dtypes(cli, tmp_path):
    from test_sweep_pipeline import make_sweep

    root = make_sweep(tmp_path / "sweep")
    for f in _eval_files(root):
        _set_dtype(f, "float32")
    _set_dtype(root / "oft" / "lr0.0015" / "s2" / "eval_general.parquet", "bfloat16")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    r = cli("report", root, "-o", tmp_path / "rep")
    assert r.returncode == 1 and "mixes model dtypes" in r.stderr and "Traceback" not in r.stderr
    assert "oft lr=0.0015 seed 2" in r.stderr and "bfloat16" in r.stderr and "float32" in r.stderr
    assert "SWEEP_EVAL_DTYPE" in r.stderr  # the hint
    assert not (tmp_path / "rep").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_sweep_report_in_bfloat16_throughout_says_so(cli, tmp_path):
    from test_sweep_pipeline import make_sweep

    root = make_sweep(tmp_path / "sweep")
    for f in _eval_files(root):
        _set_dtype(f, "bfloat16")
    r = cli("report", root, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "every eval ran in bfloat16 (SWEEP_EVAL_DTYPE); float32 is the reference precision" in md
    # float32 throughout: no such note
    for f in _eval_files(root):
        _set_dtype(f, "float32")
    r = cli("report", root, "-o", tmp_path / "rep2")
    assert r.returncode == 0, r.stderr
    assert "every eval ran in" not in (tmp_path / "rep2" / "leaderboard.md").read_text()


def test_sweep_path_in_another_dtype_is_left_out_with_a_note(cli, tmp_path):
    from test_report_selection import _write_path
    from test_sweep_pipeline import make_sweep

    root = make_sweep(tmp_path / "sweep")
    for f in _eval_files(root):
        _set_dtype(f, "float32")
    point = root / "lora" / "lr0.001" / "s1"
    _write_path(point)
    # the same path in the sweep's dtype is drawn ...
    for f in (point / "interp").glob("*.parquet"):
        _set_dtype(f, "float32")
    r = cli("report", root, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "sweep_paths.parquet").exists()
    # ... and left out, with the reason, when interpolated in bfloat16
    _set_dtype(point / "interp" / "general.general-samples.parquet", "bfloat16")
    r = cli("report", root, "-o", tmp_path / "rep2")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "rep2" / "sweep_paths.parquet").exists()
    md = (tmp_path / "rep2" / "leaderboard.md").read_text()
    assert "interpolation path of lora lr=0.001 seed 1" in md and "interpolated in bfloat16" in md


# ---------------------------------------------------------------- the roofline of eval_bench
# A hand-worked config: 2 layers, hidden 64, 4 heads of 16 (kv 2 heads), MLP 128, vocab 100.
SHAPE_CFG = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 100}


def test_roofline_formula_on_a_hand_worked_config(eval_bench):
    shape = eval_bench.decode_shape(SHAPE_CFG)
    assert shape == {"layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "hidden": 64, "intermediate": 128,
                     "vocab": 100}
    # per layer: q, o 64x64 = 4096 each; k, v 64x32 = 2048 each; gate, up, down 64x128 = 8192 each
    # -> 8192 + 4096 + 24576 = 36864; two layers 73728; lm_head 64x100 = 6400: P = 80128
    P = eval_bench.config_matmul_params(shape)
    assert P == 80128
    r = eval_bench.roofline_step(shape, P, rows=8, positions=100, bytes_per_value=4, peak_gflops=10.0,
                                 bandwidth_gbs=2.0, measured_s=0.01)
    # FLOPs: 2*80128*8 = 1,282,048 + attention 4*8*100*2*4*16 = 409,600 -> 1,691,648
    assert r["flops"] == 1_691_648
    # bytes: weights 80128*4 = 320,512; KV 2*2*2*16*100*8*4 = 409,600 -> 730,112
    assert (r["weight_bytes"], r["kv_bytes"], r["bytes"]) == (320_512, 409_600, 730_112)
    # times: 1,691,648 / 1e10 = 169.1648 us; 730,112 / 2e9 = 365.056 us -> memory-bound
    assert r["compute_s"] == pytest.approx(169.1648e-6, rel=1e-12)
    assert r["memory_s"] == pytest.approx(365.056e-6, rel=1e-12)
    assert r["bound_by"] == "memory" and r["bound_s"] == r["memory_s"]
    assert r["fraction"] == pytest.approx(365.056e-6 / 0.01, rel=1e-12)
    # bfloat16 halves every byte; one row, no cache, 20 GB/s: compute 2*80128/1e10 = 16.0256 us beats
    # memory 80128*2/2e10 = 8.0128 us, so the step is compute-bound
    r2 = eval_bench.roofline_step(shape, P, rows=1, positions=0, bytes_per_value=2, peak_gflops=10.0,
                                  bandwidth_gbs=20.0)
    assert r2["kv_bytes"] == 0 and r2["bytes"] == 160_256 and r2["bound_by"] == "compute"
    assert r2["bound_s"] == pytest.approx(16.0256e-6, rel=1e-12) and "fraction" not in r2


def test_config_params_match_the_models_linear_weights(eval_bench, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    shape = eval_bench.decode_shape(model.config)
    assert eval_bench.config_matmul_params(shape) == eval_bench.matmul_params(model)[0]


def test_decode_steps_and_the_roofline_table_on_the_tiny_model(eval_bench, tiny_model_dir):
    """Runs the engine's decode step at two cache lengths and builds the table (no timing asserted)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    steps = eval_bench.decode_steps(model, tok, rows=3, positions=[5, 20], steps=2)
    assert sorted(steps) == [5, 20]
    # the timed steps attend to L + 2 and L + 3 positions: mean L + 2.5
    assert [steps[k]["mean_positions"] for k in (5, 20)] == [7.5, 22.5]
    assert all(v["step_s"] > 0 for v in steps.values())
    e = {"params": eval_bench.matmul_params(model)[0],
         "roofline": {"rows": 3, "bandwidth": {"best": 5.0, "sum": 5.0, "copy": 4.0},
                      "shape": eval_bench.decode_shape(model.config), "bytes_per_value": 4,
                      "steps": {str(k): v for k, v in steps.items()}}}
    lines = eval_bench.roofline_lines(e, 50.0)
    assert len(lines) == 4 and lines[1].split()[0] == "positions"
    assert [float(x.split()[0]) for x in lines[2:]] == [7.5, 22.5]


@pytest.mark.slow
def test_bf16_bench_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bf16_eval_bench.py"), "--model", str(tiny_model_dir),
                        "--target-limit", "4", "--general-limit", "ifeval=2,bbh=2,facts=2", "--threads", "1",
                        "--keep", str(tmp_path / "tables"), "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "generated tokens/s: float32" in r.stdout and "every paired difference's interval" in r.stdout
    doc = json.loads(out.read_text())
    assert set(doc["sets"]) == {"target", "general"}
    # each worker's tables record the dtype it ran in
    for dtype in ("float32", "bfloat16"):
        for kind in ("target", "general"):
            df, prov = read_table(tmp_path / "tables" / f"{dtype}_{kind}.parquet")
            assert prov["dtype"] == dtype and len(df)
    t = doc["sets"]["target"]
    assert t["shared"] == 4 and 0 <= t["identical"] <= 4
    assert math.isfinite(doc["perf"]["speed_ratio"]) and doc["perf"]["rss"]["float32"] > 0

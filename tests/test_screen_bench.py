"""The drift screen's cost benchmark (benchmarks/screen_bench.py): its report on hand-built numbers,
its defaults against the sweep's own command lines (scripts/sweep.mk), and one run on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("screen_bench", ROOT / "benchmarks" / "screen_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stage(wall, cpu, rss=1000.0):
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}


# ---------------------------------------------------------------- the report, by hand
def test_one_point_ratio_and_break_even_by_hand(bench):
    p = bench.point_costs({"first": _stage(30.0, 50.0), "reuse": _stage(12.0, 20.0), "general": _stage(60.0, 80.0)})
    # b / c: 12 / 60 = 0.2 wall, 20 / 80 = 0.25 CPU
    assert p["ratio_wall"] == pytest.approx(0.2) and p["ratio_cpu"] == pytest.approx(0.25)
    s = bench.summarize([p], n=30)
    w = s["sweep"]
    # N = 30: the screen costs 30 + 29 x 12 = 378 s; each screened-out point saves 60 s;
    # K* = 378 / 60 = 6.3, so 7 screened-out points are the least that pay off
    assert w["screen_cost_s"] == pytest.approx(378.0) and w["saving_per_point_s"] == pytest.approx(60.0)
    assert w["break_even_k"] == pytest.approx(6.3) and w["least_k"] == 7
    lines = bench.format_report([p], s, ["lora/final"])
    assert lines[0] == "point lora/final:"
    text = "\n".join(lines)
    assert "(b / c): 0.200 wall, 0.250 CPU" in text
    assert "a + (N − 1)·b = 30.0 + 29·12.0 = 378.0 s" in text and "K·c = K·60.0 s" in text
    assert "break-even K* = (a + (N − 1)·b) / c = 6.30" in text and "at least 7 of 30 points" in lines[-1]


def test_medians_over_points_and_the_median_of_ratios(bench):
    # three points: a = 30, 25, 40; b = 10, 12, 20; c = 50, 60, 40 (wall); ratios 0.2, 0.2, 0.5
    raw = [(30, 10, 50, 1500), (25, 12, 60, 1400), (40, 20, 40, 1600)]
    pts = [bench.point_costs({"first": _stage(a, 2 * a, rss), "reuse": _stage(b, 2 * b, rss - 100),
                              "general": _stage(c, 2 * c, rss + 200)}) for a, b, c, rss in raw]
    s = bench.summarize(pts, n=30)
    m = s["median"]
    assert (m["first"]["wall_s"], m["reuse"]["wall_s"], m["general"]["wall_s"]) == (30, 12, 50)
    assert (m["first"]["cpu_s"], m["reuse"]["cpu_s"], m["general"]["cpu_s"]) == (60, 24, 100)
    assert (m["first"]["peak_rss_mib"], m["reuse"]["peak_rss_mib"], m["general"]["peak_rss_mib"]) == (1500, 1400, 1700)
    # the median of the points' ratios (0.2), not the ratio of the medians (12 / 50 = 0.24)
    assert s["ratio_wall"] == pytest.approx(0.2) and s["ratio_cpu"] == pytest.approx(0.2)
    # break-even from the medians: (30 + 29 x 12) / 50 = 378 / 50 = 7.56 -> 8
    assert s["sweep"]["break_even_k"] == pytest.approx(7.56) and s["sweep"]["least_k"] == 8
    assert s["n_points"] == 3


def test_break_even_at_a_whole_number_and_beyond_the_grid(bench):
    # (10 + 29 x 10) / 50 = 300 / 50 = 6 exactly: K = 6 breaks even
    w = bench.sweep_saving(10.0, 10.0, 50.0, 30)
    assert w["break_even_k"] == pytest.approx(6.0) and w["least_k"] == 6
    # (100 + 29 x 50) / 40 = 1550 / 40 = 38.75 > 30: no K of 30 points pays off
    w = bench.sweep_saving(100.0, 50.0, 40.0, 30)
    assert w["break_even_k"] == pytest.approx(38.75) and w["least_k"] is None
    # a one-point sweep pays a alone: K* = a / c = 20 / 40 = 0.5 -> 1
    assert bench.break_even(20.0, 5.0, 40.0, 1) == pytest.approx(0.5)
    assert bench.sweep_saving(20.0, 5.0, 40.0, 1)["least_k"] == 1
    p = bench.point_costs({"first": _stage(100, 100), "reuse": _stage(50, 50), "general": _stage(40, 40)})
    assert "cannot pay off on 30 points (K* > N)" in bench.format_report([p], bench.summarize([p]))[-1]


# ---------------------------------------------------------------- the sweep's defaults
def test_sweep_defaults_parser_on_a_hand_written_makefile(bench, tmp_path):
    mk = tmp_path / "x.mk"
    mk.write_text("# A ?= 1 in a comment\nFOO   ?= 16\nBAR ?= a=1,b=2  \nBAZ := 3\nQUX?=\n\tTAB ?= 9\n")
    assert bench.sweep_defaults(mk) == {"FOO": "16", "BAR": "a=1,b=2", "QUX": ""}


def test_defaults_agree_with_the_sweeps_command_lines(bench):
    """The benchmark's defaults are the limits and dtype the screened sweep passes (make -n)."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "--no-print-directory", "sweep-stages", "SWEEP_RUNS=/nonexistent-sweep",
                          "SWEEP_METHODS=lora", "SEEDS=1", "SWEEP_LRS_lora=0.001", "SCREEN=1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    drift = [x for x in out.splitlines() if "peftarena drift " in x]
    general = [x for x in out.splitlines() if "peftarena eval-general " in x and "lora/lr0.001/s1" in x]
    assert len(drift) == 1 and len(general) == 1
    a = bench.build_parser().parse_args(["--adapter", "x"])
    def has(cmd, opt, value):
        return re.search(rf"\s{opt}\s+{re.escape(str(value))}(\s|;|$)", cmd) is not None

    assert has(drift[0], "--limit", a.drift_limit) and has(drift[0], "--sets", "general")
    assert has(drift[0], "--dtype", a.dtype) and has(drift[0], "--base-continuations", "/nonexistent-sweep/base/drift_base.json")
    assert has(general[0], "--limit", a.general_limit) and has(general[0], "--dtype", a.dtype)
    # the screen reads only the greedy rows: its drift skips the references, and the benchmark's does too
    words = drift[0].split()
    assert "--no-reference" in words and "--reference" not in words
    assert a.reference is False and bench.sweep_drift_reference() is False
    # and the values as the sweep's page documents them
    assert (a.drift_limit, a.general_limit, a.dtype) == (16, "ifeval=40,bbh=40,facts=80", "float32")


def test_drift_reference_setting_read_from_a_hand_written_drift_recipe(bench, tmp_path):
    def setting(recipe):
        mk = tmp_path / "x.mk"
        mk.write_text("# $(PA) drift --no-reference in a comment\nX ?= 1\n\n%/drift.parquet: %/train/.done\n"
                      "\t@mkdir -p $(@D)\n" + recipe + "\n\n%/eval.parquet:\n\t$(PA) eval-general M --reference x\n")
        return bench.sweep_drift_reference(mk)

    # the flag on the recipe's continuation line counts; a comment or another recipe does not
    assert setting("\t$(PA) drift M P --sets general \\\n\t\t--no-reference -o $@") is False
    assert setting("\t$(call skip,$*) $(PA) drift M P --no-reference -o $@; fi") is False
    # --reference, or neither flag (drift's default): the references are teacher-forced
    assert setting("\t$(PA) drift M P --reference -o $@") is True
    assert setting("\t$(PA) drift M P --sets general \\\n\t\t-o $@") is True
    # no drift recipe, or one with both flags: refused
    with pytest.raises(ValueError, match="0 drift recipes"):
        setting("\techo no drift here")
    with pytest.raises(ValueError, match="both"):
        setting("\t$(PA) drift M P --reference --no-reference -o $@")


def test_reference_setting_reaches_every_drift_subprocess(bench, tmp_path, monkeypatch):
    """The default (the sweep's --no-reference) and an override on the command line are passed to
    both drift workers, and the worker's parser reads each back; eval-general gets it too, unused."""
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        a = bench.build_parser().parse_args(cmd[2:])
        kind, cont = a.worker, Path(a.base_continuations)
        reused = kind == "drift" and cont.exists()
        if kind == "drift":
            cont.write_text("{}")
        out = {"reference": a.reference, "reused": reused, "threads": 1, "peak_rss_mib": 1.0}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    for argv, want in ((["--adapter", "p"], False), (["--adapter", "p", "--reference"], True),
                       (["--adapter", "p", "--reference", "--no-reference"], False)):
        seen.clear()
        a = bench.build_parser().parse_args(argv)
        assert a.reference is want
        p = bench.measure_point(a, "p", tmp_path / str(want))
        assert len(seen) == 3
        flag = "--reference" if want else "--no-reference"
        assert all(flag in cmd and cmd.count("--reference") + cmd.count("--no-reference") == 1 for cmd in seen)
        assert p["first"]["reference"] is want and p["reuse"]["reference"] is want
    # the default follows the drift recipe it is given
    assert bench.build_parser(reference=True).parse_args(["--adapter", "p"]).reference is True
    assert bench.build_parser(reference=False).parse_args(["--adapter", "p"]).reference is False


def test_at_least_one_point_is_required(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([])
    assert e.value.code == 2 and "--adapter DIR" in capsys.readouterr().err


# ---------------------------------------------------------------- one run on the tiny model
@pytest.mark.slow
def test_screen_bench_end_to_end_on_the_tiny_model(tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    out, keep = tmp_path / "figures.json", tmp_path / "keep"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "screen_bench.py"), "--model", str(tiny_model_dir),
                        "--adapter", str(tiny_lora_dir), "--drift-limit", "2", "--general-limit", "ifeval=1,bbh=1,facts=1",
                        "--threads", "1", "--grid-points", "5", "--keep", str(keep), "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    for s in ("(a) first drift", "(b) drift reusing", "(c) eval-general", "screen / full general eval",
              "a sweep of N = 5 points", "break-even K*"):
        assert s in r.stdout
    doc = json.loads(out.read_text())
    assert (doc["drift_limit"], doc["general_limit"], doc["dtype"], doc["threads"]) == (2, "ifeval=1,bbh=1,facts=1",
                                                                                       "float32", 1)
    # the sweep's drift: the greedy rows only (--no-reference)
    assert doc["reference"] is False and "--no-reference" in r.stdout
    (p,) = doc["points"]
    assert p["point"] == str(tiny_lora_dir)
    for stage in ("first", "reuse", "general"):
        v = p[stage]
        assert v["wall_s"] > 0 and v["cpu_s"] > 0 and v["peak_rss_mib"] > 0 and v["load_s"] >= 0
    assert p["ratio_wall"] == pytest.approx(p["reuse"]["wall_s"] / p["general"]["wall_s"])
    assert p["first"]["reused"] is False and p["reuse"]["reused"] is True
    assert p["first"]["sources"] == p["reuse"]["sources"] == ["greedy"]
    # 2 items per general part, one prompt each; the eval's one item per part, one sample each
    assert p["first"]["n_prompts"] == p["reuse"]["n_prompts"] > 0 and p["general"]["rows"] == 3
    s = doc["summary"]
    assert s["n_points"] == 1 and s["sweep"]["n"] == 5
    m = s["median"]
    assert s["sweep"]["break_even_k"] == pytest.approx(
        (m["first"]["wall_s"] + 4 * m["reuse"]["wall_s"]) / m["general"]["wall_s"])
    # the first drift wrote the base's continuations and the second read them (its provenance says so)
    cont = keep / "p1" / "drift_base.json"
    assert json.loads(cont.read_text())["format"] == "peftarena-drift-base/1"
    first, prov_a = read_table(keep / "p1" / "drift_first.parquet")
    second, prov_b = read_table(keep / "p1" / "drift_reuse.parquet")
    assert prov_a["extra"]["base_continuations"] == {"path": str(cont), "reused": False}
    assert prov_b["extra"]["base_continuations"] == {"path": str(cont), "reused": True}
    assert prov_a["extra"]["reference"] is False and prov_b["extra"]["reference"] is False
    assert set(first["source"]) == set(second["source"]) == {"greedy"}
    assert json.loads(cont.read_text())["settings"]["reference"] is False
    # reusing them gives the same drift as generating them
    assert np.allclose(first["kl"].to_numpy(), second["kl"].to_numpy(), rtol=1e-5, atol=1e-7)
    assert math.isfinite(first["kl"].mean())
    _, prov_c = read_table(keep / "p1" / "eval_general.parquet")
    assert prov_c["command"] == "eval-general" and any(k.startswith("adapter") for k in prov_c["inputs"])

"""Benchmark: the sweep's drift screen against the full general evaluation of the same points.

    .venv/bin/python benchmarks/screen_bench.py --adapter runs/arena/lora/train/final [--adapter DIR ...]
        [--model smollm2-135m] [--drift-limit 16] [--general-limit ifeval=40,bbh=40,facts=80]
        [--dtype float32] [--reference | --no-reference] [--threads N] [--grid-points 30] [--keep DIR]
        [--json FILE]

With ``make sweep SCREEN=1`` (scripts/sweep.mk) every grid point pays ``peftarena drift BASE POINT
--sets general --limit SWEEP_DRIFT_LIMIT --no-reference --base-continuations
SWEEP_RUNS/base/drift_base.json`` (the greedy rows only: the screen reads nothing else), and only
the points the screen selects pay ``eval-general --limit SWEEP_GENERAL_LIMIT``. This measures, for
each fine-tuned point given (``--adapter``: an adapter on ``--model``, or a full fine-tune's
model directory), three things, each in a subprocess of its own (so each peak memory is its own),
through the core entry points the CLI calls:

(a) the first drift: :func:`peftarena_cli.interpolation.drift_run.run_drift` with a
    ``--base-continuations`` file that does not exist yet, so it also generates the base's greedy
    continuations and writes the file (what the sweep's first point pays, once);
(b) a drift reusing that file (what every later point of a sweep pays);
(c) ``eval-general`` at the general limit: :func:`peftarena_cli.evaluation.run.run_eval`.

For each: the subprocess's wall seconds and CPU seconds (user + system, from the parent's
``RUSAGE_CHILDREN``; Python's start and imports included, as a sweep stage pays them), its peak RSS
(VmHWM, loading included), and the model loading and working seconds the core reports. Printed per
point and as the median over points: the screen's cost (b) against the full general eval (c) as a
ratio, and (a) as the one-off cost. Then the sweep-level saving: with N points of which K are
screened out, the screen costs a + (N − 1)·b and saves K·c, so it pays off from
K* = (a + (N − 1)·b) / c screened-out points on (N = ``--grid-points``, the default grid's 30);
computed from the medians.

The defaults of ``--drift-limit``, ``--general-limit`` and ``--dtype`` are read from
scripts/sweep.mk (SWEEP_DRIFT_LIMIT, SWEEP_GENERAL_LIMIT, SWEEP_EVAL_DTYPE), and that of
``--reference``/``--no-reference`` from its drift recipe (:func:`sweep_drift_reference`), so the
benchmark measures what the sweep runs; ``--reference`` measures the drift that also teacher-forces
every item's reference text, which the screen does not read. Run it alone on the machine: timings
of a shared CPU mean nothing. The first subprocess may read the model from a cold disk cache; the
medians over several points damp that. :func:`point_costs`, :func:`summarize`, :func:`break_even`
and :func:`format_report` are the report (tests/test_screen_bench.py checks them on hand-built
numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP_MK = ROOT / "scripts" / "sweep.mk"
STAGES = ("first", "reuse", "general")  # (a), (b), (c)
STAGE_NAMES = {"first": "(a) first drift, writes the base's continuations",
               "reuse": "(b) drift reusing the base's continuations",
               "general": "(c) eval-general"}
DEFAULT_GRID_POINTS = 30  # the default sweep grid: 5 methods x 3 learning rates x 2 seeds (scripts/sweep.mk)


# ---------------------------------------------------------------- the sweep's settings
def sweep_defaults(path: str | Path = SWEEP_MK) -> dict:
    """{variable: value} of every ``NAME ?= value`` line of a Makefile (the sweep's knobs)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\?=\s*(.*?)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def sweep_drift_reference(path: str | Path = SWEEP_MK) -> bool:
    """Whether the sweep's drift recipe (the recipe line that runs ``$(PA) drift``, with its
    continuation lines) teacher-forces the references: False when it passes ``--no-reference``, True
    when it passes ``--reference`` or neither (drift's default). ValueError when there is no such
    recipe, or it passes both."""
    text = Path(path).read_text().replace("\\\n", " ")
    recipes = [line for line in text.splitlines() if line.startswith("\t") and re.search(r"\$\(PA\)\s+drift\s", line)]
    if len(recipes) != 1:
        raise ValueError(f"{path}: {len(recipes)} drift recipes, expected one")
    words = recipes[0].split()
    if "--no-reference" in words and "--reference" in words:
        raise ValueError(f"{path}: the drift recipe passes both --reference and --no-reference")
    return "--no-reference" not in words


# ---------------------------------------------------------------- the report (plain functions)
def _ratio(x: float, y: float) -> float:
    return x / y if y > 0 else math.nan


def point_costs(stages: dict) -> dict:
    """One point's measurements ``{"first", "reuse", "general"}`` (each a dict with ``wall_s`` and
    ``cpu_s``) with the screen-to-full ratios b / c added: ``ratio_wall`` and ``ratio_cpu``."""
    b, c = stages["reuse"], stages["general"]
    return dict(stages, ratio_wall=_ratio(b["wall_s"], c["wall_s"]), ratio_cpu=_ratio(b["cpu_s"], c["cpu_s"]))


def break_even(a: float, b: float, c: float, n: int) -> float:
    """K* = (a + (n − 1)·b) / c: the number of screened-out points out of ``n`` at which the screen's
    cost (the first drift ``a``, a reusing drift ``b`` for each other point) equals its saving (one
    general eval ``c`` per screened-out point)."""
    return _ratio(a + (n - 1) * b, c)


def sweep_saving(a: float, b: float, c: float, n: int) -> dict:
    """The sweep-level figures for ``n`` points: the screen's cost, the saving per screened-out
    point, K* and the least whole K that pays off (None when even K = n does not)."""
    k = break_even(a, b, c, n)
    least = math.ceil(k - 1e-9) if math.isfinite(k) else None
    return {"n": n, "screen_cost_s": a + (n - 1) * b, "saving_per_point_s": c, "break_even_k": k,
            "least_k": least if least is not None and least <= n else None}


def summarize(points: list[dict], n: int = DEFAULT_GRID_POINTS) -> dict:
    """The medians over points (each as :func:`point_costs` returns it) of each stage's wall and
    CPU seconds and peak RSS, the median of the points' ratios, and the sweep-level figures of
    :func:`sweep_saving` for ``n`` points from the wall-second medians."""
    med = {s: {k: statistics.median(p[s][k] for p in points) for k in ("wall_s", "cpu_s", "peak_rss_mib")}
           for s in STAGES}
    out = {"n_points": len(points), "median": med,
           "ratio_wall": statistics.median(p["ratio_wall"] for p in points),
           "ratio_cpu": statistics.median(p["ratio_cpu"] for p in points)}
    out["sweep"] = sweep_saving(med["first"]["wall_s"], med["reuse"]["wall_s"], med["general"]["wall_s"], n)
    return out


def _stage_text(v: dict, stage: str) -> str:
    parts = [f"{v['wall_s']:.1f} s wall", f"{v['cpu_s']:.1f} s CPU"]
    if v.get("load_s") is not None:
        parts.append(f"of which loading {v['load_s']:.1f} s")
    if v.get("work_s") is not None:
        work = "generation and scoring" if stage == "general" else "the drift itself"
        parts.append(f"{work} {v['work_s']:.1f} s")
    return f"{', '.join(parts)}; peak RSS {v['peak_rss_mib']:.0f} MiB"


def format_report(points: list[dict], summary: dict, labels: list[str] | None = None) -> list[str]:
    """The printed report: each point's three stages and b / c, the medians, the sweep-level saving."""
    lines = []
    for i, p in enumerate(points):
        lines.append(f"point {labels[i] if labels else i + 1}:")
        for s in STAGES:
            lines.append(f"  {STAGE_NAMES[s]}: {_stage_text(p[s], s)}")
        lines.append(f"  screen / full general eval (b / c): {p['ratio_wall']:.3f} wall, {p['ratio_cpu']:.3f} CPU")
    m = summary["median"]
    lines.append(f"median over {summary['n_points']} point(s):")
    for s in STAGES:
        lines.append(f"  {STAGE_NAMES[s]}: {m[s]['wall_s']:.1f} s wall, {m[s]['cpu_s']:.1f} s CPU; "
                     f"peak RSS {m[s]['peak_rss_mib']:.0f} MiB")
    lines.append(f"  screen / full general eval (b / c, median of the points' ratios): "
                 f"{summary['ratio_wall']:.3f} wall, {summary['ratio_cpu']:.3f} CPU; "
                 f"one-off cost (a) {m['first']['wall_s']:.1f} s")
    w = summary["sweep"]
    a, b, c = (m[s]["wall_s"] for s in STAGES)
    lines.append(f"a sweep of N = {w['n']} points, K of them screened out (medians, wall): the screen costs "
                 f"a + (N − 1)·b = {a:.1f} + {w['n'] - 1}·{b:.1f} = {w['screen_cost_s']:.1f} s and saves "
                 f"K·c = K·{c:.1f} s")
    k = w["break_even_k"]
    if w["least_k"] is not None:
        verdict = (f"the saving reaches the screen's cost when at least {w['least_k']} of {w['n']} points "
                   "are screened out")
    else:
        verdict = f"the screen cannot pay off on {w['n']} points (K* > N)"
    lines.append(f"break-even K* = (a + (N − 1)·b) / c = {k:.2f}: {verdict}")
    return lines


# ---------------------------------------------------------------- the workers (one measured thing each)
def _is_adapter(point: str) -> bool:
    from peftarena_cli.artifacts.adapters import is_adapter_path

    return is_adapter_path(Path(point).expanduser())


def drift_worker(model: str, point: str, limit: int, dtype: str, device: str, base_continuations: str,
                 out: str, reference: bool = False) -> dict:
    """``peftarena drift MODEL POINT --sets general --limit LIMIT [--no-reference]
    --base-continuations FILE -o OUT`` as the sweep runs it: the table is written, and so is FILE
    when it did not exist."""
    from peftarena_cli.artifacts.atomic import atomic_write_text
    from peftarena_cli.artifacts.tables import Provenance, write_table
    from peftarena_cli.interpolation.drift_run import DriftConfig, run_drift

    cfg = DriftConfig(base=model, finetuned=point, sets="general", limit=limit, dtype=dtype, device=device,
                      reference=reference, base_continuations=base_continuations)
    res = run_drift(cfg)
    prov = Provenance(command="drift", seed=cfg.seed, dtype=dtype, device=res.device, extra=dict(res.extra))
    for role, (spec, ident) in res.inputs.items():
        prov.add_input(role, spec, ident)
    write_table(res.table, out, prov)
    if res.base_continuations is not None and not res.base_continuations_reused:
        atomic_write_text(Path(base_continuations), json.dumps(res.base_continuations) + "\n")
    return {"load_s": float(res.load_seconds), "work_s": float(res.measure_seconds), "n_prompts": int(res.n_prompts),
            "rows": int(len(res.table)), "reused": bool(res.base_continuations_reused),
            "sources": sorted(set(res.table["source"])) if len(res.table) else []}


def general_worker(model: str, point: str, limit: str, dtype: str, device: str, out: str) -> dict:
    """``peftarena eval-general`` of the point (``MODEL --adapter POINT``, or a full fine-tune's
    directory as the model) at ``limit``; the per-sample table is written to ``out``."""
    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    where = dict(base=model, adapters=[point]) if _is_adapter(point) else dict(base=point)
    r = run_eval(EvalConfig(kind="general", limit=limit, dtype=dtype, device=device, **where))
    write_table(r.per_sample, out, r.provenance())
    run = r.runs[0]
    return {"load_s": float(r.load_seconds), "work_s": float(run.seconds), "generated_tokens": int(run.generated_tokens),
            "rows": int(len(r.per_sample))}


def _worker(a) -> dict:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker == "general":
        res = general_worker(a.model, a.point, a.general_limit, a.dtype, a.device, a.out)
    else:
        res = drift_worker(a.model, a.point, int(a.drift_limit), a.dtype, a.device, a.base_continuations, a.out,
                           reference=a.reference)
    from peftarena_cli.memory import peak_rss_mib

    res["peak_rss_mib"] = peak_rss_mib()
    res["threads"] = torch.get_num_threads()
    return res


def _run(a, stage: str, point: str, out: Path, base_continuations: Path) -> dict:
    """One measured subprocess: its worker's figures plus wall and CPU seconds seen from here."""
    kind = "general" if stage == "general" else "drift"
    cmd = [sys.executable, __file__, "--worker", kind, "--model", a.model, "--point", point, "--out", str(out),
           "--drift-limit", str(a.drift_limit), "--general-limit", a.general_limit, "--dtype", a.dtype,
           "--device", a.device, "--base-continuations", str(base_continuations),
           "--reference" if a.reference else "--no-reference"]
    cmd += ["--threads", str(a.threads)] if a.threads else []
    print(f"{point}: {STAGE_NAMES[stage]} ...", file=sys.stderr, flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{point}: {STAGE_NAMES[stage]} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["file"] = str(out)
    return res


def measure_point(a, point: str, folder: Path) -> dict:
    """(a), (b) and (c) of one point, one after the other; (a) writes the base's continuations into
    ``folder`` and (b) must have read them (else the run stops)."""
    folder.mkdir(parents=True, exist_ok=True)
    cont = folder / "drift_base.json"
    if cont.exists():
        cont.unlink()  # (a) must generate them
    first = _run(a, "first", point, folder / "drift_first.parquet", cont)
    if first["reused"] or not cont.is_file():
        sys.exit(f"{point}: the first drift did not write the base's continuations to {cont}")
    reuse = _run(a, "reuse", point, folder / "drift_reuse.parquet", cont)
    if not reuse["reused"]:
        sys.exit(f"{point}: the second drift did not reuse {cont}")
    general = _run(a, "general", point, folder / "eval_general.parquet", cont)
    return point_costs({"first": first, "reuse": reuse, "general": general})


def build_parser(sweep: dict | None = None, reference: bool | None = None) -> argparse.ArgumentParser:
    """The command line; the limits', the dtype's and the reference setting's defaults are the
    sweep's (``sweep``: the variables of scripts/sweep.mk; ``reference``: its drift recipe's
    setting; each read when not given)."""
    sweep = sweep_defaults() if sweep is None else sweep
    reference = sweep_drift_reference() if reference is None else reference
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="the base: a registry name or a model DIR")
    ap.add_argument("--adapter", action="append", dest="points", metavar="DIR",
                    help="a fine-tuned point (repeatable): an adapter on --model, or a full fine-tune's model DIR")
    ap.add_argument("--drift-limit", type=int, default=int(sweep["SWEEP_DRIFT_LIMIT"]),
                    help="drift --limit, items per general part (default: SWEEP_DRIFT_LIMIT of scripts/sweep.mk)")
    ap.add_argument("--general-limit", default=sweep["SWEEP_GENERAL_LIMIT"],
                    help="eval-general --limit (default: SWEEP_GENERAL_LIMIT of scripts/sweep.mk)")
    ap.add_argument("--dtype", default=sweep["SWEEP_EVAL_DTYPE"], help="default: SWEEP_EVAL_DTYPE of scripts/sweep.mk")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=reference,
                    help="drift also teacher-forces each item's reference text (default: as the drift recipe of "
                         f"scripts/sweep.mk, {'--reference' if reference else '--no-reference'})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="intra-op threads of each subprocess (default: torch's)")
    ap.add_argument("--grid-points", type=int, default=DEFAULT_GRID_POINTS,
                    help="N of the sweep-level break-even (default: the default grid's 30)")
    ap.add_argument("--keep", help="keep the tables and the continuations files in this folder (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures here (JSON)")
    ap.add_argument("--worker", choices=("drift", "general"), help=argparse.SUPPRESS)
    ap.add_argument("--point", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--base-continuations", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> dict | None:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a)))
        return None
    if not a.points:
        ap.error("give at least one fine-tuned point: --adapter DIR (e.g. runs/arena/lora/train/final)")
    if a.grid_points < 1:
        ap.error("--grid-points must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        points = [measure_point(a, p, root / f"p{i + 1}") for i, p in enumerate(a.points)]
    summary = summarize(points, a.grid_points)
    threads = points[0]["first"]["threads"]
    ref = "--reference" if a.reference else "--no-reference"
    print(f"model {a.model}; drift --sets general --limit {a.drift_limit} {ref}; eval-general --limit {a.general_limit}; "
          f"{a.dtype}; {threads} threads; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(run it alone: timings of a shared CPU mean nothing)")
    first, gen = points[0]["first"], points[0]["general"]
    print(f"drift: {first['n_prompts']} prompts ({first['rows']} rows); eval-general: {gen['rows']} rows")
    for line in format_report(points, summary, a.points):
        print(line)
    doc = {"model": a.model, "drift_limit": a.drift_limit, "reference": a.reference, "general_limit": a.general_limit,
           "dtype": a.dtype,
           "threads": threads, "points": [dict(p, point=name) for p, name in zip(points, a.points)],
           "summary": summary}
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return doc


if __name__ == "__main__":
    main()

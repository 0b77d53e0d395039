"""Benchmark: the sweep's evaluations in bfloat16 against float32, on the same model and items.

    .venv/bin/python benchmarks/bf16_eval_bench.py [--model smollm2-135m] [--target-limit 160]
        [--general-limit ifeval=40,bbh=40,facts=80] [--threads N] [--keep DIR]

In one run, two subprocesses one after the other (so each peak memory is its own), each evaluating
the model as the sweep does (scripts/sweep.mk): ``eval-target`` on arith at ``--target-limit``
items and ``eval-general`` on the built-in general suite at ``--general-limit`` (defaults:
SWEEP_TARGET_LIMIT and SWEEP_GENERAL_LIMIT), through the evaluation core
(:func:`peftarena_cli.evaluation.run.run_eval`, what the CLI calls) with ``dtype="float32"`` and
``dtype="bfloat16"``: the CLI's ``--dtype``, which each table's provenance records. It prints

* generated tokens/s of each dtype (all generated tokens of both sets over the generation seconds
  run_eval reports; model loading not counted) and the speed ratio bf16 / fp32;
* the peak RSS of each process (VmHWM of /proc/self/status, loading included) and their ratio;
* per set (target, general): the share of identical greedy completions on the shared
  (task, id, sample) rows;
* per set: the PAIRED difference of the score, bf16 − fp32 in points, with its 95 % interval and
  paired test: :func:`peftarena_cli.stats.paired_difference`, the estimator of the report's paired
  comparisons (stratified paired bootstrap interval; McNemar's exact test for one binary stratum,
  else the stratified sign-flip permutation test), on the sets' per-item measures
  (:func:`peftarena_cli.stats.measure_of`);
* whether every paired difference's interval lies within ±1 point: the rule for allowing
  ``SWEEP_EVAL_DTYPE=bfloat16`` in sweeps (docs/report.md, "Sweeps"). An interval wider than 2
  points can never pass; raise the limits until it is narrow enough to decide.

Run it alone on the machine (timings of a shared CPU mean nothing); the score comparison does not
depend on the machine's load. :func:`compare_sets` and :func:`format_report` are the report
(tests/test_bf16_bench.py checks them on hand-built tables).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16")
SETS = ("target", "general")
RULE_POINTS = 1.0  # bf16 is allowed in sweeps when every paired interval lies within ± this many points
KEYS = ["task", "id", "sample"]

from peftarena_cli.memory import peak_rss_mib as _peak_rss_mib


# ---------------------------------------------------------------- the report (plain functions)
def identical_share(a, b) -> tuple[int, int]:
    """(identical, shared): greedy completions of two per-sample tables equal on the rows both hold,
    rows matched on (task, id, sample)."""
    m = a[KEYS + ["completion"]].merge(b[KEYS + ["completion"]], on=KEYS, suffixes=("_a", "_b"))
    return int((m["completion_a"] == m["completion_b"]).sum()), int(len(m))


def compare_sets(fp32: dict, bf16: dict, seed: int = 0) -> dict:
    """Per set in both: {"identical", "shared", "fp32", "bf16" (scores, points), "diff" (a
    :class:`~peftarena_cli.stats.PairedResult` of bf16 − fp32 in points), "within" (its interval inside
    ±RULE_POINTS)}. ``fp32`` / ``bf16``: {set: per-sample DataFrame}. Items must be the same
    (IncompatibleInputs otherwise: they are never aligned on a subset)."""
    from peftarena_cli import stats

    out = {}
    for s in SETS:
        if s not in fp32 or s not in bf16:
            continue
        same, shared = identical_share(fp32[s], bf16[s])
        ma, mb = stats.measure_of(bf16[s], s), stats.measure_of(fp32[s], s)
        r = stats.paired_difference(ma, mb, seed=seed, names=("bfloat16", "float32")).scaled(100.0)
        within = bool(math.isfinite(r.low) and r.low >= -RULE_POINTS and r.high <= RULE_POINTS)
        out[s] = {"identical": same, "shared": shared, "fp32": 100.0 * mb.value(), "bf16": 100.0 * ma.value(),
                  "diff": r, "within": within}
    return out


def speed_memory(runs: dict) -> dict:
    """{"tok_s": {dtype: tokens/s}, "speed_ratio": bf16/fp32, "rss": {dtype: MiB}, "rss_ratio": bf16/fp32}
    of the two workers' results ({dtype: worker dict})."""
    tok = {d: sum(v["tokens"] for v in r["sets"].values()) / max(sum(v["seconds"] for v in r["sets"].values()), 1e-12)
           for d, r in runs.items()}
    rss = {d: r["peak_rss_mib"] for d, r in runs.items()}
    return {"tok_s": tok, "speed_ratio": tok["bfloat16"] / tok["float32"], "rss": rss,
            "rss_ratio": rss["bfloat16"] / rss["float32"]}


def allowed(cmp: dict) -> bool:
    """The sweep rule: every set compared and every paired interval within ±RULE_POINTS."""
    return bool(cmp) and all(v["within"] for v in cmp.values())


def format_report(cmp: dict, perf: dict | None = None) -> list[str]:
    from peftarena_cli.report.uncertainty import fmt_paired

    lines = []
    if perf:
        t, m = perf["tok_s"], perf["rss"]
        lines.append(f"generated tokens/s: float32 {t['float32']:.1f}, bfloat16 {t['bfloat16']:.1f}; "
                     f"bf16/fp32 speed {perf['speed_ratio']:.2f}x")
        lines.append(f"peak RSS (VmHWM): float32 {m['float32']:.0f} MiB, bfloat16 {m['bfloat16']:.0f} MiB; "
                     f"bf16/fp32 {perf['rss_ratio']:.2f}")
    for s, v in cmp.items():
        share = v["identical"] / v["shared"] if v["shared"] else math.nan
        lines.append(f"{s}: identical greedy completions {v['identical']}/{v['shared']} ({share:.1%}); "
                     f"score fp32 {v['fp32']:.2f}, bf16 {v['bf16']:.2f}; bf16 − fp32 {fmt_paired(v['diff'])}; "
                     f"within ±{RULE_POINTS:g} point: {'yes' if v['within'] else 'no'}")
    lines.append(f"every paired difference's interval within ±{RULE_POINTS:g} point: "
                 f"{'yes: bfloat16 may be used in sweeps (SWEEP_EVAL_DTYPE=bfloat16)' if allowed(cmp) else 'no: sweeps stay in float32'}")
    return lines


# ---------------------------------------------------------------- the workers
def worker(model: str, dtype: str, target_limit: int, general_limit: str, device: str, out_dir: str,
           threads: int | None = None) -> dict:
    """Both evaluations in this process at ``dtype``; the per-sample tables go to ``out_dir``."""
    import torch

    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    if threads:
        torch.set_num_threads(threads)
    res = {"dtype": dtype, "sets": {}}
    for kind, limit in (("target", target_limit), ("general", general_limit)):
        cfg = EvalConfig(kind=kind, base=model, limit=limit, device=device, dtype=dtype,
                         **({"task": "arith"} if kind == "target" else {"suite": "builtin"}))
        r = run_eval(cfg)
        path = Path(out_dir) / f"{dtype}_{kind}.parquet"
        prov = r.provenance()
        write_table(r.per_sample, path, prov)
        run = r.runs[0]
        res["sets"][kind] = {"tokens": int(run.generated_tokens), "seconds": float(run.seconds), "file": str(path),
                             "provenance_dtype": prov.dtype, "load_seconds": float(r.load_seconds)}
    res["peak_rss_mib"] = _peak_rss_mib()
    res["threads"] = torch.get_num_threads()
    return res


def _run(a, dtype: str, out_dir: str) -> dict:
    print(f"evaluating in {dtype} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--worker", dtype, "--model", a.model, "--target-limit", str(a.target_limit),
           "--general-limit", a.general_limit, "--device", a.device, "--out", out_dir]
    cmd += ["--threads", str(a.threads)] if a.threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        sys.exit(f"the {dtype} evaluation failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a registry name or a model DIR")
    ap.add_argument("--target-limit", type=int, default=160, help="arith items (SWEEP_TARGET_LIMIT)")
    ap.add_argument("--general-limit", default="ifeval=40,bbh=40,facts=80", help="general --limit (SWEEP_GENERAL_LIMIT)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="intra-op threads of each worker (default: torch's)")
    ap.add_argument("--keep", help="keep the four per-sample tables in this folder (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures here (JSON)")
    ap.add_argument("--worker", choices=DTYPES, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.model, a.worker, a.target_limit, a.general_limit, a.device, a.out, a.threads)))
        return
    from peftarena_cli.artifacts.tables import read_table

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.keep or tmp
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        runs = {d: _run(a, d, out_dir) for d in DTYPES}
        tables = {d: {s: read_table(v["file"])[0] for s, v in r["sets"].items()} for d, r in runs.items()}
    for d, r in runs.items():
        rec = {s: v["provenance_dtype"] for s, v in r["sets"].items()}
        if set(rec.values()) != {d}:
            sys.exit(f"the {d} evaluation's provenance records dtype {rec}: --dtype did not reach the evaluation")
    cmp = compare_sets(tables["float32"], tables["bfloat16"])
    perf = speed_memory(runs)
    print(f"model {a.model}; target arith --limit {a.target_limit}; general --limit {a.general_limit}; "
          f"{runs['float32']['threads']} threads; load average at the end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (run it alone: timings of a shared CPU mean nothing)")
    for line in format_report(cmp, perf):
        print(line)
    if a.json:
        doc = {"perf": perf, "sets": {s: {k: (vars(v) if k == "diff" else v) for k, v in c.items()}
                                      for s, c in cmp.items()}, "allowed": allowed(cmp)}
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()

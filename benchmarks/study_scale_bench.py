"""csd, act-geom and spectrum at the study's widths: peak RSS and time, with and without the memory cap.

Synthetic models (benchmarks/study_shapes.py: random weights with Llama-3.2-3B's and Qwen2.5-7B's
layer widths, a LoRA r=16 on every linear module) are built locally. For one decoder layer of each
shape (``-m 'model.layers.0.*'``; the pass stops after that layer) the benchmark runs:

* csd and act-geom uncapped (a 1 TiB budget: every module in one group, one pass) and capped (the
  default budget, or ``--cap SIZE``; and for csd, whose statistics fit the default, the smallest
  budget the plan accepts, which forces the most groups; csd runs ``--form stats`` except the run
  labelled ``projected``, ``--form projected`` under that smallest budget). Before a run its plan is made in a
  separate process; a run whose estimate (RSS once the model is loaded + the plan's peak) exceeds
  90% of the memory available then is not run, and the estimate is reported instead (a finding);
* spectrum on the same layer, cold (base SVD computed and written to an empty cache directory) and
  warm (read back), with the cache's size, scaled to the full models' 28 layers.

Each run is its own subprocess, so its peak RSS (VmHWM) is its own. The straightforward approach
here is the uncapped single pass: the ratio printed is capped time / uncapped time (the cost of
the cap) and capped peak / uncapped peak (what it saves).

    flock -x /tmp/peftarena-cpu.lock .venv/bin/python benchmarks/study_scale_bench.py \\
        [--shapes llama3b,qwen7b] [--tools csd,act-geom,spectrum] [--prompts 32] [--max-length 32] \\
        [--layers 0] [--workdir /tmp/peftarena-study-shapes] [--threads 2]

``--layers all`` runs every layer of the synthetic model (``--model-layers``, default 2) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TiB = 1024 ** 4


def proc_status_bytes(key: str, pid="self") -> int:
    """A memory line of /proc/PID/status (``VmHWM``: peak RSS, ``VmRSS``: RSS now), in bytes; 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return proc_status_bytes("VmHWM")


def rss() -> int:
    return proc_status_bytes("VmRSS")


def cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def mem_total() -> int:
    return _meminfo("MemTotal:")


def mem_available() -> int:
    return _meminfo("MemAvailable:")


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def gib(n) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


# ------------------------------------------------------------------------------------------ workers


def _config(args, max_memory):
    from peftarena_cli.activations import ActGeomConfig, CsdConfig

    layer = "*" if args.layers == "all" else str(int(args.layers))
    mods = None if args.layers == "all" else [f"model.layers.{layer}.*"]
    if args.kinds:
        mods = [f"model.layers.{layer}.*.{k}" for k in args.kinds.split(",")]
    common = dict(base=args.model, adapter=args.adapter, modules=mods, n=args.prompts, max_length=args.max_length,
                  batch_size=args.batch_size, device="cpu", max_memory=max_memory)
    if args.tool == "csd":
        return CsdConfig(general="general", target="arith", form=args.form, **common)
    return ActGeomConfig(prompts=["arith"], accum_dtype=args.accum_dtype, **common)


def worker_plan(args) -> dict:
    """Load the model, make the plan (no collection): the estimate of a run."""
    from peftarena_cli.activations import run as core
    from peftarena_cli.activations.budget import BudgetTooSmall
    from peftarena_cli.activations.capture import linear_module_names
    from peftarena_cli.artifacts.keys import select_modules
    from peftarena_cli.artifacts.loading import load_model

    cfg = _config(args, None if args.budget == "default" else int(args.budget))
    model, tok, _ = load_model(cfg.base, device="cpu")
    loaded = rss()
    names = select_modules(linear_module_names(model), cfg.modules)
    sets = ([cfg.general, cfg.target] if args.tool == "csd" else cfg.prompts)
    toks = [core.prepare_prompts(s, tok, n=cfg.n, seed=0, text_key=None, chat=False, shard=None,
                                 max_length=cfg.max_length)[2] for s in sets]
    try:
        if args.tool == "csd":
            plan = core.csd_plan(model, names, toks, cfg, "cpu", with_adapter=True)
        else:
            plan = core.act_geom_plan(model, names, toks, cfg, "cpu")
    except BudgetTooSmall as e:
        return {"rss_loaded": loaded, "too_small": True, "needed": e.needed, "message": str(e)}
    return {"rss_loaded": loaded, "too_small": False, "groups": plan.passes, "peak": plan.peak, "budget": plan.budget,
            "modules": len(names), "plan": plan.describe()}


def worker_run(args) -> dict:
    from peftarena_cli.activations import run_act_geom, run_csd

    cfg = _config(args, None if args.budget == "default" else int(args.budget))
    seen = {}

    def log(msg):
        if "memory plan" in msg or "projected form" in msg:
            seen["rss_at_plan"] = rss()
            seen["plan"] = msg

    t0, c0 = time.perf_counter(), cpu_s()
    res = (run_csd if args.tool == "csd" else run_act_geom)(cfg, log=log)
    dt, dc = time.perf_counter() - t0, cpu_s() - c0
    df = res.table
    check = float(df["csd_abs_general"].sum()) if args.tool == "csd" else float(df["cka"].sum())
    plan = res.plan  # None for csd's projected form (one pass, r × r per module)
    return {"wall_s": dt, "cpu_s": dc, "peak_rss": peak_rss(), "rss_at_plan": seen.get("rss_at_plan", 0),
            "groups": plan.passes if plan else 1, "est_peak": plan.peak if plan else 0,
            "budget": plan.budget if plan else int(cfg.max_memory or 0), "rows": len(df), "check": check,
            "plan": seen.get("plan", "")}


def worker_spectrum(args) -> dict:
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    layers = None if args.layers == "all" else [int(args.layers)]
    cache = BaseSvdCache(root=args.cache_dir)
    t0, c0 = time.perf_counter(), cpu_s()
    res = compute_spectrum(args.model, args.adapter, layers=layers, device="cpu", cache=cache)
    dt, dc = time.perf_counter() - t0, cpu_s() - c0
    size = sum(p.stat().st_size for p in Path(args.cache_dir).glob("*.safetensors"))
    return {"wall_s": dt, "cpu_s": dc, "peak_rss": peak_rss(), "modules": res.stats["modules"],
            "hits": cache.hits, "misses": cache.misses, "cache_bytes": size}


THREADS: int | None = None
TIMEOUT: float | None = None


def run_worker(extra: list[str]) -> dict:
    """One worker in its own process; past ``--worker-timeout`` it is stopped and its peak RSS so far
    reported (``timed_out``)."""
    cmd = [sys.executable, __file__, *extra]
    env = dict(os.environ)
    if THREADS:
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    t0 = time.perf_counter()
    hwm = 0
    while p.poll() is None:
        try:
            hwm = proc_status_bytes("VmHWM", p.pid) or hwm
        except OSError:
            pass
        if TIMEOUT and time.perf_counter() - t0 > TIMEOUT:
            p.kill()
            p.wait()
            return {"failed": True, "timed_out": True, "seconds": time.perf_counter() - t0, "peak_rss": hwm}
        time.sleep(0.5)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.stderr.write(err[-3000:])
        return {"failed": True, "stderr": err[-500:]}
    return json.loads(out.strip().splitlines()[-1])


def _failed(tool: str, label: str, r: dict) -> str:
    if r.get("timed_out"):
        return (f"{tool:9s} {label:13s}: stopped after {r['seconds']:.0f} s (--worker-timeout), peak RSS so far "
                f"{gib(r['peak_rss'])}")
    return f"{tool:9s} {label:13s}: failed"


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["plan", "run", "spectrum"])
    ap.add_argument("--tool", choices=["csd", "act-geom"])
    ap.add_argument("--model")
    ap.add_argument("--adapter")
    ap.add_argument("--budget", default="default")
    ap.add_argument("--cache-dir")
    ap.add_argument("--shapes", default="llama3b,qwen7b")
    ap.add_argument("--tools", default="csd,act-geom,spectrum")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--accum-dtype", default="float64")
    ap.add_argument("--layers", default="0", help="a layer number, or all")
    ap.add_argument("--model-layers", type=int, default=2)
    ap.add_argument("--kinds", default=None, help="(worker) only these module kinds")
    ap.add_argument("--form", default="stats", help="(worker) csd --form")
    ap.add_argument("--cap", default=None, help="the capped runs' budget (default: the machine's default)")
    ap.add_argument("--no-uncapped", action="store_true", help="only the capped runs")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/peftarena-study-shapes"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--labels", default=None, help="only these runs (comma-separated: uncapped, capped, tightest cap, "
                                                   "projected)")
    ap.add_argument("--worker-timeout", type=float, default=None, help="stop a run after this many seconds")
    args = ap.parse_args()
    global THREADS, TIMEOUT
    THREADS = args.threads
    TIMEOUT = args.worker_timeout
    if args.worker:
        fn = {"plan": worker_plan, "run": worker_run, "spectrum": worker_spectrum}[args.worker]
        print(json.dumps(fn(args)))
        return
    from peftarena_cli.activations.budget import parse_size
    from study_shapes import SHAPES, build, module_widths

    total = mem_total()
    print(f"machine: {gib(total)} RAM, {os.cpu_count()} CPUs; {args.prompts} prompts per set, max length "
          f"{args.max_length}, batch {args.batch_size}, layers {args.layers}, accumulation {args.accum_dtype}",
          flush=True)
    for shape in args.shapes.split(","):
        t0 = time.perf_counter()
        model, adapter = build(shape, args.workdir / f"{shape}-{args.model_layers}l", layers=args.model_layers)
        print(f"\n== {shape} ({SHAPES[shape]['params']} shape, {args.model_layers} layers built in "
              f"{time.perf_counter() - t0:.0f} s): {model}", flush=True)
        base = ["--model", str(model), "--adapter", str(adapter), "--prompts", str(args.prompts),
                "--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--layers", args.layers,
                "--accum-dtype", args.accum_dtype]
        for tool in args.tools.split(","):
            if tool == "spectrum":
                spectrum(base, args, shape)
                continue
            w = ["--tool", tool, *base]
            budgets = [] if args.no_uncapped else [("uncapped", str(TiB))]
            budgets.append(("capped", str(parse_size(args.cap)) if args.cap else "default"))
            if tool == "csd":
                p = run_worker(["--worker", "plan", "--budget", "1", *w])
                if p.get("too_small"):
                    budgets.append(("tightest cap", str(p["needed"])))
                    budgets.append(("projected", str(p["needed"])))
            res = {}
            if args.labels:
                budgets = [(lab, b) for lab, b in budgets if lab in args.labels.split(",")]
            for label, b in budgets:
                p = run_worker(["--worker", "plan", "--budget", b, *w])
                if p.get("failed"):
                    print(f"{tool:9s} {label:13s}: plan failed", flush=True)
                    continue
                if p["too_small"]:
                    print(f"{tool:9s} {label:13s}: refused before any work: {p['message']}", flush=True)
                    # the modules that fit alone: run those (a finding: the others need more than this machine)
                    fit = [k for k, (d_out, d_in) in module_widths(shape).items()
                           if run_worker(["--worker", "plan", "--budget", b, "--kinds", k, *w]).get("too_small") is False]
                    if not fit or label != "capped":
                        continue
                    label = f"capped, {'/'.join(k[:-5] for k in fit)}"
                    w = [*w, "--kinds", ",".join(fit)]
                    p = run_worker(["--worker", "plan", "--budget", b, *w])
                est = p["rss_loaded"] + p["peak"]
                avail = mem_available()
                if est > 0.9 * avail:
                    print(f"{tool:9s} {label:13s}: NOT RUN, estimated peak {gib(est)} (model {gib(p['rss_loaded'])} "
                          f"+ plan {gib(p['peak'])}) > 90% of the available {gib(avail)} (of {gib(total)}); "
                          f"{p['plan']}", flush=True)
                    continue
                r = run_worker(["--worker", "run", "--budget", b, *w, *(["--form", "projected"] if label == "projected" else [])])
                if r.get("failed"):
                    print(_failed(tool, label, r), flush=True)
                    continue
                res[label] = r
                print(f"{tool:9s} {label:13s}: {r['groups']} group(s), {r['rows']} rows, wall {r['wall_s']:.1f} s, "
                      f"CPU {r['cpu_s']:.1f} s, peak RSS {gib(r['peak_rss'])} (RSS at plan {gib(r['rss_at_plan'])} + "
                      f"estimated {gib(r['est_peak'])} = {gib(r['rss_at_plan'] + r['est_peak'])}), budget {gib(r['budget'])}; "
                      f"check {r['check']:.12g}", flush=True)
            if "uncapped" in res:
                u = res["uncapped"]
                for label, r in res.items():
                    if label != "uncapped":
                        same = ("identical" if r["check"] == u["check"] else
                                f"rel. difference {abs(r['check'] - u['check']) / abs(u['check']):.1e}")
                        print(f"{tool:9s} {label} / uncapped: time {r['wall_s'] / u['wall_s']:.2f}x, peak RSS "
                              f"{r['peak_rss'] / u['peak_rss']:.2f}x; summed column {same}", flush=True)


def spectrum(base: list, args, shape: str) -> None:
    import tempfile

    from study_shapes import SHAPES

    with tempfile.TemporaryDirectory(dir=args.workdir) as cache:
        out = {}
        for label in ("cold", "warm"):
            r = run_worker(["--worker", "spectrum", "--cache-dir", cache, *base])
            if r.get("failed"):
                print(_failed("spectrum", label, r), flush=True)
                return
            out[label] = r
            print(f"spectrum  {label:13s}: {r['modules']} modules, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
                  f"peak RSS {gib(r['peak_rss'])}; cache {r['hits']} hits / {r['misses']} misses, "
                  f"{r['cache_bytes'] / 1024 ** 2:.0f} MiB on disk", flush=True)
        per_layer = out["cold"]["cache_bytes"] / (1 if args.layers != "all" else args.model_layers)
        full = SHAPES[shape]["full_layers"]
        print(f"spectrum  base-SVD cache: {per_layer / 1024 ** 2:.0f} MiB per layer -> {gib(per_layer * full)} for the "
              f"full {full}-layer model; cold {out['cold']['wall_s']:.1f} s/layer -> ~{out['cold']['wall_s'] * full / 60:.0f} min "
              f"for the full model on this machine, warm {out['warm']['wall_s'] * full / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()

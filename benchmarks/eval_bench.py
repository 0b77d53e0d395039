"""Benchmark: the evaluation engine vs batch-1 `model.generate`, and against the compute bound.

    .venv/bin/python benchmarks/eval_bench.py [--model smollm2-135m] [--n 64] [--hf-n 8]
    .venv/bin/python benchmarks/eval_bench.py --busy [--n 16]      # a deliberately busy machine
    .venv/bin/python benchmarks/eval_bench.py --general ifeval=96,bbh=64,facts=128   # static vs continuous
    .venv/bin/python benchmarks/eval_bench.py --compare --n 128                       # the same on arith

Each approach runs in its own subprocess (so peak memory is its own), one after the other:

* engine: `peftarena_cli.evaluation.engine.generate` at its defaults (greedy, length-sorted
  left-padded batches of 64 on CPU, finished rows dropped, pre-allocated KV cache, threads from the
  free cores) on the first ``--n`` prompts of the built-in arithmetic test set, max_new_tokens 96
  (the arith default);
* straightforward: `model.generate(max_new_tokens=96, do_sample=False)` one prompt at a time, on
  the first ``--hf-n`` of the same prompts (batch-1 generation is slow; its rate does not depend on
  how many prompts it runs).

**The compute bound.** The engine's worker first measures fp32 matmul throughput on this CPU with
the engine's thread count: the best of 3 one-second runs of a 1024x1024x1024 `torch.mm` (2·n³ FLOP
each), and of the decode-shaped product (64 x 576) @ (576 x 1536). The bound in tokens/s is that
GFLOP/s over 2 x P, P = the parameters a generated token multiplies (every Linear weight, the
lm_head included; embeddings are a lookup). Reported as the fraction of that bound reached by
the engine's generated tokens/s (the issue's measure). Prefill also costs compute that this
measure does not credit (2 x P' FLOP per prompt token, P' = P without the lm_head, which the
prefill skips), so the script also prints the engine's achieved GFLOP/s over all the tokens it
processed and its fraction of the measured matmul rate.

**The Linear floor.** The same worker times the decode step's matrix products alone: every
``nn.Linear`` of the model in order (the lm_head included), on 64 rows, with the model's own weights
(which then stream from memory as in a real step). That is the most a decode loop at 64 rows could
reach with these fp32 kernels if attention, norms and Python cost nothing; the script prints it as
tok/s, as a fraction of the bound, and the engine's fraction of it.

**The roofline** (the default run; ``--roofline-rows``, ``--roofline-positions``). A decode step does
not only multiply weights: at ``rows`` rows and ``positions`` cached positions it also reads the KV
cache, whose bytes grow with the positions while the weights' stay fixed. Per step
(:func:`roofline_step`, from the model config, :func:`decode_shape`):

* FLOPs = 2·P·rows (every Linear, the lm_head included) + 4·rows·positions·layers·heads·head_dim
  (the attention's scores QKᵀ and the weighted sum of V, 2 FLOP per multiply-add each);
* bytes = P·b (the weights, read once per step) + 2·layers·kv_heads·head_dim·positions·rows·b
  (keys and values read), b the bytes of the model dtype (4 in float32, 2 in bfloat16);
  activations, norms and the cache write of the new position are left out (small beside these);
* bound = max(FLOPs / peak FLOP/s, bytes / bandwidth), with the measured matmul rate above as the peak
  and a measured memory bandwidth (:func:`memory_bandwidth`: the best of 3 sums and of 3 copies of a
  256 MiB float32 tensor, bytes read or read+written per second; the higher of the two).

The worker measures the engine's decode step at each cache length (:func:`decode_steps`: the
engine's pre-allocated KV cache, one prompt of that length prefilled and repeated to ``rows`` rows,
as the engine shares a prefix, then the median of 4 timed one-token forwards after a warm-up one)
and prints, per length, FLOPs, bytes, the compute and memory times, which one bounds the step, the
measured step and the engine's fraction of the bound.

``--general LIMIT`` / ``--compare`` run the engine with static batches (``continuous=False``, the
engine before continuous batching) and with continuous batching, on the built-in general suite's
parts at that ``--limit`` (each part with its own max_new_tokens and stops, as eval-general runs
them) or on arith, and print the speed-up and how many greedy completions are identical.

``--busy`` measures the shared-CPU behaviour: one background ``python -c 'while True: pass'`` per
``--busy-procs`` runs beside the engine, which runs with its thread governor (the default) and
with a fixed thread count (``adapt_threads=False``, the old behaviour), on a quiet and on the busy
machine. It prints tok/s for each and the slowdowns.

It prints generated tokens/s, the ratio, peak RSS (VmHWM) of each process, and how many of the
shared prompts got identical greedy completions. Run it alone on the machine (under the exclusive
lock): timings of a shared CPU mean nothing. Where the machine cannot be had alone,
``--threads 1 --clock cpu`` times everything (generation and the matmul rate alike) in this
process's CPU seconds instead of wall seconds: per-core rates that other processes disturb much
less (they still share caches and memory bandwidth), so the ratio and the fraction of the bound
stay meaningful; tok/s then means tokens per CPU-second of one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from peftarena_cli.memory import peak_rss_mib as _peak_rss_mib


def _prompts(tok, n):
    from peftarena_cli.tasks.target_tasks import load_target_task

    task = load_target_task("arith", limit=n, seed=0)
    return [task.render(tok, it) for it in task.items]


def _general_jobs(tok, limit):
    """(prompts, max_new_tokens, stop) of each part of the built-in general suite at ``limit``
    (a --limit string, e.g. "ifeval=280,bbh=200,facts=357"), as eval-general runs them."""
    from peftarena_cli.evaluation.api import load_general_tasks
    from peftarena_cli.tasks.limits import parse_limit

    return [([t.render(tok, it) for it in t.items], int(t.max_new_tokens), t.stop)
            for t in load_general_tasks("builtin", parse_limit(limit))]


CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU seconds, all threads)


def matmul_gflops(seconds: float = 1.0) -> dict:
    """Best fp32 GFLOP/s of torch.mm at two shapes (see the module docstring), current thread count."""
    import torch

    clock = CLOCK
    out = {}
    for name, (m, k, n) in {"square1024": (1024, 1024, 1024), "decode64x576x1536": (64, 576, 1536)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best = 0.0
        for _ in range(3):
            t, r = clock(), 0
            while clock() - t < seconds:
                a @ b
                r += 1
            best = max(best, 2.0 * m * k * n * r / (clock() - t) / 1e9)
        out[name] = best
    return out


def linear_floor(model, rows: int = 64, seconds: float = 1.0) -> dict:
    """The decode step's matrix products alone: every nn.Linear of the model (the lm_head included),
    in model order, on ``rows`` input rows, with the model's own weights (so they stream from memory
    as in a real step); best of 3 runs of at least ``seconds``. Returns the step time, its GFLOP/s
    and the tokens/s a decode loop that did nothing else would reach (``rows`` per step)."""
    import torch

    lin = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in lin}
    flops = sum(2.0 * rows * w.shape[0] * w.shape[1] for w in lin)
    clock = CLOCK
    with torch.inference_mode():
        for w in lin:
            torch.nn.functional.linear(xs[w.shape[1]], w)
        best = float("inf")
        for _ in range(3):
            t, r = clock(), 0
            while clock() - t < seconds:
                for w in lin:
                    torch.nn.functional.linear(xs[w.shape[1]], w)
                r += 1
            best = min(best, (clock() - t) / r)
    return {"rows": rows, "step_s": best, "gflops": flops / best / 1e9, "tok_s": rows / best}


def memory_bandwidth(mib: int = 256) -> dict:
    """Measured memory bandwidth in GB/s at the current thread count: the best of 3 ``sum`` of a
    ``mib`` MiB float32 tensor (bytes read) and the best of 3 ``copy_`` into another (read + written)."""
    import torch

    n = mib * 2**20 // 4
    x = torch.ones(n)
    y = torch.empty(n)
    clock = CLOCK
    out = {}
    for name, fn, moved in (("sum", lambda: x.sum(), 4 * n), ("copy", lambda: y.copy_(x), 8 * n)):
        fn()
        best = float("inf")
        for _ in range(3):
            t = clock()
            fn()
            best = min(best, clock() - t)
        out[name] = moved / best / 1e9
    out["best"] = max(out["sum"], out["copy"])
    return out


def decode_shape(config) -> dict:
    """The sizes of a decoder's config (a transformers config or a dict) the roofline needs:
    layers, heads, kv_heads, head_dim, hidden, intermediate, vocab."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    return {"layers": int(get("num_hidden_layers")), "heads": heads,
            "kv_heads": int(get("num_key_value_heads") or heads),
            "head_dim": int(get("head_dim") or hidden // heads), "hidden": hidden,
            "intermediate": int(get("intermediate_size")), "vocab": int(get("vocab_size"))}


def config_matmul_params(shape: dict) -> int:
    """P of a Llama-shaped decoder from its sizes: per layer q and o (hidden x heads·head_dim each),
    k and v (hidden x kv_heads·head_dim each), the gated MLP's gate, up and down (hidden x
    intermediate each); plus the lm_head (hidden x vocab). Biases are left out (Llama has none)."""
    h, a, kv = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    per_layer = 2 * h * a + 2 * h * kv + 3 * h * shape["intermediate"]
    return shape["layers"] * per_layer + h * shape["vocab"]


def roofline_step(shape: dict, params: int, rows: int, positions: int, bytes_per_value: int,
                  peak_gflops: float, bandwidth_gbs: float, measured_s: float | None = None) -> dict:
    """The roofline of one decode step (the module docstring): FLOPs, bytes, the compute and memory
    times, the bound (their max), which one binds and, given the measured step, the engine's fraction
    of the bound (bound / measured)."""
    L, H, KV, D = shape["layers"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    flops = 2.0 * params * rows + 4.0 * rows * positions * L * H * D
    weight_bytes = float(params) * bytes_per_value
    kv_bytes = 2.0 * L * KV * D * positions * rows * bytes_per_value
    t_c = flops / (peak_gflops * 1e9)
    t_m = (weight_bytes + kv_bytes) / (bandwidth_gbs * 1e9)
    out = {"rows": rows, "positions": positions, "flops": flops, "weight_bytes": weight_bytes,
           "kv_bytes": kv_bytes, "bytes": weight_bytes + kv_bytes, "compute_s": t_c, "memory_s": t_m,
           "bound_s": max(t_c, t_m), "bound_by": "compute" if t_c >= t_m else "memory"}
    if measured_s is not None:
        out["measured_s"] = measured_s
        out["fraction"] = out["bound_s"] / measured_s
    return out


def decode_steps(model, tok, rows: int, positions: list[int], steps: int = 4) -> dict:
    """{positions: median seconds of one decode step} at ``rows`` rows, through the engine's own
    pieces (its pre-allocated KV cache and forward): one prompt of ``positions`` tokens prefilled and
    repeated to ``rows`` rows, one warm-up step, then ``steps`` timed steps (the cache grows by one
    position a step; the table reports the mean cached length of the timed steps)."""
    import statistics

    import torch

    from peftarena_cli.evaluation.engine import _cache_kw, _forward, _new_cache

    dev = next(model.parameters()).device
    ck = _cache_kw(model)
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        for L in positions:
            cache = _new_cache(model, L + steps + 1)
            ids = torch.randint(0, vocab, (1, L), generator=gen).to(dev)
            _forward(model, input_ids=ids, position_ids=torch.arange(L, device=dev)[None], use_cache=True, **{ck: cache})
            cache.batch_repeat_interleave(rows)
            nxt = torch.randint(0, vocab, (rows, 1), generator=gen).to(dev)
            mask = torch.ones((rows, L + steps + 1), dtype=torch.long, device=dev)
            times = []
            for j in range(steps + 1):
                pos = L + j
                t = CLOCK()
                _forward(model, input_ids=nxt, attention_mask=mask[:, :pos + 1],
                         position_ids=torch.full((rows, 1), pos, device=dev), use_cache=True, **{ck: cache})
                if j:
                    times.append(CLOCK() - t)
            out[L] = {"step_s": statistics.median(times), "mean_positions": L + 1 + (steps + 1) / 2.0}
    return out


def matmul_params(model) -> tuple[int, int]:
    """(P, P without the lm_head): weights of every nn.Linear a token goes through."""
    import torch

    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    total = sum(m.weight.numel() for m in lin)
    return total, total - (head.weight.numel() if head is not None else 0)


def worker(mode: str, model_spec: str, n: int, device: str, adapt: bool = True, gflops: bool = False,
           threads: int | None = None, general: str | None = None, roofline: tuple | None = None) -> dict:
    import torch

    from peftarena_cli.artifacts.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    model, tok, _ = load_model(model_spec, device=device)
    prompts = _prompts(tok, n)
    rss_loaded = _peak_rss_mib()
    mm = matmul_gflops() if gflops else {}
    floor = linear_floor(model) if gflops else {}
    extra = {}
    t = CLOCK()
    if mode.startswith("engine"):
        from peftarena_cli.evaluation.engine import generate

        # engine: continuous batching (the default); engine-static: the engine before it (static batches)
        continuous = mode == "engine"
        jobs = _general_jobs(tok, general) if general else [(prompts, 96, ())]
        texts, tokens, prompt_tokens = [], 0, 0
        for ps, budget, stop in jobs:
            g = generate(model, tok, ps, max_new_tokens=budget, stop=stop, adapt_threads=adapt, continuous=continuous)
            texts += [x[0] for x in g.texts]
            tokens, prompt_tokens = tokens + g.generated_tokens, prompt_tokens + g.prompt_tokens
            extra = g.extra
        if general:
            prompts = [p for ps, _, _ in jobs for p in ps]
    else:
        texts, tokens, prompt_tokens = [], 0, 0
        with torch.inference_mode():
            for p in prompts:
                ids = tok(p, return_tensors="pt", add_special_tokens=False).to(model.device)
                out = model.generate(**ids, max_new_tokens=96, do_sample=False, pad_token_id=tok.pad_token_id)
                new = out[0, ids["input_ids"].shape[1]:]
                tokens += int(new.shape[0])
                prompt_tokens += int(ids["input_ids"].shape[1])
                texts.append(tok.decode(new, skip_special_tokens=True))
    secs = CLOCK() - t
    p_all, p_prefill = matmul_params(model)
    roof = {}
    if roofline:  # (rows, [positions]): after the timed run, so it does not disturb it
        rows, lengths = roofline
        roof = {"rows": rows, "bandwidth": memory_bandwidth(), "shape": decode_shape(model.config),
                "bytes_per_value": next(model.parameters()).element_size(),
                "steps": {str(k): v for k, v in decode_steps(model, tok, rows, lengths).items()}}
    return {"mode": mode, "prompts": len(prompts), "tokens": tokens, "prompt_tokens": prompt_tokens, "seconds": secs,
            "tok_s": tokens / secs, "peak_rss_mib": _peak_rss_mib(), "rss_after_load_mib": rss_loaded, "texts": texts,
            "threads": torch.get_num_threads(), "params": p_all, "params_prefill": p_prefill, "matmul_gflops": mm,
            "linear_floor": floor, "roofline": roof,
            "extra": extra, "adapt": adapt}


def _run(mode, a, n, adapt=True, gflops=False, roofline=False) -> dict:
    print(f"running {mode} on {n} prompts (adaptive threads {adapt}) ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--worker", mode, "--model", a.model, "--n", str(n), "--device", a.device]
    cmd += [] if adapt else ["--fixed-threads"]
    cmd += ["--gflops"] if gflops else []
    cmd += ["--clock", a.clock] + (["--threads", str(a.threads)] if a.threads else [])
    cmd += ["--general", a.general] if a.general and mode.startswith("engine") else []
    cmd += ["--roofline-rows", str(a.roofline_rows), "--roofline-positions", a.roofline_positions,
            "--roofline"] if roofline else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(r, label=None) -> str:
    return (f"{label or r['mode']:22s} prompts={r['prompts']:4d} tokens={r['tokens']:6d} time={r['seconds']:7.1f}s "
            f"tok/s={r['tok_s']:7.1f} peak RSS={r['peak_rss_mib']:.0f} MiB (after load {r['rss_after_load_mib']:.0f} MiB)")


def busy(a) -> None:
    quiet_on = _run("engine", a, a.n, adapt=True)
    quiet_off = _run("engine", a, a.n, adapt=False)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy_procs)]
    try:
        time.sleep(1.0)
        busy_on = _run("engine", a, a.n, adapt=True)
        busy_off = _run("engine", a, a.n, adapt=False)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{a.busy_procs} busy-loop process(es) during the busy runs")
    for r, lab in ((quiet_on, "quiet, governor"), (quiet_off, "quiet, fixed threads"),
                   (busy_on, "busy, governor"), (busy_off, "busy, fixed threads")):
        print(_line(r, lab) + f" threads used {r['extra'].get('threads', [r['threads']])}")
    print(f"slowdown on the busy machine: governor {quiet_on['tok_s'] / busy_on['tok_s']:.1f}x, "
          f"fixed threads {quiet_off['tok_s'] / busy_off['tok_s']:.1f}x; busy governor vs busy fixed "
          f"{busy_on['tok_s'] / busy_off['tok_s']:.1f}x")
    same = sum(x == y for x, y in zip(busy_on["texts"], quiet_on["texts"]))
    print(f"identical greedy completions busy vs quiet: {same}/{len(quiet_on['texts'])}")


def engines(a) -> None:
    """The engine (continuous batching) against the previous one (static batches), on arith or the
    general suite's parts, one after the other."""
    runs = [_run(m, a, a.n, gflops=(m == "engine")) for m in ("engine-static", "engine")]
    work = f"built-in general suite, --limit {a.general}" if a.general else f"arith, {a.n} prompts"
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; workload: {work}")
    labels = {"engine-static": "static batches (before)", "engine": "continuous batching"}
    for r in runs:
        print(_line(r, labels[r["mode"]]))
    base = runs[0]
    for r in runs[1:]:
        same = sum(x == y for x, y in zip(r["texts"], base["texts"]))
        print(f"{labels[r['mode']]}: {base['seconds'] / r['seconds']:.2f}x the previous engine's speed (wall time); "
              f"identical greedy completions {same}/{len(base['texts'])}")
    e = runs[-1]
    peak = max(e["matmul_gflops"].values())
    bound = peak * 1e9 / (2.0 * e["params"])
    print(f"compute bound {bound:.0f} tok/s ({peak:.1f} GFLOP/s); engine {e['tok_s']:.1f} tok/s = {e['tok_s'] / bound:.0%}; "
          f"before {base['tok_s']:.1f} tok/s = {base['tok_s'] / bound:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=64, help="prompts for the engine")
    ap.add_argument("--hf-n", type=int, default=8, help="prompts for batch-1 generate (the first of the same set)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--busy", action="store_true", help="measure beside busy-loop processes (module docstring)")
    ap.add_argument("--busy-procs", type=int, default=1)
    ap.add_argument("--threads", type=int, help="intra-op threads of each worker (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: time in CPU seconds (module docstring)")
    ap.add_argument("--texts-out", help="also write the engine's completions here (JSON list)")
    ap.add_argument("--general", metavar="LIMIT",
                    help="the engines on the built-in general suite at this --limit (e.g. "
                         "ifeval=280,bbh=200,facts=357) instead of arith; compares the engine with the previous one")
    ap.add_argument("--compare", action="store_true",
                    help="on arith: the engine against the previous one (static, SDPA) instead of batch-1 generate")
    ap.add_argument("--worker", choices=["engine", "engine-static", "hf1"], help=argparse.SUPPRESS)
    ap.add_argument("--fixed-threads", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--roofline-rows", type=int, default=64, help="rows of the roofline's decode steps")
    ap.add_argument("--roofline-positions", default="150,300,600",
                    help="cached positions at which the roofline times a decode step (comma list)")
    ap.add_argument("--gflops", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--roofline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.n, a.device, adapt=not a.fixed_threads, gflops=a.gflops,
                                threads=a.threads, general=a.general,
                                roofline=(a.roofline_rows, _lengths(a.roofline_positions)) if a.roofline else None)))
        return
    if a.general or a.compare:
        engines(a)
        return
    if a.busy:
        busy(a)
        return
    _lengths(a.roofline_positions)
    e = _run("engine", a, a.n, gflops=True, roofline=True)
    if a.texts_out:
        with open(a.texts_out, "w") as f:
            json.dump(e["texts"], f)
    h = _run("hf1", a, a.hf_n)
    same = sum(x == y for x, y in zip(e["texts"], h["texts"]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (run it alone: timings of a shared CPU mean nothing)"
          + ("; times are CPU seconds of this process (--clock cpu)" if a.clock == "cpu" else ""))
    for r in (e, h):
        print(_line(r))
    print(f"ratio engine/batch-1 tokens/s: {e['tok_s'] / h['tok_s']:.1f}x")
    mm = e["matmul_gflops"]
    peak = max(mm.values())
    p = e["params"]
    bound = peak * 1e9 / (2.0 * p)
    print("fp32 matmul, best of 3 x 1 s, " + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in mm.items())
          + f" ({e['threads']} threads)")
    print(f"compute bound: {peak:.1f} GFLOP/s / (2 x {p / 1e6:.1f}M parameters per token) = {bound:.0f} tok/s; "
          f"engine {e['tok_s']:.1f} tok/s = {e['tok_s'] / bound:.0%} of the bound")
    flops = 2.0 * p * e["tokens"] + 2.0 * e["params_prefill"] * e["prompt_tokens"]
    print(f"counting the prefill too ({e['prompt_tokens']} prompt tokens at 2 x {e['params_prefill'] / 1e6:.1f}M FLOP): "
          f"{flops / e['seconds'] / 1e9:.1f} GFLOP/s achieved = {flops / e['seconds'] / 1e9 / peak:.0%} of the matmul rate; "
          f"the bound for this workload is {e['tokens'] / (flops / (peak * 1e9)):.0f} generated tok/s")
    fl = e["linear_floor"]
    print(f"the Linear layers alone ({fl['rows']} rows, the model's weights in order, lm_head included): "
          f"{fl['step_s'] * 1e3:.1f} ms per step = {fl['gflops']:.1f} GFLOP/s = {fl['gflops'] / peak:.0%} of the matmul rate; "
          f"a loop doing only them would reach {fl['tok_s']:.0f} tok/s = {fl['tok_s'] / bound:.0%} of the bound; "
          f"the engine reaches {e['tok_s'] / fl['tok_s']:.0%} of that")
    print(f"identical greedy completions on the {len(h['texts'])} shared prompts: {same}/{len(h['texts'])}")
    for line in roofline_lines(e, peak):
        print(line)


def _lengths(text: str) -> list[int]:
    try:
        v = [int(x) for x in str(text).split(",")]
    except ValueError:
        v = []
    if not v or min(v) < 1:
        sys.exit(f"--roofline-positions {text!r}: expected positive integers such as 150,300,600")
    return v


def roofline_lines(e: dict, peak_gflops: float) -> list[str]:
    """The roofline table of an engine worker's result (module docstring)."""
    rf = e.get("roofline") or {}
    if not rf:
        return []
    bw = rf["bandwidth"]
    lines = [f"roofline of a decode step at {rf['rows']} rows ({rf['bytes_per_value']}-byte values; peak "
             f"{peak_gflops:.1f} GFLOP/s measured above; memory bandwidth {bw['best']:.1f} GB/s, best of 3 "
             f"sums {bw['sum']:.1f} / copies {bw['copy']:.1f} GB/s of 256 MiB):",
             f"{'positions':>9s} {'GFLOP':>8s} {'MB':>8s} {'(KV MB)':>8s} {'compute ms':>10s} {'memory ms':>9s} "
             f"{'bound by':>8s} {'measured ms':>11s} {'engine/bound':>12s}"]
    for _, st in rf["steps"].items():
        r = roofline_step(rf["shape"], e["params"], rf["rows"], st["mean_positions"], rf["bytes_per_value"],
                          peak_gflops, bw["best"], st["step_s"])
        lines.append(f"{st['mean_positions']:9.1f} {r['flops'] / 1e9:8.2f} {r['bytes'] / 1e6:8.1f} "
                     f"{r['kv_bytes'] / 1e6:8.1f} {r['compute_s'] * 1e3:10.2f} {r['memory_s'] * 1e3:9.2f} "
                     f"{r['bound_by']:>8s} {r['measured_s'] * 1e3:11.2f} {r['fraction']:12.0%}")
    return lines


if __name__ == "__main__":
    main()

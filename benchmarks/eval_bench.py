"""Benchmark: the evaluation engine vs batch-1 `model.generate` on the same arithmetic prompts.

    .venv/bin/python benchmarks/eval_bench.py [--model smollm2-135m] [--n 64] [--hf-n 8]

Each approach runs in its own subprocess (so peak memory is its own), one after the other:

* engine: `peftarena_cli.evaluation.engine.generate` at its defaults (greedy, length-sorted
  left-padded batches of 64 on CPU, finished rows dropped) on the first ``--n`` prompts of the
  built-in arithmetic test set, max_new_tokens 96 (the arith default);
* straightforward: `model.generate(max_new_tokens=96, do_sample=False)` one prompt at a time, on
  the first ``--hf-n`` of the same prompts (batch-1 generation is slow; its rate does not depend on
  how many prompts it runs).

It prints generated tokens/s for both, the ratio, peak RSS (VmHWM) of each process, and how many
of the shared prompts got identical greedy completions. The CPUs are shared with other users, so
timings are noisy: rerun when a number looks off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _prompts(tok, n):
    from peftarena_cli.tasks.target_tasks import load_target_task

    task = load_target_task("arith", limit=n, seed=0)
    return [task.render(tok, it) for it in task.items]


def worker(mode: str, model_spec: str, n: int, device: str) -> dict:
    import torch

    from peftarena_cli.artifacts.loading import load_model

    model, tok, _ = load_model(model_spec, device=device)
    prompts = _prompts(tok, n)
    rss_loaded = _peak_rss_mib()
    t = time.perf_counter()
    if mode == "engine":
        from peftarena_cli.evaluation.engine import generate

        g = generate(model, tok, prompts, max_new_tokens=96)
        texts, tokens = [x[0] for x in g.texts], g.generated_tokens
    else:
        texts, tokens = [], 0
        with torch.inference_mode():
            for p in prompts:
                ids = tok(p, return_tensors="pt", add_special_tokens=False).to(model.device)
                out = model.generate(**ids, max_new_tokens=96, do_sample=False, pad_token_id=tok.pad_token_id)
                new = out[0, ids["input_ids"].shape[1]:]
                tokens += int(new.shape[0])
                texts.append(tok.decode(new, skip_special_tokens=True))
    secs = time.perf_counter() - t
    return {"mode": mode, "prompts": len(prompts), "tokens": tokens, "seconds": secs, "tok_s": tokens / secs,
            "peak_rss_mib": _peak_rss_mib(), "rss_after_load_mib": rss_loaded, "texts": texts,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=64, help="prompts for the engine")
    ap.add_argument("--hf-n", type=int, default=8, help="prompts for batch-1 generate (the first of the same set)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--worker", choices=["engine", "hf1"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.n, a.device)))
        return
    res = {}
    for mode, n in (("engine", a.n), ("hf1", a.hf_n)):
        print(f"running {mode} on {n} prompts ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--model", a.model, "--n", str(n),
                              "--device", a.device], capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            sys.exit(f"{mode} failed:\n{out.stderr[-2000:]}")
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    e, h = res["engine"], res["hf1"]
    same = sum(x == y for x, y in zip(e["texts"], h["texts"]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores; other users share them, timings are noisy)")
    for r in (e, h):
        print(f"{r['mode']:7s} prompts={r['prompts']:4d} tokens={r['tokens']:6d} time={r['seconds']:7.1f}s "
              f"tok/s={r['tok_s']:7.1f} peak RSS={r['peak_rss_mib']:.0f} MiB (after load {r['rss_after_load_mib']:.0f} MiB)")
    print(f"ratio engine/batch-1 tokens/s: {e['tok_s'] / h['tok_s']:.1f}x")
    print(f"identical greedy completions on the {len(h['texts'])} shared prompts: {same}/{len(h['texts'])}")


if __name__ == "__main__":
    main()

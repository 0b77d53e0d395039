"""The vLLM backend against the built-in engine on a CUDA machine (a `make gpu-check` step).

    .venv/bin/python benchmarks/vllm_check.py [--model smollm2-135m] [--limit 64]

Where ``vllm`` is not importable (or there is no CUDA device) it prints why and exits 0: the step is
skipped, not passed. Otherwise it evaluates the same greedy arith items with both backends
(``evaluate_target``, the study protocol) and prints each backend's target score with its interval,
generated tokens/s, the ratio vLLM/HF, how many completions are identical, and peak RSS. Greedy
completions may differ where two tokens tie within the kernels' rounding; the scores should agree
within their intervals. Exit 1 if vLLM fails or its score falls outside the HF score's interval.
"""

from __future__ import annotations

import argparse
import sys
import time

from peftarena_cli.memory import peak_rss_mib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=64)
    a = ap.parse_args()
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm check SKIPPED: vllm is not importable here (pip install 'peftarena[vllm]' on a CUDA machine)")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("vllm check SKIPPED: no CUDA device")
        return 0
    from peftarena_cli.artifacts.loading import config_dir, load_model, load_tokenizer
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.evaluation import evaluate_target
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    ref = resolve_model(a.model)
    res = {}
    model, tok, _ = load_model(a.model, device="cuda")
    stats: dict = {}
    t = time.perf_counter()
    res["hf"] = (*evaluate_target(model, tok, task="arith", limit=a.limit, stats=stats), dict(stats), time.perf_counter() - t)
    del model
    torch.cuda.empty_cache()
    vm = VllmModel(config_dir(ref), dtype="float32", seed=0, gpu_memory_utilization=0.5)
    stats = {}
    t = time.perf_counter()
    res["vllm"] = (*evaluate_target(vm, load_tokenizer(ref), task="arith", limit=a.limit, stats=stats), dict(stats),
                   time.perf_counter() - t)
    for name, (per, summ, st, secs) in res.items():
        row = summ.set_index("metric").loc["target_score"]
        print(f"{name:5s} target_score {row['value']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}] "
              f"{st['generated_tokens']} tokens, {st['tokens_per_second']:.0f} tok/s, {secs:.1f} s")
    hf, vl = res["hf"], res["vllm"]
    same = int((hf[0]["completion"].values == vl[0]["completion"].values).sum())
    print(f"identical completions: {same}/{len(hf[0])}; tok/s vLLM/HF {vl[2]['tokens_per_second'] / hf[2]['tokens_per_second']:.1f}x; "
          f"peak RSS {peak_rss_mib():.0f} MiB")
    h = hf[1].set_index("metric").loc["target_score"]
    v = vl[1].set_index("metric").loc["target_score"]["value"]
    if not h["ci_low"] <= v <= h["ci_high"]:
        print(f"FAIL: the vLLM score {v:.1f} is outside the HF engine's interval", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

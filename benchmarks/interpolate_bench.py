"""Per-α overhead of an interpolation sweep (evaluation excluded): peftarena vs reloading per α.

Workload: smollm2-135m (the embedded default; a tiny random Llama with --tiny) with a LoRA
(r=8, all-linear) and an OFT (block 32, all-linear) adapter whose tensors are randomly perturbed
(the overhead does not depend on training). Approaches, each in its own subprocess so peak RSS is
its own:

* ``native``  — peftarena: base loaded once, PEFT adapter attached once, ``set_alpha`` rescales the
  adapter tensors in place (NativePathModel);
* ``merged``  — the native path as ``interpolate --eval`` runs it: after the rescale, W(α) is written
  into the base weights with PEFT's own merge (so the evaluation's forwards cost the base model's);
* ``dense``   — peftarena: base loaded once, ΔW formed once, ``set_alpha`` writes W0 + αΔW;
* ``reload``  — the straightforward approach: for every α, load the base model from disk, load the
  adapter with PeftModel.from_pretrained, scale it, merge_and_unload.

Prints seconds per α point, the ratio reload/peftarena and the peak RSS. The CPUs are shared with
other work, so timings are noisy: rerun if a number looks off. Uses CUDA when present.

    .venv/bin/python benchmarks/interpolate_bench.py [--tiny] [--points 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftarena_cli.memory import peak_rss_mib


def make_adapters(base: str, out: Path) -> dict:
    import torch
    from peft import LoraConfig, OFTConfig, get_peft_model

    from peftarena_cli.artifacts.loading import load_model

    paths = {}
    for name, cfg in (("lora", LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")),
                      ("oft", OFTConfig(oft_block_size=32, target_modules="all-linear"))):
        model, _, _ = load_model(base, device="cpu")
        pm = get_peft_model(model, cfg)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _, p in pm.named_parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        pm.save_pretrained(str(out / name))
        paths[name] = str(out / name)
    return paths


def run_one(approach: str, base: str, adapter: str, alphas: list[float], device: str) -> dict:
    import torch

    from peftarena_cli.artifacts.loading import load_model, pick_device

    dev = pick_device(device)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    per = []
    if approach in ("native", "merged", "dense"):
        from peftarena_cli.interpolation.sweep import open_path_model

        setup = open_path_model(base, adapter, path="dense" if approach == "dense" else "native", device=dev,
                                merge=approach == "merged")
        sync()
        setup_s = time.perf_counter() - t0
        for a in alphas:
            t = time.perf_counter()
            setup.path_model.set_alpha(a)
            sync()
            per.append(time.perf_counter() - t)
    else:
        from peft import PeftModel, set_peft_model_state_dict

        from peftarena_cli.artifacts.adapters import load_adapter
        from peftarena_cli.interpolation.native import scale_adapter_tensors

        setup_s = 0.0
        ad = load_adapter(adapter)
        for a in alphas:
            t = time.perf_counter()
            model, _, _ = load_model(base, device=dev)
            pm = PeftModel.from_pretrained(model, adapter)
            set_peft_model_state_dict(pm, scale_adapter_tensors(ad.config, ad.tensors, a))
            model = pm.merge_and_unload()
            sync()
            per.append(time.perf_counter() - t)
            del model, pm
    return {"approach": approach, "device": dev, "setup_s": setup_s, "per_alpha_s": per,
            "mean_per_alpha_s": sum(per) / len(per), "peak_rss_mib": peak_rss_mib(),
            "peak_cuda_mib": (torch.cuda.max_memory_allocated() / 2**20) if dev.startswith("cuda") else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of smollm2-135m")
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", nargs=3, metavar=("APPROACH", "BASE", "ADAPTER"))
    args = ap.parse_args()
    alphas = [i / (args.points - 1) for i in range(args.points)]
    if args.child:
        print(json.dumps(run_one(*args.child, alphas, args.device)))
        return
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        if args.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers import save_tiny_llama

            base = str(save_tiny_llama(td / "base"))
        else:
            from peftarena_cli.artifacts.convert import ensure_model

            base = str(ensure_model("smollm2-135m"))
        adapters = make_adapters(base, td)
        print(f"base {base}; {args.points} α points; timings on shared CPUs are noisy (rerun if off)")
        results = {}
        for method, ad in adapters.items():
            for approach in ("native", "merged", "dense", "reload"):
                r = subprocess.run([sys.executable, __file__, "--points", str(args.points), "--device", args.device,
                                    "--child", approach, base, ad], capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr[-2000:])
                    raise SystemExit(1)
                res = json.loads(r.stdout.strip().splitlines()[-1])
                results[(method, approach)] = res
                print(f"{method:5s} {approach:7s} device={res['device']:5s} setup {res['setup_s']:7.2f} s  "
                      f"per α {res['mean_per_alpha_s'] * 1000:9.1f} ms  peak RSS {res['peak_rss_mib']:7.0f} MiB"
                      + (f"  peak CUDA {res['peak_cuda_mib']:.0f} MiB" if res["peak_cuda_mib"] else ""))
        for method in adapters:
            rl = results[(method, "reload")]["mean_per_alpha_s"]
            for approach in ("native", "merged", "dense"):
                r = results[(method, approach)]["mean_per_alpha_s"]
                print(f"{method}: reload-per-α / {approach}-in-place per-α overhead = {rl / r:.0f}x")


if __name__ == "__main__":
    main()

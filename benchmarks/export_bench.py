"""Merged export: ``peftarena export`` (streamed, one module at a time) vs PEFT's merge_and_unload.

Workload: smollm2-135m (the embedded default; a tiny random Llama with --tiny) with a LoRA (r=8,
all-linear) and an OFT (block 32, all-linear) adapter whose tensors are randomly perturbed (the cost
does not depend on training). Approaches, each in its own subprocess so that peak RSS is its own:

* ``export``   — peftarena: the base read one tensor at a time, each adapted module merged by its
  method's former, written into shards of ``--max-shard-size`` (here 64M, so the base does not fit
  one shard and the streaming is exercised);
* ``peft``     — the straightforward approach: load the base with transformers, attach the adapter
  with PeftModel.from_pretrained, merge_and_unload, save_pretrained with the same shard size.

Both outputs' tensors are compared (max |a − b| / max|b| per tensor). Prints seconds, the ratio
peft/export and the peak RSS of each. The CPUs are shared with other work, so timings are noisy.

    .venv/bin/python benchmarks/export_bench.py [--tiny]
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

SHARD = "64M"


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def run_one(approach: str, base: str, adapter: str, out: str) -> None:
    t0 = time.perf_counter()
    if approach == "export":
        from peftarena_cli.interpolation.export import ExportConfig, export

        export(ExportConfig(base=base, finetuned=adapter, output=out, max_shard_size=SHARD))
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from peftarena_cli.artifacts.safetensors_io import resolve_model

        d = str(resolve_model(base).directory)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(out, max_shard_size=64 * 1024 ** 2, safe_serialization=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}))


def max_rel_gap(a_dir: str, b_dir: str) -> float:
    from safetensors.torch import load_file

    def load(d):
        out = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    a, b = load(a_dir), load(b_dir)
    worst = 0.0
    for k, v in b.items():
        if k not in a:
            continue
        worst = max(worst, float((a[k].float() - v.float()).abs().max()) / (float(v.float().abs().max()) or 1.0))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of smollm2-135m")
    ap.add_argument("--_run", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        run_one(*args._run)
        return
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        if args.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers import save_tiny_llama

            base = str(save_tiny_llama(td / "model"))
        else:
            base = "smollm2-135m"
        adapters = make_adapters(base, td)
        print(f"{'adapter':8s} {'approach':8s} {'seconds':>8s} {'peak RSS MiB':>13s}")
        for name, ad in adapters.items():
            res = {}
            for approach in ("export", "peft"):
                out = str(td / f"{name}-{approach}")
                p = subprocess.run([sys.executable, __file__, "--_run", approach, base, ad, out],
                                   capture_output=True, text=True, cwd=ROOT)
                if p.returncode != 0:
                    raise SystemExit(p.stderr[-2000:])
                res[approach] = json.loads(p.stdout.strip().splitlines()[-1])
                print(f"{name:8s} {approach:8s} {res[approach]['seconds']:8.2f} {res[approach]['peak_rss_mib']:13.0f}")
            gap = max_rel_gap(str(td / f"{name}-export"), str(td / f"{name}-peft"))
            print(f"{name:8s} peft/export time {res['peft']['seconds'] / res['export']['seconds']:.2f}x, "
                  f"peak RSS {res['export']['peak_rss_mib']:.0f} vs {res['peft']['peak_rss_mib']:.0f} MiB; "
                  f"max tensor gap {gap:.2e} of max|W|")


if __name__ == "__main__":
    main()

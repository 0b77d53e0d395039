"""act-geom benchmark: all 210 modules of smollm2-135m in one streamed run vs the straightforward
approach (one module per run: two forward passes storing that module's activations, then
token×token Grams), on 256 arithmetic prompts with a LoRA adapter (PEFT, perturbed random init).

    .venv/bin/python benchmarks/act_geom_bench.py [--max-length 16] [--small-max-length 8]
                                                   [--accum-dtype float32] [--straight-modules 2]

Each approach runs in its own subprocess so peak RSS (VmHWM) is its own. The straightforward
time for 10 modules is extrapolated from the modules measured (their mean, times 10): its cost is
two full forward passes per module plus O(n²d) Grams, so it is close to linear in the module count.
The CPU is shared with other jobs: timings are noisy; rerun if a number looks off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftarena_cli.memory import peak_rss_mib


def cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_adapter(out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from peftarena_cli.artifacts.loading import load_model

    model, _, _ = load_model("smollm2-135m", device="cpu")
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(out))


def load(adapter: str, device: str):
    from peftarena_cli.activations.capture import linear_module_names
    from peftarena_cli.artifacts.loading import attach_adapter, load_model

    model, tok, _ = load_model("smollm2-135m", device=device)
    names = linear_module_names(model)
    return attach_adapter(model, adapter), tok, names


def prompts(n: int):
    from peftarena_cli.activations.prompts import load_prompts

    return load_prompts(f"arith:{n}").prompts


def worker_ours(args) -> dict:
    import torch

    from peftarena_cli.activations.capture import tokenize
    from peftarena_cli.activations.collect import collect_pair_sums
    from peftarena_cli.activations.run import metrics_table

    t0 = time.perf_counter()
    pm, tok, names = load(args.adapter, args.device)
    tk = tokenize(tok, prompts(args.prompts), args.max_length)
    t1 = time.perf_counter()
    acc = torch.float64 if args.accum_dtype == "float64" else torch.float32
    sums, _ = collect_pair_sums(pm, tok, None, names, batch_size=args.batch_size, max_length=args.max_length,
                                accum_dtype=acc, tokenized=tk)
    t2 = time.perf_counter()
    c2 = cpu_s()
    if args.collect_only:
        return {"approach": "streamed, all modules (collection only)", "modules": len(names), "tokens": tk.n_tokens,
                "load_s": t1 - t0, "collect_s": t2 - t1, "total_s": t2 - t0, "cpu_s": c2, "peak_rss_mib": peak_rss_mib()}
    df = metrics_table({"arith": sums})
    t3 = time.perf_counter()
    return {"approach": "streamed, all modules", "modules": len(names), "tokens": tk.n_tokens,
            "load_s": t1 - t0, "collect_s": t2 - t1, "metrics_s": t3 - t2, "total_s": t3 - t0,
            "cpu_s": cpu_s(), "cpu_collect_s": c2, "peak_rss_mib": peak_rss_mib(), "mean_cka": float(df.cka.mean())}


def worker_straight(args) -> dict:
    """One module, the straightforward way: store X0 and X1 (n × d), token×token Grams."""
    import torch

    from peftarena_cli.activations.capture import batches, find_modules, tokenize

    t0 = time.perf_counter()
    pm, tok, names = load(args.adapter, args.device)
    tk = tokenize(tok, prompts(args.prompts), args.max_length)
    mod = find_modules(pm, [args.module])[args.module]
    body = pm.get_base_model().model
    store: list = []

    def hook(m, i, o):
        store.append(o[cur_mask].detach().clone())

    h = mod.register_forward_hook(hook)
    X = []
    with torch.inference_mode():
        for adapter_on in (False, True):
            store.clear()
            for ids, mask in batches(tk, args.batch_size, tok.pad_token_id, args.device):
                cur_mask = mask.bool()
                if adapter_on:
                    body(input_ids=ids, attention_mask=mask)
                else:
                    with pm.disable_adapter():
                        body(input_ids=ids, attention_mask=mask)
            X.append(torch.cat(store).double())
    h.remove()
    t1 = time.perf_counter()
    X0, X1 = X
    Z0 = X0 / X0.norm(dim=1, keepdim=True)
    Z1 = X1 / X1.norm(dim=1, keepdim=True)
    K0, K1 = Z0 @ Z0.T, Z1 @ Z1.T
    gram = float((K1 - K0).norm() / K0.norm())
    del K0, K1
    X0c, X1c = X0 - X0.mean(0), X1 - X1.mean(0)
    K, L = X0c @ X0c.T, X1c @ X1c.T
    cka = float((K * L).sum() / torch.sqrt((K * K).sum() * (L * L).sum()))
    del K, L
    U, _, Vh = torch.linalg.svd(X1c.T @ X0c)
    proc = float((X1c @ (U @ Vh) - X0c).norm() / X0c.norm())
    pca = {}
    V0 = torch.linalg.svd(X0c, full_matrices=False)[2]  # PCA of the stored tokens, as sklearn does
    V1 = torch.linalg.svd(X1c, full_matrices=False)[2]
    for k in (32, 64):
        if k < X0.shape[1]:
            P0, P1 = V0[:k].T @ V0[:k], V1[:k].T @ V1[:k]
            pca[k] = float((P0 - P1).norm() / (2 * k) ** 0.5)
    t2 = time.perf_counter()
    return {"approach": "straightforward, one module", "module": args.module, "dim": X0.shape[1],
            "tokens": X0.shape[0], "forward_s": t1 - t0, "gram_s": t2 - t1, "total_s": t2 - t0, "cpu_s": cpu_s(),
            "peak_rss_mib": peak_rss_mib(), "cka": cka, "gram_distortion": gram, "procrustes": proc, "pca": pca}


THREADS: int | None = None


def run_worker(extra: list[str], common: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", *extra, *common]
    env = dict(os.environ)
    if THREADS:
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"worker failed: {' '.join(extra)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["ours", "straight"])
    ap.add_argument("--adapter")
    ap.add_argument("--module")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=16)
    ap.add_argument("--small-max-length", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--accum-dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--straight-modules", type=int, default=1)
    ap.add_argument("--collect-only", action="store_true", help="(worker) skip the metrics phase")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads per worker; on a shared CPU use 1: idle OpenMP threads spin and "
                         "inflate CPU time (under load ~20 on 2 cores we saw several times the CPU seconds with 2 threads)")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_straight
        print(json.dumps(fn(args)))
        return
    from peftarena_cli.artifacts.loading import pick_device

    dev = pick_device("auto") if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory() as td:
        adapter = Path(td) / "lora"
        make_adapter(adapter)
        common = ["--adapter", str(adapter), "--prompts", str(args.prompts), "--batch-size", str(args.batch_size),
                  "--accum-dtype", args.accum_dtype, "--device", dev]
        print(f"smollm2-135m + LoRA r=16 (all-linear), {args.prompts} arith prompts, device {dev}, "
              f"accumulators {args.accum_dtype}; CPU shared with other jobs: timings are noisy", flush=True)
        res = {}
        for L, extra in ((args.max_length, []), (args.small_max_length, ["--collect-only"])):
            r = run_worker(["ours", "--max-length", str(L), *extra], common)
            res[L] = r
            print(f"ours   max_length={L:3d}: {r['approach']}: {r['modules']} modules, {r['tokens']} tokens: "
                  f"wall {r['total_s']:.1f} s, CPU {r['cpu_s']:.1f} s (load {r['load_s']:.1f}, collect {r['collect_s']:.1f}"
                  f"{', metrics %.1f' % r['metrics_s'] if 'metrics_s' in r else ''}); peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
        mods = ["model.layers.14.self_attn.q_proj", "model.layers.14.mlp.up_proj", "model.layers.3.mlp.down_proj",
                "model.layers.20.self_attn.v_proj"][: args.straight_modules]
        st = []
        for m in mods:
            r = run_worker(["straight", "--module", m, "--max-length", str(args.max_length)], common)
            st.append(r)
            print(f"straightforward {m} (d={r['dim']}, {r['tokens']} tokens): wall {r['total_s']:.1f} s, CPU {r['cpu_s']:.1f} s "
                  f"(load+2 forwards {r['forward_s']:.1f}, Grams+SVDs {r['gram_s']:.1f}); peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
        ours = res[args.max_length]
        for key, what in (("cpu_s", "CPU seconds (less sensitive to the shared CPU)"), ("total_s", "wall seconds")):
            per = sum(r[key] for r in st) / len(st)
            print(f"\n[{what}] straightforward 10 modules (10 x mean of {len(st)} measured): {10 * per:.0f}; "
                  f"all {ours['modules']}: {ours['modules'] * per:.0f}; ours, all {ours['modules']} in one run: {ours[key]:.0f}; "
                  f"ratio straightforward-10 / ours-all = {10 * per / ours[key]:.2f}x, straightforward-all / ours-all = "
                  f"{ours['modules'] * per / ours[key]:.1f}x")
        a, b = res[args.max_length], res[args.small_max_length]
        print(f"peak RSS of ours at {a['tokens']} tokens: {a['peak_rss_mib']:.0f} MiB; at {b['tokens']} tokens: "
              f"{b['peak_rss_mib']:.0f} MiB (accumulators: 6 d×d per module, independent of tokens)")


if __name__ == "__main__":
    main()

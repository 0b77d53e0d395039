"""Benchmark `peftarena finetune` against a plain TRL SFTTrainer, and measure what a demo run buys.

    .venv/bin/python benchmarks/finetune_bench.py                 # 20-step LoRA SFT: ours vs plain TRL
    .venv/bin/python benchmarks/finetune_bench.py --steps 20 --repeats 2
    .venv/bin/python benchmarks/finetune_bench.py --eval RUN_DIR  # arith exact-match, base vs RUN_DIR/final

Throughput: both runs train LoRA r=8 / alpha 16 on all linear modules of smollm2-135m, with the
same records (the built-in arithmetic train split, chat-template prompts, completion-only loss),
batch 4, lr 2e-4, max length 256, fp32, no gradient checkpointing. "Ours" is the real command
(`peftarena finetune`, in a subprocess, including its trajectory checkpoint, train log and
manifest writes); "plain" is TRL's SFTTrainer given the same PEFT config and arguments with saving
off. Each runs in its own subprocess so peak RSS is per approach. tokens/s = completion+prompt
tokens the trainer reports (TRL's num_tokens) / wall time of trainer.train(); tokens/CPU-s divides
by the process CPU time of trainer.train() instead, which other engineers' load disturbs much less.

The CPUs are shared with other engineers: timings are noisy. Rerun (or use --repeats) when a
ratio looks off; the order alternates between repeats.

--eval: greedy batched `generate` on the first N problems of the arithmetic *test* split, scored
by exact final-answer match (peftarena_cli.training.rewards.score), for the base model and for the
adapter in RUN_DIR/final. Prints both scores and the gain in points.
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

from peftarena_cli.memory import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def plain_trl(model: str, steps: int, batch: int, max_length: int, seed: int) -> dict:
    """The straightforward approach: TRL SFTTrainer + PEFT LoraConfig, nothing else."""
    import datasets
    import transformers
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from peftarena_cli.artifacts.loading import load_model
    from peftarena_cli.training.data import load_train_data

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    m, tok, _ = load_model(model, device="cpu")
    m.train()
    recs = load_train_data("arith", tok, "sft", n=steps * batch, seed=seed).to_dataset()
    recs = recs.remove_columns(["kind"])
    with tempfile.TemporaryDirectory() as td:
        args = SFTConfig(output_dir=td, max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-4,
                         max_length=max_length, completion_only_loss=True, bf16=False, gradient_checkpointing=False,
                         save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
                         use_cpu=True, dataloader_num_workers=0)
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        tr = SFTTrainer(model=m, args=args, train_dataset=recs, processing_class=tok, peft_config=cfg)
        t, c = time.perf_counter(), time.process_time()
        tr.train()
        dt, dc = time.perf_counter() - t, time.process_time() - c
    tokens = max(float(h.get("num_tokens", 0)) for h in tr.state.log_history)
    return {"approach": "plain TRL SFTTrainer", "train_s": dt, "train_cpu_s": dc, "tokens": tokens,
            "tokens_per_s": tokens / dt, "tokens_per_cpu_s": tokens / dc,
            "peak_rss_mb": peak_rss_mib()}


def ours(model: str, steps: int, batch: int, max_length: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "run"
        cmd = [PY, "-m", "peftarena_cli", "finetune", model, "-o", str(out), "--method", "lora", "--steps", str(steps),
               "--batch-size", str(batch), "--max-length", str(max_length), "--save-every", str(steps),
               "--seed", str(seed)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"peftarena finetune failed:\n{r.stderr[-2000:]}")
        man = json.loads((out / "manifest.json").read_text())
        import pandas as pd

        tokens = float(pd.read_parquet(out / "train_log.parquet")["tokens"].iloc[-1])
    return {"approach": "peftarena finetune", "train_s": man["train_seconds"], "train_cpu_s": man["train_cpu_seconds"],
            "tokens": tokens, "tokens_per_s": man["tokens_per_s"], "tokens_per_cpu_s": tokens / man["train_cpu_seconds"],
            "peak_rss_mb": man["peak_rss_mb"]}


def exact_match(model_spec: str, adapter: str | None, n: int, batch: int, max_new_tokens: int) -> float:
    import torch

    from peftarena_cli.artifacts.loading import attach_adapter, load_model
    from peftarena_cli.tasks import arith
    from peftarena_cli.tasks.prompting import render_prompt
    from peftarena_cli.training.rewards import score

    m, tok, _ = load_model(model_spec, device="cpu")
    if adapter:
        m = attach_adapter(m, adapter)
    m.eval()
    tok.padding_side = "left"
    probs = arith.generate("test", n, 0)
    correct = 0
    for i in range(0, n, batch):
        chunk = probs[i:i + batch]
        prompts = [render_prompt(tok, p["question"]) for p in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = m.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(score(t, p["answer"]) for t, p in zip(texts, chunk))
    return 100.0 * correct / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--eval", metavar="RUN_DIR", help="exact-match of base vs RUN_DIR/final on the arith test split")
    ap.add_argument("--adapter", help="--eval: this adapter instead of RUN_DIR/final (e.g. RUN_DIR/checkpoint-25)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--which", choices=["both", "base", "tuned"], default="both", help="--eval: which model(s)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--_child", choices=["plain"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child == "plain":
        print(json.dumps(plain_trl(a.model, a.steps, a.batch, a.max_length, a.seed)))
        return
    if a.eval:
        t = time.perf_counter()
        head = f"arith test exact-match on {a.n} problems (greedy, {a.max_new_tokens} new tokens):"
        base = exact_match(a.model, None, a.n, 50, a.max_new_tokens) if a.which != "tuned" else None
        tuned = exact_match(a.model, a.adapter or str(Path(a.eval) / "final"), a.n, 50, a.max_new_tokens) if a.which != "base" else None
        parts = [f"base {base:.1f}%" if base is not None else "", f"tuned {tuned:.1f}%" if tuned is not None else "",
                 f"gain {tuned - base:+.1f} points" if base is not None and tuned is not None else ""]
        print(head, "  ".join(p for p in parts if p), f"({time.perf_counter() - t:.0f} s)")
        return
    print(f"LoRA SFT, {a.steps} steps, batch {a.batch}, max length {a.max_length}, model {a.model} "
          f"(shared CPUs: timings are noisy)")
    results = []
    for rep in range(a.repeats):
        order = ["ours", "plain"] if rep % 2 == 0 else ["plain", "ours"]
        row = {}
        for which in order:
            if which == "ours":
                row["ours"] = ours(a.model, a.steps, a.batch, a.max_length, a.seed)
            else:
                r = subprocess.run([PY, __file__, "--_child", "plain", "--model", a.model, "--steps", str(a.steps),
                                    "--batch", str(a.batch), "--max-length", str(a.max_length), "--seed", str(a.seed)],
                                   capture_output=True, text=True, cwd=ROOT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
                if r.returncode != 0:
                    raise SystemExit(f"plain TRL run failed:\n{r.stderr[-2000:]}")
                row["plain"] = json.loads(r.stdout.strip().splitlines()[-1])
        for k in ("ours", "plain"):
            x = row[k]
            print(f"  [{rep + 1}] {x['approach']:<22} {x['tokens_per_s']:8.1f} tokens/s wall, "
                  f"{x['tokens_per_cpu_s']:8.1f} tokens/CPU-s  ({x['tokens']:.0f} tokens in {x['train_s']:.1f} s wall, "
                  f"{x['train_cpu_s']:.1f} CPU-s)  peak RSS {x['peak_rss_mb']:.0f} MiB")
        ratio = row["ours"]["tokens_per_s"] / row["plain"]["tokens_per_s"]
        cratio = row["ours"]["tokens_per_cpu_s"] / row["plain"]["tokens_per_cpu_s"]
        results.append(ratio)
        print(f"  [{rep + 1}] throughput ratio ours/plain = {ratio:.3f} (wall), {cratio:.3f} (per CPU second)")
    if len(results) > 1:
        print(f"ratios: {', '.join(f'{r:.3f}' for r in results)}; median {sorted(results)[len(results) // 2]:.3f}")


if __name__ == "__main__":
    main()

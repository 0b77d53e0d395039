"""Real BBH through the engine with and without shared-prefix KV reuse, in one process.

Each BBH prompt carries its subtask's 3-shot CoT exemplars (about 1k tokens shared by every item of
the subtask). The engine groups a subtask's prompts into batches and prefills the shared part once
(`evaluation/engine.py`); ``share_prefix=False`` is the straightforward path that prefills every
row in full. Both runs use the same model, prompts and budget; the script checks that their greedy
completions are identical and prints items/s for each and the ratio.

    python benchmarks/bbh_prefix_bench.py --bbh ../shared/data/bbh --limit 3 --max-new-tokens 32

Run it alone on the machine (under the exclusive lock). ``--clock cpu`` (with ``--threads 1``)
times in this process's CPU seconds instead, where the machine cannot be had alone (see
benchmarks/eval_bench.py).
"""

from __future__ import annotations

import argparse
import time

from peftarena_cli.memory import peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bbh", default="../shared/data/bbh", help="BIG-Bench-Hard folder (tasks/*.json, cot-prompts/*.txt)")
    ap.add_argument("--limit", type=int, default=3, help="items per subtask")
    ap.add_argument("--protocol", default="study")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = ap.parse_args()
    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    import torch

    torch.set_num_threads(a.threads)
    from peftarena_cli.artifacts.loading import load_model
    from peftarena_cli.evaluation.api import load_general_tasks
    from peftarena_cli.evaluation.engine import encode_prompts, generate, prefix_groups

    model, tok, _ = load_model(a.model, device=a.device)
    task = load_general_tasks(f"bbh={a.bbh}", a.limit, protocol=a.protocol, max_new_tokens=a.max_new_tokens)[0]
    prompts = [task.render(tok, it) for it in task.items]
    enc = encode_prompts(tok, prompts)
    groups = prefix_groups(enc)
    print(f"{len(prompts)} prompts ({a.limit} per subtask, {a.protocol} protocol), {sum(map(len, enc))} prompt tokens, "
          f"{len(set(groups))} prefix groups, {a.max_new_tokens} new tokens at most")
    runs = {}
    for share in (False, True):
        t = clock()
        g = generate(model, tok, prompts, max_new_tokens=task.max_new_tokens, stop=task.stop, share_prefix=share)
        runs[share] = (clock() - t, g)
    (t_off, g_off), (t_on, g_on) = runs[False], runs[True]
    same = g_off.texts == g_on.texts
    n = len(prompts)
    unit = "CPU s" if a.clock == "cpu" else "s"
    print(f"{a.threads} threads; times in {unit}; {g_on.generated_tokens} generated tokens")
    print(f"straightforward (every row prefilled): {t_off:7.1f} s  {n / t_off:6.3f} items/s")
    print(f"shared-prefix reuse:                   {t_on:7.1f} s  {n / t_on:6.3f} items/s")
    print(f"speed-up {t_off / t_on:.2f}x; completions identical: {same}; "
          f"peak RSS {peak_rss_mib():.0f} MiB")
    if not same:
        diff = sum(a != b for a, b in zip(g_off.texts, g_on.texts))
        print(f"WARNING: {diff} of {n} completions differ")


if __name__ == "__main__":
    main()

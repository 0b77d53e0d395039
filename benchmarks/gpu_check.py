"""`make gpu-check`: every GPU path of peftarena against the CPU, in one run on one GPU (about 8 minutes).

    .venv/bin/python benchmarks/gpu_check.py [--workdir DIR] [--model smollm2-135m] [--only STEP,...]
    .venv/bin/python benchmarks/gpu_check.py --dry-run        # the plan, on any machine (no torch import)

Steps, in order (docs/large-models.md, "Checking a GPU machine"):

1. ``cuda-vs-cpu``: tests/test_cuda.py (every --device command on CUDA against the CPU, tiny models).
2. ``spectrum-bench``: spectrum's benchmark on CUDA (random weights of smollm2's shapes).
3. ``fsdp``: a FSDP finetune of MODEL in one process (``accelerate launch --config_file
   configs/fsdp-lora.yaml``) against the same run on the CPU, loss per step compared. SKIPPED when the
   config file is missing.
4. ``export``: a LoRA and an OFT adapter of MODEL (a few CPU steps) merged by ``peftarena export`` on
   CUDA and on the CPU, every tensor compared. SKIPPED when the CLI has no ``export`` command.
5. ``served``: MODEL behind ``transformers serve`` on CUDA, evaluated with ``--backend openai`` against
   the built-in engine on the CPU (greedy completions compared). SKIPPED without ``transformers serve``.
6. ``vllm``: benchmarks/vllm_check.py (it prints SKIPPED where vllm is not importable).
7. ``study``: a small ``make study-run`` (the study preset, scripts/study.mk) on CUDA and on the CPU,
   scores compared; local benchmark files from --bench-data when present, else the built-in tasks.

At the end it prints one table: every comparison with the CUDA value, the CPU value, their difference,
and the verdict (ok, DIFFERS, FAILED, SKIPPED). Exit 1 when any comparison differs or fails. Nothing in
the test suite or CI runs this script; tests/test_study_preset.py runs --dry-run only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
STEPS = ("cuda-vs-cpu", "spectrum-bench", "fsdp", "export", "served", "vllm", "study")
# Agreement bounds (what "ok" means), each with its reason:
# FSDP in float32 (--mixed-precision no) runs the same arithmetic as the CPU run in another order: the
# losses of a few steps stay within 1e-3 relative (kernel reassociation is ~1e-6 a step; 1e-3 leaves room
# for the optimizer to amplify it over 8 steps without hiding a wrong gradient, which moves the loss by %).
LOSS_RTOL = 1e-3
# An export merges W0 + ΔW in float32 on either device: per tensor |a - b| <= 1e-5 * max|W| covers float32
# rounding of one matmul of rank r (r * 2^-24 relative per entry, r <= 64) with a margin.
EXPORT_RTOL = 1e-5


@dataclass
class Row:
    check: str
    cuda: str = ""
    cpu: str = ""
    diff: str = ""
    verdict: str = "ok"


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    py: str
    peftarena: list[str]
    rows: list[Row] = field(default_factory=list)
    dry: bool = False

    def cmd(self, argv: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        """Run ``argv`` (printed first); in a dry run only print it."""
        pre = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        print(f"    $ {pre + ' ' if pre else ''}{shlex.join(str(a) for a in argv)}", flush=True)
        if self.dry:
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})


def _ok(r: subprocess.CompletedProcess, what: str) -> bool:
    if r.returncode != 0:
        print(f"    {what} failed (exit {r.returncode}):\n" + (r.stdout[-1500:] + r.stderr[-1500:]), flush=True)
        return False
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_available(peftarena: list[str]) -> bool:
    r = subprocess.run([*peftarena, "export", "--help"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode == 0


def serve_available() -> str | None:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        return None
    r = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True)
    return str(exe) if r.returncode == 0 else None


# ---------------------------------------------------------------- the steps
def step_cuda_vs_cpu(c: Ctx) -> None:
    r = c.cmd([c.py, "-m", "pytest", "-n", "4", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_cuda.py"])
    if c.dry:
        return
    seen = 0
    for line in r.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED) tests/test_cuda.py::(\S+)", line)
        if m:
            seen += 1
            c.rows.append(Row(f"cuda-vs-cpu {m.group(2)}", "table", "table", "within the test's bound",
                              "ok" if m.group(1) == "PASSED" else m.group(1)))
    if not seen:
        c.rows.append(Row("cuda-vs-cpu", verdict="FAILED" if r.returncode else "ok", diff=r.stdout[-200:].strip()))


def step_spectrum_bench(c: Ctx) -> None:
    r = c.cmd([c.py, "benchmarks/spectrum_bench.py", "--device", "cuda", "--threads", "8", "--model", "synthetic-smollm2"])
    if not c.dry:
        c.rows.append(Row("spectrum-bench (CUDA timing)", verdict="ok" if _ok(r, "spectrum_bench") else "FAILED",
                          diff=(r.stdout.strip().splitlines() or [""])[-1][:80]))


def _finetune(c: Ctx, out: Path, method: str, device: str, steps: int, launch: list[str] | None = None):
    argv = [*(launch or c.peftarena), "finetune", c.args.model, "-o", out, "--method", method, "--steps", steps,
            "--batch-size", 4, "--save-every", steps, "--seed", 0, "--device", device, "--mixed-precision", "no",
            "--overwrite", "-q"]
    return c.cmd(argv)


def _losses(run: Path) -> list[float]:
    import pandas as pd

    log = pd.read_parquet(run / "train_log.parquet")
    return [float(x) for x in log["loss"].dropna()]


def step_fsdp(c: Ctx) -> None:
    cfg = Path(c.args.fsdp_config)
    if not (ROOT / cfg).is_file() and not cfg.is_file():
        print(f"    SKIPPED: {cfg} is missing (the FSDP configs are added with the FSDP support)")
        c.rows.append(Row("fsdp finetune (1 process) loss per step", verdict="SKIPPED", diff=f"no {cfg}"))
        return
    launch = [c.py, "-m", "accelerate.commands.launch", "--config_file", cfg, "--num_processes", "1",
              "-m", "peftarena_cli"]
    a = _finetune(c, c.work / "fsdp-cuda", "lora", "cuda", 8, launch)
    b = _finetune(c, c.work / "fsdp-cpu", "lora", "cpu", 8)
    if c.dry:
        return
    if not (_ok(a, "FSDP finetune") and _ok(b, "CPU finetune")):
        c.rows.append(Row("fsdp finetune (1 process) loss per step", verdict="FAILED"))
        return
    la, lb = _losses(c.work / "fsdp-cuda"), _losses(c.work / "fsdp-cpu")
    rel = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb)) if la and len(la) == len(lb) else float("inf")
    c.rows.append(Row("fsdp finetune (1 process) loss per step", f"{la[-1]:.5f}" if la else "-",
                      f"{lb[-1]:.5f}" if lb else "-", f"max rel {rel:.2e}", "ok" if rel <= LOSS_RTOL else "DIFFERS"))


def _tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def step_export(c: Ctx) -> None:
    if not export_available(c.peftarena):
        print("    SKIPPED: this peftarena has no `export` command")
        for m in ("lora", "oft"):
            c.rows.append(Row(f"export {m} (merged weights)", verdict="SKIPPED", diff="no `peftarena export`"))
        return
    for m in ("lora", "oft"):
        run = c.work / f"adapter-{m}"
        r = _finetune(c, run, m, "cpu", 4)
        outs = {}
        for dev in ("cuda", "cpu"):
            outs[dev] = c.work / f"export-{m}-{dev}"
            if not c.dry and outs[dev].exists():
                shutil.rmtree(outs[dev])
            e = c.cmd([*c.peftarena, "export", c.args.model, run / "final", "-o", outs[dev], "--device", dev,
                       "--dtype", "float32"])
            if not c.dry and not _ok(e, f"export {m} on {dev}"):
                r = e
        if c.dry:
            continue
        if r.returncode != 0 or not all(p.exists() for p in outs.values()):
            c.rows.append(Row(f"export {m} (merged weights)", verdict="FAILED"))
            continue
        a, b = _tensors(outs["cuda"]), _tensors(outs["cpu"])
        worst = 0.0
        for k in b:
            if k not in a or a[k].shape != b[k].shape:
                worst = float("inf")
                break
            scale = float(b[k].float().abs().max()) or 1.0
            worst = max(worst, float((a[k].float() - b[k].float()).abs().max()) / scale)
        c.rows.append(Row(f"export {m} (merged weights)", f"{len(a)} tensors", f"{len(b)} tensors",
                          f"max rel {worst:.2e}", "ok" if worst <= EXPORT_RTOL else "DIFFERS"))


def step_served(c: Ctx) -> None:
    exe = serve_available() if not c.dry else (serve_available() or "transformers")
    if exe is None:
        print("    SKIPPED: `transformers serve` is not installed (pip install 'transformers[serving]')")
        c.rows.append(Row("served (transformers serve, CUDA) vs engine (CPU)", verdict="SKIPPED",
                          diff="no transformers serve"))
        return
    port = _free_port() if not c.dry else 8765
    print(f"    $ {exe} serve <MODEL dir> --device cuda --dtype float32 --host 127.0.0.1 --port {port}  (background)")
    outs = {"served": c.work / "served.parquet", "engine": c.work / "engine.parquet"}
    ev = ["eval-target", c.args.model, "--task", "arith", "--limit", 16, "--max-new-tokens", 48]
    if c.dry:
        c.cmd([*c.peftarena, *ev, "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "-o", outs["served"]])
        c.cmd([*c.peftarena, *ev, "--device", "cpu", "-o", outs["engine"]])
        return
    from peftarena_cli.artifacts.loading import config_dir
    from peftarena_cli.artifacts.safetensors_io import resolve_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import served_bench  # noqa: E402  (its server helpers; the command line is its, with the device changed)

    model_dir = config_dir(resolve_model(c.args.model))
    argv = [x if x != "cpu" else "cuda" for x in served_bench.serve_cmd(model_dir, port)]
    with open(c.work / "serve.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        served_bench.wait_ready(f"http://127.0.0.1:{port}", proc)
        a = c.cmd([*c.peftarena, *ev, "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "-o", outs["served"]])
    finally:
        served_bench.stop_server(proc)
    b = c.cmd([*c.peftarena, *ev, "--device", "cpu", "-o", outs["engine"]])
    if not (_ok(a, "served eval") and _ok(b, "engine eval")):
        c.rows.append(Row("served (transformers serve, CUDA) vs engine (CPU)", verdict="FAILED"))
        return
    import pandas as pd

    sa, sb = pd.read_parquet(outs["served"]), pd.read_parquet(outs["engine"])
    same = float((sa["completion"].to_numpy() == sb["completion"].to_numpy()).mean())
    acc = lambda d: 100.0 * float(d["correct"].mean())  # noqa: E731
    # greedy float32 on two devices: a near-tie may flip a token, so agreement is reported, and the scores
    # must agree within one item's share
    ok = abs(acc(sa) - acc(sb)) <= 100.0 / len(sb) + 1e-9 or same == 1.0
    c.rows.append(Row("served (transformers serve, CUDA) vs engine (CPU)", f"{acc(sa):.1f} %", f"{acc(sb):.1f} %",
                      f"{100 * same:.0f} % identical", "ok" if ok else "DIFFERS"))


def step_vllm(c: Ctx) -> None:
    if c.args.model == "smollm2-135m":
        c.cmd([*c.peftarena, "models", "pull", c.args.model])
    r = c.cmd([c.py, "benchmarks/vllm_check.py", "--model", c.args.model])
    if c.dry:
        return
    last = (r.stdout.strip().splitlines() or [""])[-1]
    verdict = "SKIPPED" if "SKIPPED" in r.stdout else ("ok" if r.returncode == 0 else "DIFFERS")
    c.rows.append(Row("vllm vs engine (both CUDA)", diff=last[:80], verdict=verdict))


def _study_data(c: Ctx) -> Path:
    """A small training file in the study's layout (the records of its OpenR1 parquet files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "openr1", "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
             "reward_model": {"ground_truth": str(a + b), "style": "rule"},
             "extra_info": {"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}",
                            "index": i, "split": "train"}}
            for i, (a, b) in enumerate((x, y) for x in range(1, 9) for y in range(1, 5))]
    path = c.work / "study-train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def step_study(c: Ctx) -> None:
    bench = Path(c.args.bench_data)
    if (bench / "math" / "math500_test.jsonl").is_file():
        tasks = f"math500={bench / 'math' / 'math500_test.jsonl'}"
        suite = f"ifeval={bench / 'ifeval' / 'input_data.jsonl'},nq_open={bench / 'nq_open' / 'NQ-open.dev.jsonl'}"
    else:
        print(f"    (no benchmark files under {bench}: the built-in tasks stand in for the study's)")
        tasks, suite = "arith", "builtin"
    data = c.work / "study-train.parquet" if c.dry else _study_data(c)
    results = {}
    for dev, env in (("cuda", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        runs = c.work / f"study-{dev}"
        r = c.cmd(["make", "--no-print-directory", "study-run", f"MODEL={c.args.model}", "DOMAIN=math",
                   f"STUDY_RUNS={runs}", "STUDY_METHODS=lora", f"STUDY_DATA={data}",
                   "STUDY_SET=steps=4 max_length=512 grad_accum=1 save_every=4", f"STUDY_TASKS={tasks}",
                   f"STUDY_SUITE={suite}", "STUDY_TARGET_LIMIT=16", "STUDY_GENERAL_LIMIT=8",
                   "STUDY_TARGET_ARGS=-n 1 --max-new-tokens 64", "STUDY_GENERAL_ARGS=--max-new-tokens 64",
                   f"PEFTARENA={shlex.join(c.peftarena)}"], env=env)
        if not c.dry and _ok(r, f"study run on {dev}"):
            s = {}
            import pandas as pd

            for k in ("target", "general"):
                summ = pd.read_parquet(runs / "lora" / f"eval_{k}_summary.parquet")
                row = summ[summ["metric"] == f"{k}_score"].iloc[0]
                s[k] = (float(row["value"]), float(row["ci_low"]), float(row["ci_high"]))
            results[dev] = s
    if c.dry:
        return
    for k in ("target", "general"):
        if set(results) != {"cuda", "cpu"}:
            c.rows.append(Row(f"study preset lora {k}_score", verdict="FAILED"))
            continue
        (a, _, _), (b, lo, hi) = results["cuda"][k], results["cpu"][k]
        # bf16 on CUDA (the preset's mixed precision is auto) vs float32 on the CPU: the scores need only
        # agree within the CPU score's interval
        c.rows.append(Row(f"study preset lora {k}_score", f"{a:.1f}", f"{b:.1f} [{lo:.1f}, {hi:.1f}]",
                          f"{a - b:+.1f}", "ok" if lo <= a <= hi else "DIFFERS"))


RUNNERS = {"cuda-vs-cpu": step_cuda_vs_cpu, "spectrum-bench": step_spectrum_bench, "fsdp": step_fsdp,
           "export": step_export, "served": step_served, "vllm": step_vllm, "study": step_study}


def print_table(rows: list[Row]) -> None:
    head = ("check", "CUDA", "CPU", "difference", "verdict")
    cells = [head] + [(r.check, r.cuda, r.cpu, r.diff, r.verdict) for r in rows]
    w = [max(len(str(x[i])) for x in cells) for i in range(5)]
    for i, x in enumerate(cells):
        print("  ".join(str(v).ljust(w[j]) for j, v in enumerate(x)).rstrip())
        if i == 0:
            print("  ".join("-" * n for n in w))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan (no torch, no GPU, nothing written)")
    ap.add_argument("--model", default="smollm2-135m", help="the default model (alias or HF directory)")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of: {', '.join(STEPS)}")
    ap.add_argument("--fsdp-config", default="configs/fsdp-lora.yaml")
    ap.add_argument("--bench-data", default=str(ROOT.parent / "shared" / "data"),
                    help="local benchmark files for the study step (math/, ifeval/, nq_open/)")
    ap.add_argument("--peftarena", default=str(ROOT / ".venv" / "bin" / "peftarena"),
                    help="the CLI command (a launcher prefix allowed, as PEFTARENA in make)")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in only if s not in STEPS]
    if bad:
        print(f"error: unknown step(s) {', '.join(bad)}; steps: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    c = Ctx(a, Path(a.workdir), sys.executable, shlex.split(a.peftarena), dry=a.dry_run)
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here (use --dry-run to see the plan)", file=sys.stderr)
            return 2
        c.work.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check {'plan' if a.dry_run else 'run'}: {len(only)} step(s), budget {BUDGET_S // 60} min, "
          f"work dir {c.work}")
    t0 = time.perf_counter()
    for i, name in enumerate(s for s in STEPS if s in only):
        print(f"[{i + 1}] {name}", flush=True)
        t = time.perf_counter()
        try:
            RUNNERS[name](c)
        except Exception as e:  # one broken step must not hide the others' results
            print(f"    {name} failed: {type(e).__name__}: {e}")
            c.rows.append(Row(name, verdict="FAILED", diff=f"{type(e).__name__}"))
        if not a.dry_run:
            print(f"    {time.perf_counter() - t:.0f} s", flush=True)
    if a.dry_run:
        return 0
    wall = time.perf_counter() - t0
    print()
    print_table(c.rows)
    print(f"\n{wall / 60:.1f} min" + (f" (over the {BUDGET_S // 60} min budget)" if wall > BUDGET_S else ""))
    return 1 if any(r.verdict in ("DIFFERS", "FAILED", "ERROR") for r in c.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

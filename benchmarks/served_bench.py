"""Benchmark: the served backend (``--backend openai`` against ``transformers serve``) vs the built-in
engine (``--backend hf``), on the same prompts, in one run.

    .venv/bin/python benchmarks/served_bench.py [--model smollm2-135m] [--task arith] [--limit 16]
    .venv/bin/python benchmarks/served_bench.py --model path/to/hf-dir --concurrency 4 --json out.json

It starts ``transformers serve MODEL --device cpu --dtype float32`` on a free local port (the extra
``transformers[serving]``), waits for ``GET /v1/models``, then evaluates the same target task twice
through the core entry point (:func:`peftarena_cli.evaluation.run.run_eval`): once with the local
engine (greedy, its default batching), once through the server (``--concurrency`` requests in
flight). The engine runs while the server idles, and the server generates while this process only
waits on sockets, so each measures one generator on the machine.

Printed: generated tokens, seconds and tokens/s of each (the engine counts the ids it decoded, the
server reports ``usage.completion_tokens``; both include a final EOS or the tokens up to a stop),
their ratio, and the greedy agreement: the share of items whose completion (after the stop cut) is
identical, which must be 100 % when the server runs the same weights and tokenizer in float32.
Run it alone on the machine: timings of a shared CPU mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(model_dir: str | Path, port: int) -> list[str]:
    """The ``transformers serve`` command line for a local HF directory on CPU in float32."""
    exe = Path(sys.executable).with_name("transformers")
    return [str(exe), "serve", str(model_dir), "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until GET /v1/models answers (or the server exits, or ``timeout`` passes: RuntimeError)."""
    t0 = time.time()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}")
        try:
            with opener.open(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"transformers serve did not answer within {timeout:.0f} s")


def start_server(model_dir, port: int | None = None, log=None):
    """(process, base URL) of ``transformers serve`` on ``model_dir``, ready for requests."""
    port = port or free_port()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(serve_cmd(model_dir, port), stdout=log or subprocess.DEVNULL,
                            stderr=log or subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except BaseException:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias or HF directory")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    from peftarena_cli.artifacts.loading import config_dir
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.evaluation.run import EvalConfig, run_eval

    model_dir = config_dir(resolve_model(a.model))
    common = dict(kind="target", base=a.model, task=a.task, limit=a.limit, max_new_tokens=a.max_new_tokens,
                  device="cpu", dtype="float32")
    hf = run_eval(EvalConfig(**common, backend="hf"))
    proc, url = start_server(model_dir)
    try:
        served = run_eval(EvalConfig(**common, backend="openai", base_url=url, concurrency=a.concurrency),
                          warn=lambda m: print("warning:", m, file=sys.stderr))
    finally:
        stop_server(proc)
    same = (hf.per_sample["completion"].to_numpy() == served.per_sample["completion"].to_numpy())
    out = {"model": a.model, "task": a.task, "items": int(len(same)), "concurrency": a.concurrency,
           "greedy_agreement_pct": 100.0 * float(same.mean()),
           "server": served.extra.get("served", {})}
    for name, res in (("hf", hf), ("openai", served)):
        r = res.runs[0]
        # generation time only (the scoring after it is the same for both)
        secs = r.generated_tokens / r.tokens_per_second if r.tokens_per_second else 0.0
        out[name] = {"generated_tokens": r.generated_tokens, "generation_seconds": round(secs, 3),
                     "tokens_per_second": round(r.tokens_per_second, 2)}
    out["served_over_hf"] = round(out["openai"]["tokens_per_second"] / out["hf"]["tokens_per_second"], 3) \
        if out["hf"]["tokens_per_second"] else None
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

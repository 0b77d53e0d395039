"""Train one grid point of `make sweep` (scripts/sweep.mk): run `peftarena finetune` and, when training
diverges, record it in the point's directory instead of failing the whole sweep.

    python scripts/sweep_train.py POINT_DIR -- PEFTARENA finetune MODEL -o POINT_DIR/train ...

finetune stops a run whose loss or weights become NaN/Inf (exit 1, ``error: training diverged at step
N: ...``). It marks ``train/manifest.json`` ``status: "diverged"`` only when a finite checkpoint was
kept; a run that diverged before its first checkpoint leaves no run directory at all. Either way this
writes ``POINT_DIR/diverged.json`` (the step, the reason and the finetune command), and exits 0 so that
the other grid points still run; `peftarena report` lists the point as excluded (docs/report.md,
"Sweeps"). Any other failure keeps finetune's exit status. The child's output is passed through as it
comes (progress bars included).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DIVERGED = re.compile(r"error: training diverged at step (\d+): (.*)")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python scripts/sweep_train.py POINT_DIR -- COMMAND ...", file=sys.stderr)
        return 2
    point, cmd = Path(argv[0]), argv[2:]
    point.mkdir(parents=True, exist_ok=True)
    marker = point / "diverged.json"
    if marker.exists():  # a previous try diverged: the same settings would diverge again
        print(f"{point}: diverged before ({marker}); not trained again", file=sys.stderr)
        return 0
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    tail = b""
    while True:
        chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(4096)
        if not chunk:
            break
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-16384:]
    rc = proc.wait()
    if rc == 0:
        return 0
    m = None
    for line in tail.decode("utf-8", "replace").splitlines():
        m = DIVERGED.search(line) or m
    if rc != 1 or m is None:
        return rc
    from peftarena_cli.artifacts.atomic import atomic_write_text

    atomic_write_text(marker, json.dumps({"status": "diverged", "stopped_at_step": int(m.group(1)),
                                          "stop_reason": m.group(2).strip(), "command": cmd}, indent=2) + "\n")
    print(f"{point}: training diverged at step {m.group(1)}; recorded in {marker}, the sweep goes on", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

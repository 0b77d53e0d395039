"""Train one grid point of `make sweep` (scripts/sweep.mk): run `peftarena finetune` and, when training
diverges, record it in the point's directory instead of failing the whole sweep.

    python scripts/sweep_train.py POINT_DIR -- PEFTARENA finetune MODEL -o POINT_DIR/train ...

finetune stops a run whose loss or weights become NaN/Inf (exit 1) and marks ``train/manifest.json``
``status: "diverged"`` with ``stopped_at_step``, ``stop_reason`` and ``last_finite_checkpoint`` (null
when it diverged before its first checkpoint; the manifest is kept then too). This reads that manifest
after a failed run, never finetune's message text: when it says "diverged", it writes
``POINT_DIR/diverged.json`` (the step, the reason, the last finite checkpoint and the finetune command)
and exits 0 so that the other grid points still run; `peftarena report` lists the point as excluded
(docs/report.md, "Sweeps"). Any other failure keeps finetune's exit status. The child's output passes
through untouched (progress bars included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_DIR = "train"  # the point's finetune run (-o POINT_DIR/train in scripts/sweep.mk)


def read_divergence(point: Path) -> dict | None:
    """The divergence recorded in ``POINT/train/manifest.json``, or None when the manifest is absent,
    unreadable or says anything but ``status: "diverged"``."""
    try:
        man = json.loads((point / RUN_DIR / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(man, dict) or man.get("status") != "diverged":
        return None
    return {"status": "diverged", "stopped_at_step": man.get("stopped_at_step"),
            "stop_reason": man.get("stop_reason"), "last_finite_checkpoint": man.get("last_finite_checkpoint")}


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
    rc = subprocess.call(cmd)
    if rc == 0:
        return 0
    div = read_divergence(point)
    if rc != 1 or div is None:
        return rc
    from peftarena_cli.artifacts.atomic import atomic_write_text

    atomic_write_text(marker, json.dumps({**div, "command": cmd}, indent=2) + "\n")
    print(f"{point}: training diverged at step {div['stopped_at_step']}; recorded in {marker}, the sweep goes on",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

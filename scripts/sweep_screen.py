"""The drift screen of `make sweep SCREEN=1` (scripts/sweep.mk): write ``SWEEP_RUNS/screen.json``.

    python scripts/sweep_screen.py SWEEP_RUNS

Reads every grid point's ``eval_target.parquet`` and ``drift.parquet`` and the base's target eval,
applies the rule of :mod:`peftarena_cli.report.screen` (through
:func:`peftarena_cli.report.sweep.build_screen`) (docs/report.md, "Sweeps") and writes the
configurations, the rule and the point paths ``selected`` for the full general eval. A point's
general-eval stage asks ``--selected SWEEP_RUNS POINT`` (exit 0: evaluate it; 3: screened out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from peftarena_cli.errors import PeftArenaError

    if len(argv) == 3 and argv[0] == "--selected":
        try:
            screen = json.loads((Path(argv[1]) / "screen.json").read_text())
        except (OSError, ValueError) as e:
            print(f"error: no readable screen in {argv[1]} ({e}); run the screen stage first", file=sys.stderr)
            return 1
        return 0 if argv[2].strip("/") in screen.get("selected", []) else 3
    if len(argv) != 1:
        print("usage: python scripts/sweep_screen.py SWEEP_RUNS | --selected SWEEP_RUNS POINT", file=sys.stderr)
        return 2
    from peftarena_cli.artifacts.atomic import atomic_write_text
    from peftarena_cli.report.screen import SCREEN_FILE
    from peftarena_cli.report.sweep import build_screen

    root = Path(argv[0])
    try:
        screen = build_screen(root)
    except PeftArenaError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    atomic_write_text(root / SCREEN_FILE, json.dumps(screen, indent=2) + "\n")
    print(f"screen: {len(screen['selected'])} point(s) get the full general eval, {len(screen['screened_out'])} "
          f"screened out ({root / SCREEN_FILE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

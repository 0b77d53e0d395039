"""Join interpolation curves evaluated separately (e.g. `--eval target` and `--eval general`) into one
curve with one row per (path, α), as `peftarena report` does. Used by scripts/arena.mk.

    python scripts/join_curves.py target_curve.parquet general_curve.parquet -o curve.parquet
"""

from __future__ import annotations

import argparse

import pandas as pd

from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
from peftarena_cli.report.build import combine_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    frames, provs = [], {}
    for p in a.curves:
        df, prov = read_table(p)
        frames.append(df)
        provs[p] = prov
    write_table(combine_curve(pd.concat(frames, ignore_index=True)), a.output,
                Provenance(command="join_curves", extra={"parts": provs}))


if __name__ == "__main__":
    main()

"""Join interpolation curves evaluated separately (e.g. `--eval target` and `--eval general`) into one
curve with one row per (path, α), as `peftarena report` does. Used by scripts/arena.mk.

    python scripts/join_curves.py target_curve.parquet general_curve.parquet -o curve.parquet
    python scripts/join_curves.py t.parquet g.parquet --ends runs/base runs/lora -o curve.parquet

With ``--ends BASE_DIR METHOD_DIR`` a sweep over interior α only gets its ends from the evals already
made: α = 0 is the base's target/general score and α = 1 the method's (read from the eval summaries in
those directories, as the report reads them). The arena sweeps α = 0.5 only and takes the ends this
way instead of evaluating the base and the method a second time; rewind's keep-target criterion
needs both ends on the curve.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
from peftarena_cli.report.build import combine_curve, with_endpoints


def curve_ends(base_dir: str, method_dir: str):
    """(leaderboard, method name) of the base and the method's eval summaries in these directories."""
    from peftarena_cli.report.collect import collect_results
    from peftarena_cli.report.leaderboard import build_leaderboard

    files = [str(Path(d) / f"eval_{k}_summary.parquet") for d in (base_dir, method_dir) for k in ("target", "general")]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"join_curves: --ends needs {missing[0]} (run the evals first)")
    methods = collect_results(files)
    base, method = Path(base_dir).name, Path(method_dir).name
    return build_leaderboard(methods, base_name=base), base, method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+")
    ap.add_argument("--ends", nargs=2, metavar=("BASE_DIR", "METHOD_DIR"))
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    frames, provs = [], {}
    for p in a.curves:
        df, prov = read_table(p)
        frames.append(df)
        provs[p] = prov
    curve = combine_curve(pd.concat(frames, ignore_index=True))
    if a.ends:
        lb, base, method = curve_ends(*a.ends)
        curve = with_endpoints(curve, lb, method, base_name=base)
    # the parts' inputs (base, finetuned) carry over: rewind --curve refuses a curve that does not name
    # the fine-tune it was measured on, and parts measured on different inputs are not one curve
    inputs: dict = {}
    for p, prov in provs.items():
        for role, value in (prov.get("inputs") or {}).items():
            if inputs.setdefault(role, value) != value:
                raise SystemExit(f"join_curves: {p} was measured on {role} {value}, another part on {inputs[role]}")
    write_table(curve, a.output, Provenance(command="join_curves", inputs=inputs, extra={"parts": provs, "ends": a.ends}))


if __name__ == "__main__":
    main()

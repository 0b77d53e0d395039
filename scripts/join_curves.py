"""Join interpolation curves evaluated separately (e.g. `--eval target` and `--eval general`) into one
curve with one row per (path, α), as `peftarena report` does. Used by scripts/arena.mk.

    python scripts/join_curves.py target_curve.parquet general_curve.parquet -o curve.parquet
    python scripts/join_curves.py t.parquet g.parquet --ends runs/base runs/lora -o curve.parquet

With ``--ends BASE_DIR METHOD_DIR`` a sweep over interior α only gets its ends from the evals already
made: α = 0 is the base's target/general score and α = 1 the method's (read from the eval summaries in
those directories, as the report reads them). The arena sweeps α = 0.5 only and takes the ends this
way instead of evaluating the base and the method a second time; rewind's keep-target criterion
needs both ends on the curve.

Beside the joined curve go its per-item rows, ``<stem>.target-samples.parquet`` and
``<stem>.general-samples.parquet`` (:mod:`peftarena_cli.report.join_samples`): the parts' rows (the
tables ``interpolate -o`` wrote beside each part) and, at the α the ends supply, the rows of
``eval_target.parquet`` / ``eval_general.parquet`` in the two directories. ``rewind --curve`` reads
them to pick α on one half of the items and report it on the other (docs/rewind.md). Ends evaluated on
other items than the parts are refused; when the parts have no per-item rows, none are written (the
rewind's scores are then in-sample, labelled).
"""

from __future__ import annotations

import argparse
import sys
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
    from peftarena_cli.errors import PeftArenaError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+")
    ap.add_argument("--ends", nargs=2, metavar=("BASE_DIR", "METHOD_DIR"))
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    try:
        join(a.curves, a.output, a.ends)
    except PeftArenaError as e:
        print(f"error: join_curves: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        raise SystemExit(1) from None


def join(curves, output, ends=None) -> None:
    """Join the parts ``curves`` (with ``ends``: BASE_DIR, METHOD_DIR) into ``output`` and its per-item
    tables beside it. Nothing is written when a check fails; the tables go before the curve, so a
    curve on disk always has its tables (make sees the curve as the stage's target)."""
    from peftarena_cli.artifacts.guard import check_outputs
    from peftarena_cli.artifacts.identity import path_identity
    from peftarena_cli.artifacts.tables import CURVE_SAMPLE_KINDS, curve_samples_path
    from peftarena_cli.errors import OutputError
    from peftarena_cli.report.join_samples import end_table, join_curve_samples

    beside = {f"-o ({k} samples)": curve_samples_path(output, k) for k in CURVE_SAMPLE_KINDS}
    reads = [*curves, *(curve_samples_path(p, k) for p in curves for k in CURVE_SAMPLE_KINDS),
             *(end_table(d, k) for d in (ends or ()) for k in CURVE_SAMPLE_KINDS)]
    outs = {"-o": output, **beside}
    check_outputs(outs, reads, tables=list(outs))
    frames, provs = [], {}
    for p in curves:
        df, prov = read_table(p)
        frames.append(df)
        provs[p] = prov
    curve = combine_curve(pd.concat(frames, ignore_index=True))
    if ends:
        lb, base, method = curve_ends(*ends)
        curve = with_endpoints(curve, lb, method, base_name=base)
    # the parts' inputs (base, finetuned) carry over: rewind --curve refuses a curve that does not name
    # the fine-tune it was measured on, and parts measured on different inputs are not one curve
    inputs: dict = {}
    for p, prov in provs.items():
        for role, value in (prov.get("inputs") or {}).items():
            if inputs.setdefault(role, value) != value:
                raise SystemExit(f"join_curves: {p} was measured on {role} {value}, another part on {inputs[role]}")
    samples, sources, why = join_curve_samples(curves, curve["alpha"], inputs, ends)
    if not samples:
        stale = [q for q in beside.values() if q.is_file()]
        for q in stale:  # tables of an earlier join would be read as this curve's items
            if read_table(q)[1].get("command") != "join_curves":
                raise OutputError(f"{str(q)!r} lies beside the output, and this join has no per-item rows to replace it",
                                  hint="move it away, or write the joined curve elsewhere")
        for q in stale:
            q.unlink()
            print(f"join_curves: removed {q} (an earlier join's per-item rows)", file=sys.stderr)
        print(f"join_curves: no per-item rows beside {output} ({why}); rewind --curve will pick in-sample", file=sys.stderr)
    for kind, df in samples.items():
        ident = {a: f"{s}@{path_identity(s)}" for a, s in sources[kind].items()}
        write_table(df, beside[f"-o ({kind} samples)"],
                    Provenance(command="join_curves", inputs=inputs, extra={"kind": kind, "rows": ident, "ends": ends}))
    write_table(curve, output, Provenance(command="join_curves", inputs=inputs, extra={"parts": provs, "ends": ends}))


if __name__ == "__main__":
    main()

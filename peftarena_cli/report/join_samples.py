"""The per-item rows of a joined interpolation curve (``scripts/join_curves.py``).

``interpolate -o PART`` writes each α's per-item rows beside PART (``<stem>.<kind>-samples.parquet``,
:func:`peftarena_cli.artifacts.tables.curve_samples_path`). A curve joined from several parts (target
and general swept separately), and given its ends from the base's and the method's own evals
(``--ends BASE_DIR METHOD_DIR``), has no such rows beside it, so ``rewind --curve`` could only pick
and score in-sample. :func:`join_curve_samples` builds them: for each kind, the parts' rows at their
α plus, at α = 0 and α = 1 when the ends supply those points, the rows of the base's and the
method's ``eval_<kind>.parquet`` (their ``model`` column dropped, ``alpha`` added), so that every α
of the joined curve has per-item rows in the format
:func:`peftarena_cli.interpolation.safe_pick.read_samples_beside` reads.

Refused (:class:`~peftarena_cli.errors.IncompatibleInputs`): an end evaluated on other items than the
parts' rows (a split would not pair them across α), an end whose provenance names another base or
fine-tune than the parts were measured on, and two parts with rows of one kind at the same α.

Core code: no printing.
"""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.artifacts.tables import CURVE_SAMPLE_KINDS, curve_samples_path, read_table
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

END_ALPHAS = {0.0: "base", 1.0: "method"}  # which --ends directory gives the point at this α
ALPHA_TOL = 1e-9


def end_table(directory, kind: str) -> Path:
    """The per-sample eval table of ``kind`` in a run directory (what ``make arena`` writes there)."""
    return Path(directory) / f"eval_{kind}.parquet"


def _identity(value) -> str:
    s = str(value or "")
    return s.rpartition("@")[2] if "@" in s else ""


def _end_rows(df, path, who: str):
    """The rows of the evaluated model of an end's per-sample table, without its ``model`` column:
    the base end's ``base`` rows, the method end's one non-base model."""
    if "model" not in df.columns:
        return df
    models = list(dict.fromkeys(df["model"].astype(str)))
    if len(models) > 1:
        pick = ["base"] if who == "base" and "base" in models else [m for m in models if m != "base"]
        if len(pick) != 1:
            raise InvalidArtifact(f"{str(path)!r} holds {len(models)} models ({', '.join(models)}); "
                                  f"which is the {who} end is not clear",
                                  hint="pass run directories whose evals hold one model each")
        df = df[df["model"].astype(str) == pick[0]]
    return df.drop(columns=["model"])


def _check_end_source(prov: dict, path, who: str, inputs: dict) -> None:
    """The end's eval must have been made on the base (α = 0) or the fine-tune (α = 1) the parts were
    measured on, when both provenances name them."""
    role = "base" if who == "base" else "finetuned"
    want = _identity(inputs.get(role))
    named = prov.get("inputs") if isinstance(prov, dict) else None
    got = {_identity(v) for v in (named or {}).values()} - {""}
    if want and got and want not in got:
        raise IncompatibleInputs(
            f"{str(path)!r} was not measured on the {'base' if who == 'base' else 'fine-tune'} the interpolation "
            f"was measured on ({inputs[role]})",
            hint=f"pass --ends directories whose evals are of this {'base' if who == 'base' else 'fine-tune'}")


def _check_items(ref, ref_name: str, rows, name: str, kind: str) -> None:
    from peftarena_cli import stats

    try:
        stats.check_same_items(stats.measure_of(ref, kind), stats.measure_of(rows, kind), names=(ref_name, name))
    except IncompatibleInputs as e:
        raise IncompatibleInputs(f"{name} is not on the items of {ref_name}: {e.message}",
                                 hint="evaluate the ends with the --limit, --seed and task files the interpolation "
                                      "used (make arena passes the same TARGET_LIMIT / GENERAL_LIMIT to both)") from None


def join_curve_samples(parts, curve_alphas, inputs: dict, ends=None) -> tuple[dict, dict, str]:
    """({kind: per-sample DataFrame with an alpha column}, {kind: {α: source}}, "") covering every α in
    ``curve_alphas`` for both kinds, or ({}, {}, why none) when the parts have no per-sample tables or
    some α has no rows of a kind (the rewind then picks in-sample, labelled).

    ``parts``: the curve files whose ``<stem>.<kind>-samples.parquet`` are read; ``inputs``: the joined
    curve's provenance inputs (base, finetuned); ``ends``: (BASE_DIR, METHOD_DIR) whose
    ``eval_<kind>.parquet`` give the rows at α = 0 and α = 1 the parts do not have."""
    import numpy as np
    import pandas as pd

    alphas = sorted({float(a) for a in curve_alphas})
    rows: dict = {}
    sources: dict = {}
    found = False
    for kind in CURVE_SAMPLE_KINDS:
        rows[kind], sources[kind] = [], {}
        for part in parts:
            q = curve_samples_path(part, kind)
            if not q.is_file():
                continue
            found = True
            df, prov = read_table(q)
            if "alpha" not in df.columns:
                raise InvalidArtifact(f"{str(q)!r} has no alpha column",
                                      hint="pass the curves `peftarena interpolate -o` wrote, with their per-sample tables")
            ft, want = _identity((prov.get("inputs") or {}).get("finetuned")), _identity(inputs.get("finetuned"))
            if ft and want and ft != want:
                raise IncompatibleInputs(f"{str(q)!r} was measured on another fine-tune than its curve's parts",
                                         hint="keep the per-sample tables interpolate wrote beside each part")
            for a in sorted({float(x) for x in df["alpha"]}):
                if a in sources[kind]:
                    raise IncompatibleInputs(f"{sources[kind][a]} and {str(q)!r} both have {kind} rows at α = {a:g}",
                                             hint="join parts that evaluate each kind at different α, or one part per kind")
                sources[kind][a] = str(q)
                rows[kind].append((a, str(q), df[np.isclose(df["alpha"].astype(float), a, rtol=0.0, atol=ALPHA_TOL)]))
    if not found:
        return {}, {}, "the joined parts have no per-sample tables beside them"
    for kind in CURVE_SAMPLE_KINDS:
        have = list(sources[kind])
        for a in alphas:
            if any(abs(a - h) <= ALPHA_TOL for h in have):
                continue
            who = next((w for e, w in END_ALPHAS.items() if abs(a - e) <= ALPHA_TOL), None)
            if who is None or not ends:
                return {}, {}, f"no {kind} per-item rows at α = {a:g}"
            q = end_table(ends[0] if who == "base" else ends[1], kind)
            if not q.is_file():
                return {}, {}, f"no {kind} per-item rows at α = {a:g} ({q} is missing)"
            df, prov = read_table(q)
            _check_end_source(prov, q, who, inputs)
            rows[kind].append((a, str(q), _end_rows(df, q, who).assign(alpha=float(a))))
            sources[kind][a] = str(q)
        if not rows[kind]:
            return {}, {}, f"no {kind} per-item rows"
        rows[kind].sort(key=lambda r: r[0])
        ref_a, ref_name, ref = next((r for r in rows[kind] if "samples" in Path(r[1]).name), rows[kind][0])
        for a, name, df in rows[kind]:
            if name != ref_name:
                _check_items(ref, f"{ref_name} (α = {ref_a:g})", df, f"{name} (α = {a:g})", kind)
    out = {kind: pd.concat([r[2] for r in rows[kind]], ignore_index=True) for kind in CURVE_SAMPLE_KINDS}
    return out, {k: {repr(a): s for a, s in sorted(v.items())} for k, v in sources.items()}, ""

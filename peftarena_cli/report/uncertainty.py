"""Intervals and paired comparisons for the report, from the per-sample eval rows each method's
directory holds (docs/report.md, "Uncertainty").

* :func:`method_measures` — a method's target and general :class:`~peftarena_cli.stats.Measure`
  (per-item scores) from its per-sample tables;
* :func:`curve_measures` — the same per interpolation point (path, α) from interpolate's per-sample
  tables;
* :func:`compare` — a paired comparison that turns "not on the same items" into a note instead of
  an error (the report still draws what it can; ``peftarena compare`` refuses instead).
"""

from __future__ import annotations

import math

from peftarena_cli import stats
from peftarena_cli.errors import IncompatibleInputs


def split_measures(df) -> dict:
    """{"target": Measure, "general": Measure} of a per-sample table holding either or both kinds."""
    if df is None or not len(df):
        return {}
    scorers = stats.task_scorers(df)
    out = {}
    for kind in ("target", "general"):
        tasks = [t for t, sc in scorers.items() if stats.is_general_scorer(sc) == (kind == "general")]
        if tasks:
            sub = df[df["task"].astype(str).isin(tasks)]
            out[kind] = stats.measure_of(sub, kind)
    return out


def method_measures(m) -> dict:
    """A method's per-item measures, or {} when it has no per-sample tables."""
    return split_measures(m.tables.get("samples"))


def curve_measures(m) -> dict:
    """{(path or None, α): {kind: Measure}} from a method's interpolate per-sample tables."""
    df = m.tables.get("curve_samples")
    if df is None or not len(df):
        return {}
    out: dict = {}
    keys = ["path", "alpha"] if "path" in df.columns else ["alpha"]
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        path, alpha = (key[0], float(key[1])) if len(key) == 2 else (None, float(key[0]))
        if isinstance(path, float) and math.isnan(path):
            path = None
        out.setdefault((path, round(alpha, 6)), {}).update(split_measures(g))
    return out


def compare(a, b, names=("A", "B"), seed: int = 0):
    """(PairedResult a − b in points, note). None and a note when either is missing or they are not
    on the same items."""
    if a is None or b is None:
        return None, ""
    try:
        return stats.paired_difference(a, b, seed=seed, names=names).scaled(100.0), ""
    except IncompatibleInputs as e:
        return None, str(e)


def same_items(a, b) -> str:
    """"" when two measures are on the same items, else the mismatch as a sentence."""
    try:
        stats.check_same_items(a, b)
        return ""
    except IncompatibleInputs as e:
        return str(e)


def interval_of(measure) -> stats.Interval | None:
    return measure.interval().scaled(100.0) if measure is not None else None


def fmt_paired(r, what: str = "difference") -> str:
    """"+3.10 ± 4.20 (95 % CI [−1.1, 7.3], McNemar exact p = 0.21)"."""
    if r is None or not math.isfinite(r.low):
        return "undefined (n < 2)" if r is not None else "unknown"
    return (f"{r.diff:+.2f} ± {r.half_width:.2f} (95% CI [{r.low:+.1f}, {r.high:+.1f}], {r.test} p {_p(r.p_value)})")


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"= {p:.3f}" if p >= 0.001 else "< 0.001"

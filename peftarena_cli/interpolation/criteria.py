"""Picking α from an interpolation curve: the criteria ``rewind --pick`` understands.

A curve is the Parquet table ``interpolate --eval target,general`` writes: one row per α with
(at least) the columns ``alpha``, ``target`` and ``general`` (scores in percent).

Criteria (``NAME`` or ``NAME:VALUE``):

* ``keep-target:X`` (default X = 0.9): the highest general score among the α whose target gain
  keeps at least a fraction X of the fine-tune's gain: target(α) − target(0) ≥ X·(target(1) − target(0)).
  Needs α = 0 and α = 1 on the curve. X may be written as 0.9 or 90%.
* ``weighted:W`` (default W = 0.5): the highest W·target + (1 − W)·general.
* ``max-general`` / ``max-target``: the highest general (target) score.

Ties go to the larger α (closer to the fine-tune). The result says why, in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftarena_cli.errors import InvalidArtifact, UsageError

CRITERIA = ("keep-target", "weighted", "max-general", "max-target")
CURVE_COLUMNS = ("alpha", "target", "general")


@dataclass
class Pick:
    alpha: float
    criterion: str
    reason: str
    target: float
    general: float


def parse_criterion(text: str) -> tuple[str, float | None]:
    name, _, val = str(text).strip().partition(":")
    name = name.lower()
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion {text!r}", hint="use keep-target:0.9, weighted:0.5, max-general or max-target")
    if not val:
        return name, {"keep-target": 0.9, "weighted": 0.5}.get(name)
    try:
        v = float(val[:-1]) / 100.0 if val.endswith("%") else float(val)
    except ValueError:
        raise UsageError(f"bad value in criterion {text!r}", hint="e.g. keep-target:0.9 or keep-target:90%") from None
    if name in ("max-general", "max-target"):
        raise UsageError(f"{name} takes no value")
    if not 0.0 <= v <= 1.0:
        raise UsageError(f"the value in {text!r} must be in [0, 1] (or 0%..100%)")
    return name, v


def check_curve(df) -> None:
    """Raise InvalidArtifact unless ``df`` is a curve with numeric alpha/target/general and no gaps."""
    import pandas as pd

    missing = [c for c in CURVE_COLUMNS if c not in df.columns]
    if missing:
        raise InvalidArtifact(
            f"the curve has no column {', '.join(missing)} (it has: {', '.join(map(str, df.columns[:8]))})",
            hint="pass a curve written by `peftarena interpolate --eval target,general -o curve.parquet`",
        )
    if len(df) == 0:
        raise InvalidArtifact("the curve has no rows", hint="rerun interpolate with some --alphas")
    for c in CURVE_COLUMNS:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise InvalidArtifact(f"the curve's column {c!r} is not numeric")
        if df[c].isna().any():
            raise InvalidArtifact(f"the curve's column {c!r} has missing values",
                                  hint="rerun interpolate with --eval target,general")


def pick_alpha(df, criterion: str) -> Pick:
    """Choose α on the curve ``df`` by ``criterion`` (see the module docstring)."""
    check_curve(df)
    name, val = parse_criterion(criterion)
    d = df.groupby("alpha", as_index=False)[["target", "general"]].mean().sort_values("alpha")
    label = name if val is None else f"{name}:{val:g}"
    if name == "keep-target":
        if not (d["alpha"] == 0).any() or not (d["alpha"] == 1).any():
            raise InvalidArtifact("keep-target needs α = 0 and α = 1 on the curve",
                                  hint="rerun interpolate with --alphas 0:1:0.1, or use --pick weighted:0.5")
        t0 = float(d.loc[d["alpha"] == 0, "target"].iloc[0])
        t1 = float(d.loc[d["alpha"] == 1, "target"].iloc[0])
        gain = t1 - t0
        need = t0 + val * gain
        ok = d[d["target"] >= need - 1e-9]
        best = ok.sort_values(["general", "alpha"], ascending=[False, False]).iloc[0]
        reason = (f"highest general score ({best['general']:.4g}) among the {len(ok)} of {len(d)} α points whose "
                  f"target score is at least {need:.4g} = target(0) {t0:.4g} + {val:g} × gain {gain:.4g}")
    elif name == "weighted":
        score = val * d["target"] + (1 - val) * d["general"]
        d = d.assign(_score=score)
        best = d.sort_values(["_score", "alpha"], ascending=[False, False]).iloc[0]
        reason = f"highest {val:g}·target + {1 - val:g}·general = {best['_score']:.4g} over {len(d)} α points"
    else:
        col = "general" if name == "max-general" else "target"
        best = d.sort_values([col, "alpha"], ascending=[False, False]).iloc[0]
        reason = f"highest {col} score ({best[col]:.4g}) over {len(d)} α points"
    return Pick(alpha=float(best["alpha"]), criterion=label, reason=reason,
                target=float(best["target"]), general=float(best["general"]))

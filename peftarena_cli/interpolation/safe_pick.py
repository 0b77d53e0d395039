"""Selection-safe picks of α: choose the point on one part of the items and report its scores on the
other (docs/rewind.md, "Selection-safe picks").

``rewind --pick`` picks α by a criterion (:mod:`peftarena_cli.interpolation.criteria`). Reporting the
picked point's scores on the items that picked it overstates them: among many α, the winner is in
part the one whose items happened to go its way. :func:`safe_pick` therefore uses the per-item rows
``interpolate`` writes beside the curve (``<stem>.target-samples.parquet``,
``<stem>.general-samples.parquet``) and splits the items in two halves by a hash of their id
(:func:`peftarena_cli.report.selection.item_half`: the same item lands in the same half at every α
and in every run):

* ``split`` (default): α is picked by the criterion on half 0; the written α's target and general
  scores, and their intervals, are computed on half 1 alone;
* ``crossfit``: 2-fold cross-fitting. α is picked on all items (the best use of them for the
  choice); the reported scores are the cross-fitted estimate of what picking by this criterion
  scores on unseen items (pick on half 0 and score on half 1, pick on half 1 and score on half 0,
  average). They describe the picking rule, not the written α's own held-out score;
* ``none``: the curve's own scores at the picked α, labelled in-sample.

Without per-item rows beside the curve the pick is made on the curve and the scores are in-sample,
and the result says so (``reported_on = "in-sample"`` with the reason in ``note``), never silently.

Core code: no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.artifacts.tables import CURVE_SAMPLE_KINDS, curve_samples_beside
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact, UsageError
from peftarena_cli.interpolation.criteria import check_curve, parse_criterion, pick_alpha

SELECTIONS = ("split", "crossfit", "none")
DEFAULT_SELECTION = "split"
KINDS = CURVE_SAMPLE_KINDS


@dataclass
class SafePick:
    """The picked α and the scores reported for it (percent), with where they come from.

    ``selection``: a label such as ``"split on 40 target + 60 general items"``; ``reported_on``:
    ``"held-out"`` or ``"in-sample"``; ``intervals``: {kind: (low, high)} (NaN when in-sample);
    ``n_items``: {kind: items the scores are computed on}; ``folds``: per fold the half that
    picked, the α it picked and the items that picked and reported."""

    alpha: float
    criterion: str
    reason: str
    mode: str
    selection: str
    reported_on: str
    target: float
    general: float
    intervals: dict = field(default_factory=dict)
    n_items: dict = field(default_factory=dict)
    folds: list = field(default_factory=list)
    salt: str = ""
    note: str = ""

    def record(self) -> dict:
        """What the rewound artifact's metadata records about the pick (docs/rewind.md, "Metadata")."""
        out = {"criterion": self.criterion, "reason": self.reason, "selection": self.selection,
               "selection_mode": self.mode, "reported_on": self.reported_on,
               "target": self.target, "general": self.general}
        for kind in KINDS:
            lo, hi = self.intervals.get(kind, (math.nan, math.nan))
            out[f"{kind}_low"], out[f"{kind}_high"] = (lo if math.isfinite(lo) else None), (hi if math.isfinite(hi) else None)
        if self.n_items:
            out["n_items"] = dict(self.n_items)
        if self.folds:
            out["folds"] = list(self.folds)
            out["salt"] = self.salt
        if self.note:
            out["selection_note"] = self.note
        return out


def check_selection(mode: str) -> str:
    m = str(mode).strip().lower()
    if m not in SELECTIONS:
        raise UsageError(f"unknown --selection {mode!r}", hint="use split (default), crossfit or none")
    return m


def samples_beside(curve) -> dict:
    """{kind: path} of the per-sample tables ``interpolate -o CURVE`` writes beside ``curve``."""
    return curve_samples_beside(curve)


def read_samples_beside(curve, curve_prov: dict) -> tuple[dict, str]:
    """({kind: per-sample DataFrame}, "") of the tables beside ``curve``, or ({}, why not). A table
    whose provenance names another fine-tune than the curve's is refused (it measured something else)."""
    from peftarena_cli.artifacts.tables import read_table

    paths = samples_beside(curve)
    missing = [k for k in KINDS if k not in paths]
    if missing:
        names = ", ".join(f"{Path(curve).stem}.{k}-samples.parquet" for k in missing)
        return {}, f"no per-item rows beside the curve ({names})"
    want = _finetuned_of(curve_prov)
    out = {}
    for kind, q in paths.items():
        df, prov = read_table(q)
        got = _finetuned_of(prov)
        if want and got and got != want:
            raise IncompatibleInputs(f"{str(q)!r} was measured on another fine-tune than the curve {str(curve)!r}",
                                     hint="keep the per-sample tables interpolate wrote with the curve beside it")
        out[kind] = df
    return out, ""


def _finetuned_of(prov) -> str:
    inputs = prov.get("inputs") if isinstance(prov, dict) else None
    return str(inputs.get("finetuned") or "") if isinstance(inputs, dict) else ""


def item_values(samples: dict, alphas) -> tuple[dict, dict]:
    """({kind: item keys}, {α: {kind: per-item values in points}}) from interpolate's per-sample
    tables: per item, the value whose mean over the items is the curve's composite score exactly
    (:func:`peftarena_cli.report.sweep_stats.item_differences` against zero). Every α must be
    evaluated on the same items (refused otherwise: the halves would not be paired across α)."""
    import numpy as np

    from peftarena_cli import stats
    from peftarena_cli.report.sweep_stats import item_differences

    keys: dict = {}
    values: dict = {}
    for kind in KINDS:
        df = samples[kind]
        if "alpha" not in df.columns:
            raise InvalidArtifact(f"the {kind} per-sample table beside the curve has no alpha column",
                                  hint="pass the tables `peftarena interpolate -o curve.parquet` wrote")
        a_col = df["alpha"].astype(float)
        for a in alphas:
            g = df[np.isclose(a_col, a, rtol=0.0, atol=1e-9)]
            if not len(g):
                raise InvalidArtifact(f"the {kind} per-sample table beside the curve has no rows at α = {a:g}",
                                      hint="pass the tables interpolate wrote with this curve")
            meas = stats.measure_of(g, kind)
            zero = stats.Measure(meas.kind, [_zeroed(s) for s in meas.strata])
            k, c = item_differences(meas, zero)
            if kind not in keys:
                keys[kind] = list(k)
            elif set(k) != set(keys[kind]) or len(k) != len(keys[kind]):
                raise InvalidArtifact(f"the {kind} items at α = {a:g} are not those at α = {alphas[0]:g}",
                                      hint="evaluate every α on the same items (one interpolate run)")
            idx = {kk: i for i, kk in enumerate(k)}
            order = np.array([idx[kk] for kk in keys[kind]], dtype=int)
            values.setdefault(a, {})[kind] = 100.0 * np.asarray(c, dtype=float)[order]
    return keys, values


def _zeroed(s):
    import numpy as np
    from dataclasses import replace

    return replace(s, y=np.zeros_like(s.y, dtype=float))


def _chooser(criterion: str, alpha_of: dict):
    """A chooser for :func:`peftarena_cli.report.selection.cross_fit_select`: the criterion applied to
    the curve of the picking half's means."""
    def choose(means: dict) -> str:
        a = pick_alpha(_half_curve(means, alpha_of), criterion).alpha
        return next(k for k in means if alpha_of[k] == a)

    return choose


def _in_sample(df, criterion: str, mode: str, note: str) -> SafePick:
    p = pick_alpha(df, criterion)
    return SafePick(alpha=p.alpha, criterion=p.criterion, reason=p.reason, mode=mode,
                    selection=f"in-sample ({note})", reported_on="in-sample", target=p.target, general=p.general,
                    intervals={k: (math.nan, math.nan) for k in KINDS}, note=note)


def safe_pick(df, criterion: str, samples: dict | None = None, mode: str = DEFAULT_SELECTION,
              salt: str = "", missing: str = "") -> SafePick:
    """Pick α on the curve ``df`` by ``criterion`` and report its scores selection-safely (module
    docstring). ``samples``: {"target": rows, "general": rows} of interpolate's per-sample tables, or
    None/{} when there are none (the scores are then in-sample, labelled)."""
    from peftarena_cli.errors import DataError
    from peftarena_cli.report.selection import Candidate, cross_fit_select, split_select

    mode = check_selection(mode)
    check_curve(df)
    parse_criterion(criterion)
    if mode == "none":
        return _in_sample(df, criterion, mode, "--selection none: scored on the items that picked it")
    if not samples or any(k not in samples for k in KINDS):
        return _in_sample(df, criterion, mode, (missing or "no per-item rows beside the curve")
                          + ": scored on the items that picked it")
    alphas = sorted({float(a) for a in df["alpha"]})
    keys, values = item_values(samples, alphas)
    alpha_of = {repr(a): a for a in alphas}
    cands = [Candidate(repr(a), values[a]) for a in alphas]
    counts = " + ".join(f"{len(keys[k])} {k}" for k in KINDS) + " items"
    choose = _chooser(criterion, alpha_of)
    try:
        res = (split_select if mode == "split" else cross_fit_select)(cands, keys, salt=salt, chooser=choose)
    except DataError as e:
        raise DataError(f"too few items for a selection-safe pick: {e.message}",
                        hint="evaluate more items (interpolate --limit), or pass --selection none "
                             "(the scores are then labelled in-sample)") from None
    folds = [{"pick_half": f.pick_half, "alpha": alpha_of[f.picked],
              "pick_items": {k: len(v) for k, v in f.pick_items.items()},
              "report_items": {k: len(v) for k, v in f.report_items.items()},
              "reported": dict(f.reported)} for f in res.folds]
    ivs = {k: (float(res.interval[k].interval.low), float(res.interval[k].interval.high)) for k in KINDS}
    if mode == "split":
        f = res.folds[0]
        picked = pick_alpha(_half_curve(f.pick_scores, alpha_of), criterion)
        n_rep = {k: len(v) for k, v in f.report_items.items()}
        selection = (f"split on {counts}: picked on " + " + ".join(f"{len(f.pick_items[k])} {k}" for k in KINDS)
                     + ", reported on " + " + ".join(f"{n_rep[k]} {k}" for k in KINDS) + " held-out items")
        return SafePick(alpha=alpha_of[f.picked], criterion=picked.criterion,
                        reason=f"on the picking half: {picked.reason}", mode=mode, selection=selection,
                        reported_on="held-out", target=res.value["target"], general=res.value["general"],
                        intervals=ivs, n_items=n_rep, folds=folds, salt=salt)
    full = pick_alpha(df, criterion)
    picks = sorted({alpha_of[f.picked] for f in res.folds})
    note = ""
    if picks != [full.alpha]:
        note = ("the folds picked α = " + " and ".join(f"{alpha_of[f.picked]:g}" for f in res.folds)
                + f", all items α = {full.alpha:g}: the reported scores are those of the picking rule, "
                  "not of the written α alone")
    return SafePick(alpha=full.alpha, criterion=full.criterion, reason=f"on all items: {full.reason}", mode=mode,
                    selection=f"crossfit-2 on {counts}", reported_on="held-out (cross-fitted)",
                    target=res.value["target"], general=res.value["general"], intervals=ivs,
                    n_items={k: len(keys[k]) for k in KINDS}, folds=folds, salt=salt, note=note)


def _half_curve(means: dict, alpha_of: dict):
    import pandas as pd

    return pd.DataFrame({"alpha": [alpha_of[k] for k in means],
                         "target": [v["target"] for v in means.values()],
                         "general": [v["general"] for v in means.values()]})

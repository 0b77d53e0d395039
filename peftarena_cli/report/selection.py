"""Selection-safe picks: choose a point (an α on an interpolation path, or a grid configuration) on
one half of the items and report its scores on the other half (docs/report.md, "Sweeps: seeds,
learning rates and frontiers (statistics)").

Picking the best of several candidates and reporting the score that picked it is biased upwards:
the winner is, in part, the candidate whose items happened to go its way. Here the items are split
in two halves by a hash of their id (:func:`item_half`: the same item lands in the same half in every
run, whatever else is evaluated), and the pick is 2-fold cross-fitted (:func:`cross_fit_select`):
pick on half A and report on half B, pick on half B and report on half A, and average the two
reports. No reported number is computed from an item that took part in choosing the candidate it
belongs to; the result names, per fold, which items picked and which reported. :func:`split_select`
is the one-directional form (pick on half 0, report the picked candidate on half 1 alone), which
``rewind --pick`` uses by default; a ``chooser`` replaces the per-candidate objective for rules
that compare candidates (an α keeping a share of the fine-tune's gain). :func:`rewind_selection`
reads how a rewound artifact's α was picked, for the report's ``selection`` column.

Core code: numpy only, no printing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from peftarena_cli import stats
from peftarena_cli.errors import DataError, IncompatibleInputs, UsageError
from peftarena_cli.report.sweep_stats import SeedItemResult, seed_item_interval

CONF = stats.CONF


def item_id(key) -> str:
    """A stable text form of an item key (a tuple such as (task, id) or (task, subtask, id), or a
    scalar): the parts' str joined by the unit separator."""
    if isinstance(key, (tuple, list)):
        return "\x1f".join(str(k) for k in key)
    return str(key)


def item_half(key, salt: str = "") -> int:
    """0 or 1: the half an item belongs to, from SHA-256 of ``salt`` and its id (stable across runs,
    machines and Python processes; independent of the other items)."""
    h = hashlib.sha256((salt + "\x1e" + item_id(key)).encode("utf-8")).digest()
    return h[0] & 1


def split_items(keys, salt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(indices in half 0, indices in half 1) of ``keys``: disjoint and covering every item."""
    halves = np.array([item_half(k, salt) for k in keys], dtype=int)
    return np.flatnonzero(halves == 0), np.flatnonzero(halves == 1)


@dataclass
class Candidate:
    """A point that may be picked: ``measures`` {name: S × n matrix, or n-vector, of per-item values}
    on the items of that measure (e.g. {"gain": ..., "forgetting": ...})."""

    key: str
    measures: dict


@dataclass
class Fold:
    """One direction of the cross-fit: the candidate ``picked`` on ``pick_items`` ({measure: item
    keys}) by its ``pick_scores`` ({candidate: objective on the picking half}), reported on
    ``report_items`` with ``reported`` ({measure: value on the reporting half})."""

    pick_half: int
    picked: str
    pick_scores: dict
    pick_items: dict
    report_items: dict
    reported: dict


@dataclass
class SelectionResult:
    """The cross-fitted report: per measure the mean of the two folds' reports (``value``) with its
    seed-and-item interval (``interval``), the cross-fitted objective, and both folds."""

    folds: list
    value: dict
    interval: dict = field(default_factory=dict)
    objective: float = math.nan
    salt: str = ""


def default_objective(means: dict) -> float:
    """gain − forgetting when both are measured, else the one measure's mean (maximised)."""
    if "gain" in means and "forgetting" in means:
        return means["gain"] - means["forgetting"]
    if len(means) == 1:
        return next(iter(means.values()))
    raise UsageError(f"no default objective for measures {sorted(means)}: pass objective=")


def _matrix(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[None, :] if x.ndim == 1 else x


def cross_fit_select(candidates, item_keys: dict, objective=None, salt: str = "",
                     conf: float = CONF, chooser=None) -> SelectionResult:
    """Pick on one half of the items, report on the other, both ways, and average (module docstring).

    ``item_keys``: {measure: the item keys of that measure's columns}; every candidate has every
    measure on those items. ``objective``: a function of {measure: mean over the picking half's
    items (and seeds)} to maximise (default :func:`default_objective`); ties go to the first
    candidate. ``chooser`` instead: a function of {candidate key: {measure: mean over the picking
    half}} returning the picked key, for rules that compare candidates with each other (an α that
    keeps a share of the fine-tune's gain); each fold's ``pick_scores`` are then those means. Each
    measure's items are split by :func:`item_half` with ``salt``.
    """
    return _select(candidates, item_keys, objective, salt, conf, chooser, (0, 1))


def split_select(candidates, item_keys: dict, objective=None, salt: str = "", conf: float = CONF,
                 chooser=None) -> SelectionResult:
    """One direction of :func:`cross_fit_select`: pick on half 0, report on half 1 only. The one
    picked candidate's value and interval come from the half-1 items alone (the interval is the
    seed-and-item interval of its half-1 columns), so the reported number is the picked
    candidate's own score on items that never took part in picking it."""
    return _select(candidates, item_keys, objective, salt, conf, chooser, (0,))


def _select(candidates, item_keys: dict, objective, salt: str, conf: float, chooser, pick_halves) -> SelectionResult:
    cands = list(candidates)
    if not cands:
        raise UsageError("no candidate to pick from")
    objective = objective or default_objective
    names = list(item_keys)
    mats = {c.key: {m: _matrix(c.measures[m]) for m in names} for c in cands}
    if len(mats) != len(cands):
        raise UsageError("two candidates share a key")
    halves = {}
    for m in names:
        n = len(item_keys[m])
        for c in cands:
            if m not in c.measures:
                raise IncompatibleInputs(f"candidate {c.key!r} has no {m!r} values")
            if mats[c.key][m].shape[1] != n:
                raise IncompatibleInputs(f"candidate {c.key!r}: {mats[c.key][m].shape[1]} {m} items, {n} item keys",
                                         hint="pass every candidate's values on the same items, in the keys' order")
        h0, h1 = split_items(item_keys[m], salt)
        if len(h0) < 2 or len(h1) < 2:
            raise DataError(f"{m}: {len(h0)} and {len(h1)} items in the two halves; a selection-safe pick "
                            "needs at least 2 in each", hint="evaluate more items")
        halves[m] = (h0, h1)
    folds = []
    for pick in pick_halves:
        rep = 1 - pick
        means = {c.key: {m: float(mats[c.key][m][:, halves[m][pick]].mean()) for m in names} for c in cands}
        if chooser is not None:
            scores = means
            best = chooser(means)
            if best not in mats:
                raise UsageError(f"the chooser picked {best!r}, which is not a candidate")
        else:
            scores = {k: float(objective(v)) for k, v in means.items()}
            best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
        folds.append(Fold(pick, best, scores,
                          {m: [item_keys[m][i] for i in halves[m][pick]] for m in names},
                          {m: [item_keys[m][i] for i in halves[m][rep]] for m in names},
                          {m: float(mats[best][m][:, halves[m][rep]].mean()) for m in names}))
    if len(folds) == 1:  # split: the one pick, on the reporting half alone
        f = folds[0]
        value = dict(f.reported)
        intervals = {m: seed_item_interval(mats[f.picked][m][:, halves[m][1 - f.pick_half]], conf) for m in names}
        obj = objective(f.reported) if chooser is None else math.nan
        return SelectionResult(folds, value, intervals, float(obj), salt)
    value = {m: 0.5 * (folds[0].reported[m] + folds[1].reported[m]) for m in names}
    intervals = {m: _cross_fit_interval(mats, folds, halves[m], m, conf) for m in names}
    obj = (0.5 * (objective(folds[0].reported) + objective(folds[1].reported))) if chooser is None else math.nan
    return SelectionResult(folds, value, intervals, float(obj), salt)


def _cross_fit_interval(mats, folds, halves, m: str, conf: float) -> SeedItemResult:
    """The cross-fitted value ½(mean on half 1 of fold 0's pick + mean on half 0 of fold 1's pick) as
    the grid mean of one S × n matrix: item i takes the values of the candidate picked on the other
    half, weighted n / (2·n_half) so that the plain mean is the cross-fitted one."""
    n = sum(len(h) for h in halves)
    rows = {mats[f.picked][m].shape[0] for f in folds}
    mixed = len(rows) > 1
    combined = np.empty((1 if mixed else rows.pop(), n))
    for f in folds:
        idx = halves[1 - f.pick_half]
        src = mats[f.picked][m]
        if combined.shape[0] != src.shape[0]:
            src = src.mean(axis=0, keepdims=True)
        combined[:, idx] = src[:, idx] * (n / (2.0 * len(idx)))
    res = seed_item_interval(combined, conf)
    if mixed:
        res.note = res.interval.note = "the two picks have different seed counts: item interval of the seed means"
    return res


def rewind_selection(path) -> dict | None:
    """The pick record of a rewound artifact (``rewind --curve``): {"selection", "reported_on",
    "alpha", "criterion"} from its safetensors metadata (key ``peftarena_rewind``), or None when
    ``path`` is not a rewound artifact or its α was given, not picked. ``path``: an adapter
    directory or file, or a full checkpoint directory."""
    import json
    from pathlib import Path

    from peftarena_cli.artifacts.safetensors_io import check_safetensors
    from peftarena_cli.errors import PeftArenaError

    if path is None:
        return None
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors")) if p.is_dir() else []
    for f in files:
        try:
            meta = (check_safetensors(f) or {}).get("__metadata__") or {}
            rec = json.loads(meta.get("peftarena_rewind") or "{}")
        except (PeftArenaError, OSError, ValueError, AttributeError):
            continue
        if isinstance(rec, dict) and rec.get("criterion"):
            sel = rec.get("selection") or "in-sample (rewound before selection-safe picks)"
            folds = rec.get("folds") if isinstance(rec.get("folds"), list) else []
            pick_half = folds[0].get("pick_half") if folds and isinstance(folds[0], dict) else None
            return {"selection": str(sel), "reported_on": str(rec.get("reported_on") or "in-sample"),
                    "alpha": rec.get("alpha"), "criterion": str(rec["criterion"]),
                    "mode": str(rec.get("selection_mode") or ""), "salt": str(rec.get("salt") or ""),
                    "reported_half": (1 - int(pick_half)) if pick_half in (0, 1) and len(folds) == 1 else None,
                    "curve": str(rec.get("curve") or "").rpartition("@")[0] or None}
    return None


# ---------------------------------------------------------------- a rewound point's own evals
def restrict_measure(measure, salt: str, half: int):
    """``measure`` (a :class:`~peftarena_cli.stats.Measure`) on the items with ``item_half(key, salt) ==
    half`` only: each stratum keeps those items (its numerators and instruction counts with them), a
    stratum left without items is dropped, so the composite is the same formula on fewer items."""
    from dataclasses import replace

    from peftarena_cli import stats

    strata = []
    for s in measure.strata:
        idx = [i for i, k in enumerate(s.keys) if item_half(k, salt) == half]
        if idx:
            strata.append(replace(s, keys=[s.keys[i] for i in idx], y=np.asarray(s.y)[idx], m=np.asarray(s.m)[idx]))
    return stats.Measure(measure.kind, strata)


@dataclass
class PickScope:
    """Which items a rewound point's leaderboard row may be scored on (:func:`pick_scope`).

    ``label``: the leaderboard's ``selection`` text; ``held_out``: {"salt", "half"} when the row is
    restricted to the held-out half of a split pick (None: its own evals are used whole); ``clean``:
    whether the row's scores are free of the items that picked its α; ``note``: why."""

    label: str
    held_out: dict | None = None
    clean: bool = False
    note: str = ""
    pick: dict = field(default_factory=dict)  # the pick record (rewind_selection)


def _curve_item_keys(curve) -> dict | None:
    """{kind: set of item keys} of the per-item rows interpolate wrote beside ``curve``; None when
    there are none (or they cannot be read)."""
    from peftarena_cli import stats
    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.errors import PeftArenaError
    from peftarena_cli.artifacts.tables import CURVE_SAMPLE_KINDS as KINDS
    from peftarena_cli.artifacts.tables import curve_samples_beside as samples_beside

    if not curve:
        return None
    paths = samples_beside(curve)
    if any(k not in paths for k in KINDS):
        return None
    out = {}
    for kind, p in paths.items():
        try:
            df, _ = read_table(p)
            out[kind] = {k for s in stats.measure_of(df, kind).strata for k in s.keys}
        except (PeftArenaError, OSError, ValueError, KeyError):
            return None
    return out


def pick_scope(pick: dict, own: dict) -> PickScope:
    """How a rewound point's own evals may be reported, from its pick record (:func:`rewind_selection`)
    and its per-item measures ``own`` ({"target"|"general": Measure}):

    * ``split`` with held-out halves: only the reported half (``item_half(id, salt)``) of its own
      items, "held-out half (N items)";
    * ``crossfit``: every item of the curve picked α, so there is no held-out half; clean only when
      its eval items are disjoint from the curve's (item ids checked on the per-item rows beside the
      curve), else "in-sample for the pick (crossfit)";
    * ``none``, a split made without per-item rows, or a record from before selection-safe picks:
      in-sample for the pick.
    """
    scope = _pick_scope(pick, own)
    scope.pick = pick
    return scope


def _pick_scope(pick: dict, own: dict) -> PickScope:
    kinds = ("target", "general")
    mode = pick.get("mode") or ""
    if mode == "split" and pick.get("reported_half") in (0, 1):
        if any(k not in own for k in kinds):
            return PickScope("in-sample for the pick (split; no per-item rows to restrict to the held-out half)",
                             note="its evals have no per-item rows for both target and general")
        held = {"salt": pick.get("salt") or "", "half": int(pick["reported_half"])}
        n = {k: restrict_measure(own[k], held["salt"], held["half"]).n_items for k in kinds}
        return PickScope(f"held-out half ({n['target'] + n['general']} items)", held, True,
                         f"scored on the held-out half of its own items ({n['target']} target + {n['general']} "
                         f"general of {own['target'].n_items} + {own['general'].n_items})")
    if mode == "crossfit":
        curve = _curve_item_keys(pick.get("curve"))
        if curve is None or any(k not in own for k in kinds):
            why = ("the curve's per-item rows were not found beside " + repr(pick.get("curve") or "?")
                   if curve is None else "its evals have no per-item rows for both target and general")
            return PickScope("in-sample for the pick (crossfit)", note=f"item overlap with the curve not checked: {why}")
        shared = {k: len(curve[k] & {x for s in own[k].strata for x in s.keys}) for k in kinds}
        if not any(shared.values()):
            return PickScope("held-out: its eval items are disjoint from the curve's (crossfit)", clean=True,
                             note="none of its eval items is among the curve's items that picked α")
        return PickScope("in-sample for the pick (crossfit)",
                         note=f"{shared['target']} target and {shared['general']} general items of its evals are "
                              "the curve's, which picked α (crossfit picks on every curve item)")
    why = {"none": "none", "split": "split without per-item rows beside the curve"}.get(mode, "picked before selection-safe picks")
    return PickScope(f"in-sample for the pick ({why})", note="its α was picked on the curve's items, unsplit")


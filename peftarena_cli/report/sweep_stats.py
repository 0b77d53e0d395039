"""Statistics of a sweep (method × learning rate × seed): intervals over seeds and items, per-method
Pareto frontiers, forgetting read at matched target gains, and every method pair's comparison
(docs/report.md, "Sweeps: seeds, learning rates and frontiers (statistics)").

Data model. A configuration (one method at one learning rate, or one α on an interpolation path) was
run with S ≥ 1 seeds and evaluated on the same items every time. Its per-item paired differences form
an S × n matrix ``Y[s, i]`` (gain: run − base on target items; forgetting: base − run on general
items; :func:`item_differences` turns two :class:`~peftarena_cli.stats.Measure` into that row, so
that its mean is exactly the composite difference). The point estimate is the mean over seeds of the
item means, i.e. the mean of the grid.

Seed-and-item interval (:func:`seed_item_interval`, :func:`contrast`). The items are shared by the
seeds, so the design is *crossed*, not nested: item i is the same question under every seed, and a
nested bootstrap (items resampled within each seed) would treat the shared item effect as independent
across seeds. The model is the crossed random-effects one, ``Y[s, i] = μ + a_s + b_i + e_si``, and

    ȳ − μ = (ā + ē) + b̄,   Var(ā + ē) = σ_a²/S + σ_e²/(S n),   Var(b̄) = σ_b²/n,

two independent parts. The seed part is the spread of the seed means: MS_seed / (S n) estimates its
variance with S − 1 degrees of freedom exactly (a scaled χ²), so it gets a Student-t quantile with
S − 1 df. The item part is estimated by the ANOVA moments (MS_item − MS_error) / (S n) (≥ 0) and gets
the normal quantile (n − 1 and (S − 1)(n − 1) df). The two half-widths are combined as
√(h_seed² + h_item²) (the MOVER combination for a sum of independent parts). This is chosen over

* a Satterthwaite-df t interval on the pooled variance, which undercovers with 2 seeds when the seed
  part dominates (measured 87–89 % where 95 % was asked, 2,000 data sets per case): its estimated df
  rises exactly when the seed spread happens to come out small;
* a crossed bootstrap (resample seeds and items independently, mean over the grid), which with 2–5
  seeds undercovers when the seed variance matters (measured 76 % at S = 2, 83 % at S = 3, 88 % at
  S = 5 with a dominant seed variance) and overcovers (98.5 %) when it does not.

The measured coverage of the chosen interval is in docs/report.md. Its price: with 2 seeds the t
quantile is 12.7, so when the item variance dominates the interval is conservative (up to 99.4 %
measured).

With S = 1 the seed part cannot be estimated: the interval is the item interval (mean ± z·sd/√n of
the per-item differences, :func:`peftarena_cli.stats.mean_normal`) and the seed spread is undefined
(NaN, with a note). Beside every interval the item-only interval (seeds held fixed: the seed-averaged
per-item differences, mean ± z·sd/√n) and the between-seed SD of the seed means are reported.

A contrast Σ λ_k ȳ_k of configurations on the same items (an interpolated frontier point, a
difference of two methods) uses the same estimator on the per-(seed, item) contrast
``Σ λ_k Y_k[s, i]`` when the configurations have the same seeds (the same count, and the same labels
where labels are given), which keeps any correlation between configurations run with one seed. Else
the seed parts are taken as independent: each configuration contributes λ_k² MS_seed,k / (S_k n)
with its own t quantile, and the item part is the variance over items of Σ λ_k ȳ_k,·i minus the
error variances (a one-seed configuration's error stays in the item part: its seed variance is not
estimable). The p-value inverts the interval: the largest level at which the interval still contains
0, so p < 0.05 exactly when the 95 % interval excludes 0.

Frontier and matched gain (:func:`pareto_front`, :func:`read_at_gain`, :func:`matched_gain_table`):
a method's frontier is the set of its points (grid configurations and interpolation-path points) that
no other point of that method dominates (gain ≥ and forgetting ≤, one strictly). Forgetting at a
target gain g is read piecewise-linearly in gain between the two frontier points that bracket g,
never extrapolated: a frontier that does not reach g gives NaN and a reason. The interpolated
forgetting is (1 − t)·F_left + t·F_right with t fixed by the gains, so its interval is the contrast
interval of those two configurations with weights (1 − t, t) on the same general items (the
uncertainty of t itself, i.e. of where the frontier crosses g, is not propagated).

Core code: numpy and pandas only, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from statistics import NormalDist

import numpy as np

from peftarena_cli import stats
from peftarena_cli.errors import DataError, IncompatibleInputs, UsageError

CONF = stats.CONF
ONE_SEED_NOTE = "one seed: between-seed spread undefined (item interval only)"


# ---------------------------------------------------------------- Student t (integer df, closed form)
def t_abs_cdf(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with an integer ``df`` ≥ 1 (Abramowitz & Stegun 26.7.3–4: a finite
    trigonometric sum, exact up to rounding)."""
    df = int(df)
    if df < 1:
        raise ValueError("df must be >= 1")
    t = abs(float(t))
    if math.isinf(t):
        return 1.0
    th = math.atan(t / math.sqrt(df))
    c2 = math.cos(th) ** 2
    if df % 2 == 1:
        term, s = 1.0, 0.0
        if df > 1:
            s = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                s += term
        return min(1.0, 2.0 / math.pi * (th + math.sin(th) * math.cos(th) * s))
    term, s = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        s += term
    return min(1.0, math.sin(th) * s)


@lru_cache(maxsize=4096)
def t_quantile(conf: float, df: int) -> float:
    """The two-sided ``conf`` quantile of Student's t with integer ``df`` (P(|T| ≤ q) = conf)."""
    if not 0.0 < conf < 1.0:
        raise ValueError("conf must be in (0, 1)")
    lo, hi = 0.0, 1.0
    while t_abs_cdf(hi, df) < conf:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_abs_cdf(mid, df) < conf:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def _z(conf: float) -> float:
    return NormalDist().inv_cdf(0.5 + conf / 2.0)


# ---------------------------------------------------------------- per-item differences of two measures
def item_differences(a: stats.Measure, b: stats.Measure, names=("A", "B")) -> tuple[list, np.ndarray]:
    """(item keys, c) with mean(c) == a.value() − b.value() exactly (proportion units).

    The composite score is linear in the per-item numerators once the two measures share items (and
    so instruction counts): item i of stratum s in part p carries weight 1 / (P · K_p · Σm_s), so
    c_i = N · weight_i · (y_a,i − y_b,i) over all N items. Refuses measures not on the same items.
    """
    stats.check_same_items(a, b, names)
    sb_by = {s.name: s for s in b.strata}
    per_part: dict[str, int] = {}
    for s in a.strata:
        per_part[s.part] = per_part.get(s.part, 0) + 1
    n_parts = len(per_part)
    n = a.n_items
    keys, vals = [], []
    for sa in a.strata:
        sb = sb_by[sa.name]
        ib = {k: i for i, k in enumerate(sb.keys)}
        yb = sb.y[np.array([ib[k] for k in sa.keys], dtype=int)]
        msum = float(sa.m.sum())
        w = 1.0 / (n_parts * per_part[sa.part] * msum) if msum > 0 else 0.0
        keys += list(sa.keys)
        vals.append(n * w * (sa.y - yb))
    return keys, (np.concatenate(vals) if vals else np.zeros(0))


# ---------------------------------------------------------------- seed-and-item intervals
@dataclass
class SeedItemResult:
    """An estimate over seeds and items (units of the input) with its interval and the parts.

    ``interval``: the seed-and-item interval; ``item_only``: the interval with the seeds held fixed;
    ``seed_sd``: SD of the per-seed values (NaN with one seed); ``se_seed`` / ``se_item``: the two
    parts' standard errors; ``p_value``: two-sided, of value = 0, by inverting the interval."""

    interval: stats.Interval
    item_only: stats.Interval
    seed_sd: float
    se_seed: float
    se_item: float
    parts: tuple  # ((se, df or None for normal), ...): what the interval combines; p inverts it
    n_seeds: int
    n_items: int
    matched_seeds: bool = True
    note: str = ""

    @property
    def value(self) -> float:
        return self.interval.value

    @property
    def p_value(self) -> float:
        """Computed on first use (a root search): simulations that need only the interval skip it."""
        if not hasattr(self, "_p"):
            self._p = math.nan if not self.parts else _mover_p(self.value, list(self.parts))
        return self._p

    @property
    def significant(self) -> bool:
        iv = self.interval
        return bool(math.isfinite(self.p_value) and self.p_value < 0.05 and (iv.low > 0 or iv.high < 0))

    def as_dict(self, prefix: str = "") -> dict:
        iv = self.interval
        return {f"{prefix}value": iv.value, f"{prefix}se": iv.se, f"{prefix}ci_low": iv.low,
                f"{prefix}ci_high": iv.high, f"{prefix}p_value": self.p_value, f"{prefix}seed_sd": self.seed_sd,
                f"{prefix}item_ci_low": self.item_only.low, f"{prefix}item_ci_high": self.item_only.high,
                f"{prefix}seeds": self.n_seeds, f"{prefix}items": self.n_items,
                f"{prefix}estimator": iv.estimator, f"{prefix}note": self.note}


def _as_matrix(y) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[None, :]
    if y.ndim != 2:
        raise DataError(f"per-item differences must be a (seeds × items) matrix, got shape {y.shape}",
                        hint="pass one row of per-item differences per seed")
    if not np.all(np.isfinite(y)):
        raise DataError("per-item differences contain NaN or infinite values",
                        hint="every seed must be evaluated on every item")
    return y


def crossed_moments(y) -> tuple[float, float, float]:
    """(MS_seed, MS_item, MS_error) of an S × n matrix (two-way ANOVA without replication; S, n ≥ 2)."""
    y = np.asarray(y, dtype=float)
    S, n = y.shape
    g = y.mean()
    ys = y.mean(axis=1)
    yi = y.mean(axis=0)
    ms_s = n * float(((ys - g) ** 2).sum()) / (S - 1)
    ms_i = S * float(((yi - g) ** 2).sum()) / (n - 1)
    r = y - ys[:, None] - yi[None, :] + g
    ms_e = float((r * r).sum()) / ((S - 1) * (n - 1))
    return ms_s, ms_i, ms_e


def _mover_p(value: float, parts: list[tuple[float, int | None]]) -> float:
    """Two-sided p of value = 0 by inverting half(conf) = √Σ (q_k(conf)·se_k)², q_k a t quantile with
    df_k (None: normal)."""
    if not math.isfinite(value):
        return math.nan
    parts = [(se, df) for se, df in parts if se > 0]
    if not parts:
        return 1.0 if value == 0 else 0.0

    def half(conf: float) -> float:
        return math.sqrt(sum((se * (t_quantile(conf, df) if df else _z(conf))) ** 2 for se, df in parts))

    if value == 0:
        return 1.0
    lo, hi = 1e-12, 1.0 - 1e-15
    if half(hi) < abs(value):
        return 1.0 - hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if half(mid) < abs(value):
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return float(1.0 - 0.5 * (lo + hi))


def contrast(mats, weights, seeds=None, conf: float = CONF, label: str = "") -> SeedItemResult:
    """The seed-and-item interval of Σ λ_k ȳ_k for configurations k on the same items.

    ``mats``: one S_k × n matrix (or n-vector, one seed) of per-item differences per configuration;
    ``weights``: λ_k; ``seeds``: optional seed labels per configuration (see the module docstring for
    when the seeds count as matched).
    """
    mats = [_as_matrix(m) for m in mats]
    lam = [float(w) for w in weights]
    if len(mats) != len(lam) or not mats:
        raise UsageError("contrast needs one weight per configuration")
    n = mats[0].shape[1]
    if any(m.shape[1] != n for m in mats):
        raise IncompatibleInputs(f"configurations are not on the same items ({sorted({m.shape[1] for m in mats})} "
                                 "items)", hint="evaluate every configuration on the same items")
    S_all = [m.shape[0] for m in mats]
    if seeds is not None:
        seeds = [tuple(s) for s in seeds]
        for s, m in zip(seeds, mats):
            if len(s) != m.shape[0]:
                raise UsageError(f"{len(s)} seed labels for {m.shape[0]} seed rows")
    matched = len(set(S_all)) == 1 and (seeds is None or len(set(seeds)) == 1)
    if matched:
        return seed_item_interval(sum(w * m for w, m in zip(lam, mats)), conf=conf, label=label)
    value = float(sum(w * m.mean() for w, m in zip(lam, mats)))
    zbar = sum(w * m.mean(axis=0) for w, m in zip(lam, mats))
    item_only = stats.mean_normal(zbar, conf, estimator="item-mean normal (seeds fixed)", bounds=None)
    if n < 2:
        iv = stats.undefined(value, n, "seed-and-item (independent seeds)")
        return SeedItemResult(iv, item_only, math.nan, math.nan, math.nan, (), max(S_all), n, False,
                              stats.UNDEFINED_NOTE)
    err = 0.0
    seed_parts: list[tuple[float, int | None]] = []
    one_seed = []
    for w, m, S in zip(lam, mats, S_all):
        if S >= 2:
            ms_s, _, ms_e = crossed_moments(m)
            seed_parts.append((abs(w) * math.sqrt(ms_s / (S * n)), S - 1))
            err += w * w * ms_e / S
        else:
            one_seed.append(S)
    var_item = max(0.0, float(zbar.var(ddof=1)) - err) / n
    parts = seed_parts + [(math.sqrt(var_item), None)]
    z = _z(conf)
    half = math.sqrt(sum((se * (t_quantile(conf, df) if df else z)) ** 2 for se, df in parts))
    se_seed = math.sqrt(sum(se * se for se, _ in seed_parts))
    se = math.sqrt(se_seed ** 2 + var_item)
    note = "seeds not matched: seed parts taken as independent"
    if one_seed:
        note += "; a one-seed configuration's seed variance is not estimable (left out)"
    iv = stats.Interval(value, se, value - half, value + half, "seed-and-item (independent seeds)", n, note)
    return SeedItemResult(iv, item_only, math.nan, se_seed, math.sqrt(var_item), tuple(parts), max(S_all), n,
                          False, note)


def seed_item_interval(y, conf: float = CONF, label: str = "") -> SeedItemResult:
    """Mean over seeds of the item means of an S × n matrix of per-item differences, with the
    seed-and-item interval (module docstring); S = 1 gives the item interval."""
    y = _as_matrix(y)
    S, n = y.shape
    value = float(y.mean())
    zbar = y.mean(axis=0)
    item_only = stats.mean_normal(zbar, conf, estimator="item-mean normal (seeds fixed)", bounds=None)
    seed_means = y.mean(axis=1)
    seed_sd = float(seed_means.std(ddof=1)) if S >= 2 else math.nan
    if n < 2:
        iv = stats.undefined(value, n, "seed-and-item")
        return SeedItemResult(iv, item_only, seed_sd, math.nan, math.nan, (), S, n, True, stats.UNDEFINED_NOTE)
    if S == 1:
        iv = stats.mean_normal(zbar, conf, estimator="item-mean normal (one seed)", bounds=None)
        iv.note = ONE_SEED_NOTE
        return SeedItemResult(iv, item_only, math.nan, math.nan, iv.se, ((iv.se, None),), 1, n, True, ONE_SEED_NOTE)
    ms_s, ms_i, ms_e = crossed_moments(y)
    se_seed = math.sqrt(ms_s / (S * n))
    se_item = math.sqrt(max(0.0, ms_i - ms_e) / (S * n))
    parts = [(se_seed, S - 1), (se_item, None)]
    half = math.sqrt((t_quantile(conf, S - 1) * se_seed) ** 2 + (_z(conf) * se_item) ** 2)
    se = math.sqrt(se_seed ** 2 + se_item ** 2)
    iv = stats.Interval(value, se, value - half, value + half, "seed-and-item (crossed, t seeds + normal items)", n)
    return SeedItemResult(iv, item_only, seed_sd, se_seed, se_item, tuple(parts), S, n, True)


# ---------------------------------------------------------------- sweep points and frontiers
@dataclass
class SweepPoint:
    """One configuration of a sweep: a method at a learning rate (``source="grid"``), or a point of an
    interpolation path (``source="path"``, with ``alpha``). ``gain`` and ``forgetting``: S × n matrices
    of per-item paired differences (one row per seed; points when the scores are percentages); every
    point has the same target items and the same general items, in the same order."""

    key: str
    method: str
    gain: np.ndarray
    forgetting: np.ndarray
    lr: float | None = None
    alpha: float | None = None
    source: str = "grid"
    seeds: tuple | None = None

    def __post_init__(self):
        self.gain = _as_matrix(self.gain)
        self.forgetting = _as_matrix(self.forgetting)
        if self.gain.shape[0] != self.forgetting.shape[0]:
            raise DataError(f"{self.key}: {self.gain.shape[0]} seeds of gain but {self.forgetting.shape[0]} of "
                            "forgetting", hint="evaluate every seed's run on both the target and the general items")
        if self.seeds is not None:
            self.seeds = tuple(self.seeds)

    @property
    def mean_gain(self) -> float:
        return float(self.gain.mean())

    @property
    def mean_forgetting(self) -> float:
        return float(self.forgetting.mean())


def _check_points(points) -> dict:
    by = {}
    for p in points:
        if p.key in by:
            raise UsageError(f"two sweep points are named {p.key!r}")
        by[p.key] = p
    if points:
        nt, ng = points[0].gain.shape[1], points[0].forgetting.shape[1]
        bad = [p.key for p in points if p.gain.shape[1] != nt or p.forgetting.shape[1] != ng]
        if bad:
            raise IncompatibleInputs(f"sweep points not on the same items: {bad[:3]}",
                                     hint="evaluate every configuration on the same target and general items")
    return by


def points_frame(points):
    """One row per point: key, method, lr, alpha, source, seeds, gain, forgetting (seed means)."""
    import pandas as pd

    return pd.DataFrame([{"key": p.key, "method": p.method, "lr": p.lr, "alpha": p.alpha, "source": p.source,
                          "seeds": p.gain.shape[0], "gain": p.mean_gain, "forgetting": p.mean_forgetting}
                         for p in points])


def _tie_tol(*arrays) -> float:
    """Values closer than this count as equal: rounding of means of the same numbers, not a real gap."""
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    return 1e-12 * max(1.0, float(np.abs(vals).max())) if len(vals) else 0.0


def pareto_front(gain, forgetting) -> np.ndarray:
    """True for points no other point dominates (gain ≥, forgetting ≤, one strictly); ties (equal
    within rounding, 1e-12 relative) are kept together; NaN points are False."""
    g = np.asarray(gain, dtype=float)
    f = np.asarray(forgetting, dtype=float)
    tol = _tie_tol(g, f)
    ok = np.isfinite(g) & np.isfinite(f)
    out = np.zeros(len(g), dtype=bool)
    for i in np.flatnonzero(ok):
        dom = ok & (g >= g[i] - tol) & (f <= f[i] + tol) & ((g > g[i] + tol) | (f < f[i] - tol))
        out[i] = not dom.any()
    return out


def frontier_table(points):
    """:func:`points_frame` with ``frontier``: on its own method's Pareto set (grid and path points)."""
    df = points_frame(points)
    df["frontier"] = False
    for _, idx in df.groupby("method", sort=False).groups.items():
        df.loc[idx, "frontier"] = pareto_front(df.loc[idx, "gain"], df.loc[idx, "forgetting"])
    return df


def frontier_vertices(gain, forgetting, keys) -> list[tuple[float, float, str]]:
    """The frontier as (gain, forgetting, key) sorted by gain; of tied points the first key."""
    mask = pareto_front(gain, forgetting)
    tol = _tie_tol(gain, forgetting)
    out: list[tuple[float, float, str]] = []
    for g, f, k in sorted(((float(g), float(f), k) for g, f, k, m in zip(gain, forgetting, keys, mask) if m),
                          key=lambda v: v[0]):
        if out and abs(g - out[-1][0]) <= tol and abs(f - out[-1][1]) <= tol:
            continue
        out.append((g, f, k))
    return out


@dataclass
class GainReading:
    """Forgetting read off a frontier at gain ``target``: between ``left`` and ``right`` with weight
    ``t`` on the right one; NaN and a ``reason`` when the frontier does not reach it."""

    target: float
    forgetting: float
    left: str | None = None
    right: str | None = None
    t: float = math.nan
    reason: str = ""

    @property
    def reached(self) -> bool:
        return self.left is not None


def read_at_gain(vertices, target: float, tol: float = 1e-12) -> GainReading:
    """Piecewise-linear forgetting at gain ``target`` between the bracketing frontier vertices; never
    extrapolated (a target outside [min gain, max gain] of the frontier is NaN with a reason)."""
    target = float(target)
    if not vertices:
        return GainReading(target, math.nan, reason="no frontier point")
    gs = [v[0] for v in vertices]
    scale = tol * max(1.0, max(abs(x) for x in gs))
    if target > gs[-1] + scale:
        return GainReading(target, math.nan, reason=f"frontier does not reach gain {target:.4g} (max {gs[-1]:.4g})")
    if target < gs[0] - scale:
        return GainReading(target, math.nan,
                           reason=f"frontier starts above gain {target:.4g} (min {gs[0]:.4g}); not extrapolated")
    for j, (g, f, k) in enumerate(vertices):
        if abs(target - g) <= scale:
            return GainReading(target, f, k, k, 0.0)
        if j + 1 < len(vertices) and g < target < vertices[j + 1][0]:
            g2, f2, k2 = vertices[j + 1]
            t = (target - g) / (g2 - g)
            return GainReading(target, (1 - t) * f + t * f2, k, k2, t)
    return GainReading(target, math.nan, reason="not bracketed")  # unreachable with sorted vertices


def method_frontiers(points) -> dict[str, list]:
    """{method: frontier vertices} over each method's grid and path points."""
    out: dict[str, list] = {}
    for m in dict.fromkeys(p.method for p in points):
        ps = [p for p in points if p.method == m]
        out[m] = frontier_vertices([p.mean_gain for p in ps], [p.mean_forgetting for p in ps], [p.key for p in ps])
    return out


def common_gain_levels(frontiers: dict, k: int = 5) -> np.ndarray:
    """``k`` evenly spaced gains every method's frontier reaches: from the largest of the methods'
    smallest frontier gains to the smallest of their largest; empty when the ranges do not overlap."""
    fr = [v for v in frontiers.values() if v]
    if not fr or len(fr) < len(frontiers):
        return np.zeros(0)
    lo = max(v[0][0] for v in fr)
    hi = min(v[-1][0] for v in fr)
    if hi < lo:
        return np.zeros(0)
    if hi == lo or k <= 1:
        return np.array([lo])
    return np.linspace(lo, hi, int(k))


def _reading_contrast(reading: GainReading, by: dict) -> tuple[list, list, list]:
    """(matrices, weights, seeds) of the interpolated forgetting of one reading."""
    if reading.left == reading.right:
        p = by[reading.left]
        return [p.forgetting], [1.0], [p.seeds]
    a, b = by[reading.left], by[reading.right]
    return [a.forgetting, b.forgetting], [1.0 - reading.t, reading.t], [a.seeds, b.seeds]


def _seeds_arg(seeds: list):
    return None if any(s is None for s in seeds) else seeds


def matched_gain_table(points, levels=None, k: int = 5, conf: float = CONF):
    """Forgetting of every method read off its frontier at common target gains, with intervals.

    ``levels``: the target gains (default :func:`common_gain_levels` with ``k`` levels). One row per
    (level, method): ``forgetting`` (NaN + ``reason`` when the frontier does not reach the level),
    ``ci_low``/``ci_high``/``se``, the bracketing keys ``left``/``right`` and the weight ``t``.
    """
    import pandas as pd

    by = _check_points(points)
    fronts = method_frontiers(points)
    levels = common_gain_levels(fronts, k) if levels is None else np.asarray(levels, dtype=float)
    rows = []
    for g in levels:
        for m, verts in fronts.items():
            r = read_at_gain(verts, g)
            row = {"target_gain": float(g), "method": m, "forgetting": r.forgetting, "se": math.nan,
                   "ci_low": math.nan, "ci_high": math.nan, "left": r.left, "right": r.right, "t": r.t,
                   "reached": r.reached, "reason": r.reason}
            if r.reached:
                mats, w, seeds = _reading_contrast(r, by)
                res = contrast(mats, w, _seeds_arg(seeds), conf)
                row.update(se=res.interval.se, ci_low=res.interval.low, ci_high=res.interval.high,
                           reason=res.note)
            rows.append(row)
    return pd.DataFrame(rows, columns=["target_gain", "method", "forgetting", "se", "ci_low", "ci_high", "left",
                                       "right", "t", "reached", "reason"])


def matched_gain_difference(points, method_a: str, method_b: str, target: float,
                            conf: float = CONF) -> tuple[SeedItemResult | None, str]:
    """Forgetting at gain ``target`` of ``method_a`` minus that of ``method_b``, paired on the general
    items (both read off their frontiers). None and a reason when either frontier does not reach it."""
    by = _check_points(points)
    fronts = method_frontiers(points)
    for m in (method_a, method_b):
        if m not in fronts:
            raise UsageError(f"no sweep point of method {m!r}; methods: {sorted(fronts)}")
    ra, rb = read_at_gain(fronts[method_a], target), read_at_gain(fronts[method_b], target)
    for m, r in ((method_a, ra), (method_b, rb)):
        if not r.reached:
            return None, f"{m}: {r.reason}"
    ma, wa, sa = _reading_contrast(ra, by)
    mb, wb, sb = _reading_contrast(rb, by)
    return contrast(ma + mb, wa + [-w for w in wb], _seeds_arg(sa + sb), conf), ""


# ---------------------------------------------------------------- every pair, Holm-adjusted
PAIR_COLUMNS = ["measure", "target_gain", "a", "b", "a_point", "b_point", "diff", "se", "ci_low", "ci_high",
                "p_value", "family", "p_holm", "significant", "note"]


def pairwise_comparisons(points, representative: dict | None = None, levels=None, k: int = 5,
                         conf: float = CONF, family: str = "measure"):
    """Every method pair's paired comparison, with Holm-adjusted p-values, as a DataFrame.

    Rows: ``measure`` "target gain" and "forgetting" (a − b of the methods' representative points:
    ``representative`` {method: key}, required for a method with several grid points), and
    "forgetting at matched gain" at each level (``levels`` or :func:`common_gain_levels`). ``family``:
    "measure" (Holm within each measure) or "all" (one family). A difference is ``significant`` when
    its Holm-adjusted p < 0.05 and its interval excludes 0.
    """
    import pandas as pd

    check_family(family)
    by = _check_points(points)
    methods = list(dict.fromkeys(p.method for p in points))
    rep = dict(representative or {})
    for m in methods:
        if m in rep:
            if rep[m] not in by or by[rep[m]].method != m:
                raise UsageError(f"representative of {m!r} is {rep[m]!r}, which is not one of its sweep points")
            continue
        grid = [p.key for p in points if p.method == m and p.source == "grid"]
        if len(grid) != 1:
            raise UsageError(f"method {m!r} has {len(grid)} grid points: name its representative "
                             f"(representative={{'{m}': key}}) for the target-gain and forgetting rows")
        rep[m] = grid[0]
    rows = []
    for a, b in combinations(methods, 2):
        pa, pb = by[rep[a]], by[rep[b]]
        for measure, attr in (("target gain", "gain"), ("forgetting", "forgetting")):
            res = contrast([getattr(pa, attr), getattr(pb, attr)], [1.0, -1.0], _seeds_arg([pa.seeds, pb.seeds]), conf)
            iv = res.interval
            rows.append({"measure": measure, "target_gain": math.nan, "a": a, "b": b, "a_point": pa.key,
                         "b_point": pb.key, "diff": iv.value, "se": iv.se, "ci_low": iv.low, "ci_high": iv.high,
                         "p_value": res.p_value, "note": res.note})
    fronts = method_frontiers(points)
    levels = common_gain_levels(fronts, k) if levels is None else np.asarray(levels, dtype=float)
    for g in levels:
        for a, b in combinations(methods, 2):
            res, why = matched_gain_difference(points, a, b, float(g), conf)
            ra, rb = read_at_gain(fronts[a], g), read_at_gain(fronts[b], g)
            pa = ra.left if ra.left == ra.right else (f"{ra.left}~{ra.right}" if ra.reached else None)
            pb = rb.left if rb.left == rb.right else (f"{rb.left}~{rb.right}" if rb.reached else None)
            if res is None:
                rows.append({"measure": "forgetting at matched gain", "target_gain": float(g), "a": a, "b": b,
                             "a_point": pa, "b_point": pb, "diff": math.nan, "se": math.nan, "ci_low": math.nan,
                             "ci_high": math.nan, "p_value": math.nan, "note": why})
                continue
            iv = res.interval
            rows.append({"measure": "forgetting at matched gain", "target_gain": float(g), "a": a, "b": b,
                         "a_point": pa, "b_point": pb, "diff": iv.value, "se": iv.se, "ci_low": iv.low,
                         "ci_high": iv.high, "p_value": res.p_value, "note": res.note})
    df = pd.DataFrame(rows, columns=[c for c in PAIR_COLUMNS if c not in ("family", "p_holm", "significant")])
    return adjust_pairs(df, family)[PAIR_COLUMNS]


def check_family(family: str) -> None:
    if family not in ("measure", "all"):
        raise UsageError(f"family must be 'measure' or 'all', not {family!r}")


def adjust_pairs(df, family: str = "measure"):
    """Add ``family``, ``p_holm`` and ``significant`` to a table of pairwise comparisons (columns
    ``measure``, ``p_value``, ``ci_low``, ``ci_high``) and return it; the sweep's pairs and the arena
    report's method pairs (:mod:`peftarena_cli.report.pairwise`) both go through here.

    ``family`` "measure": Holm's adjustment (:func:`peftarena_cli.stats.holm`) within the rows of each
    measure; "all": over every row. Rows with a NaN p-value (pairs that could not be compared) keep a
    NaN ``p_holm`` and are not counted in their family. ``significant``: p_holm < 0.05 and the
    interval excludes 0.
    """
    check_family(family)
    df["family"] = df["measure"] if family == "measure" else "all"
    df["p_holm"] = math.nan
    for _, idx in df.groupby("family", sort=False).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p_value"].to_numpy(float))
    df["significant"] = ((df["p_holm"] < 0.05) & ((df["ci_low"] > 0) | (df["ci_high"] < 0))).astype(bool)
    return df

"""Uncertainty of scores and of differences between models (docs/eval.md, "Intervals").

Items are the unit of resampling everywhere: a sample of an item, or an instruction of an
instruction-following prompt, is never treated as independent of its item's other samples or instructions.

One score (a summary row):

* :func:`wilson` — binary per-item scores (accuracy with one sample, exact match,
  prompt-level instruction following, maj@k): the Wilson score interval; ``se`` is its half-width / z, so a score of
  0 % or 100 % still carries uncertainty;
* :func:`mean_normal` — continuous per-item scores (avg@n and pass@k over n > 1 samples: each
  item's mean or unbiased pass@k, so items and not samples are resampled): mean ± z·sd/√n;
* :func:`ratio_cluster` — instruction-level accuracy Σ followed / Σ instructions, with
  instructions clustered in their prompts: the ratio estimator's linearised (cluster-robust) SE;
* :func:`combine_mean` — a mean of independent parts (a subtask average, the general score
  over its parts, the target score over tasks): se = √(Σ se_p²) / P.

Two models on the same items (:func:`paired_difference`): a stratified paired bootstrap
(strata = tasks / parts / subtasks; items resampled within their stratum, the same
resample for both models) for the interval, and a test for the p-value: McNemar's exact test
when the measure is one stratum of binary items, else a stratified sign-flip permutation test of
the composite statistic (which reduces to McNemar's conditional test for binary items).

Every interval on fewer than 2 items is undefined: NaN with a note, never ± 0.
Core code: numpy only, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from peftarena_cli import scorer_kinds
from peftarena_cli.errors import IncompatibleInputs

CONF = 0.95
UNDEFINED_NOTE = "n < 2: interval undefined"
B_DEFAULT = 2000
R_DEFAULT = 10000


def z_of(conf: float = CONF) -> float:
    return NormalDist().inv_cdf(0.5 + conf / 2.0)


@dataclass
class Interval:
    """A point estimate with its standard error and a two-sided interval (same units as value)."""

    value: float
    se: float
    low: float
    high: float
    estimator: str
    n: int
    note: str = ""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def scaled(self, f: float) -> "Interval":
        return Interval(self.value * f, self.se * f, self.low * f, self.high * f, self.estimator, self.n, self.note)

    def as_dict(self) -> dict:
        return {"se": self.se, "ci_low": self.low, "ci_high": self.high, "estimator": self.estimator, "note": self.note}


def undefined(value: float, n: int, estimator: str, note: str = UNDEFINED_NOTE) -> Interval:
    return Interval(float(value), math.nan, math.nan, math.nan, estimator, int(n), note)


def wilson(k: float, n: int, conf: float = CONF) -> Interval:
    """Wilson score interval of a proportion k/n (proportion units)."""
    n = int(n)
    p = k / n if n else math.nan
    if n < 2:
        return undefined(p, n, "wilson")
    z = z_of(conf)
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return Interval(p, (high - low) / (2 * z), low, high, "wilson", n)


def mean_normal(x, conf: float = CONF, estimator: str = "item-mean normal", bounds=(0.0, 1.0)) -> Interval:
    """Mean of per-item values ± z·sd/√n (sd with n − 1), clipped to ``bounds``."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return undefined(mean, n, estimator)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    z = z_of(conf)
    lo, hi = mean - z * se, mean + z * se
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return Interval(mean, se, lo, hi, estimator, n)


def ratio_cluster(y, m, conf: float = CONF) -> Interval:
    """Ratio Σy / Σm over clusters (instruction following: y = instructions followed, m = instructions of a prompt),
    with the linearised cluster-robust SE √(n/(n−1) Σ (y_i − r m_i)²) / Σm."""
    y = np.asarray(y, dtype=float)
    m = np.asarray(m, dtype=float)
    n = len(y)
    tot = float(m.sum())
    r = float(y.sum()) / tot if tot > 0 else math.nan
    if n < 2 or tot <= 0:
        return undefined(r, n, "cluster ratio")
    e = y - r * m
    se = math.sqrt(n / (n - 1) * float((e * e).sum())) / tot
    z = z_of(conf)
    return Interval(r, se, max(0.0, r - z * se), min(1.0, r + z * se), "cluster ratio", n)


def combine_mean(parts: list[Interval], conf: float = CONF, estimator: str = "mean of parts",
                 bounds=(0.0, 1.0), n: int | None = None) -> Interval:
    """The mean of independent parts; se = √(Σ se_p²) / P, normal interval. Undefined when any part is."""
    vals = [p.value for p in parts]
    value = float(np.mean(vals)) if vals else math.nan
    n = int(n if n is not None else sum(p.n for p in parts))
    if not parts or any(not math.isfinite(p.se) for p in parts):
        bad = [p for p in parts if not math.isfinite(p.se)]
        return undefined(value, n, estimator, UNDEFINED_NOTE if not parts else f"a part has {bad[0].note or 'no interval'}")
    se = math.sqrt(sum(p.se ** 2 for p in parts)) / len(parts)
    z = z_of(conf)
    lo, hi = value - z * se, value + z * se
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return Interval(value, se, lo, hi, estimator, n)


def binary_or_mean(x, conf: float = CONF) -> Interval:
    """Wilson when every per-item value is 0 or 1, else :func:`mean_normal`."""
    x = np.asarray(x, dtype=float)
    if len(x) and np.all((x == 0) | (x == 1)):
        return wilson(float(x.sum()), len(x), conf)
    return mean_normal(x, conf)


# ---------------------------------------------------------------- bootstrap (one sample)
def bootstrap_mean(x, B: int = B_DEFAULT, seed: int = 0, conf: float = CONF) -> Interval:
    """Percentile bootstrap of a mean (resampling items)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return undefined(float(x.mean()) if n else math.nan, n, "bootstrap")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=B)
    stats = w @ x / n
    lo, hi = np.quantile(stats, [(1 - conf) / 2, (1 + conf) / 2])
    return Interval(float(x.mean()), float(stats.std(ddof=1)), float(lo), float(hi), "bootstrap", n)


def cluster_bootstrap_ratio(y, m, B: int = B_DEFAULT, seed: int = 0, conf: float = CONF) -> Interval:
    """Percentile bootstrap of Σy/Σm resampling whole clusters (prompts)."""
    y = np.asarray(y, dtype=float)
    m = np.asarray(m, dtype=float)
    n = len(y)
    r = float(y.sum() / m.sum()) if m.sum() > 0 else math.nan
    if n < 2:
        return undefined(r, n, "cluster bootstrap")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(float)
    den = w @ m
    stats = np.where(den > 0, (w @ y) / np.where(den > 0, den, 1.0), np.nan)
    stats = stats[np.isfinite(stats)]
    lo, hi = np.quantile(stats, [(1 - conf) / 2, (1 + conf) / 2])
    return Interval(r, float(stats.std(ddof=1)), float(lo), float(hi), "cluster bootstrap", n)


# ---------------------------------------------------------------- tests
def mcnemar(b: int, c: int) -> tuple[float, float]:
    """McNemar's exact test on the discordant counts b (A right, B wrong) and c (A wrong, B right):
    two-sided exact p = min(1, 2·P(X ≤ min(b, c))) and mid-p = 2·(P(X < min) + ½P(X = min)),
    X ~ Binomial(b + c, ½). No discordant pair: p = 1."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0, 1.0
    k = min(b, c)
    pmf = [math.comb(n, i) / 2.0 ** n for i in range(k + 1)]
    exact = min(1.0, 2.0 * sum(pmf))
    mid = min(1.0, 2.0 * (sum(pmf[:-1]) + 0.5 * pmf[-1]))
    return exact, mid


def sign_test(d) -> float:
    """Two-sided sign test of paired differences (zeros dropped): McNemar on the signs."""
    d = np.asarray(d, dtype=float)
    return mcnemar(int((d > 0).sum()), int((d < 0).sum()))[0]


# ---------------------------------------------------------------- paired per-item scores
@dataclass
class Stratum:
    """Items of one stratum (a task, a general part, or one subtask): per-item numerator ``y``
    and denominator ``m`` (1, or a prompt's instruction count); the stratum's value is
    Σy / Σm. ``part`` names the part it averages into."""

    part: str
    name: str
    keys: list
    y: np.ndarray
    m: np.ndarray
    binary: bool = False


@dataclass
class Measure:
    """A composite score: the mean over parts of the mean over each part's strata of Σy/Σm."""

    kind: str  # "target" or "general"
    strata: list = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return sum(len(s.keys) for s in self.strata)

    def value(self) -> float:
        return _composite(self.strata, [s.y.sum() for s in self.strata], [s.m.sum() for s in self.strata])

    def interval(self, conf: float = CONF) -> Interval:
        """The analytic interval of the composite (what the summary rows use)."""
        parts: dict[str, list[Interval]] = {}
        for s in self.strata:
            if s.binary and np.all(s.m == 1):
                iv = wilson(float(s.y.sum()), len(s.y), conf)
            elif np.all(s.m == 1):
                iv = mean_normal(s.y, conf)
            else:
                iv = ratio_cluster(s.y, s.m, conf)
            parts.setdefault(s.part, []).append(iv)
        per_part = [p[0] if len(p) == 1 else combine_mean(p, conf) for p in parts.values()]
        if len(per_part) == 1:
            return per_part[0]
        return combine_mean(per_part, conf, n=self.n_items)


def _composite(strata, ysum, msum) -> np.ndarray | float:
    """Mean over parts of mean over strata of ysum/msum (arrays broadcast over resamples)."""
    parts: dict[str, list] = {}
    for s, y, m in zip(strata, ysum, msum):
        parts.setdefault(s.part, []).append(np.asarray(y, dtype=float) / np.where(np.asarray(m) > 0, m, np.nan))
    per_part = [sum(v) / len(v) for v in parts.values()]
    out = sum(per_part) / len(per_part)
    return float(out) if np.ndim(out) == 0 else out


def _item_scores_of_task(name: str, scorer: str, g) -> list[Stratum]:
    """The strata of one task's per-sample rows, shaped by the ``strata`` of the scorer kind that
    ``scorer`` names (:mod:`peftarena_cli.scorer_kinds`); any other scorer (a target task's):
    each item's mean over its samples."""
    kind = _kind_of(scorer)
    shape = kind.strata if kind is not None else "item_mean"
    if shape == "instruction_clusters":
        d = g[g["sample"] == 0].sort_values("id", kind="stable")
        y = np.array([float(sum(bool(b) for b in x)) for x in d["inst_strict"]])
        m = np.array([float(len(x)) for x in d["inst_strict"]])
        return [Stratum(name, name, [(name, i) for i in d["id"]], y, m)]
    if shape == "subtasks":
        d = g[g["sample"] == 0]
        out = []
        for sub, s in d.groupby("subtask", sort=True):
            s = s.sort_values("id", kind="stable")
            out.append(Stratum(name, f"{name}/{sub}", [(name, str(sub), i) for i in s["id"]],
                               s["correct"].astype(float).to_numpy(), np.ones(len(s)), True))
        return out
    if shape == "first_sample":
        d = g[g["sample"] == 0].sort_values("id", kind="stable")
        return [Stratum(name, name, [(name, i) for i in d["id"]], d["correct"].astype(float).to_numpy(), np.ones(len(d)), True)]
    # item_mean: avg@n per item (items, not samples, are the unit)
    per = g.groupby("id", sort=True)["correct"].agg(lambda s: float(np.mean(s.astype(bool))))
    binary = int(g["sample"].max()) == 0
    return [Stratum(name, name, [(name, i) for i in per.index], per.to_numpy(float), np.ones(len(per)), binary)]


def _guess_scorer(g) -> str:
    """The scorer of rows without a readable ``meta``: the first kind whose strata the columns
    support (instruction lists, then subtasks), else a target task's item mean."""
    for shape, col in (("instruction_clusters", "inst_strict"), ("subtasks", "subtask")):
        if col in g.columns and g[col].notna().any():
            for k in scorer_kinds.KINDS.values():
                if k.strata == shape:
                    return k.name
    return next(k.name for k in scorer_kinds.KINDS.values() if k.strata == "item_mean")


def _kind_of(scorer: str):
    """The scorer kind of a per-sample table's scorer name: a built-in suite's (the kind's own name) or
    one scored under a protocol (``KIND:PROTOCOL``); None for a name no kind claims."""
    try:
        return scorer_kinds.kind_of(scorer)
    except ValueError:
        return None


def is_general_scorer(scorer: str) -> bool:
    """Whether a per-sample table's scorer name belongs to a general kind."""
    kind = _kind_of(scorer)
    return kind is not None and kind.general


def task_scorers(df) -> dict[str, str]:
    """{task: scorer} of a per-sample table (from each task's first ``meta``; guessed without it)."""
    import json

    out = {}
    for task, g in df.groupby("task", sort=False):
        sc = None
        if "meta" in g.columns:
            try:
                sc = json.loads(g["meta"].iloc[0]).get("scorer")
            except (TypeError, ValueError, AttributeError):
                sc = None
        if sc is None:
            sc = _guess_scorer(g)
        out[str(task)] = sc
    return out


def measure_of(df, kind: str | None = None) -> Measure:
    """The per-item scores of a per-sample table as a :class:`Measure` (target: the mean over tasks of
    avg@n; general: the mean over parts of each general kind's strata, e.g. instruction-level strict,
    subtask-averaged accuracy, exact match). ``kind`` None: general when every task has a general scorer."""
    scorers = task_scorers(df)
    if kind is None:
        kind = "general" if scorers and all(is_general_scorer(s) for s in scorers.values()) else "target"
    strata = []
    for task, sc in scorers.items():
        strata += _item_scores_of_task(task, sc, df[df["task"].astype(str) == task])
    return Measure(kind, strata)


def check_same_items(a: Measure, b: Measure, names=("A", "B")) -> None:
    """Refuse two measures that are not on the same items (never align them on a subset)."""
    pa = {s.name: s for s in a.strata}
    pb = {s.name: s for s in b.strata}
    if set(pa) != set(pb):
        only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
        raise IncompatibleInputs(
            f"the per-sample tables do not cover the same tasks: only in {names[0]}: {only_a or 'none'}, "
            f"only in {names[1]}: {only_b or 'none'}",
            hint="compare evaluations of the same task suite (same --task/--suite, --limit and --seed)")
    for k, sa in pa.items():
        sb = pb[k]
        ka, kb = set(sa.keys), set(sb.keys)
        if ka != kb:
            ex_a = sorted(ka - kb)[:1]
            ex_b = sorted(kb - ka)[:1]
            raise IncompatibleInputs(
                f"the per-sample tables do not share items in {k!r}: {len(ka)} items in {names[0]}, {len(kb)} in "
                f"{names[1]}, {len(ka - kb)} only in {names[0]}{' (e.g. ' + repr(ex_a[0][-1]) + ')' if ex_a else ''}, "
                f"{len(kb - ka)} only in {names[1]}{' (e.g. ' + repr(ex_b[0][-1]) + ')' if ex_b else ''}",
                hint="evaluate both with the same --limit, --seed and task files; items are never aligned on a subset")
        if not np.array_equal(sa.m, sb.m):
            raise IncompatibleInputs(f"the per-sample tables give different instruction lists to the items of {k!r}",
                                     hint="compare evaluations of the same task files")


@dataclass
class PairedResult:
    """Difference ``a − b`` (points when the scores are percentages) on shared items."""

    diff: float
    low: float
    high: float
    se: float
    p_value: float
    test: str
    n: int
    note: str = ""
    p_mid: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def significant(self) -> bool:
        """p < 0.05 and the interval excludes 0 (both: never call a difference real when 0 is inside)."""
        return bool(math.isfinite(self.p_value) and self.p_value < 0.05 and (self.low > 0 or self.high < 0))

    def scaled(self, f: float) -> "PairedResult":
        return PairedResult(self.diff * f, self.low * f, self.high * f, self.se * abs(f), self.p_value, self.test,
                            self.n, self.note, self.p_mid) if f > 0 else \
            PairedResult(self.diff * f, self.high * f, self.low * f, self.se * abs(f), self.p_value, self.test,
                         self.n, self.note, self.p_mid)


def paired_difference(a: Measure, b: Measure, B: int = B_DEFAULT, R: int = R_DEFAULT, seed: int = 0,
                      conf: float = CONF, names=("A", "B")) -> PairedResult:
    """Paired difference a − b of two measures on the same items (proportion units).

    Interval: stratified paired percentile bootstrap (B resamples). Test: McNemar's exact test for
    one stratum of binary items, else a stratified sign-flip permutation test (R flips).
    """
    check_same_items(a, b, names)
    sb_by = {s.name: s for s in b.strata}
    pairs = []
    for sa in a.strata:
        sb = sb_by[sa.name]
        ib = {k: i for i, k in enumerate(sb.keys)}
        order = np.array([ib[k] for k in sa.keys], dtype=int)
        pairs.append((sa, sb.y[order]))
    n = a.n_items
    diff = a.value() - b.value()
    if n < 2 or any(len(sa.keys) < 2 for sa, _ in pairs):
        return PairedResult(diff, math.nan, math.nan, math.nan, math.nan, "none", n, UNDEFINED_NOTE)
    rng = np.random.default_rng(seed)
    ya_s, yb_s, m_s = [], [], []
    for sa, yb in pairs:
        k = len(sa.keys)
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=B).astype(float)
        ya_s.append(w @ sa.y)
        yb_s.append(w @ yb)
        m_s.append(w @ sa.m)
    boot = _composite([p[0] for p in pairs], ya_s, m_s) - _composite([p[0] for p in pairs], yb_s, m_s)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2])
    se = float(boot.std(ddof=1))
    binary = (len(pairs) == 1 and pairs[0][0].binary and np.all(pairs[0][0].m == 1)
              and np.all((pairs[0][1] == 0) | (pairs[0][1] == 1)))
    if binary:
        ya, yb = pairs[0][0].y, pairs[0][1]
        p, pm = mcnemar(int(((ya == 1) & (yb == 0)).sum()), int(((ya == 0) & (yb == 1)).sum()))
        return PairedResult(diff, float(lo), float(hi), se, p, "mcnemar exact", n, p_mid=pm)
    p = sign_flip_p(pairs, diff, R=R, seed=seed + 1)
    return PairedResult(diff, float(lo), float(hi), se, p, "sign-flip permutation", n)


def sign_flip_p(pairs, observed: float, R: int = R_DEFAULT, seed: int = 1) -> float:
    """Two-sided p of the composite difference under exchangeability of the two models within each
    item: each item's pair is swapped with probability ½ (stratified), p = (1 + #|T*| ≥ |T|) / (R + 1)."""
    rng = np.random.default_rng(seed)
    ya_s, yb_s, msum = [], [], []
    for sa, yb in pairs:
        d = yb - sa.y
        flips = rng.integers(0, 2, size=(R, len(d))).astype(float)
        moved = flips @ d
        ya_s.append(sa.y.sum() + moved)
        yb_s.append(yb.sum() - moved)
        msum.append(np.full(R, sa.m.sum()))
    strata = [p[0] for p in pairs]
    t = _composite(strata, ya_s, msum) - _composite(strata, yb_s, msum)
    tol = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.sum(np.abs(t) >= abs(observed) - tol)) / (R + 1))


# ---------------------------------------------------------------- multiple comparisons
def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order as given).

    With the m finite p-values sorted p_(1) ≤ … ≤ p_(m): adjusted p_(j) = max over i ≤ j of
    min(1, (m − i + 1)·p_(i)). NaN p-values (comparisons that could not be made) stay NaN and are
    not counted in m. Rejecting where the adjusted p < α keeps the family-wise error rate ≤ α.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for j, idx in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[idx]))
        out[idx] = running
    return out

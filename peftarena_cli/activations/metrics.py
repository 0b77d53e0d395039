"""act-geom metrics (docs/act-geom.md), exact over every token from streamed sums.

Notation: X0, X1 (n × d) base / fine-tuned outputs of one module; ``c`` = column-centred;
Z = row-L2-normalised (uncentred). From :class:`~peftarena_cli.activations.pair_sums.PairSums`:

* centred cross-products: C_ab = X_aᵀX_b − s_a s_bᵀ / n  (so C00 = X0cᵀX0c etc.);
* raw residual         ‖X1c − X0c‖_F / ‖X0c‖_F, with ‖X1c − X0c‖² = Σ‖x1−x0‖² − ‖Σ(x1−x0)‖²/n
                       and ‖X0c‖² = tr C00;
* Procrustes residual  min_R orthogonal ‖X1c R − X0c‖_F / ‖X0c‖_F, where the minimum squared is
                       tr C11 + tr C00 − 2‖C01‖_* (nuclear norm; R = U Vᵀ from the SVD of X1cᵀX0c);
* improvement          raw − Procrustes;
* Gram distortion      ‖Z1Z1ᵀ − Z0Z0ᵀ‖_F / ‖Z0Z0ᵀ‖_F with ‖Z1Z1ᵀ − Z0Z0ᵀ‖² = ‖Z1ᵀZ1‖² + ‖Z0ᵀZ0‖² − 2‖Z0ᵀZ1‖²
                       and ‖Z0Z0ᵀ‖_F = ‖Z0ᵀZ0‖_F;
* CKA (linear, centred) ‖C01‖_F² / (‖C00‖_F ‖C11‖_F);
* cos drift            1 − mean_t cos(x0_t, x1_t) = 1 − tr(Z0ᵀZ1)/n;
* log-norm ratio       mean_t |log(‖x1_t‖/‖x0_t‖)|;
* angular drift        mean and median over tokens of θ_t = ∠(x0_t, x1_t) in radians (the median is
                       the lower middle value for an even count, as torch's ``median``);
* norm ratio           mean and population standard deviation over tokens of ρ_t = ‖x1_t‖/(‖x0_t‖ + 1e-12);
* PCA subspace distance ‖P0 − P1‖_F / √(2k), P_i the projector on the top-k eigenvectors of C_ii
                       (the top-k principal directions), = √(1 − ‖V0ᵀV1‖_F²/k).

The PCA distance is the one metric that is not a closed form of the sums: it needs an
eigendecomposition of the d×d covariances (of all tokens: no token sampling). For d ≤ 256 it runs
in float64 (exact up to rounding); above, in float32 on the covariance scaled by its largest
diagonal entry (2–3× faster on CPU), which perturbs C by E with ‖E‖_2 ≲ c·d·2⁻²⁴‖C‖_2. Davis–Kahan
bounds the effect: the projector moves by ‖ΔP‖_F ≤ √2‖E‖_F/δ_k with δ_k = λ_k − λ_{k+1}, so the
reported distance is off by at most ‖E‖_F/(δ_k √k). ``pca_gap_k`` reports min over both models
of δ_k/λ_k; as E scales with λ_max, not λ_k, the float32 error is ~d·2⁻²⁴·(λ_max/λ_k)/(gap·√k):
below ~1e-4 for gaps ≳ 1e-3 only where λ_k is near λ_max. Tiny gaps mean the top-k subspace itself
is ill-defined. In float64 the same bound holds with the sums' own rounding, ‖E‖_F ≲ 3γ_n·tr(XᵀX)
(γ_n ≈ n·2⁻⁵³) plus eigh's backward error: where λ_k ≪ λ_max, two summation orders of the same
tokens (shards, batches, BLAS kernels) give distances that differ well before the 15th digit. NaN when k ≥ d (the projector is the identity) or when either covariance's
numerical rank is below k (the top-k subspace is then not unique: it takes arbitrary null-space
directions; at rank exactly k it is the covariance's range, well defined, gap 1);
``pca_reason_k`` says which, ``pca_rank`` gives the smaller numerical rank: the eigenvalues above
d·ε·λ_max, ε the unit roundoff of the eigendecomposition's precision (float64, or float32 above
:data:`PCA_FLOAT64_MAX_DIM`; when float32 finds a rank below a k, the decomposition is redone in
float64 and the rank decided there, so a steep but full-rank spectrum is not rejected).

:func:`gram_distortion_dense` is the token×token form, used for the study-style ``--gram-sample``
mode (the study builds the Gram on ≤1024 sampled tokens) and by the tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from peftarena_cli.activations.pair_sums import PairSums

EPS = 1e-12
PCA_KS = (32, 64)


@contextlib.contextmanager
def small_linalg_threads():
    """Run the small d×d decompositions single-threaded: multithreaded MKL eigh/svd on matrices
    this size is slower by orders of magnitude when the CPU cores are shared (measured figures:
    docs/act-geom.md)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _centred(ps: PairSums):
    import torch

    n = float(ps.n)
    f = lambda t: t.to(torch.float64)  # noqa: E731
    s0, s1 = f(ps.s0), f(ps.s1)
    C00 = f(ps.A00) - torch.outer(s0, s0) / n
    C11 = f(ps.A11) - torch.outer(s1, s1) / n
    C01 = f(ps.A01) - torch.outer(s0, s1) / n
    return C00, C11, C01


def _sym(C):
    return (C + C.T) / 2


# above this dimension the PCA eigendecomposition runs in float32 (2-3x faster on CPU; see the
# module docstring for the resulting bound)
PCA_FLOAT64_MAX_DIM = 256


def _eigh(C, float64: bool = False):
    """Eigenpairs of a symmetric matrix (ascending), float64 results; float32 LAPACK above
    :data:`PCA_FLOAT64_MAX_DIM` unless ``float64`` (cached per matrix for the several k)."""
    import torch

    C = _sym(C)
    if C.shape[0] > PCA_FLOAT64_MAX_DIM and not float64:
        scale = float(C.diagonal().abs().max()) or 1.0
        lam, V = torch.linalg.eigh((C / scale).to(torch.float32))
        return lam.to(torch.float64) * scale, V.to(torch.float64)
    return torch.linalg.eigh(C)


def nuclear_norm(C) -> float:
    """‖C‖_* in float64: the sum of singular values (svdvals) for d ≤ :data:`PCA_FLOAT64_MAX_DIM`;
    above, Σ sqrt(eigvalsh(CᵀC)) (about 4× faster on CPU). Each eigenvalue of CᵀC is accurate to
    ~ε‖C‖₂², so σ_i is off by at most ~ε‖C‖₂²/(2σ_i) (≤ √ε‖C‖₂ for σ_i → 0): for d = 1536 the sum
    is accurate to ~1e-9‖C‖₂. Eigenvalues below the rounding floor d·ε·‖C‖₂² count as zero
    (rank-deficient C, e.g. fewer tokens than d); true singular values below √(d·ε)‖C‖₂ ≈ 4e-7‖C‖₂
    (d = 1536) are lost that way, at most that much each."""
    import torch

    if C.shape[0] <= PCA_FLOAT64_MAX_DIM:
        return float(torch.linalg.svdvals(C).sum())
    lam = torch.linalg.eigvalsh(C.T @ C)
    # eigenvalues below the rounding floor are zero singular values (e.g. fewer tokens than d):
    # their square roots would otherwise add ~√ε‖C‖ each
    floor = C.shape[0] * torch.finfo(lam.dtype).eps * float(lam[-1].clamp_min(0))
    lam = torch.where(lam > floor, lam, torch.zeros_like(lam))
    return float(lam.sqrt().sum())


def numerical_rank(lam, d: int, float64: bool = False) -> int:
    """Eigenvalues (of a d×d PSD matrix, from :func:`_eigh`) above the rounding floor d·ε·λ_max, ε the
    unit roundoff of the precision the eigendecomposition ran in (float32 above
    :data:`PCA_FLOAT64_MAX_DIM` unless ``float64``)."""
    import torch

    eps = torch.finfo(torch.float32 if d > PCA_FLOAT64_MAX_DIM and not float64 else torch.float64).eps
    top = float(lam[-1])
    if not top > 0:
        return 0
    return int((lam > d * eps * top).sum())


def pca_distances(C00, C11, ks, n: int) -> dict:
    """``pca_dist_k``, ``pca_gap_k`` and ``pca_reason_k`` for every k, and ``pca_rank``, with one
    eigendecomposition per covariance. A distance is NaN, with the reason, when k ≥ d (the projector
    is the identity) or when either covariance's numerical rank is below k (the top-k subspace then
    holds arbitrary directions of the null space). The centred covariance of n tokens has rank at
    most n − 1, so k ≥ n needs no decomposition to be rejected."""
    d = C00.shape[0]
    out = {}
    cheap = [k for k in ks if k < d and k < n]
    eig = (_eigh(C00), _eigh(C11)) if cheap else None
    rank = min(numerical_rank(eig[0][0], d), numerical_rank(eig[1][0], d)) if eig else max(min(n - 1, d), 0)
    if eig and d > PCA_FLOAT64_MAX_DIM and rank < max(cheap):
        # below float32's floor (d·ε₃₂·λ_max ≈ 7e-5 λ_max at d = 576) an eigenvalue is not resolved
        # in float32: decide in float64 (rare; a spectrum falling that steeply)
        eig = (_eigh(C00, float64=True), _eigh(C11, float64=True))
        rank = min(numerical_rank(eig[0][0], d, True), numerical_rank(eig[1][0], d, True))
    out["pca_rank"] = rank  # without a decomposition (every k excluded): the bound min(n − 1, d)
    for k in ks:
        reason = ("k >= d" if k >= d else f"rank <= n_tokens - 1 = {n - 1} < k" if k >= n
                  else f"rank {rank} < k" if rank < k else "")
        out[f"pca_reason_{k}"] = reason
        if reason:
            out[f"pca_dist_{k}"], out[f"pca_gap_{k}"] = float("nan"), float("nan")
            continue
        (l0, V0), (l1, V1) = eig
        T0, T1 = V0[:, -k:], V1[:, -k:]
        overlap = float((T0.T @ T1).pow(2).sum())
        out[f"pca_dist_{k}"] = math.sqrt(max(1.0 - overlap / k, 0.0))
        gaps = []
        for lam in (l0, l1):
            lk, lk1 = float(lam[-k]), float(lam[-k - 1])
            gaps.append((lk - lk1) / lk if lk > 0 else 0.0)
        out[f"pca_gap_{k}"] = min(gaps)
    return out


def geometry_from_sums(ps: PairSums, ks=PCA_KS) -> dict:
    """All act-geom metrics of one module from its streamed sums."""
    with small_linalg_threads():
        return _geometry(ps, ks)


class Sums:
    """One module's streamed sums with the quantities several metrics share, each computed once on
    first use: ``n``, the centred cross-products ``C00``/``C11``/``C01`` (float64) and their traces
    ``t00``/``t11``, the PCA orders ``ks``. A metric reads what it needs from here."""

    def __init__(self, ps: PairSums, ks=PCA_KS):
        self.ps = ps
        self.ks = tuple(ks)
        self.n = ps.n_tokens
        self._c = None

    def _centred(self):
        if self._c is None:
            self._c = _centred(self.ps)
        return self._c

    @property
    def C00(self):
        return self._centred()[0]

    @property
    def C11(self):
        return self._centred()[1]

    @property
    def C01(self):
        return self._centred()[2]

    @property
    def t00(self) -> float:
        import torch

        return float(torch.trace(self.C00))

    @property
    def t11(self) -> float:
        import torch

        return float(torch.trace(self.C11))


@dataclass(frozen=True)
class GeomMetric:
    """One entry of the act-geom metric list: ``compute(Sums) -> {column: value}`` gives its columns
    (in order); ``leaderboard`` names the columns `peftarena report` averages per prompt set (ag_*)."""

    name: str
    compute: Callable[[Sums], dict]
    leaderboard: tuple[str, ...] = ()


def _residuals(m: Sums) -> dict:
    import torch

    ps = m.ps
    sd = (ps.s1.to(torch.float64) - ps.s0.to(torch.float64))
    raw2 = max(float(ps.dd) - float(sd @ sd) / max(m.n, 1), 0.0)
    proc2 = max(m.t11 + m.t00 - 2.0 * nuclear_norm(m.C01), 0.0)
    denom = math.sqrt(m.t00) if m.t00 > 0 else float("nan")
    raw, proc = math.sqrt(raw2) / denom, math.sqrt(proc2) / denom
    return {"raw_residual": raw, "procrustes_residual": proc, "procrustes_improvement": raw - proc}


def _gram(m: Sums) -> dict:
    import torch

    f = lambda t: t.to(torch.float64)  # noqa: E731
    ps = m.ps
    g00, g11, g01 = (float(f(g).pow(2).sum()) for g in (ps.G00, ps.G11, ps.G01))
    return {"gram_distortion": math.sqrt(max(g11 + g00 - 2.0 * g01, 0.0)) / math.sqrt(g00) if g00 > 0 else float("nan")}


def _cka(m: Sums) -> dict:
    den = float(m.C00.norm()) * float(m.C11.norm())
    return {"cka": float(m.C01.pow(2).sum()) / den if den > 0 else float("nan")}


def _token_drift(m: Sums) -> dict:
    import torch

    return {"cos_drift": 1.0 - float(torch.trace(m.ps.G01.to(torch.float64))) / max(m.n, 1),
            "log_norm_ratio": float(m.ps.lnr) / max(m.n, 1), **drift_statistics(m.ps)}


def _pca(m: Sums) -> dict:
    return pca_distances(m.C00, m.C11, m.ks, m.n)


# The metric list: every act-geom column comes from one entry, in this order (docs/act-geom.md).
METRICS: list[GeomMetric] = [
    GeomMetric("tokens", lambda m: {"n_tokens": m.n}),
    GeomMetric("residuals", _residuals, ("raw_residual", "procrustes_residual", "procrustes_improvement")),
    GeomMetric("gram_distortion", _gram, ("gram_distortion",)),
    GeomMetric("cka", _cka, ("cka",)),
    GeomMetric("token_drift", _token_drift, ("cos_drift", "log_norm_ratio")),
    GeomMetric("pca", _pca, tuple(f"pca_dist_{k}" for k in PCA_KS)),
]


def register_metric(metric: GeomMetric) -> GeomMetric:
    """Add (or, under the same name, replace) an act-geom metric; its columns follow the others'."""
    for i, m in enumerate(METRICS):
        if m.name == metric.name:
            METRICS[i] = metric
            return metric
    METRICS.append(metric)
    return metric


def leaderboard_columns() -> tuple[str, ...]:
    """The act-geom columns `peftarena report` puts in the leaderboard (per prompt set)."""
    return tuple(c for m in METRICS for c in m.leaderboard)


def _geometry(ps: PairSums, ks) -> dict:
    sums = Sums(ps, ks)
    out: dict = {}
    for m in METRICS:
        out.update(m.compute(sums))
    return out


def drift_statistics(ps: PairSums) -> dict:
    """Angular drift (mean, median; radians) and norm ratio (mean, population std) over the tokens."""
    import torch

    n = ps.n_tokens
    if n == 0:
        nan = float("nan")
        return {"angular_drift_mean": nan, "angular_drift_median": nan, "norm_ratio_mean": nan, "norm_ratio_std": nan}
    m1 = float(ps.nr1) / n  # mean of ρ − 1
    var = max(float(ps.nr2) / n - m1 * m1, 0.0)
    angles = ps.token_angles()
    median = float(torch.sort(angles.to(torch.float64)).values[(angles.numel() - 1) // 2]) if angles.numel() else float("nan")
    return {"angular_drift_mean": float(ps.ang) / n, "angular_drift_median": median,
            "norm_ratio_mean": 1.0 + m1, "norm_ratio_std": math.sqrt(var)}


def module_rows(set_name: str, mods: dict, sample=None, workers: int | None = None) -> list[dict]:
    """One act-geom row per module of one prompt set (``{module: PairSums}``), in the given order.

    The per-module decompositions are small, so LAPACK gains little from several threads on one of
    them: ``workers`` modules (default: torch's intra-op thread count) are worked on at once, each
    single-threaded. ``sample`` (a GramSample) adds the study-style sampled Gram distortion.
    """
    import torch

    from peftarena_cli.artifacts.keys import module_kind, module_layer

    def one(item):
        mname, ps = item
        row = {"prompt_set": set_name, "module": mname, "layer": module_layer(mname), "kind": module_kind(mname),
               "accum_dtype": str(ps.A00.dtype).removeprefix("torch.")}
        row.update(_geometry(ps, PCA_KS))
        if sample is not None:
            s0, s1 = sample.matrices(mname)
            row["gram_distortion_sampled"] = gram_distortion_dense(s0, s1)
            row["gram_sample_tokens"] = int(s0.shape[0])
        return row

    items = list(mods.items())
    n = torch.get_num_threads() if workers is None else workers
    n = max(1, min(n, len(items)))
    with small_linalg_threads():
        if n == 1:
            return [one(it) for it in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n, thread_name_prefix="act-geom") as ex:
            return list(ex.map(one, items))


def row_normalise(X, eps: float = EPS):
    return X / X.norm(dim=1, keepdim=True).clamp_min(eps)


def gram_distortion_dense(X0, X1) -> float:
    """‖Z1Z1ᵀ − Z0Z0ᵀ‖_F / ‖Z0Z0ᵀ‖_F on explicit token×token Grams (float64)."""
    import torch

    Z0 = row_normalise(X0.to(torch.float64))
    Z1 = row_normalise(X1.to(torch.float64))
    K0 = Z0 @ Z0.T
    K1 = Z1 @ Z1.T
    return float((K1 - K0).norm() / K0.norm())

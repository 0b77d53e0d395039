"""Rounding-error bounds for tests that compare one quantity computed in two summation orders.

The act-geom sums (``PairSums``) of the same tokens, added in another order (shards merged, other
batch boundaries, another BLAS kernel's blocking), differ by rounding only. Each run's float64 sum
of n terms is within γ_n·Σ|term| of the exact sum, γ_n = n·u/(1 − n·u), u = 2⁻⁵³, whatever the
order of the additions (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1, §4.2).
:func:`act_geom_bounds` carries these bounds through every metric's formula
(:mod:`peftarena_cli.activations.metrics`) with midpoint–radius interval arithmetic, so that a
test can assert |a − b| ≤ bound instead of a tolerance tuned on one machine.

The per-token values (float32 outputs, their norms, angles and ratios) are the same in both runs
(same batches, same operations); only the sums over tokens are rounded differently.

Entry bounds, by Cauchy–Schwarz from the sums themselves (|X|ᵀ|Y| ≤ √(diag XᵀX · diag YᵀY)):

* A_ab[i, j]:  γ_n·√(A_aa[i,i]·A_bb[j,j]);     s_a[i]:  γ_n·√(n·A_aa[i,i]);
* C_ab = A_ab − s_a s_bᵀ/n:  (3γ_n + γ_n² + 6u)·√(A_aa[i,i]·A_bb[j,j]) per entry (the two sums'
  errors, then the rounding of the outer product, the division and the subtraction), so
  ‖ΔC_ab‖_F ≤ (3γ_n + γ_n² + 6u)·√(tr A_aa · tr A_bb);
* scalar sums of per-token terms (Σ‖x1 − x0‖², Σ|log ρ|, ...): γ_n·Σ|term|.

A decomposition adds its backward error: LAPACK's ``eigh`` / ``svdvals`` return the exact
results of a matrix within p(d)·u·‖C‖_F of C, taken here with p(d) = d (its usual worst-case form;
the observed error is far smaller).

The PCA distance ‖P0 − P1‖_F/√(2k) is the one metric whose bound is not a few ulps of the sums:
by Davis–Kahan in the Yu–Wang–Samworth form, ‖sin Θ‖_F ≤ 2‖E‖_F/δ_k with δ_k = λ_k − λ_{k+1}
of the exact covariance, and ‖ΔP‖_F = √2‖sin Θ‖_F, so one run's distance is within
Σ_{a=0,1} 2‖E_a‖_F/(δ_k,a √k) of the exact one. With the small tail eigenvalues of a covariance
whose largest is 10⁸–10⁹ times larger (the tiny test model's MLP outputs), that is ~10⁻⁷, not
10⁻¹⁴: a float64 rounding of the sums is amplified by ‖C‖/δ_k.
"""

from __future__ import annotations

import math

U = 2.0 ** -53  # unit roundoff of float64


def gamma(n: int) -> float:
    """γ_n = n·u/(1 − n·u): the relative error bound of a float64 sum or dot product of n terms."""
    return n * U / (1 - n * U)


class Iv:
    """A value and a bound on its error (midpoint–radius interval); each operation adds the rounding
    of its own result (u relative) to the propagated radius."""

    def __init__(self, mid: float, rad: float = 0.0):
        self.mid, self.rad = float(mid), float(rad)

    def __add__(self, o):
        o = o if isinstance(o, Iv) else Iv(o)
        m = self.mid + o.mid
        return Iv(m, self.rad + o.rad + U * abs(m))

    def __sub__(self, o):
        o = o if isinstance(o, Iv) else Iv(o)
        m = self.mid - o.mid
        return Iv(m, self.rad + o.rad + U * abs(m))

    def __rsub__(self, o):
        return Iv(o) - self

    def __mul__(self, o):
        o = o if isinstance(o, Iv) else Iv(o)
        m = self.mid * o.mid
        return Iv(m, abs(self.mid) * o.rad + abs(o.mid) * self.rad + self.rad * o.rad + U * abs(m))

    __rmul__ = __mul__

    def __radd__(self, o):
        return self + o

    def __truediv__(self, o):
        o = o if isinstance(o, Iv) else Iv(o)
        if not abs(o.mid) > o.rad:
            return Iv(math.nan, math.inf)
        m = self.mid / o.mid
        return Iv(m, (abs(self.mid) * o.rad + abs(o.mid) * self.rad) / (abs(o.mid) * (abs(o.mid) - o.rad)) + U * abs(m))

    def sqrt(self):
        """√max(x, 0), as the metrics clamp a cancelled difference at 0."""
        lo, hi = max(self.mid - self.rad, 0.0), max(self.mid + self.rad, 0.0)
        m = math.sqrt(max(self.mid, 0.0))
        return Iv(m, max(math.sqrt(hi) - m, m - math.sqrt(lo)) + U * m)


def act_geom_bounds(ps, ks=(32, 64)) -> dict:
    """For each numeric act-geom metric (the keys of ``geometry_from_sums``), a bound on |a − b| between two
    runs whose sums are ``ps`` up to summation order (both within γ_n of the exact sums; twice
    the one-run radius). ``inf`` where the bound cannot be given (e.g. a rank decision or a gap
    that the rounding could flip); 0 for ``n_tokens``. Float64 decompositions only (d ≤ 256, the
    path :func:`~peftarena_cli.activations.metrics.pca_distances` takes there)."""
    import torch

    from peftarena_cli.activations.metrics import PCA_FLOAT64_MAX_DIM, _centred, _sym

    n = ps.n_tokens
    d = ps.dim
    assert d <= PCA_FLOAT64_MAX_DIM, "bounds for the float64 decompositions only"
    g = gamma(n + 1)
    f = lambda t: t.to(torch.float64)  # noqa: E731
    T0, T1 = float(f(ps.A00).trace()), float(f(ps.A11).trace())
    c = 3 * g + g * g + 6 * U
    C00, C11, C01 = _centred(ps)
    dC = {"00": c * T0, "11": c * T1, "01": c * math.sqrt(T0 * T1)}  # ‖ΔC_ab‖_F
    t00 = Iv(float(C00.trace()), c * T0 + d * U * T0)
    t11 = Iv(float(C11.trace()), c * T1 + d * U * T1)
    # raw residual: Σ‖x1 − x0‖² − ‖s1 − s0‖²/n over ‖X0c‖²
    sd = f(ps.s1) - f(ps.s0)
    nsd = float(sd.norm())
    e_sd = g * math.sqrt(n) * (math.sqrt(T0) + math.sqrt(T1)) + U * nsd  # ‖Δ(s1 − s0)‖
    sd2 = Iv(nsd * nsd, 2 * nsd * e_sd + e_sd * e_sd + d * U * nsd * nsd)
    dd = Iv(float(ps.dd), g * float(ps.dd))
    raw = (dd - sd2 / n).sqrt() / t00.sqrt()
    # Procrustes: tr C11 + tr C00 − 2‖C01‖_*; ‖ΔC01‖_* ≤ √d‖ΔC01‖_F, and svdvals' backward error
    nuc0 = float(torch.linalg.svdvals(C01).sum())
    n01 = float(C01.norm())
    nuc = Iv(nuc0, math.sqrt(d) * dC["01"] + d * d * U * n01)
    proc = (t11 + t00 - 2 * nuc).sqrt() / t00.sqrt()
    # Gram distortion: G_ab are plain sums of z zᵀ (‖z‖ = 1), ‖ΔG_ab‖_F ≤ γ_n √(tr G_aa tr G_bb)
    G = {k: f(getattr(ps, k)) for k in ("G00", "G11", "G01")}
    tg0, tg1 = float(G["G00"].trace()), float(G["G11"].trace())
    eG = {"G00": g * tg0, "G11": g * tg1, "G01": g * math.sqrt(tg0 * tg1)}

    def sq(k):  # ‖G_k‖_F² as an interval
        v = float(G[k].norm())
        return Iv(v * v, 2 * v * eG[k] + eG[k] ** 2 + d * d * U * v * v)

    g00, g11, g01 = sq("G00"), sq("G11"), sq("G01")
    gram = (g11 + g00 - 2 * g01).sqrt() / g00.sqrt()

    def fro(C, e):
        return Iv(float(C.norm()), e + d * d * U * float(C.norm()))

    f01 = fro(C01, dC["01"])
    cka = f01 * f01 / (fro(C00, dC["00"]) * fro(C11, dC["11"]))
    trG01 = Iv(float(G["G01"].trace()), eG["G01"] + d * U * math.sqrt(tg0 * tg1))
    cos = 1 - trG01 / n
    lnr = Iv(float(ps.lnr), g * float(ps.lnr)) / n
    ang = Iv(float(ps.ang), g * float(ps.ang)) / n
    # Σ|ρ − 1| ≤ √(n Σ(ρ − 1)²)
    nr1 = Iv(float(ps.nr1), g * math.sqrt(n * float(ps.nr2))) / n
    nr2 = Iv(float(ps.nr2), g * float(ps.nr2)) / n
    std = (nr2 - nr1 * nr1).sqrt()
    out = {"raw_residual": raw.rad, "procrustes_residual": proc.rad, "procrustes_improvement": (raw - proc).rad,
           "gram_distortion": gram.rad, "cka": cka.rad, "cos_drift": cos.rad, "log_norm_ratio": lnr.rad,
           "angular_drift_mean": ang.rad, "norm_ratio_mean": (1 + nr1).rad, "norm_ratio_std": std.rad,
           "angular_drift_median": 0.0,  # one of the kept angles, the same values in both runs
           "n_tokens": 0.0}
    # PCA distance: Davis–Kahan per covariance, E = the sums' error plus eigh's backward error
    eig = []
    for C, key in ((C00, "00"), (C11, "11")):
        lam = torch.linalg.eigvalsh(_sym(C))
        E = dC[key] + d * U * float(C.norm())
        # numerical rank: the eigenvalues above d·ε·λ_max (ε = 2u); each moves by at most ‖E‖_2 ≤ ‖E‖_F
        thr = d * torch.finfo(torch.float64).eps * float(lam[-1])
        eig.append((lam, E, thr))
    # the rank (an integer) is the same in both runs only if no eigenvalue is within ‖E‖ of the threshold
    out["pca_rank"] = 0.0 if all(bool(((lam - thr).abs() > E).all()) for lam, E, thr in eig) else math.inf
    for k in ks:
        if k >= d or k >= n or any(float(lam[-k]) < thr - E for lam, E, thr in eig):
            out[f"pca_dist_{k}"] = out[f"pca_gap_{k}"] = 0.0  # NaN in both runs (k ≥ d, k ≥ n, rank < k)
            continue
        rad, gaps = 0.0, []
        for lam, E, thr in eig:
            gap = float(lam[-k] - lam[-k - 1]) - 2 * E  # the exact gap is at least this (Weyl)
            # defined in both runs only if λ_k stays above the rank threshold
            ok = float(lam[-k]) - thr > E and gap > 0
            rad = rad + 2 * E / (gap * math.sqrt(k)) if ok else math.inf
            # (λ_k − λ_{k+1})/λ_k with each eigenvalue within ‖E‖_2 ≤ ‖E‖_F (Weyl)
            gaps.append((Iv(float(lam[-k]), E) - Iv(float(lam[-k - 1]), E)) / Iv(float(lam[-k]), E))
        out[f"pca_dist_{k}"] = rad + k * U
        out[f"pca_gap_{k}"] = max(gp.rad for gp in gaps)  # the minimum of two moves by at most the larger radius
    return {k: 2 * v for k, v in out.items()}  # two runs, each within the radius of the exact value

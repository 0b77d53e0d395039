"""Where the weight-space spectrum metrics are computed (docs/spectrum.md).

For a linear module with base weight W0 = U Σ Vᵀ (σ_i descending) and update ΔW = W1 − W0:

* retention profile  P_diag(i) = u_iᵀ W1 v_i = σ_i + u_iᵀ ΔW v_i,  ΔP_diag(i) = |P_diag(i) − σ_i|;
* update-energy profile  E_Δ(i) = ‖ΔW v_i‖₂;
* effective rank of ΔW  ‖ΔW‖_F² / ‖ΔW‖₂²  (0 when ΔW = 0);
* fluctuation score of a profile x: mean_i |x_i − MA_5(x)_i|, MA_5 a width-5 moving average with
  reflect padding (mirror without repeating the edge: x2 x1 | x0 x1 x2 …). The retention score
  (``fluct_retention``) is the study's: the fluctuation of the raw drift ΔP_diag(i), unnormalised;
  ``fluct_base_retention`` is the fluctuation of P_diag/σ_1 (dominated by the base's own σ_i/σ_1);
  the energy score uses E_Δ/Σ_i E_Δ(i) (× Σ_i E_Δ(i) gives the study's score on raw E_Δ);
* the top five singular values of ΔW (``delta_sv_1`` … ``delta_sv_5``; 0 beyond ΔW's rank);
* singular-vector alignment (multiplicative methods: OFT, BOFT) |cos(v_i(W0), v_i(W1))|.

Structure used instead of dense work (exact, not approximations):

* low-rank ΔW = B A: u_iᵀΔW v_i = Σ_j (UᵀB)_{ij} (A V)ᵀ_{ij} and ‖ΔW v_i‖² = (A v_i)ᵀ (BᵀB) (A v_i), so
  no out×k matrix is formed; ‖ΔW‖_F² from the r×r Grams and ‖ΔW‖₂ from an r×r core (QR of factors);
* dense ΔW: ‖ΔW‖₂² and the next four squared singular values are the top eigenvalues of the
  smaller Gram matrix (float64 eigvalsh up to order 256, block Lanczos above, see
  :func:`top_eigenvalues`);
* OFT, W1 = W0 M with block-diagonal M: ΔW = U Σ Vᵀ(M − I), so with C = Vᵀ(M − I)V and
  D = Vᵀ(M − I)(Mᵀ − I)V (k × k) u_iᵀΔW v_i = σ_i C_ii, ‖ΔW v_i‖ = ‖Σ C e_i‖ and ‖ΔW‖ = ‖Σ D Σ‖^½
  (F: trace, 2-norm: top eigenvalue); M is applied block by block and ΔW is never formed;
* alignment with M orthogonal up to N = MMᵀ − I (max|MᵀM − I| ≤ 1e-4, e.g. OFT): W1 = U (Σ VᵀM),
  so v_i(W1) comes from the eigenvectors of Σ² + Σ(D + C + Cᵀ)Σ, taken to first order and
  exactly inside blocks of strongly mixed indices (:func:`rotation_alignment`), with no SVD of W1.
  Beyond that tolerance, and for BOFT's scale, W1 is decomposed;
* the SVD of W0 comes from :class:`~peftarena_cli.spectral.base_svd.BaseSvdCache`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from peftarena_cli.spectral.base_svd import BaseSvdCache, gram, left_vectors, single_threaded_numpy_lapack, ut_times

TOP_SV = 5  # singular values of ΔW reported per module (the study's delta_sv_top5)
INDEX_COLUMNS = ["module", "layer", "kind", "index", "sigma", "p_diag", "delta_p", "energy", "sva"]
SUMMARY_COLUMNS = [
    "module", "layer", "kind", "method", "form", "out_features", "in_features", "sigma_1",
    "effective_rank", "delta_fro", "delta_spec", "fluct_retention", "fluct_base_retention", "fluct_energy",
    "sva_mean", *(f"delta_sv_{i}" for i in range(1, TOP_SV + 1)),
]
ORTHO_TOL = 1e-4  # max |MᵀM − I| under which v_i(W1) = Mᵀ v_i is used (Neumann truncation error)


def moving_average5(x: torch.Tensor) -> torch.Tensor:
    """Width-5 centred moving average with reflect padding (edge not repeated)."""
    n = x.shape[0]
    if n == 1:
        return x.clone()
    mode = "reflect" if n >= 3 else "replicate"
    xp = torch.nn.functional.pad(x.reshape(1, 1, n).double(), (2, 2), mode=mode).reshape(-1)
    return xp.unfold(0, 5, 1).mean(dim=1).to(x.dtype)


def fluctuation(x: torch.Tensor) -> float:
    """mean_i |x_i − MA_5(x)_i|."""
    if x.numel() == 0:
        return float("nan")
    return float((x.double() - moving_average5(x.double())).abs().mean())


def top_eigenvalue(a: torch.Tensor, tol: float | None = None, max_steps: int = 300, check_every: int = 4) -> float:
    """Largest eigenvalue of a symmetric PSD matrix, by Lanczos with full reorthogonalisation.

    Runs in ``a``'s dtype on the host (a matrix on a GPU is copied over: the iteration is a chain
    of matrix–vector products, each smaller than a kernel launch is worth), with the tridiagonal
    problem in float64. Stops when the top Ritz pair's residual β_j·|s_j| is below ``tol``
    relative (default 1e-6 in float32, 1e-10 in float64), which bounds the eigenvalue's error by
    the same; ``eigvalsh`` for small matrices or if ``max_steps`` do not settle it. On OFT's
    576 × 576 Gram matrices it is faster and more accurate than block subspace iteration
    (docs/spectrum.md, "Speed and memory").
    """
    n = a.shape[0]
    if n <= 32:
        return float(torch.linalg.eigvalsh(a.double())[-1].clamp_min(0.0))
    a = a.cpu()
    if tol is None:
        tol = 1e-10 if a.dtype == torch.float64 else 1e-6
    m = min(n, max_steps)
    g = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.empty(m + 1, n, dtype=a.dtype)  # Lanczos vectors as rows
    q = torch.randn(n, generator=g, dtype=torch.float64).to(a.dtype)
    basis[0] = q / q.norm()
    alpha = torch.zeros(m, dtype=torch.float64)
    beta = torch.zeros(m, dtype=torch.float64)
    w = torch.empty(n, dtype=a.dtype)
    for j in range(m):
        torch.mv(a, basis[j], out=w)
        done = basis[: j + 1]
        h = done @ w  # classical Gram–Schmidt against every earlier vector, twice, in place
        w.addmv_(done.T, h, alpha=-1.0)
        h2 = done @ w
        w.addmv_(done.T, h2, alpha=-1.0)
        h += h2
        alpha[j] = h[j]
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        if (j + 1) % check_every == 0 or j == m - 1 or b == 0.0:
            t = torch.diag(alpha[: j + 1]) + torch.diag(beta[:j], 1) + torch.diag(beta[:j], -1)
            ev, vec = torch.linalg.eigh(t)
            theta = float(ev[-1])
            if b * abs(float(vec[-1, -1])) <= tol * max(theta, 1e-300) or b <= 1e-12 * max(theta, 1e-300):
                return max(theta, 0.0)
        torch.div(w, b, out=basis[j + 1])
    return float(torch.linalg.eigvalsh(a.double())[-1].clamp_min(0.0))


DENSE_EIG_MAX = 256  # up to this order a float64 eigvalsh is cheaper than the Lanczos iteration
START_NOISE = 0.3  # norm of the random part of each starting vector of top_eigenvalues


def top_eigenvalues(a: torch.Tensor, count: int = TOP_SV, tol: float | None = None, max_dim: int = 320,
                    extra: int = 3, dense_max: int | None = None) -> torch.Tensor:
    """The ``count`` largest eigenvalues (descending, float64, clamped at 0) of a symmetric PSD matrix.

    Up to order ``dense_max`` (default ``DENSE_EIG_MAX``), all eigenvalues in float64 (``eigvalsh``:
    exact to rounding, and cheaper there than the iteration). Above it, block Lanczos with full
    reorthogonalisation and a block of ``count + 3`` vectors, so an eigenvalue repeated up to that
    many times is found with its multiplicity (single-vector Lanczos finds each distinct eigenvalue
    once). T = QᵀAQ is taken from the projections themselves, not assumed block-tridiagonal, and a
    block that loses rank (an exhausted Krylov space, e.g. a rank-deficient ΔW) is completed with
    random directions, so the Rayleigh–Ritz values stay exact for the space spanned. Stops when
    every wanted Ritz value's error bound min(ρ_i, ρ_i²/gap_i) (ρ_i = ‖R s_i‖ the residual, gap_i
    the distance to the nearest other Ritz value) is below ``tol`` × θ_1 (default 1e-6 in float32,
    1e-10 in float64); ``eigvalsh`` when ``max_dim`` vectors do not settle it. Runs on the host in
    ``a``'s dtype, the eigenproblems of T in float64.

    The iteration starts from the unit vectors of A's ``count + 3`` largest diagonal entries, each
    plus a random vector of norm ``START_NOISE`` (so that no eigenvector is orthogonal to the start
    whatever A is): for OFT's Σ D Σ, whose largest diagonal entries sit at W0's largest σ_i, that
    saves one or two blocks (docs/spectrum.md). Each new block is orthogonalised against the basis
    once, normalised (QR), and orthogonalised once more (a column that loses more than half its norm in that second
    pass is noise from an exhausted Krylov space). The bound is checked after two blocks, then where
    the decay of the worst bound since the previous check predicts convergence (at most four blocks
    on): the eigenproblem of T is the dominant cost besides the products with A.
    """
    n = a.shape[0]
    want = min(count, n)
    if n <= max(DENSE_EIG_MAX if dense_max is None else dense_max, 32, 6 * count):
        ev = torch.linalg.eigvalsh(a.double().cpu()).flip(0)[:want]
        return ev.clamp_min(0.0)
    a = a.cpu()
    dt = a.dtype
    if tol is None:
        tol = 1e-10 if dt == torch.float64 else 1e-6
    p = count + extra
    m = min(n, max_dim)
    g = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.empty(m + p, n, dtype=dt)  # orthonormal rows
    t = torch.zeros(m + p, m + p, dtype=dt)  # lower triangle of T = QᵀAQ (what eigh reads)
    x = torch.randn(p, n, generator=g, dtype=torch.float64)
    x *= START_NOISE / math.sqrt(n)
    x[torch.arange(p), torch.topk(torch.diagonal(a), p).indices] += 1.0
    q, _ = torch.linalg.qr(x.to(dt).T)
    basis[:p] = q.T
    j, b0 = p, 0  # rows filled; first row of the block being expanded
    next_check, last = 2 * p, None
    while True:
        done = basis[:j]
        w = basis[b0:j] @ a  # rows (A q_l)ᵀ, a symmetric
        h = w @ done.T
        w -= h @ done
        q, r = torch.linalg.qr(w.T)  # w = rᵀ qᵀ
        u = q.T
        h2 = u @ done.T  # second pass on the normalised block: qᵀ = r2ᵀ q2ᵀ + h2 Q
        u = u - h2 @ done
        q, r2 = torch.linalg.qr(u.T)
        t[b0:j, :j] = h + r.T @ h2  # so A q_block = Q (h + rᵀh2)ᵀ + q2 (r2 r): the block's rows of T
        r = r2 @ r  # and its coupling to the next block
        if j >= next_check or j + p > m or j >= n:
            ev, vec = torch.linalg.eigh(t[:j, :j].double())  # ascending
            top_ev = ev[-min(want + 1, j):].flip(0)  # the wanted Ritz values and the next one
            theta = top_ev[:want]
            res = torch.linalg.vector_norm(r.double() @ vec[b0:j, j - want:].flip(1), dim=0)
            top = max(float(theta[0]), 1e-300)
            # error bound per Ritz value: min(ρ, ρ²/gap), the gap to the nearest other Ritz value
            diffs = top_ev[:-1] - top_ev[1:]
            ritz_gap = torch.full((want,), float("inf"), dtype=torch.float64)
            ritz_gap[: diffs.numel()] = diffs
            ritz_gap[1:] = torch.minimum(ritz_gap[1:], diffs[: want - 1])
            worst = float(torch.minimum(res, res * res / ritz_gap.clamp_min(1e-300)).max()) / (tol * top)
            if worst <= 1.0 or j >= n:
                return theta.clamp_min(0.0)
            if j + p > m:
                break
            step = 2 * p
            if last is not None and worst < last[1]:  # vectors to go, from the decay per vector so far
                rate = math.log(last[1] / worst) / (j - last[0])
                step = max(p, min(int(0.8 * math.log(worst) / rate) // p * p, 4 * p))
            last, next_check = (j, worst), j + step
        bad = r2.diagonal().abs() < 0.5
        for _ in range(3):  # an exhausted Krylov space: the noise columns become random directions
            if not bool(bad.any()):
                break
            u = q.T.clone()
            u[bad] = torch.randn(int(bad.sum()), n, generator=g, dtype=torch.float64).to(dt)
            for _ in range(2):
                u -= (u @ done.T) @ done
            q, r3 = torch.linalg.qr(u.T)
            bad = r3.diagonal().abs() < 0.5
        basis[j:j + p] = q.T
        b0, j = j, j + p
    ev = torch.linalg.eigvalsh(a.double()).flip(0)[:want]
    return ev.clamp_min(0.0)


def top_singular_values(md, count: int = TOP_SV) -> torch.Tensor:
    """The ``count`` largest singular values of ΔW (descending, float64; 0 beyond ΔW's rank, and
    only min(out, in) of them): r×r core for low-rank, top eigenvalues of the smaller Gram matrix
    otherwise."""
    k = min(md.w0.shape)
    want = min(count, k)
    if md.is_low_rank:
        sv = md.singular_values().double().cpu()[:want]
        return torch.cat([sv, torch.zeros(want - sv.numel(), dtype=torch.float64)])
    d = md.dense()
    return top_eigenvalues(gram(d.T if d.shape[0] <= d.shape[1] else d), count).sqrt()


def spectral_norm_sq(md) -> float:
    """‖ΔW‖₂² of a ModuleDelta: r×r core for low-rank, top eigenvalue of the smaller Gram otherwise."""
    if md.is_low_rank:
        sv = md.singular_values()
        return float(sv[0]) ** 2 if sv.numel() else 0.0
    d = md.dense()
    return top_eigenvalue(gram(d.T if d.shape[0] <= d.shape[1] else d))


def rotation_parts(md, u, s, vh):
    """OFT-style W1 = W0 M: u_iᵀΔW v_i, ‖ΔW v_i‖, ‖ΔW‖_F², ΔW's top squared singular values and, for the alignment,
    (C, D) (below), without forming ΔW.

    One block rotation, Y = (Mᵀ − I)V, and two products of the size of a k × in × k GEMM, both
    from Y: C = Yᵀ V (= Vᵀ(M − I)V) and the Gram matrix D = YᵀY = Vᵀ(M − I)(Mᵀ − I)V. Everything
    else comes from them: ΔW = U Σ Vᵀ(M − I) has the singular values of YΣ, whose Gram matrix is
    Σ D Σ (so ‖ΔW‖_F² = Σ_i σ_i² D_ii). V is used as the transposed view of Vh throughout (the
    block product and the GEMM read it in place), so no (in × k) copy of it is made.
    """
    v = vh.T  # (in, k), a view
    y = md.rotate(v, transpose=True)
    y -= v  # Y = (Mᵀ − I) V
    c = y.T @ v  # C = Yᵀ V = Vᵀ (M − I) V
    cd = torch.diagonal(c)
    diag = s * cd
    s2 = s * s
    energy = (s2 @ (c * c)).clamp_min(0.0).sqrt()  # ‖Σ C e_i‖ = ‖ΔW v_i‖
    d = gram(y)
    dd = torch.diagonal(d)
    fro2 = float((s2 * dd).sum(dtype=torch.float64))
    want = min(TOP_SV, min(md.w0.shape))
    top2 = top_eigenvalues(s[:, None] * d * s) if fro2 > 0 else torch.zeros(want, dtype=torch.float64)
    return diag, energy, fro2, top2, (c, d)


def profiles(md, u, s: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u_iᵀ ΔW v_i, ‖ΔW v_i‖) for every index i of W0's SVD (``u`` None: derived from W0, V, Σ)."""
    v = vh.T
    if md.is_low_rank:
        b, a = md.factors
        av = a @ v  # (r, k)
        ub = ut_times(u, s, vh, md.w0, b)  # (k, r)
        diag = (ub * av.T).sum(dim=1)
        energy = ((b.T @ b) @ av * av).sum(dim=0).clamp_min(0.0).sqrt()
        return diag, energy
    dv = md.matmul(v)  # (out, k)
    if u is None:
        u = left_vectors(md.w0, s, vh)
    return (u * dv).sum(dim=0), torch.linalg.norm(dv, dim=0)


def alignment(md, s, vh, cd: tuple | None = None) -> torch.Tensor:
    """|cos(v_i(W0), v_i(W1))| per index i. ``cd`` is :func:`rotation_parts`' (C, D) for a rotation
    W1 = W0 M; without it (any other method, ``--sva``) W1 is decomposed."""
    if cd is not None and md.rotation_orthogonality_error() <= ORTHO_TOL:
        cos = rotation_alignment(s, *cd)
        if cos is not None:
            return cos
    _, _, vh1 = torch.linalg.svd(md.w1(), full_matrices=False)
    return (vh * vh1).sum(dim=1).abs()


CLUSTER_COUPLING = 1e-3  # first-order mixing of two indices above which they are solved together
MAX_CLUSTER = 64  # a larger block of mixing indices: W1 is decomposed instead


def rotation_alignment(s: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """|cos(v_i(W0), v_i(W1))| for W1 = W0 M with M orthogonal up to N = M Mᵀ − I, from
    C = Vᵀ(M − I)V and D = Vᵀ(M − I)(Mᵀ − I)V.

    W1 = U (Σ Vᵀ M), so its right singular vectors are v_i(W1) = MᵀVΣ p_i / s_i, where (s_i², p_i)
    are the eigenpairs of Σ VᵀM MᵀV Σ = Σ² + E with E = Σ (VᵀNV) Σ, and
    cos_i = v_iᵀ v_i(W1) = [(I + C)ᵀ Σ p_i]_i / s_i. Expanding MᵀV = V + (Mᵀ − I)V gives
    VᵀNV = D + C + Cᵀ exactly. For an orthogonal M, E = 0, p_i = e_i and cos_i = 1 + C_ii. PEFT's
    default Cayley–Neumann rotation is orthogonal only up to the series' truncation (‖N‖ ~ 6e-6 on
    the benchmark's adapter), which is enough to mix close singular values: with E ignored the
    error reached 1.0e-4 on smollm2-135m. So:

    * p_i is taken to first order, p_i = e_i + Σ_j E_ji / (σ_i² − σ_j²) e_j (error O(ε²) for a
      coupling ε);
    * indices coupled more strongly than ``CLUSTER_COUPLING`` (or neighbours whose eigenvalue
      shifts differ by more than that fraction of their gap, which could reorder them) form blocks
      solved exactly in float64; their eigenvalues, sorted, keep the block's indices in order.

    Against a float64 SVD of W0 M the error left is 3.5e-6 over smollm2-135m's 210 modules. None
    when a block would exceed ``MAX_CLUSTER`` indices (the caller then decomposes W1).
    """
    k = s.shape[0]
    if k == 0:
        return s.clone()
    e = d + c + c.T
    e *= s[:, None] * s  # Σ (VᵀNV) Σ, symmetric
    lam = s * s
    gap = lam[None, :] - lam[:, None]  # gap[j, i] = λ_i − λ_j
    gap.fill_diagonal_(1.0)
    p = e / gap  # p[j, i]: first-order component of p_i along e_j
    p.fill_diagonal_(0.0)
    strong = ~(p.abs() <= CLUSTER_COUPLING)  # NaN (equal σ, no coupling: 0/0) is solved exactly too
    de = torch.diagonal(e)
    if k > 1:  # neighbours whose shifts differ by a sizeable fraction of their gap may swap places
        swap = (de[:-1] - de[1:]).abs() > CLUSTER_COUPLING * (lam[:-1] - lam[1:]).abs()
        idx = torch.nonzero(swap).flatten()
        strong[idx, idx + 1] = True
    p.fill_diagonal_(1.0)
    lam1 = (lam + de).double()
    for a, b in _intervals(strong):
        if b - a + 1 > MAX_CLUSTER:
            return None
        blk = slice(a, b + 1)
        # descending through −A: equal eigenvalues keep the identity's order (cos = 1 + C_ii, as
        # for an exact rotation) where flipping eigh's ascending order would swap them
        w, q = torch.linalg.eigh(-(torch.diag(lam[blk].double()) + e[blk, blk].double()))
        p[blk, blk] = q.to(p.dtype)
        lam1[blk] = -w
    p /= torch.linalg.vector_norm(p, dim=0)
    p *= s[:, None]  # Σ p_i
    num = torch.diagonal(p) + (c * p).sum(dim=0)  # Σ_j (I + C)_ji σ_j p_ji
    return (num.double().abs() / lam1.clamp_min(1e-300).sqrt()).clamp(max=1.0).to(s.dtype)


def _intervals(pairs: torch.Tensor) -> list[tuple[int, int]]:
    """The index ranges spanned by the marked pairs (i, j) of a k × k mask, overlapping ranges merged."""
    ii, jj = torch.nonzero(pairs, as_tuple=True)
    spans = sorted(zip(torch.minimum(ii, jj).tolist(), torch.maximum(ii, jj).tolist()))
    out: list[list[int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


@dataclass
class ModuleSpectrum:
    index: dict  # column -> tensor/list, one entry per singular index
    summary: dict


def module_spectrum(md, u, s, vh, sva: bool | None = None) -> ModuleSpectrum:
    """All spectrum metrics of one module; ``sva=None`` computes alignment for multiplicative methods only."""
    cd = None
    if md.is_rotation and md.row_scale is None:
        diag, energy, fro2, top2, cd = rotation_parts(md, u, s, vh)
        top_sv = top2.clamp_min(0.0).sqrt()
    else:
        diag, energy = profiles(md, u, s, vh)
        fro2 = md.fro2()
        top_sv = top_singular_values(md)
    spec2 = float(top_sv[0]) ** 2 if top_sv.numel() else 0.0
    p_diag = s + diag
    k = s.shape[0]
    eff = fro2 / spec2 if spec2 > 0 else 0.0
    s1 = float(s[0]) if k else float("nan")
    etot = float(energy.sum())
    want_sva = md.multiplicative if sva is None else sva
    sv = alignment(md, s, vh, cd) if want_sva else torch.full((k,), float("nan"), device=s.device)
    index = {
        "index": torch.arange(k),
        "sigma": s.detach().cpu().double(),
        "p_diag": p_diag.detach().cpu().double(),
        "delta_p": diag.abs().detach().cpu().double(),
        "energy": energy.detach().cpu().double(),
        "sva": sv.detach().cpu().double(),
    }
    summary = {
        "module": md.name, "layer": md.layer, "kind": md.kind, "method": md.method, "form": md.form,
        "out_features": int(md.w0.shape[0]), "in_features": int(md.w0.shape[1]), "sigma_1": s1,
        "effective_rank": eff, "delta_fro": fro2 ** 0.5, "delta_spec": spec2 ** 0.5,
        "fluct_retention": fluctuation(index["delta_p"]),
        "fluct_base_retention": fluctuation(index["p_diag"] / s1) if s1 > 0 else float("nan"),
        "fluct_energy": fluctuation(index["energy"] / etot) if etot > 0 else 0.0,
        "sva_mean": float(index["sva"].mean()) if want_sva else float("nan"),
    }
    for i in range(TOP_SV):  # NaN beyond min(out, in): ΔW has no such singular value
        summary[f"delta_sv_{i + 1}"] = float(top_sv[i]) if i < top_sv.numel() else float("nan")
    return ModuleSpectrum(index=index, summary=summary)


def spectrum_workers(device: str, total: int, workers: int | None = None) -> int:
    """How many modules to work on at once: 1 on an accelerator, else ``workers`` or torch's threads."""
    if not str(device).startswith("cpu"):
        return 1
    n = torch.get_num_threads() if workers is None else workers
    return max(1, min(n, total))


def _in_parallel(items, work, take, n_workers: int) -> None:
    """``take(*work(item))`` for every item, in order, ``n_workers`` single-threaded workers at once."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with single_threaded_numpy_lapack() as init, \
                ThreadPoolExecutor(n_workers, thread_name_prefix="spectrum", initializer=init) as ex:
            pending: deque = deque()
            try:
                for item in items:
                    pending.append(ex.submit(work, item))
                    while len(pending) >= 2 * n_workers:
                        take(*pending.popleft().result())
                while pending:
                    take(*pending.popleft().result())
            finally:
                for f in pending:
                    f.cancel()
    finally:
        torch.set_num_threads(threads)


@dataclass
class SpectrumResult:
    """The two tables as Arrow tables (what the CLI writes: no pandas import, docs/spectrum.md)
    and, on first use, as pandas DataFrames (``index``, ``summary``)."""

    index_table: object  # pyarrow.Table, INDEX_COLUMNS
    summary_table: object  # pyarrow.Table, SUMMARY_COLUMNS
    stats: dict = field(default_factory=dict)

    @functools.cached_property
    def index(self):
        return self.index_table.to_pandas()

    @functools.cached_property
    def summary(self):
        return self.summary_table.to_pandas()


SUMMARY_DTYPES = {"layer": "int32", "out_features": "int64", "in_features": "int64"}
SUMMARY_STRINGS = {"module", "kind", "method", "form"}  # every other column is float64


def compute_spectrum(
    base_spec: str,
    finetuned_spec: str,
    modules: list[str] | None = None,
    layers: list[int] | None = None,
    device: str = "cpu",
    cache=None,
    sva: bool | None = None,
    callback: Callable[[int, int, str], None] | None = None,
    workers: int | None = None,
) -> SpectrumResult:
    """Spectrum tables of a fine-tune against its base, module by module.

    ``cache`` is a :class:`BaseSvdCache` (default: the on-disk cache under ``$PEFTARENA_HOME``);
    pass ``BaseSvdCache(enabled=False)`` to skip it. On the CPU, ``workers`` modules (default: as
    many as torch has intra-op threads) are worked on at once, each single-threaded: the per-module
    decompositions are too small for LAPACK to use several cores well. Modules are read and checked
    in order in the calling thread and at most 2 × workers are in flight, so memory stays bounded;
    the output is in module order whatever the number of workers.
    """
    import numpy as np

    from peftarena_cli.artifacts.keys import base_key
    from peftarena_cli.artifacts.tables import arrow_table
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.weights import iter_module_deltas, open_finetuned
    from peftarena_cli.artifacts.keys import select_modules

    t0 = time.perf_counter()
    ref = resolve_model(base_spec)
    base = WeightSource.from_ref(ref, device="cpu")
    ft = open_finetuned(finetuned_spec)
    cache = cache if cache is not None else BaseSvdCache()

    def svd_fn(name, w0):  # the whole SVD, as the formers expect (PiSSA's residual needs U)
        u, s, vh = cache.get(base, base_key(base, name), w0)
        return (left_vectors(w0, s, vh) if u is None else u), s, vh

    total = len(select_modules(ft.module_names(), modules, layers)) if ft.module_names() else 0
    idx_parts: dict[str, list] = {c: [] for c in INDEX_COLUMNS}
    rows = []

    def work(md):
        u, s, vh = cache.get(base, base_key(base, md.name), md.w0)  # U may be left out: the metrics derive it
        return md, module_spectrum(md, u, s, vh, sva=sva)

    def take(md, ms):
        k = len(ms.index["index"])
        idx_parts["module"].append((md.name, k))
        idx_parts["layer"].append(np.full(k, md.layer, dtype=np.int32))
        idx_parts["kind"].append((md.kind, k))
        for c in ("index", "sigma", "p_diag", "delta_p", "energy", "sva"):
            idx_parts[c].append(ms.index[c].numpy())
        rows.append(ms.summary)
        if callback is not None:
            callback(len(rows), total, md.name)

    deltas = iter_module_deltas(base, ft, modules=modules, layers=layers, device=device, svd=svd_fn)
    n_workers = spectrum_workers(device, total, workers)
    if n_workers <= 1:
        for md in deltas:
            take(*work(md))
    else:
        _in_parallel(deltas, work, take, n_workers)
    def repeated(parts):  # (value, count) pairs -> one value per row
        names = np.array([v for v, _ in parts], dtype=object)
        return np.repeat(names, [n for _, n in parts]) if parts else names

    cols = {c: repeated(v) if c in ("module", "kind") else np.concatenate(v) if v else np.zeros(0)
            for c, v in idx_parts.items()}
    cols["index"] = cols["index"].astype(np.int32)
    cols["layer"] = cols["layer"].astype(np.int32)
    index = arrow_table({c: cols[c] for c in INDEX_COLUMNS})
    summary = arrow_table({
        c: [r[c] for r in rows] if c in SUMMARY_STRINGS
        else np.array([r[c] for r in rows], dtype=SUMMARY_DTYPES.get(c, "float64"))
        for c in SUMMARY_COLUMNS})
    elapsed = time.perf_counter() - t0
    stats = {
        "modules": len(rows), "seconds": elapsed, "modules_per_s": len(rows) / elapsed if elapsed > 0 else 0.0,
        "svd_cache_hits": cache.hits, "svd_cache_misses": cache.misses, "method": ft.method,
        "base_identity": ref.identity(), "finetuned_identity": ft.identity(),
        "forms": sorted({r["form"] for r in rows if r["form"]}),
    }
    return SpectrumResult(index_table=index, summary_table=summary, stats=stats)

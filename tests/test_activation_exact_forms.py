"""Cheaper exact forms of the activation diagnostics, against the dense computations they replace."""

import pytest
import torch

from peftarena_cli.activations.csd import csd_metrics, csd_rows
from peftarena_cli.activations.moments import InputMoments


def _moments(H):
    m = InputMoments()
    for i in range(0, H.shape[0], 64):
        m.add("m", H[i:i + 64])
    m.module_group = {"m": "m"}
    return m


def _csd_rounding_bound(Hs, B, A, W0):
    """Relative bound on the difference of two float64 evaluations of the CSD columns from the same
    tokens (per-token sums, E[hhᵀ] then the dense or the factored quadratic form, in any order).

    Each is a sum of products Σ_t Σ_a (Σ_{i,p} B_ap A_pi h_ti)²; every term goes through at most
    K = n + 2d + 2r + 8 roundings, so one evaluation errs by at most γ_K times the sum of the terms'
    absolute values, Σ_t ‖|B||A||h_t|‖² (Higham, §3.1). Relative to the value that is γ_K·κ with
    κ = Σ_t‖|B||A||h_t|‖² / Σ_t‖BA h_t‖², measured on the data; likewise κ for E‖W0 h‖² and for
    ‖BA‖²_F. csd_rel, csd_un and the ratios are quotients of these: their relative bounds add. Two
    evaluations: twice that. (Here κ ≈ 37 and 2γ_K·κ ≈ 6e-12: a fixed rel=1e-12 was luck.)"""
    from float_bounds import gamma

    M = B.abs() @ A.abs()
    k_f = float(M.pow(2).sum() / (B @ A).pow(2).sum())
    k_dw = max(float((H.abs() @ M.T).pow(2).sum() / (H @ (B @ A).T).pow(2).sum()) for H in Hs)
    k_w0 = max(float((H.abs() @ W0.abs().T).pow(2).sum() / (H @ W0.T).pow(2).sum()) for H in Hs)
    K = max(H.shape[0] for H in Hs) + 2 * A.shape[1] + 2 * A.shape[0] + 8
    return 2 * gamma(K) * (2 * k_dw + k_w0 + k_f)


def test_low_rank_csd_equals_the_dense_form_and_per_token_sums():
    g = torch.Generator().manual_seed(3)
    H = torch.randn(700, 40, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 40, dtype=torch.float64) + 0.3
    W0 = torch.randn(56, 40, generator=g, dtype=torch.float64)
    B, A = 0.1 * torch.randn(56, 4, generator=g, dtype=torch.float64), torch.randn(4, 40, generator=g, dtype=torch.float64)
    dW = B @ A
    m = _moments(H)
    low = csd_metrics(m.S("m"), m.h2("m"), W0, None, factors=(B, A))
    dense = csd_metrics(m.S("m"), m.h2("m"), W0, dW)
    e_dw = float((H @ dW.T).pow(2).sum(1).mean())  # E‖ΔW h‖² over the tokens themselves
    # float64 rounding only: the γ_K·κ bound of the two evaluations, κ measured on these tokens
    rel = _csd_rounding_bound([H, H[::2] * 1.5], B, A, W0)
    assert rel < 1e-10  # still a tight comparison
    assert low["csd_abs"] == pytest.approx(e_dw, rel=rel, abs=0)
    for k in ("csd_abs", "csd_rel", "csd_un", "w0_energy", "delta_fro2"):
        assert low[k] == pytest.approx(dense[k], rel=rel, abs=0), k
    # the α rows: (αB) A, α² csd_abs
    sets = {"general": m, "target": _moments(H[::2] * 1.5)}
    rl = csd_rows("m", 0, "q_proj", W0, None, sets, alphas=(0.25, 1.0), factors=(B, A))
    rd = csd_rows("m", 0, "q_proj", W0, dW, sets, alphas=(0.25, 1.0))
    for a, b in zip(rl, rd):
        for k, v in b.items():
            assert a[k] == (pytest.approx(v, rel=rel, abs=0) if isinstance(v, float) else v), k
    assert rl[0]["csd_abs_general"] == pytest.approx(0.0625 * rl[1]["csd_abs_general"], rel=rel, abs=0)


def test_csd_table_low_rank_path_matches_dense_path(tiny_model_dir, tiny_lora_dir):
    from peftarena_cli.activations.csd import csd_table
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.weights.finetuned import open_finetuned

    g = torch.Generator().manual_seed(0)
    base = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    ft = open_finetuned(str(tiny_lora_dir))
    sets = {}
    for role in ("general", "target"):
        m = InputMoments()
        for name in ft.module_names():
            d = base.shape(f"{name}.weight")[1]
            m.add(name, torch.randn(90, d, generator=g, dtype=torch.float64))
            m.module_group[name] = name
        sets[role] = m
    low = csd_table(base, ft, sets, alphas=(0.5, 1.0))
    dense = csd_table(base, ft, sets, alphas=(0.5, 1.0), low_rank=False)
    assert list(low.module) == list(dense.module) and len(low) == 28
    for c in low.columns:
        if low[c].dtype.kind == "f":
            # the dense ΔW = B A is formed in float32; the factor form stays in float64
            assert torch.allclose(torch.tensor(low[c].values), torch.tensor(dense[c].values), rtol=1e-6, atol=0), c


@pytest.mark.parametrize("delta", [1e-2, 1e-3])
def test_float32_accumulation_error_within_the_documented_bound(delta):
    """act-geom --accum-dtype float32 against float64 on the same activations: ratios of sums keep
    ~2⁻²⁴·√(n/T) relative accuracy; the residuals, the Gram distortion and the cosine drift are
    differences of nearly equal sums, so their absolute error is ~2⁻²⁴·√(n/T)/(2ρ); the PCA distance
    moves by ~2⁻²⁴·√(n/T)/gap (docs/large-models.md)."""
    import math

    from peftarena_cli.activations.metrics import module_rows
    from peftarena_cli.activations.pair_sums import PairSums

    g = torch.Generator().manual_seed(0)
    n, d, T = 16384, 48, 256
    X0 = torch.randn(n, d, generator=g) * torch.linspace(0.2, 3, d) + 0.5
    X1 = X0 @ (torch.eye(d) + delta * torch.randn(d, d, generator=g)) + delta * torch.randn(n, d, generator=g)
    rows = {}
    for dt in (torch.float64, torch.float32):
        ps = PairSums.zeros(d, dtype=dt)
        for i in range(0, n, T):
            ps.add(X0[i:i + T], X1[i:i + T])
        rows[dt] = module_rows("s", {"model.layers.0.mlp.up_proj": ps}, workers=1)[0]
    exact, approx = rows[torch.float64], rows[torch.float32]
    assert exact["accum_dtype"] == "float64" and approx["accum_dtype"] == "float32"
    eps = 2.0 ** -24 * math.sqrt(n / T)
    for k in ("cka", "angular_drift_mean", "norm_ratio_mean", "log_norm_ratio"):
        assert abs(approx[k] - exact[k]) <= eps * abs(exact[k]), k
    # a subspace distance moves with the covariance's relative error over its eigengap (Davis–Kahan)
    assert abs(approx["pca_dist_32"] - exact["pca_dist_32"]) <= eps / exact["pca_gap_32"]
    for k in ("raw_residual", "procrustes_residual", "gram_distortion"):
        assert abs(approx[k] - exact[k]) <= eps / (2 * exact[k]), k
    assert abs(approx["cos_drift"] - exact["cos_drift"]) <= eps
    # and the error is real: float32 does move the small-drift differences
    assert approx["procrustes_residual"] != exact["procrustes_residual"]

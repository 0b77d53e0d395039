"""act-geom metrics from streamed sums vs direct dense (token-space) computations."""

import math

import pytest
import torch

from peftarena_cli.activations.metrics import geometry_from_sums, gram_distortion_dense
from peftarena_cli.activations.pair_sums import PairSums, load_sums, merge_sums_files, save_sums

from float_bounds import act_geom_bounds
from references import dense_reference


def streamed(X0, X1, batch=37, dtype=torch.float64):
    ps = PairSums.zeros(X0.shape[1], dtype=dtype)
    for i in range(0, X0.shape[0], batch):
        ps.add(X0[i:i + batch], X1[i:i + batch])
    return ps


def pair(n=300, d=80, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    # anisotropic spectrum so the PCA subspaces are well defined, plus an offset (tests centring)
    scales = torch.logspace(1, -1, d, dtype=torch.float64)
    X0 = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 2.0
    W = torch.eye(d, dtype=torch.float64) + noise * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    X1 = X0 @ W + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return X0, X1


def test_every_metric_matches_dense_computation():
    X0, X1 = pair()
    got = geometry_from_sums(streamed(X0, X1))
    want = dense_reference(X0, X1)
    assert got["n_tokens"] == 300
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-8), k
    assert 0 < got["pca_gap_32"] <= 1


def test_cka_of_identical_activations_is_one_and_residuals_zero():
    X0, _ = pair()
    got = geometry_from_sums(streamed(X0, X0.clone()))
    assert got["cka"] == pytest.approx(1.0, abs=1e-10)
    assert got["raw_residual"] == pytest.approx(0.0, abs=1e-7)
    assert got["gram_distortion"] == pytest.approx(0.0, abs=1e-6)
    assert got["cos_drift"] == pytest.approx(0.0, abs=1e-12)
    assert got["pca_dist_32"] == pytest.approx(0.0, abs=1e-6)


def test_cka_and_procrustes_invariant_to_rotating_x1():
    X0, X1 = pair(seed=3)
    Q, _ = torch.linalg.qr(torch.randn(80, 80, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    a = geometry_from_sums(streamed(X0, X1))
    b = geometry_from_sums(streamed(X0, X1 @ Q))
    assert b["cka"] == pytest.approx(a["cka"], rel=1e-9)
    assert b["procrustes_residual"] == pytest.approx(a["procrustes_residual"], rel=1e-7)
    # the raw residual is not rotation invariant: the test would notice a swapped formula
    assert abs(b["raw_residual"] - a["raw_residual"]) > 0.1
    # a pure rotation is fully explained by Procrustes
    c = geometry_from_sums(streamed(X0, X0 @ Q))
    assert c["procrustes_residual"] == pytest.approx(0.0, abs=1e-6)
    assert c["raw_residual"] > 0.5


def test_sums_are_additive_and_survive_a_file_round_trip(tmp_path):
    X0, X1 = pair(seed=5)
    full = geometry_from_sums(streamed(X0, X1))
    a, b = streamed(X0[:120], X1[:120]), streamed(X0[120:], X1[120:])
    save_sums(tmp_path / "a.st", {"s": {"m": a}}, {"base": "x"})
    save_sums(tmp_path / "b.st", {"s": {"m": b}}, {"base": "x"})
    merged, _ = merge_sums_files([tmp_path / "a.st", tmp_path / "b.st"])
    got = geometry_from_sums(merged["s"]["m"])
    # merged shards = the same rows summed in another order: each metric within its float64
    # summation bound (float_bounds.act_geom_bounds); the file round trip itself is lossless
    bound = act_geom_bounds(merged["s"]["m"])
    for k, v in full.items():
        if isinstance(v, str):
            assert got[k] == v, k
        else:
            assert abs(got[k] - v) <= bound[k], (k, got[k], v, bound[k])
    assert got["angular_drift_median"] == full["angular_drift_median"]  # one of the tokens' angles, exactly
    loaded, meta = load_sums(tmp_path / "a.st")
    assert meta == {"base": "x"} and loaded["s"]["m"].n_tokens == 120


def test_float32_accumulation_is_close():
    X0, X1 = pair(seed=7)
    a = geometry_from_sums(streamed(X0, X1))
    b = geometry_from_sums(streamed(X0.float(), X1.float(), dtype=torch.float32))
    for k in ("cka", "raw_residual", "procrustes_residual", "gram_distortion"):
        assert b[k] == pytest.approx(a[k], rel=1e-3), k


def test_dense_gram_distortion_matches_identity():
    X0, X1 = pair(n=64, d=16, seed=11)
    assert gram_distortion_dense(X0, X1) == pytest.approx(geometry_from_sums(streamed(X0, X1))["gram_distortion"], rel=1e-8)


def test_pca_distance_is_nan_when_k_not_below_dim():
    X0, X1 = pair(n=100, d=40)
    got = geometry_from_sums(streamed(X0, X1))
    assert math.isnan(got["pca_dist_64"]) and not math.isnan(got["pca_dist_32"])


def test_pca_distance_is_nan_with_reason_when_rank_is_below_k_plus_one():
    """34 distinct tokens, repeated to 200: the covariances have rank 33, so the top-64 subspace is
    undefined (NaN, the reason given) though k < n − 1 counted in tokens; top-32 stays defined, and
    at rank exactly k (33 distinct tokens, rank 32) the top-32 subspace is the range: defined too."""
    X0, X1 = pair(n=34, d=80, seed=13)
    idx = torch.arange(200) % 34
    got = geometry_from_sums(streamed(X0[idx], X1[idx]))
    assert got["pca_rank"] == 33
    assert math.isnan(got["pca_dist_64"]) and math.isnan(got["pca_gap_64"])
    assert got["pca_reason_64"] == "rank 33 < k"
    assert got["pca_reason_32"] == "" and not math.isnan(got["pca_dist_32"])
    X0, X1 = pair(n=33, d=80, seed=15)
    got = geometry_from_sums(streamed(X0[idx % 33], X1[idx % 33]))
    assert got["pca_rank"] == 32 and got["pca_reason_32"] == ""
    assert got["pca_gap_32"] == pytest.approx(1.0, abs=1e-9)
    # the distance there is the one between the two ranges
    V0 = torch.linalg.svd(X0 - X0.mean(0), full_matrices=False)[2][:32].T
    V1 = torch.linalg.svd(X1 - X1.mean(0), full_matrices=False)[2][:32].T
    assert got["pca_dist_32"] == pytest.approx(float((V0 @ V0.T - V1 @ V1.T).norm() / 8.0), rel=1e-6)
    # the same above the float64 dimension (float32 eigh: the rank floor is d·ε₃₂·λ_max)
    from peftarena_cli.activations import metrics as geometry

    X0, X1 = pair(n=34, d=geometry.PCA_FLOAT64_MAX_DIM + 44, seed=14)
    got = geometry_from_sums(streamed(X0[idx], X1[idx]))
    assert got["pca_rank"] == 33 and got["pca_reason_64"] == "rank 33 < k"
    # and the reasons for k ≥ d and k ≥ n − 1
    X0, X1 = pair(n=30, d=40)
    got = geometry_from_sums(streamed(X0, X1))
    assert got["pca_reason_64"] == "k >= d" and got["pca_reason_32"] == "rank <= n_tokens - 1 = 29 < k"


def test_small_angles_are_accurate_where_arccos_is_not():
    """θ = 2·atan2(‖z1 − z0‖, ‖z1 + z0‖): for a rotation by 1e-9 rad arccos(cos) gives 0 or ~1e-8."""
    theta = 1e-9
    n = 10
    X0 = torch.zeros(n, 3, dtype=torch.float64)
    X0[:, 0] = torch.arange(1, n + 1, dtype=torch.float64)
    X1 = X0.clone()
    X1[:, 0] = X0[:, 0] * math.cos(theta)
    X1[:, 1] = X0[:, 0] * math.sin(theta)
    X1 *= 2.0  # and double every norm
    got = geometry_from_sums(streamed(X0, X1))
    assert got["angular_drift_mean"] == pytest.approx(theta, rel=1e-6)
    assert got["angular_drift_median"] == pytest.approx(theta, rel=1e-6)
    assert got["norm_ratio_mean"] == pytest.approx(2.0, rel=1e-12) and got["norm_ratio_std"] == pytest.approx(0.0, abs=1e-9)


def test_pca_distance_above_float64_dim_stays_within_its_bound():
    from peftarena_cli.activations import metrics as geometry

    X0, X1 = pair(n=600, d=geometry.PCA_FLOAT64_MAX_DIM + 44, seed=2)
    got = geometry_from_sums(streamed(X0, X1))
    want = dense_reference(X0, X1)
    assert got["pca_gap_32"] > 1e-3
    for k in ("pca_dist_32", "pca_dist_64"):
        assert got[k] == pytest.approx(want[k], abs=1e-4), k
    assert got["cka"] == pytest.approx(want["cka"], rel=1e-9)
    assert got["procrustes_residual"] == pytest.approx(want["procrustes_residual"], rel=1e-7)


def test_nuclear_norm_fast_path_matches_svd():
    from peftarena_cli.activations.metrics import PCA_FLOAT64_MAX_DIM, nuclear_norm

    g = torch.Generator().manual_seed(4)
    d = PCA_FLOAT64_MAX_DIM + 60
    C = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(2, -2, d, dtype=torch.float64)
    assert nuclear_norm(C) == pytest.approx(float(torch.linalg.svdvals(C).sum()), rel=1e-10)


def test_nuclear_norm_fast_path_on_rank_deficient_matrix():
    from peftarena_cli.activations.metrics import PCA_FLOAT64_MAX_DIM, nuclear_norm

    g = torch.Generator().manual_seed(5)
    d = PCA_FLOAT64_MAX_DIM + 200
    C = torch.randn(d, 30, generator=g, dtype=torch.float64) @ torch.randn(30, d, generator=g, dtype=torch.float64)
    assert nuclear_norm(C) == pytest.approx(float(torch.linalg.svdvals(C).sum()), rel=1e-10)


def test_module_rows_in_parallel_equal_one_at_a_time():
    from peftarena_cli.activations.metrics import module_rows

    mods = {}
    for i, d in enumerate((80, 300, 40, 300, 80)):  # 300 > 256: the float32 eigh path too
        X0, X1 = pair(n=400, d=d, seed=i)
        mods[f"model.layers.{i}.mlp.down_proj"] = streamed(X0, X1)
    threads = torch.get_num_threads()
    one = module_rows("s", mods, workers=1)
    many = module_rows("s", mods, workers=3)
    assert [r["module"] for r in many] == list(mods)
    import pandas as pd

    pd.testing.assert_frame_equal(pd.DataFrame(many), pd.DataFrame(one))  # bit-identical, NaNs included
    assert one[1] == {"prompt_set": "s", "module": "model.layers.1.mlp.down_proj", "layer": 1, "kind": "down_proj",
                      "accum_dtype": "float64", **geometry_from_sums(mods["model.layers.1.mlp.down_proj"])}
    assert torch.get_num_threads() == threads


def test_steep_full_rank_spectrum_above_float64_dim_is_not_rejected():
    """Eigenvalues falling below float32's floor (d·ε₃₂·λ_max) are resolved in float64: a full-rank
    covariance whose top-64 eigenvalues span 1e-6 keeps its distance, equal to the float64 SVD's."""
    from peftarena_cli.activations import metrics as geometry

    d = geometry.PCA_FLOAT64_MAX_DIM + 44
    g = torch.Generator().manual_seed(21)
    # λ_k/λ_1 down to 1e-6 over the first 70 directions, then a floor at 1e-8: float32 sees rank ~51
    scales = torch.cat([torch.logspace(0, -3, 70, dtype=torch.float64), torch.full((d - 70,), 1e-4, dtype=torch.float64)])
    X0 = torch.randn(2000, d, generator=g, dtype=torch.float64) * scales
    X1 = X0 + 1e-3 * torch.randn(2000, d, generator=g, dtype=torch.float64) * scales
    got = geometry_from_sums(streamed(X0, X1))
    assert got["pca_rank"] == d and got["pca_reason_64"] == ""
    want = dense_reference(X0, X1)
    assert got["pca_dist_64"] == pytest.approx(want["pca_dist_64"], abs=1e-6)

"""Spectrum metrics vs a direct dense float64 computation from PEFT's own merged weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch



from helpers import make_adapter
from references import METHOD_CASES, base_weights, peft_merged


def dense_reference(w0: torch.Tensor, w1: torch.Tensor) -> dict:
    """The textbook computation: dense float64 SVDs of W0, ΔW and W1, profiles by dense float64 products.

    The tool decomposes W0 in float64 too (through its Gram matrix), so the per-index singular
    vectors agree even for the closest singular pairs of these random matrices.
    """
    u, s, vh = torch.linalg.svd(w0.double(), full_matrices=False)
    w0, w1 = w0.double(), w1.double()
    d = w1 - w0
    p = torch.diag(u.T @ w1 @ vh.T)
    e = torch.linalg.norm(d @ vh.T, dim=0)
    sd = torch.linalg.svdvals(d)
    _, _, vh1 = torch.linalg.svd(w1, full_matrices=False)
    sva = (vh * vh1).sum(dim=1).abs()
    return {"sigma": s, "p_diag": p, "delta_p": (p - s).abs(), "energy": e,
            "effective_rank": float((sd ** 2).sum() / sd[0] ** 2), "delta_fro": float(torch.linalg.norm(d)),
            "sva": sva, "delta_sv": sd}


def np_fluct(x: np.ndarray) -> float:
    xp = np.pad(x, 2, mode="reflect")  # numpy "reflect": edge not repeated
    ma = np.convolve(xp, np.ones(5) / 5, mode="valid")
    return float(np.mean(np.abs(x - ma)))


def test_fluctuation_hand_case():
    from peftarena_cli.spectral.spectrum import fluctuation, moving_average5

    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    # reflect padding: [0, 1 | 0 1 0 1 0 1 | 0, 1]; MA at i=0 is (0+1+0+1+0)/5 = 0.4
    torch.testing.assert_close(moving_average5(x)[:2], torch.tensor([0.4, 0.6]))
    y = np.random.default_rng(0).normal(size=37)
    assert fluctuation(torch.tensor(y)) == pytest.approx(np_fluct(y), rel=1e-12)
    assert fluctuation(torch.ones(10)) == 0.0


@pytest.mark.parametrize("case", ["lora", "oft_exact", "oft_neumann", "dora", "boft", "pissa_residual", "ia3"])
def test_metrics_match_dense(case, tiny_model_dir, tmp_path):
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    make_cfg, method, _ = METHOD_CASES[case]
    ad = make_adapter(tiny_model_dir, make_cfg(), tmp_path / case)
    merged = peft_merged(tiny_model_dir, ad)
    w0s = base_weights(tiny_model_dir)
    res = compute_spectrum(str(tiny_model_dir), str(ad), cache=BaseSvdCache(tmp_path / "svd"))
    summ = res.summary.set_index("module")
    assert len(summ) == len(res.index.module.unique()) > 0
    assert (summ.method == method).all()
    for mod, g in res.index.groupby("module", sort=False):
        key = mod + ".weight"
        ref = dense_reference(w0s[key], merged[key])
        s1 = ref["sigma"][0].item()
        for col in ("sigma", "p_diag", "delta_p", "energy"):
            want = ref[col].numpy()
            # the reference W1 is PEFT's float32 merge: P_diag and ΔP carry float32 rounding on the scale of σ_1
            scale = s1 if col in ("p_diag", "delta_p") else np.abs(want).max()
            np.testing.assert_allclose(g[col].to_numpy(), want, rtol=1e-4, atol=2e-5 * scale, err_msg=f"{mod} {col}")
        row = summ.loc[mod]
        assert row.effective_rank == pytest.approx(ref["effective_rank"], rel=1e-4)
        assert row.delta_fro == pytest.approx(ref["delta_fro"], rel=1e-4)
        # the study's retention smoothness: fluctuation of the raw |ΔP_diag(i)|
        assert row.fluct_retention == pytest.approx(np_fluct(ref["delta_p"].numpy()), rel=1e-3, abs=1e-7 * s1)
        assert row.fluct_base_retention == pytest.approx(np_fluct(ref["p_diag"].numpy() / s1), rel=1e-3, abs=1e-9)
        esum = ref["energy"].sum().item()
        assert row.fluct_energy == pytest.approx(np_fluct(ref["energy"].numpy() / esum), rel=1e-3, abs=1e-9)
        # × ΣE_Δ: the study's score on the raw E_Δ (the factor docs/spectrum.md gives)
        assert row.fluct_energy * g["energy"].sum() == pytest.approx(np_fluct(ref["energy"].numpy()), rel=1e-3)
        sd = ref["delta_sv"].numpy()
        for i in range(5):
            want = sd[i] if i < len(sd) else float("nan")
            assert row[f"delta_sv_{i + 1}"] == pytest.approx(want, rel=1e-4, abs=1e-5 * sd[0], nan_ok=True), (mod, i)
        assert row.delta_sv_1 == pytest.approx(row.delta_spec, rel=1e-12)
        if method in ("oft", "boft"):
            # the non-orthogonal cases (Neumann series, BOFT's scale) decompose W1 in float32; near-degenerate
            # singular pairs of the tiny random W0 then differ from float64 by a few 1e-4
            np.testing.assert_allclose(g["sva"].to_numpy(), ref["sva"].numpy(), atol=1e-3, err_msg=mod)
            assert (g["sva"] < 1 - 1e-6).any()  # the rotation moved some singular vectors
        else:
            assert g["sva"].isna().all()
    if case == "lora":
        # ΔW = BA has rank ≤ 4, so the effective rank is in [1, 4]
        assert ((summ.effective_rank >= 1 - 1e-6) & (summ.effective_rank <= 4 + 1e-6)).all()


def test_top_eigenvalue_matches_eigvalsh():
    from peftarena_cli.spectral.spectrum import top_eigenvalue

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 200, generator=g)
    a = x.T @ x
    want = float(torch.linalg.eigvalsh(a.double())[-1])
    assert top_eigenvalue(a.double()) == pytest.approx(want, rel=1e-9)
    assert top_eigenvalue(a) == pytest.approx(want, rel=1e-5)
    # a flat top (three equal leading eigenvalues) still converges
    q, _ = torch.linalg.qr(torch.randn(100, 100, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.full((3,), 5.0, dtype=torch.float64), torch.linspace(4.9, 0, 97, dtype=torch.float64)])
    assert top_eigenvalue(q @ torch.diag(lam) @ q.T) == pytest.approx(5.0, rel=1e-9)


def test_top_eigenvalues_match_eigvalsh_with_multiplicity_and_low_rank():
    from peftarena_cli.spectral.spectrum import top_eigenvalues

    g = torch.Generator().manual_seed(1)
    for rows in (300, 3, 7):  # full rank, and rank 3 / 7 (an exhausted Krylov space)
        x = torch.randn(rows, 200, generator=g, dtype=torch.float64)
        a = x.T @ x
        want = torch.linalg.eigvalsh(a).flip(0)[:5].clamp_min(0)
        got = top_eigenvalues(a)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want[0]))
        torch.testing.assert_close(top_eigenvalues(a.float()), want, rtol=0, atol=1e-5 * float(want[0]))
    # repeated leading eigenvalues (5, 5, 5, 4, 4): single-vector Lanczos would find each once
    q, _ = torch.linalg.qr(torch.randn(150, 150, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([5.0, 5, 5, 4, 4], dtype=torch.float64), torch.linspace(3.9, 0, 145, dtype=torch.float64)])
    got = top_eigenvalues(q @ torch.diag(lam) @ q.T)
    torch.testing.assert_close(got, lam[:5], rtol=0, atol=1e-9)
    # small matrices: every eigenvalue there is, at most five
    assert top_eigenvalues(torch.eye(3, dtype=torch.float64)).tolist() == [1.0, 1.0, 1.0]


def test_top_eigenvalues_lanczos_path_matches_eigvalsh():
    """Above DENSE_EIG_MAX the block Lanczos iteration runs: same values as eigvalsh, within the
    stopping bound (1e-10·θ₁ in float64; 1e-6·θ₁ in float32 plus the matrix's own float32
    rounding, hence 1e-5), also for an exhausted Krylov space (rank 3, 7) and repeated eigenvalues."""
    from peftarena_cli.spectral.spectrum import DENSE_EIG_MAX, top_eigenvalues

    g = torch.Generator().manual_seed(2)
    n = 400
    assert n > DENSE_EIG_MAX
    for rows in (600, 3, 7):
        x = torch.randn(rows, n, generator=g, dtype=torch.float64)
        a = x.T @ x
        want = torch.linalg.eigvalsh(a).flip(0)[:5].clamp_min(0)
        torch.testing.assert_close(top_eigenvalues(a), want, rtol=0, atol=1e-9 * float(want[0]))
        torch.testing.assert_close(top_eigenvalues(a.float()), want, rtol=0, atol=1e-5 * float(want[0]))
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([5.0, 5, 5, 4, 4], dtype=torch.float64), torch.linspace(3.9, 0, n - 5, dtype=torch.float64)])
    torch.testing.assert_close(top_eigenvalues(q @ torch.diag(lam) @ q.T), lam[:5], rtol=0, atol=1e-9)
    # the same matrices as the dense-path test above, forced through the iteration
    g = torch.Generator().manual_seed(1)
    for rows in (300, 3, 7):
        x = torch.randn(rows, 200, generator=g, dtype=torch.float64)
        a = x.T @ x
        want = torch.linalg.eigvalsh(a).flip(0)[:5].clamp_min(0)
        torch.testing.assert_close(top_eigenvalues(a, dense_max=0), want, rtol=0, atol=1e-9 * float(want[0]))


def test_top_eigenvalues_start_does_not_hide_the_top_eigenvector():
    """The iteration starts at the largest diagonal entries. Here those (about 0.5, at indices
    0–119) belong to a decoupled block with eigenvalues spread over [0.1, 1], while the top
    eigenvalue, 5, belongs to a vector spread thinly over the other indices (diagonal entries
    5/280): from the unit vectors alone the iteration converges inside the block and reports 1.0
    as the largest. The random part of the start must find 5."""
    from peftarena_cli.spectral.spectrum import top_eigenvalues

    g = torch.Generator().manual_seed(3)
    n, lead = 400, 120
    a = torch.zeros(n, n, dtype=torch.float64)
    qb, _ = torch.linalg.qr(torch.randn(lead, lead, generator=g, dtype=torch.float64))
    a[:lead, :lead] = qb @ torch.diag(torch.linspace(1.0, 0.1, lead, dtype=torch.float64)) @ qb.T
    u = torch.zeros(n, dtype=torch.float64)
    u[lead:] = 1.0
    a += 5.0 * torch.outer(u, u) / float(u @ u)
    assert float(torch.diagonal(a)[:lead].min()) > 10 * float(a[lead, lead])  # the start sits in the block
    want = torch.linalg.eigvalsh(a).flip(0)[:5]
    assert float(want[0]) == pytest.approx(5.0) and float(want[1]) == pytest.approx(1.0)
    torch.testing.assert_close(top_eigenvalues(a), want, rtol=0, atol=1e-9 * float(want[0]))
    torch.testing.assert_close(top_eigenvalues(a.float()), want, rtol=0, atol=1e-5 * float(want[0]))


@pytest.mark.parametrize("case", ["oft_neumann", "dora"])
def test_delta_sv_through_the_lanczos_path_match_dense(case, tiny_model_dir, tmp_path, monkeypatch):
    """The tiny model's modules are below DENSE_EIG_MAX; with the threshold at 0 the top singular
    values of ΔW (OFT's Σ D Σ, a dense update's Gram matrix) come from the iteration and still
    match a dense float64 SVD of PEFT's merge."""
    from peftarena_cli.spectral import spectrum
    from peftarena_cli.spectral.base_svd import BaseSvdCache

    monkeypatch.setattr(spectrum, "DENSE_EIG_MAX", 0)
    make_cfg, _, _ = METHOD_CASES[case]
    ad = make_adapter(tiny_model_dir, make_cfg(), tmp_path / case)
    merged = peft_merged(tiny_model_dir, ad)
    w0s = base_weights(tiny_model_dir)
    res = spectrum.compute_spectrum(str(tiny_model_dir), str(ad), cache=BaseSvdCache(enabled=False))
    summ = res.summary.set_index("module")
    assert len(summ) > 0
    for mod, row in summ.iterrows():
        sd = torch.linalg.svdvals(merged[mod + ".weight"].double() - w0s[mod + ".weight"].double()).numpy()
        for i in range(5):
            assert row[f"delta_sv_{i + 1}"] == pytest.approx(sd[i], rel=1e-4, abs=1e-5 * sd[0]), (mod, i)


def test_fluct_retention_is_the_study_formula_on_raw_delta_p(tiny_model_dir, tiny_lora_dir, tmp_path):
    """fluct_retention = mean |x − MA5(x)| of x = |ΔP_diag(i)| (reflect padding), from a dense float64
    computation; fluct_base_retention the same on P_diag/σ₁."""
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    merged = peft_merged(tiny_model_dir, tiny_lora_dir)
    w0s = base_weights(tiny_model_dir)
    res = compute_spectrum(str(tiny_model_dir), str(tiny_lora_dir), cache=BaseSvdCache(enabled=False))
    for row in res.summary.itertuples():
        w0, w1 = w0s[row.module + ".weight"].double(), merged[row.module + ".weight"].double()
        u, s, vh = np.linalg.svd(w0.numpy(), full_matrices=False)
        dp = np.abs(np.einsum("ki,kl,il->i", u, (w1 - w0).numpy(), vh))
        xp = np.pad(dp, 2, mode="reflect")
        ma = np.array([xp[i:i + 5].mean() for i in range(len(dp))])
        assert row.fluct_retention == pytest.approx(np.abs(dp - ma).mean(), rel=1e-3)
        pd_ = s + np.einsum("ki,kl,il->i", u, (w1 - w0).numpy(), vh)
        assert row.fluct_base_retention == pytest.approx(np_fluct(pd_ / s[0]), rel=1e-3)


def test_base_read_once_per_module_and_lowrank_never_dense(tiny_model_dir, tiny_lora_dir, tmp_path, monkeypatch):
    """Each base tensor is read once (no second model), and a LoRA's ΔW is never materialised."""
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum
    from peftarena_cli.weights.deltas import ModuleDelta

    reads = []
    orig_get = WeightSource.get
    monkeypatch.setattr(WeightSource, "get", lambda self, name: reads.append(name) or orig_get(self, name))

    def no_dense(self):
        raise AssertionError("dense ΔW formed for a low-rank update")

    monkeypatch.setattr(ModuleDelta, "dense", no_dense)
    res = compute_spectrum(str(tiny_model_dir), str(tiny_lora_dir), cache=BaseSvdCache(tmp_path / "svd"))
    assert len(res.summary) == 14
    assert sorted(reads) == sorted(m + ".weight" for m in res.summary.module)


@pytest.mark.parametrize("shape", [(48, 20), (20, 48), (32, 32)])
def test_thin_svd_matches_float64_svd(shape):
    from peftarena_cli.spectral.base_svd import thin_svd

    g = torch.Generator().manual_seed(3)
    w = torch.randn(*shape, generator=g)
    u, s, vh = thin_svd(w)
    k = min(shape)
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1]) and u.dtype == torch.float32
    s64 = torch.linalg.svdvals(w.double())
    assert torch.allclose(s.double(), s64, rtol=1e-6)
    assert torch.allclose((u.double() * s.double()) @ vh.double(), w.double(), atol=1e-5)
    assert torch.allclose(u.T @ u, torch.eye(k), atol=1e-5) and torch.allclose(vh @ vh.T, torch.eye(k), atol=1e-5)
    assert bool((s[:-1] >= s[1:]).all())


def test_thin_svd_of_a_rank_deficient_matrix_falls_back_to_the_svd():
    from peftarena_cli.spectral.base_svd import thin_svd

    g = torch.Generator().manual_seed(4)
    w = torch.randn(30, 3, generator=g) @ torch.randn(3, 20, generator=g)  # rank 3: 17 zero singular values
    u, s, vh = thin_svd(w)
    assert torch.allclose((u * s) @ vh, w, atol=1e-5)
    assert torch.allclose(u.T @ u, torch.eye(20), atol=1e-5)
    assert float(s[3]) < 1e-5 * float(s[0])


def test_parallel_workers_give_the_same_tables_in_order(tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    threads = torch.get_num_threads()
    one = compute_spectrum(str(tiny_model_dir), str(tiny_lora_dir), cache=BaseSvdCache(enabled=False), workers=1)
    calls = []
    three = compute_spectrum(str(tiny_model_dir), str(tiny_lora_dir), cache=BaseSvdCache(tmp_path / "svd"), workers=3,
                             callback=lambda i, n, name: calls.append((i, name)))
    assert list(three.summary.module) == list(one.summary.module)
    assert [c[0] for c in calls] == list(range(1, len(one.summary) + 1))
    assert [c[1] for c in calls] == list(one.summary.module)
    import pandas as pd

    pd.testing.assert_frame_equal(three.index, one.index)
    pd.testing.assert_frame_equal(three.summary, one.summary)
    assert torch.get_num_threads() == threads  # the workers' single-threading is undone


def test_thin_svd_leaves_out_u_only_where_it_can_be_derived():
    from peftarena_cli.spectral.base_svd import left_vectors, thin_svd, ut_times

    g = torch.Generator().manual_seed(5)
    tall = torch.randn(60, 24, generator=g)  # well conditioned: σ_1/σ_k ≈ 4
    u, s, vh = thin_svd(tall, with_u=False)
    assert u is None
    u64, s64, vh64 = torch.linalg.svd(tall.double(), full_matrices=False)
    assert torch.allclose(s.double(), s64, rtol=1e-6)
    derived = left_vectors(tall, s, vh)
    assert torch.allclose((derived.double() * s64) @ vh.double(), tall.double(), atol=1e-5)
    b = torch.randn(60, 3, generator=g)
    torch.testing.assert_close(ut_times(None, s, vh, tall, b), derived.T @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left_vectors(tall, s[:2], vh[:2]), derived[:, :2])
    # a wide matrix's U is the cheap side, and an ill-conditioned one keeps it (accuracy)
    assert thin_svd(tall.T.contiguous(), with_u=False)[0] is not None
    ill = tall @ torch.diag(torch.logspace(0, -3, 24))
    assert thin_svd(ill, with_u=False)[0] is not None


@pytest.mark.parametrize("shape", [(300, 200), (200, 200), (50, 30)])
def test_blocked_gram_equals_the_product(shape):
    from peftarena_cli.spectral.base_svd import gram

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    g = gram(x)
    torch.testing.assert_close(g, x.T @ x, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(gram(x.T), x @ x.T, rtol=1e-12, atol=1e-10)  # a transposed view


def test_cache_entry_replaces_the_same_tensors_older_layout(tiny_model_dir, tmp_path):
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.spectral import base_svd

    base = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    key = "model.layers.0.mlp.gate_proj.weight"
    cache = base_svd.BaseSvdCache(tmp_path / "svd")
    path = cache.path_for(base.tensor_id(key))
    other = cache.path_for(base.tensor_id("model.layers.0.mlp.up_proj.weight"))
    stale = path.with_name(path.name.replace(f"-{base_svd.VERSION}.", "-v1."))
    tmp_path.joinpath("svd").mkdir()
    stale.write_bytes(b"an old entry")
    unrelated = other.with_name(other.name.replace(f"-{base_svd.VERSION}.", "-v1."))
    unrelated.write_bytes(b"another tensor's old entry")
    u, s, vh = cache.get(base, key, base.get(key))
    assert path.is_file() and not stale.exists() and unrelated.exists()
    assert cache.misses == 1
    # and the stored entry is read back as it was computed
    again = base_svd.BaseSvdCache(tmp_path / "svd")
    u2, s2, vh2 = again.get(base, key, base.get(key))
    assert again.hits == 1 and torch.equal(s2, s) and torch.equal(vh2, vh) and (u2 is None) == (u is None)


def test_alignment_resolves_close_singular_values_of_a_near_orthogonal_rotation(tiny_model_dir, tmp_path):
    """PEFT's Cayley–Neumann rotation is orthogonal only to its truncation; W0 with two singular
    values 1e-5 apart then has them mixed in W1 = W0 M. |cos| must follow float64 truth (PEFT's
    merge in float64), where |1 + C_ii| / ‖Mᵀ v_i‖, which assumes M orthogonal, is off by far more.

    Error bounds (Wedin's sin θ theorem): a perturbation of relative size η of W0 and W1 moves the
    i-th right singular vector of each by at most √2·η·σ_1/gap_i, gap_i the distance from s_i to
    the nearest other singular value (of W0 or W1, the smaller; computed here from the float64
    truth), so |cos_i| moves by at most tol_i = 4·η·σ_1/gap_i (two vectors, each √2·sin θ off).

    * The command works in float32 (the cached V, the Cayley blocks, the products C and D): its
      result is the alignment of matrices within η₃₂ = √64·2⁻²⁴ of W0, W1 (probabilistic rounding
      bound of a length-64 float32 inner product, Higham–Mary). At the close pair gap_i ≈ 1e-5·σ,
      so this tolerance is loose there (~0.1): the float32 pipeline cannot resolve that pair
      better, whatever the seed (errors of 2e-6..1e-4 are seen).
    * Whether the correction is needed is checked on the construction (the naive formula is off
      by more than 1e-4 with this adapter), not against this tolerance, which is too loose at the
      pair to separate the two.
    """
    from peft import OFTConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    mod = "model.layers.0.self_attn.q_proj"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64)
    lin = dict(model.named_modules())[mod]
    u, s, vh = torch.linalg.svd(lin.weight.data, full_matrices=False)
    s[3] = s[4] * (1 + 1e-5)  # a near-degenerate pair
    lin.weight.data = (u * s) @ vh
    base_dir = tmp_path / "base"
    model.to(torch.float32).save_pretrained(str(base_dir), safe_serialization=True)
    ad = make_adapter(base_dir, OFTConfig(oft_block_size=16, use_cayley_neumann=True, target_modules=["q_proj"]),
                      tmp_path / "oft", scale=0.012)

    res = compute_spectrum(str(base_dir), str(ad), layers=[0], cache=BaseSvdCache(enabled=False))
    got = res.index.sort_values("index")["sva"].to_numpy()

    b64 = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float64)
    w0 = dict(b64.named_modules())[mod].weight.detach().clone()
    w1 = dict(PeftModel.from_pretrained(b64, str(ad)).merge_and_unload().named_modules())[mod].weight.detach()
    _, s0, vh0 = torch.linalg.svd(w0, full_matrices=False)
    _, s1, vh1 = torch.linalg.svd(w1, full_matrices=False)
    truth = (vh0 * vh1).sum(dim=1).abs().numpy()
    eye = torch.eye(64, dtype=torch.float64)
    m = torch.linalg.solve(w0, w1)  # W1 = W0 M, W0 square and well conditioned
    assert 1e-7 < float((m @ m.T - eye).abs().max()) < 1e-4  # Neumann: not exact
    v = vh0.T
    naive = ((v * (m @ v)).sum(0) / torch.linalg.norm(m.T @ v, dim=0)).abs().numpy()
    assert np.abs(naive - truth).max() > 1e-4  # the case needs the correction

    def nearest(sv):  # distance from each singular value to the nearest other one
        dist = (sv[:, None] - sv[None, :]).abs()
        dist.fill_diagonal_(float("inf"))
        return dist.min(dim=1).values.numpy()

    gap = np.minimum(nearest(s0), nearest(s1))
    sigma1 = float(s0[0])
    tol32 = 4 * 8 * 2.0**-24 * sigma1 / gap
    assert np.all(np.abs(got - truth) <= tol32)


def test_rotation_alignment_blocks_and_fallback():
    from peftarena_cli.spectral.spectrum import MAX_CLUSTER, _intervals, rotation_alignment

    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2, 3] = mask[4, 3] = mask[8, 6] = True
    assert _intervals(mask) == [(2, 4), (6, 8)]
    assert _intervals(torch.zeros(3, 3, dtype=torch.bool)) == []
    # an exact rotation (C antisymmetric + D = −(C + Cᵀ) = 0 defect): |cos| = |1 + C_ii| exactly
    k = 6
    g = torch.Generator().manual_seed(0)
    q = torch.randn(k, k, generator=g, dtype=torch.float64) * 0.05
    q = q - q.T
    rot = torch.linalg.matrix_exp(q)  # orthogonal M; take V = I so C = M − I, D = (Mᵀ − I)ᵀ(Mᵀ − I)
    c, d = rot - torch.eye(k, dtype=torch.float64), (rot.T - torch.eye(k, dtype=torch.float64)).T @ (rot.T - torch.eye(k, dtype=torch.float64))
    s = torch.linspace(3.0, 1.0, k, dtype=torch.float64)
    torch.testing.assert_close(rotation_alignment(s, c, d), (1 + torch.diagonal(c)).abs().clamp(max=1.0))
    # two equal singular values and no coupling at all (0/0 in the first-order term): still exact
    s = torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    z = torch.zeros(4, 4, dtype=torch.float64)
    torch.testing.assert_close(rotation_alignment(s, z, z), torch.ones(4, dtype=torch.float64))
    # all singular values equal: every pair is coupled, one block larger than MAX_CLUSTER -> None
    n = MAX_CLUSTER + 1
    c = torch.randn(n, n, generator=g) * 1e-3
    assert rotation_alignment(torch.ones(n), c, torch.eye(n) * 1e-4) is None


def test_eigh_uses_single_threaded_numpy_lapack_only_in_worker_threads():
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from peftarena_cli.spectral import base_svd

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    x = torch.randn(80, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = x.T @ x
    before = blas_threads()
    with base_svd.single_threaded_numpy_lapack() as init:
        inside = blas_threads()
        with ThreadPoolExecutor(1, initializer=init) as ex:
            used, (lam, vecs) = ex.submit(lambda: (base_svd._thread.numpy_lapack, base_svd.eigh(g))).result()
    assert inside and all(n == 1 for n in inside) and used  # NumPy's BLAS is found and limited here
    assert blas_threads() == before  # restored afterwards
    assert not getattr(base_svd._thread, "numpy_lapack", False)  # the calling thread keeps torch's
    lam_t, vecs_t = torch.linalg.eigh(g)
    torch.testing.assert_close(lam, lam_t, rtol=1e-12, atol=1e-12 * float(lam_t[-1]))
    torch.testing.assert_close((vecs * vecs_t).sum(0).abs(), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-9)

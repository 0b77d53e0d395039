"""CSD: second moments and the CSD formulas against direct computations."""

import pytest
import torch

from peftarena_cli.activations.csd import csd_metrics
from peftarena_cli.activations.moments import InputMoments, load_stats, merge_stats_files, save_stats


def test_csd_formulas_match_per_token_computation():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(500, 24, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 24, dtype=torch.float64) + 0.5
    W0 = torch.randn(16, 24, generator=g, dtype=torch.float64)
    B, A = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(3, 24, generator=g, dtype=torch.float64)
    dW = 0.1 * B @ A
    m = InputMoments()
    for i in range(0, 500, 64):
        m.add("m", H[i:i + 64])
    m.module_group = {"m": "m"}
    r = csd_metrics(m.S("m"), m.h2("m"), W0, dW)
    e_dw = (H @ dW.T).pow(2).sum(1).mean()
    e_w0 = (H @ W0.T).pow(2).sum(1).mean()
    h2 = H.pow(2).sum(1).mean()
    assert m.n("m") == 500
    assert r["csd_abs"] == pytest.approx(float(e_dw), rel=1e-10)
    assert r["csd_rel"] == pytest.approx(float(e_dw / (e_w0 + 1e-12)), rel=1e-10)
    assert r["csd_un"] == pytest.approx(float(e_dw / ((dW.pow(2).sum() + 1e-12) * (h2 + 1e-12))), rel=1e-10)


def test_stats_files_merge_to_the_single_run(tmp_path):
    g = torch.Generator().manual_seed(1)
    H = torch.randn(300, 8, generator=g, dtype=torch.float64)
    full, a, b = InputMoments(), InputMoments(), InputMoments()
    full.add("q", H)
    a.add("q", H[:100])
    b.add("q", H[100:])
    for m in (full, a, b):
        m.module_group = {"q": "q", "k": "q"}
    save_stats(tmp_path / "a.st", {"general": a}, "base@1")
    save_stats(tmp_path / "b.st", {"general": b}, "base@1")
    merged, base = merge_stats_files([tmp_path / "a.st", tmp_path / "b.st"])
    m = merged["general"]
    assert base == "base@1" and m.n("k") == 300
    # two float64 summations of the same 300 terms, in other orders: each entry of Σ h hᵀ is within
    # γ_n·(|H|ᵀ|H|)_ij of the exact sum (γ_n = n·u/(1 − n·u), u = 2⁻⁵³), so they differ by at most twice
    # that (divided by n here); off-diagonal entries near 0 need this absolute bound, not an rtol
    from float_bounds import gamma

    bound = 2 * gamma(300 + 1) * (H.abs().T @ H.abs()) / 300
    assert ((m.S("k") - full.S("q")).abs() <= bound).all()
    # Σ‖h‖² has 2400 nonnegative terms: relative bound 2γ_2400 ≈ 5.3e-13
    assert abs(m.h2("q") - full.h2("q")) <= 2 * gamma(2400 + 1) * full.h2("q")
    loaded, meta = load_stats(tmp_path / "a.st")
    assert loaded["general"].n("q") == 100


def test_stats_from_other_base_refuse_to_merge(tmp_path):
    from peftarena_cli.errors import IncompatibleInputs

    m = InputMoments()
    m.add("q", torch.randn(10, 4, dtype=torch.float64))
    m.module_group = {"q": "q"}
    save_stats(tmp_path / "a.st", {"general": m}, "base@1")
    save_stats(tmp_path / "b.st", {"general": m}, "base@2")
    with pytest.raises(IncompatibleInputs):
        merge_stats_files([tmp_path / "a.st", tmp_path / "b.st"])

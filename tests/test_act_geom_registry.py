"""An act-geom metric has one home: an entry in ``activations.metrics.METRICS``. A toy metric defined
here, through the registry only, appears as a column of `peftarena act-geom` (and in the report's
leaderboard when it asks to), with the value of a direct dense computation."""

from __future__ import annotations

import math

import pytest

from references import PROMPTS, direct_outputs
from peftarena_cli.activations import metrics
from peftarena_cli.artifacts.tables import read_table


def test_built_in_columns_come_from_the_metric_list_in_order():
    cols = ["n_tokens", "raw_residual", "procrustes_residual", "procrustes_improvement", "gram_distortion",
            "cka", "cos_drift", "log_norm_ratio", "angular_drift_mean", "angular_drift_median",
            "norm_ratio_mean", "norm_ratio_std", "pca_rank"]
    assert metrics.leaderboard_columns() == ("raw_residual", "procrustes_residual", "procrustes_improvement",
                                             "gram_distortion", "cka", "cos_drift", "log_norm_ratio",
                                             "pca_dist_32", "pca_dist_64")
    import torch

    from peftarena_cli.activations.pair_sums import PairSums

    ps = PairSums.zeros(4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    ps.add(x0, x1)
    row = metrics.geometry_from_sums(ps, ks=(2,))
    assert [c for c in row if c in cols] == cols


def test_a_toy_metric_registered_in_the_test_is_a_column_and_a_leaderboard_entry(
        cli, tmp_path, tiny_model_dir, tiny_lora_dir, monkeypatch):
    """mean_shift = ‖mean(x1) − mean(x0)‖ / ‖mean(x0)‖ from the streamed sums, against the same
    quantity from the module's dense outputs. Both come from float32 forward passes (batched there,
    one prompt at a time here): each output entry is off by at most ~c·d·u·|x| (u = 2⁻²⁴, d = 64 the
    width, c = 16 for the ops on the way to layer 0's MLP: embedding, norms, attention, the MLP's
    matmul), so the means are off by that times mean|x|, and the tolerance is that bound carried
    through the ratio (the sums' float64 rounding is negligible beside it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def mean_shift(m: metrics.Sums) -> dict:
        d = (m.ps.s1.double() - m.ps.s0.double()) / m.n
        return {"mean_shift": float(d.norm()) / float((m.ps.s0.double() / m.n).norm())}

    monkeypatch.setattr(metrics, "METRICS", list(metrics.METRICS))  # the registration ends with the test
    metrics.register_metric(metrics.GeomMetric("mean_shift", mean_shift, ("mean_shift",)))
    assert "mean_shift" in metrics.leaderboard_columns()

    prompts = tmp_path / "a.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "g.parquet"
    r = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompts, "-m", "model.layers.0.mlp.gate_proj", "-o", out)
    assert r.returncode == 0, r.stderr
    df, _ = read_table(out)
    assert list(df.columns).index("mean_shift") > list(df.columns).index("pca_dist_64")

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                       str(tiny_lora_dir)).merge_and_unload()
    name = "model.layers.0.mlp.gate_proj"
    X0 = direct_outputs(base, tok, PROMPTS, [name])[name].double()
    X1 = direct_outputs(merged, tok, PROMPTS, [name])[name].double()
    num, den = float((X1.mean(0) - X0.mean(0)).norm()), float(X0.mean(0).norm())
    want = num / den
    assert math.isfinite(want) and want > 0
    err = 16 * 64 * 2.0 ** -24 * float(X0.abs().mean(0).norm() + X1.abs().mean(0).norm())  # ‖error of the means‖
    tol = (err + want * err) / den  # |Δ(num/den)| ≤ (Δnum + ratio·Δden) / den
    got = float(df["mean_shift"].iloc[0])
    assert abs(got - want) <= tol, (got, want, tol)
    assert tol < 0.01 * want  # the bound is tight enough to mean something

"""`peftarena interpolate` end to end on the tiny model: outputs, warnings, bad input."""

from __future__ import annotations

import pytest

from paths_helpers import build_adapter


@pytest.fixture(scope="module")
def ads(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("icli")
    return {m: build_adapter(tiny_model_dir, m, root / m) for m in ("oft", "ia3")}


def test_help_has_example(cli):
    r = cli("interpolate", "--help")
    assert r.returncode == 0 and b"Example" in r.stdout and b"--alphas" in r.stdout


def test_oft_sqrt_sweep_writes_curve_and_checkpoints(cli, tiny_model_dir, ads, tmp_path):
    import torch
    from safetensors.torch import load_file

    from peftarena_cli.artifacts.tables import read_table

    import torch

    from peftarena_cli.activations.moments import InputMoments, save_stats, weights_fingerprint
    from peftarena_cli.artifacts.safetensors_io import resolve_model

    mods = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    sets = {}
    for i, role in enumerate(("general", "target")):
        m = InputMoments(module_group={n: n for n in mods})
        for n in mods:
            m.add(n, torch.randn(20, 64, generator=torch.Generator().manual_seed(i), dtype=torch.float64))
        sets[role] = m
    stats = save_stats(tmp_path / "stats.st", sets, base_identity=weights_fingerprint(resolve_model(str(tiny_model_dir))))
    out = tmp_path / "curve.parquet"
    r = cli("interpolate", tiny_model_dir, ads["oft"], "--alphas", "0:1:0.25", "--generator-scale", "sqrt",
                "--save-checkpoints", tmp_path / "ckpt", "--stats", stats, "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    df, prov = read_table(out)
    assert list(df["alpha"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(df["path"]) == {"native"} and set(df["generator_scale"]) == {"sqrt"}
    assert {"target", "general", "set_seconds", "orth_err"} <= set(df.columns)
    assert prov["extra"]["path"] == "native" and "finetuned" in prov["inputs"]
    # CSD along the path: zero at the base, growing with α; per-module rows beside the curve
    assert df["csd_abs_general"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    assert list(df["csd_abs_general"]) == sorted(df["csd_abs_general"]) and df["csd_abs_target"].iloc[-1] > 0
    per, _ = read_table(tmp_path / "curve.csd.parquet")
    assert len(per) == 5 * len(mods)
    orig = load_file(str(ads["oft"] / "adapter_model.safetensors"))
    q = load_file(str(tmp_path / "ckpt" / "alpha-0.2500" / "adapter_model.safetensors"))
    for k, v in orig.items():
        torch.testing.assert_close(q[k], 0.5 * v)  # √0.25


def test_no_native_path_falls_back_with_warning_or_errors_when_explicit(cli, tiny_model_dir, ads, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    out = tmp_path / "ia3.parquet"
    r = cli("interpolate", tiny_model_dir, ads["ia3"], "--alphas", "0,1", "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "no native path" in r.stderr and "dense" in r.stderr
    assert set(read_table(out)[0]["path"]) == {"dense"}
    out2 = tmp_path / "ia3-native.parquet"
    r = cli("interpolate", tiny_model_dir, ads["ia3"], "--path", "native", "--alphas", "0,1", "-o", out2)
    assert r.returncode == 1
    assert "error: ia3 has no native path" in r.stderr and "hint:" in r.stderr
    assert not out2.exists()


def test_alpha_outside_unit_interval_is_refused(cli, tiny_model_dir, ads, tmp_path):
    out = tmp_path / "c.parquet"
    r = cli("interpolate", tiny_model_dir, ads["oft"], "--alphas", "0:1.5:0.5", "-o", out)
    assert r.returncode == 2  # a usage error
    assert "outside [0, 1]" in r.stderr and "--allow-extrapolate" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_eval_sweep_end_to_end_on_tiny_model(cli, tiny_model_dir, ads, tmp_path):
    """--eval target,general through the evaluation engine: headline columns and per-sample files."""
    from peftarena_cli.artifacts.tables import read_table

    out = tmp_path / "curve.parquet"
    r = cli("interpolate", tiny_model_dir, ads["oft"], "--alphas", "0,1", "--eval", "target,general",
                "--limit", "1", "--max-new-tokens", "4", "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    df, _ = read_table(out)
    assert list(df["alpha"]) == [0.0, 1.0]
    assert df["target"].notna().all() and df["general"].notna().all()
    assert ((df["target"] >= 0) & (df["target"] <= 100)).all()
    assert "general.builtin_general_score" in df.columns and (df["general"] == df["general.builtin_general_score"]).all()
    t, _ = read_table(tmp_path / "curve.target-samples.parquet")
    g, _ = read_table(tmp_path / "curve.general-samples.parquet")
    assert sorted(set(t["alpha"])) == [0.0, 1.0] and sorted(set(g["alpha"])) == [0.0, 1.0]
    assert len(t) == 2  # one target example per α


def test_general_limit_per_part(cli, tiny_model_dir, ads, tmp_path):
    """--limit per general part reaches the sweep's general evaluation; without a bare N it cannot
    also cap the target task (a usage error before any work)."""
    from peftarena_cli.artifacts.tables import read_table

    out = tmp_path / "c.parquet"
    r = cli("interpolate", tiny_model_dir, ads["oft"], "--alphas", "0.5", "--eval", "general", "--limit", "ifeval=2,bbh=1,facts=3",
            "--max-new-tokens", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    curve, _ = read_table(out)
    assert len(curve) == 1
    samples, _ = read_table(tmp_path / "c.general-samples.parquet")
    assert samples.groupby("task")["id"].nunique().to_dict() == {"bbh_builtin": 1, "facts": 3, "ifeval_builtin": 2}
    bad = tmp_path / "bad.parquet"
    r = cli("interpolate", tiny_model_dir, ads["oft"], "--alphas", "0.5", "--eval", "target,general", "--limit", "ifeval=2",
            "-o", bad)
    assert r.returncode == 2 and "bare N" in r.stderr and not bad.exists()

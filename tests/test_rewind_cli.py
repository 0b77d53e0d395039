"""`peftarena rewind` end to end: --alpha, --curve/--pick with metadata, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from paths_helpers import build_adapter, peft_logits, tokens


@pytest.fixture(scope="module")
def ads(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rcli")
    return {m: build_adapter(tiny_model_dir, m, root / m) for m in ("lora", "ia3")}


def _meta(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["peftarena_rewind"])


def test_rewind_alpha_directory_loads_with_peft(cli, tiny_model_dir, ads, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "half"
    r = cli("rewind", ads["lora"], "--alpha", "0.5", "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out / "adapter_config.json").is_file() and _meta(out / "adapter_model.safetensors")["alpha"] == 0.5
    orig = load_file(str(ads["lora"] / "adapter_model.safetensors"))
    new = load_file(str(out / "adapter_model.safetensors"))
    for k, v in orig.items():
        torch.testing.assert_close(new[k], 0.5 * v if ".lora_B." in k else v)
    assert torch.isfinite(peft_logits(tiny_model_dir, out, tokens())).all()


def test_rewind_from_curve_records_choice(cli, tiny_model_dir, ads, tmp_path):
    from peftarena_cli.artifacts.identity import path_identity
    from peftarena_cli.artifacts.tables import Provenance, write_table

    curve = tmp_path / "curve.parquet"
    prov = Provenance(command="interpolate")  # rewind needs the curve to name the fine-tune it measured
    prov.add_input("finetuned", str(ads["lora"]), path_identity(ads["lora"]))
    write_table(pd.DataFrame({"alpha": [0.0, 0.5, 1.0], "path": ["native"] * 3, "target": [0.0, 40.0, 50.0],
                              "general": [50.0, 45.0, 30.0]}), curve, prov)
    out = tmp_path / "picked.safetensors"
    r = cli("rewind", ads["lora"], "--curve", curve, "--pick", "keep-target:0.8", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _meta(out)
    assert m["alpha"] == 0.5 and m["criterion"] == "keep-target:0.8" and "40" in m["reason"]
    assert "curve" in m and "picked" in r.stderr


def test_rewind_bad_inputs(cli, tiny_model_dir, ads, tmp_path):
    from peftarena_cli.artifacts.tables import write_table

    bad = tmp_path / "bad.parquet"
    write_table(pd.DataFrame({"alpha": [0.0, 1.0], "score": [1.0, 2.0]}), bad)
    cases = [
        (("--curve", bad, "--pick", "weighted"), 1, "no column target, general"),
        (("--alpha", "1.5"), 2, "outside [0, 1]"),
        (("--alpha", "0.5", "--layerwise", "safescale"), 1, "--layerwise applies to OFT"),
    ]
    for i, (args, code, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = cli("rewind", ads["lora"], *args, "-o", out)
        assert r.returncode == code, (args, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()
    out = tmp_path / "ia3-out"
    r = cli("rewind", ads["ia3"], "--alpha", "0.5", "-o", out)
    assert r.returncode == 1 and "no native path" in r.stderr and not out.exists()
    r = cli("rewind", ads["lora"], "--alpha", "1.5", "--allow-extrapolate", "-o", tmp_path / "x")
    assert r.returncode == 0, r.stderr

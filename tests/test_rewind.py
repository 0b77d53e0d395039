"""rewind: adapters written in their own PEFT format, reloaded by PEFT, equal the interpolated model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from helpers import make_adapter, make_tiny_llama
from paths_helpers import METHODS, adapters_fixture, config_of, load_base, logits, peft_logits, tokens


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return adapters_fixture(tiny_model_dir, tmp_path_factory)


def _interpolated_logits(model_dir, adapter_dir, alpha, ids, **kw):
    from peft import PeftModel

    from peftarena_cli.interpolation.inplace import NativePathModel

    pm = PeftModel.from_pretrained(load_base(model_dir), str(adapter_dir)).eval()
    path = NativePathModel(pm, config_of(adapter_dir), **kw)
    path.set_alpha(alpha)
    return logits(path.model, ids)


@pytest.mark.parametrize("method", METHODS)
def test_rewound_adapter_loads_with_peft_and_matches_interpolation(tiny_model_dir, adapters, method, tmp_path):
    from peftarena_cli.artifacts.adapters import load_adapter, peft_dir_for, save_adapter
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.interpolation.rewind import rewind_adapter

    ids = tokens(2)
    alpha = 0.4
    base_src = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    new, info = rewind_adapter(load_adapter(adapters[method]), alpha, base_source=base_src)
    assert info["alpha"] == alpha
    out_dir = save_adapter(new, tmp_path / "rewound", extra_metadata={"peftarena_rewind": info})
    expected = _interpolated_logits(tiny_model_dir, adapters[method], alpha, ids)
    got = peft_logits(tiny_model_dir, out_dir, ids)  # PeftModel.from_pretrained on the new directory
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    base = logits(load_base(tiny_model_dir), ids)
    assert (got - base).abs().max() > 1e-6  # really in between, not the base
    # the single-file layout stands alone too
    single = save_adapter(new, tmp_path / "rewound.safetensors")
    d, keep = peft_dir_for(load_adapter(single))
    torch.testing.assert_close(peft_logits(tiny_model_dir, d, ids), expected, atol=1e-5, rtol=0)
    if keep:
        keep.cleanup()


def test_oft_sqrt_rewind_scales_generator_by_sqrt_alpha(tiny_model_dir, adapters, tmp_path):
    from peftarena_cli.artifacts.adapters import load_adapter
    from peftarena_cli.interpolation.rewind import rewind_adapter

    ad = load_adapter(adapters["oft"])
    new, _ = rewind_adapter(ad, 0.25, scale_mode="sqrt")
    for k, v in ad.tensors.items():
        torch.testing.assert_close(new.tensors[k], 0.5 * v)


@pytest.fixture(scope="module")
def deep_oft(tmp_path_factory):
    """An OFT adapter on a 7-layer tiny model, with a different rotation strength per layer."""
    from peft import OFTConfig

    root = tmp_path_factory.mktemp("deep")
    model, tok = make_tiny_llama(seed=5, layers=7)
    model.save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    ad = make_adapter(root / "model", OFTConfig(oft_block_size=8, target_modules=["q_proj", "up_proj"],
                                                use_cayley_neumann=False), root / "oft", scale=0.1)
    from safetensors.torch import load_file, save_file

    t = load_file(str(ad / "adapter_model.safetensors"))
    for k in t:  # layer ℓ gets generator scale (ℓ + 1) / 2: strengths differ layer by layer
        layer = int(k.split(".layers.")[1].split(".")[0])
        t[k] = t[k] * (layer + 1) / 2
    save_file(t, str(ad / "adapter_model.safetensors"), metadata={"format": "pt"})
    return root / "model", ad


@pytest.mark.parametrize("mode", ("safescale", "minscale"))
def test_oft_layerwise_rewinding(deep_oft, mode, tmp_path):
    from peft import PeftModel

    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter
    from peftarena_cli.interpolation.oft_rotation import rotation_strengths
    from peftarena_cli.interpolation.rewind import rewind_adapter

    model_dir, ad_dir = deep_oft
    ad = load_adapter(ad_dir)
    # ρ_ℓ from PEFT's own block-diagonal rotation: sqrt(Σ‖R − I‖² / Σ d) over the layer's modules
    pm = PeftModel.from_pretrained(load_base(model_dir), str(ad_dir))
    ref = {}
    for layer in range(7):
        sq = d = 0.0
        for kind in ("self_attn.q_proj", "mlp.up_proj"):
            mod = pm.base_model.model.model.layers[layer].get_submodule(kind)
            R = mod.get_delta_weight("default")
            sq += float(((R - torch.eye(R.shape[0])) ** 2).sum())
            d += R.shape[0]
        ref[layer] = (sq / d) ** 0.5
    rho = rotation_strengths(ad.tensors, ad.config)
    for layer in range(7):
        assert rho[layer] == pytest.approx(ref[layer], rel=1e-5)
    assert rho == dict(sorted(rho.items())) and rho[6] > rho[0]
    new, info = rewind_adapter(ad, 1.0, layerwise=mode)
    target = sum(ref[i] for i in range(5)) / 5 if mode == "safescale" else min(ref.values())
    assert info["rho_target"] == pytest.approx(target, rel=1e-5)
    after = rotation_strengths(new.tensors, new.config)
    for layer in range(7):
        if ref[layer] > target:
            assert after[layer] == pytest.approx(target, rel=1e-4)
            assert info["layer_scales"][str(layer)] < 1.0
        else:
            assert after[layer] == pytest.approx(ref[layer], rel=1e-6)
    # and the written adapter loads with PEFT
    out = save_adapter(new, tmp_path / "lw")
    ids = tokens()
    got = peft_logits(model_dir, out, ids)
    assert torch.isfinite(got).all()


def test_pick_criteria_hand_scored():
    from peftarena_cli.interpolation.criteria import pick_alpha

    curve = pd.DataFrame({"alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
                          "target": [10.0, 30.0, 46.0, 52.0, 50.0],
                          "general": [60.0, 58.0, 55.0, 50.0, 45.0]})
    # gain = 40; keep 90% -> target >= 46 -> α in {0.5, 0.75, 1}; best general 55 at 0.5
    p = pick_alpha(curve, "keep-target:0.9")
    assert p.alpha == 0.5 and "46" in p.reason
    assert pick_alpha(curve, "keep-target:50%").alpha == 0.25  # target >= 30: α=0.25 has general 58
    # weighted 0.5: 35, 44, 50.5, 51, 47.5 -> 0.75
    assert pick_alpha(curve, "weighted:0.5").alpha == 0.75
    assert pick_alpha(curve, "weighted:0").alpha == 0.0
    assert pick_alpha(curve, "max-target").alpha == 0.75


def test_pick_rejects_bad_curves():
    from peftarena_cli.errors import InvalidArtifact, UsageError
    from peftarena_cli.interpolation.criteria import pick_alpha

    with pytest.raises(InvalidArtifact, match="no column"):
        pick_alpha(pd.DataFrame({"alpha": [0.0, 1.0], "score": [1.0, 2.0]}), "weighted")
    with pytest.raises(InvalidArtifact, match="missing values"):
        pick_alpha(pd.DataFrame({"alpha": [0.0, 1.0], "target": [1.0, None], "general": [1.0, 2.0]}), "weighted")
    with pytest.raises(InvalidArtifact, match="α = 0 and α = 1"):
        pick_alpha(pd.DataFrame({"alpha": [0.2, 0.5], "target": [1.0, 2.0], "general": [1.0, 2.0]}), "keep-target")
    with pytest.raises(UsageError):
        pick_alpha(pd.DataFrame({"alpha": [0.0, 1.0], "target": [1.0, 2.0], "general": [1.0, 2.0]}), "best-ever")


def test_rewind_full_finetune_checkpoint(tiny_model_dir, tmp_path):
    from helpers import save_tiny_llama

    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.interpolation.rewind import rewind_full

    ft_dir = save_tiny_llama(tmp_path / "ft", seed=4)
    out = rewind_full(WeightSource.from_ref(resolve_model(str(tiny_model_dir))),
                      WeightSource.from_ref(resolve_model(str(ft_dir))), 0.3, tmp_path / "rw", copy_from=ft_dir)
    sd0, sd1 = load_base(tiny_model_dir).state_dict(), load_base(ft_dir).state_dict()
    mid = load_base(out).state_dict()
    for k in sd0:
        torch.testing.assert_close(mid[k], sd0[k] + 0.3 * (sd1[k] - sd0[k]), atol=1e-6, rtol=1e-6)

"""Every method trains a few steps on the tiny model; its saved checkpoint reloads with PEFT's own
``PeftModel.from_pretrained`` (or transformers for `full`) and gives the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch

from peftarena_cli.errors import IncompatibleInputs, UnsupportedMethod
from peftarena_cli.training import methods
from peftarena_cli.training.runner import FinetuneConfig, finetune

PEFT_METHODS = ["lora", "pissa", "milora", "dora", "adalora", "vera", "ia3", "oft", "boft", "miss", "keeplora", "coft"]


def _ids():
    return torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120, 7, 9, 60, 61]])


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _train(tiny_model_dir, tmp_path, method, **kw):
    cfg = FinetuneConfig(base=str(tiny_model_dir), output=str(tmp_path / method), method=method, steps=2,
                         batch_size=2, max_length=512, save_every=1, seed=0, argv=["test"], **kw)
    return finetune(cfg)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_method_trains_and_reloads_with_identical_logits(tiny_model_dir, tmp_path, method):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    res = _train(tiny_model_dir, tmp_path, method)
    out = tmp_path / method
    assert res.steps == 2
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "adapter_config.json").is_file()
    trained = _logits(res.model)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    base_logits = _logits(base)
    reloaded = PeftModel.from_pretrained(base, str(out / "final"))
    got = _logits(reloaded)
    # PiSSA/MiLoRA train on a residual base; the saved adapter is the rank-2r LoRA on the original
    # base, so equality holds up to float rounding of W_res + BA vs W + B'A'.
    tol = 2e-5 if methods.get_method(method).mutates_base else 1e-6
    torch.testing.assert_close(got, trained, atol=tol, rtol=0)
    assert (got - base_logits).abs().max() > 10 * tol, "training changed nothing"

    # the config is embedded in the safetensors metadata, so the file stands alone
    with safe_open(str(out / "final" / "adapter_model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    emb = json.loads(meta["peft_config"])
    disk = json.loads((out / "final" / "adapter_config.json").read_text())
    assert emb["peft_type"] == disk["peft_type"]
    assert meta["step"] == "2" and meta["method"] == method


def test_full_finetune_saves_a_full_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    res = _train(tiny_model_dir, tmp_path, "full")
    out = tmp_path / "full"
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "config.json").is_file()
    trained = _logits(res.model)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32)
    torch.testing.assert_close(_logits(reloaded), trained, atol=1e-6, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert (_logits(base) - trained).abs().max() > 1e-5


def test_pissa_conversion_matches_dense_delta():
    """[B | -B0] [A ; A0] equals B A - B0 A0 (the dense formula)."""
    from peftarena_cli.training.checkpoints import convert_mutated_lora

    g = torch.Generator().manual_seed(0)
    A, A0 = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    B, B0 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = {"x.lora_A.weight": A, "x.lora_B.weight": B}
    i = {"x.lora_A.weight": A0, "x.lora_B.weight": B0}
    out, cfg = convert_mutated_lora(t, i, {"r": 4, "lora_alpha": 8, "init_lora_weights": "pissa"})
    torch.testing.assert_close(out["x.lora_B.weight"] @ out["x.lora_A.weight"], B @ A - B0 @ A0)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["init_lora_weights"] is True


def test_milora_init_uses_minor_components(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftarena_cli.weights.lora import milora_init

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    w0 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    ch = methods.resolve_method("milora", rank=4)
    pm = get_peft_model(base, methods.peft_config(ch, 10))
    milora_init(pm)
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]
    U, S, Vh = torch.linalg.svd(w0)
    minor = U[:, -4:] @ torch.diag(S[-4:]) @ Vh[-4:]
    torch.testing.assert_close(s * B @ A, minor, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.get_base_layer().weight + s * B @ A, w0, atol=1e-5, rtol=1e-4)


def test_method_defaults_and_overrides():
    assert methods.resolve_method("lora").rank == 8
    assert methods.resolve_method("vera").rank == 256
    assert methods.resolve_method("oft").block_size == 16
    assert methods.resolve_method("miss").rank == 8
    ch = methods.resolve_method("lora", rank=4)
    assert ch.alpha == 8  # alpha/r kept at the default ratio
    assert methods.resolve_method("lora", target_modules="q_proj,v_proj").target_modules == ["q_proj", "v_proj"]
    with pytest.raises(UnsupportedMethod, match="unknown method"):
        methods.resolve_method("qlora2")
    with pytest.raises(UnsupportedMethod, match="takes no --rank"):
        methods.resolve_method("ia3", rank=4)
    with pytest.raises(UnsupportedMethod, match="takes no --block-size"):
        methods.resolve_method("lora", block_size=16)


def test_block_size_must_divide_width(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with pytest.raises(IncompatibleInputs, match="does not divide"):
        methods.check_against_model(methods.resolve_method("oft", block_size=24), model)
    with pytest.raises(IncompatibleInputs, match="matches no linear module"):
        methods.check_against_model(methods.resolve_method("lora", target_modules="nope_proj"), model)
    methods.check_against_model(methods.resolve_method("oft", block_size=16), model)

"""ΔW / W1 per PEFT method vs PEFT's own merge_and_unload on tiny models."""

from __future__ import annotations

import pytest
import torch

from helpers import make_adapter


def peft_merged(model_dir, adapter_dir) -> dict:
    """Reference: PEFT loads the adapter onto the base and merges it (its own code path)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = pm.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def base_weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def check_against_peft(model_dir, adapter_dir, method, atol=2e-5, expect_form=None):
    from peftarena_cli.artifacts.weights import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ref = peft_merged(model_dir, adapter_dir)
    w0s = base_weights(model_dir)
    ft = open_finetuned(adapter_dir)
    assert ft.method == method
    base = WeightSource(model_dir / "model.safetensors")
    n = 0
    for md in iter_module_deltas(base, ft):
        key = md.name + ".weight"
        w1_ref = ref[key].float()
        d_ref = w1_ref - w0s[key].float()
        assert d_ref.abs().max() > 1e-4, f"{key}: the reference update is zero"
        torch.testing.assert_close(md.w1(), w1_ref, atol=atol, rtol=1e-4)
        torch.testing.assert_close(md.dense(), d_ref, atol=atol, rtol=1e-4)
        x = torch.randn(md.w0.shape[1], 3)
        torch.testing.assert_close(md.matmul(x), d_ref @ x, atol=10 * atol, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(md.fro2()), d_ref.square().sum(), rtol=1e-4, atol=1e-8)
        sv = torch.linalg.svdvals(d_ref.double()).float()
        got = md.singular_values()
        torch.testing.assert_close(got[: sv.shape[0]][:5], sv[: got.shape[0]][:5], rtol=1e-3, atol=1e-6)
        if expect_form is not None:
            assert expect_form in md.form
        n += 1
    assert n == len(ft.module_names()) > 0
    return n


def _lora(**kw):
    from peft import LoraConfig

    return LoraConfig(target_modules="all-linear", lora_dropout=0.0, **kw)


LORA_CASES = {
    "lora": (lambda: _lora(r=4, lora_alpha=8), "lora", None),
    "rslora": (lambda: _lora(r=4, lora_alpha=8, use_rslora=True), "lora", "rslora"),
    "patterns": (lambda: _lora(r=4, lora_alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 3}),
                 "lora", None),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_family_matches_peft_merge(case, tiny_model_dir, tmp_path):
    make_cfg, method, form = LORA_CASES[case]
    ad = make_adapter(tiny_model_dir, make_cfg(), tmp_path / case)
    check_against_peft(tiny_model_dir, ad, method, expect_form=form)


def test_full_finetune_delta(tiny_model_dir, tmp_path):
    """A full fine-tune is another model directory; ΔW = W1 − W0 read one tensor at a time."""
    import shutil

    from safetensors.torch import load_file, save_file

    from peftarena_cli.artifacts.weights import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ft_dir = tmp_path / "full"
    shutil.copytree(tiny_model_dir, ft_dir)
    sd = load_file(str(ft_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    new = {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.ndim == 2 else v).contiguous() for k, v in sd.items()}
    save_file(new, str(ft_dir / "model.safetensors"), metadata={"format": "pt"})
    ft = open_finetuned(ft_dir)
    assert ft.kind == "full" and ft.method == "full"
    base = WeightSource(tiny_model_dir / "model.safetensors")
    mds = list(iter_module_deltas(base, ft, kinds=["down_proj", "q_proj"]))
    assert [m.kind for m in mds] == ["q_proj", "down_proj"] * 2 and [m.layer for m in mds] == [0, 0, 1, 1]
    for md in mds:
        key = md.name + ".weight"
        torch.testing.assert_close(md.dense(), new[key] - sd[key])
        torch.testing.assert_close(md.w1(), new[key])

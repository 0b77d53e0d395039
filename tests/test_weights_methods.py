"""ΔW / W1 per PEFT method vs PEFT's own merge_and_unload on tiny models."""

from __future__ import annotations

import pytest
import torch

from helpers import make_adapter
from references import METHOD_CASES, base_weights, lora_all_linear, peft_all_linear, peft_merged


def check_against_peft(model_dir, adapter_dir, method, atol=2e-5, expect_form=None):
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ref = peft_merged(model_dir, adapter_dir)
    w0s = base_weights(model_dir)
    ft = open_finetuned(adapter_dir)
    base = WeightSource(model_dir / "model.safetensors")
    n = 0
    for md in iter_module_deltas(base, ft):
        assert md.method == method
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


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_matches_peft_merge(case, tiny_model_dir, tmp_path):
    make_cfg, method, form = METHOD_CASES[case]
    ad = make_adapter(tiny_model_dir, make_cfg(), tmp_path / case)
    check_against_peft(tiny_model_dir, ad, method, expect_form=form)


def test_boft_butterfly_factors(tiny_model_dir, tmp_path, monkeypatch):
    """BOFT with 2 butterfly factors. PEFT only builds them with its CUDA block-diag kernel, so the
    reference uses PEFT's own code with that kernel replaced by torch.block_diag."""
    import peft.tuners.boft.layer as bl

    class _BlockDiag:
        @staticmethod
        def apply(x):
            return torch.stack([torch.block_diag(*x[i].unbind(0)) for i in range(x.shape[0])])

    monkeypatch.setattr(bl, "get_fbd_cuda", lambda: True)
    monkeypatch.setattr(bl, "FastBlockDiag", _BlockDiag)
    ad = make_adapter(tiny_model_dir, peft_all_linear("BOFTConfig", boft_block_size=8, boft_n_butterfly_factor=2), tmp_path / "b")
    from peftarena_cli.weights import open_finetuned

    assert next(iter(open_finetuned(ad).modules.values()))["boft_R"].shape[0] == 2
    check_against_peft(tiny_model_dir, ad, "boft", expect_form="butterfly factors 2")


def test_oft_cayley_variants_are_transposed(tiny_model_dir, tmp_path):
    """Same saved generator, the two Cayley variants: exact R vs the series give (nearly) Rᵀ."""
    import json

    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ad = make_adapter(tiny_model_dir, METHOD_CASES["oft_exact"][0](), tmp_path / "oft", scale=0.01)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg.update(use_cayley_neumann=True, num_cayley_neumann_terms=12)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    base = WeightSource(tiny_model_dir / "model.safetensors")
    md_n = next(iter_module_deltas(base, open_finetuned(ad), modules=["q_proj"], layers=[0]))
    cfg["use_cayley_neumann"] = False
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    md_e = next(iter_module_deltas(base, open_finetuned(ad), modules=["q_proj"], layers=[0]))
    rn, re_ = md_n.rotation_matrix(), md_e.rotation_matrix()
    eye = torch.eye(re_.shape[0])
    assert (re_ - eye).abs().max() > 1e-3
    torch.testing.assert_close(rn, re_.T, atol=1e-6, rtol=0)
    assert (rn - re_).abs().max() > 1e-3


def test_pissa_converted_form_detected(tiny_model_dir, tmp_path):
    """PEFT's converted PiSSA (rank 2r plain LoRA on the original base) matches the merge and is named."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pm = get_peft_model(base, lora_all_linear(r=4, lora_alpha=4, init_lora_weights="pissa"))
    pm.save_pretrained(str(tmp_path / "init"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(tmp_path / "conv"), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    check_against_peft(tiny_model_dir, tmp_path / "conv", "pissa", expect_form="pissa converted")


def test_full_finetune_delta(tiny_model_dir, tmp_path):
    """A full fine-tune is another model directory; ΔW = W1 − W0 read one tensor at a time."""
    import shutil

    from safetensors.torch import load_file, save_file

    from peftarena_cli.artifacts.safetensors_io import WeightSource
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
    mds = list(iter_module_deltas(base, ft, modules=["down_proj", "q_proj"]))
    assert [m.kind for m in mds] == ["q_proj", "down_proj"] * 2 and [m.layer for m in mds] == [0, 0, 1, 1]
    for md in mds:
        key = md.name + ".weight"
        torch.testing.assert_close(md.dense(), new[key] - sd[key])
        torch.testing.assert_close(md.w1(), new[key])


def test_milora_residual_and_converted(tiny_model_dir, tmp_path):
    """MiLoRA (bottom-r triplets, peftarena's own init): residual form against the original base and
    PEFT's converted form, both vs PEFT's merge of the model that was actually trained."""
    import json

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights.lora import milora_init
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32),
                        lora_all_linear(r=4, lora_alpha=4))
    milora_init(pm)
    pm.save_pretrained(str(tmp_path / "init"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(tmp_path / "residual"))
    cfg = json.loads((tmp_path / "residual" / "adapter_config.json").read_text())
    cfg["init_lora_weights"] = "milora"
    (tmp_path / "residual" / "adapter_config.json").write_text(json.dumps(cfg))
    pm.save_pretrained(str(tmp_path / "conv"), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    trained = {k: v.detach().clone() for k, v in pm.merge_and_unload().state_dict().items()}
    w0s = base_weights(tiny_model_dir)
    base = WeightSource(tiny_model_dir / "model.safetensors")
    for d, form in (("residual", "milora residual"), ("conv", "milora converted")):
        n = 0
        for md in iter_module_deltas(base, open_finetuned(tmp_path / d)):
            assert md.method == "milora" and form in md.form, (md.method, md.form)
            key = md.name + ".weight"
            torch.testing.assert_close(md.dense(), trained[key] - w0s[key], atol=2e-5, rtol=1e-4)
            n += 1
        assert n == 14

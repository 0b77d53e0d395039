"""KeepLoRA (a LoRA started from the first batch's residual gradient, A frozen) and COFT (OFT with its
generator held in an ε-ball, PEFT's ``coft``): registry entries, hand-worked initial factors and
projections, merged weights against PEFT's merge and the LoRA formula, 2-step fine-tunes, the
native path, and the analysis commands on the fine-tunes."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from references import base_weights, peft_merged

from peftarena_cli import methods
from peftarena_cli.errors import DataError, IncompatibleInputs
from peftarena_cli.training.runner import FinetuneConfig, finetune
from peftarena_cli.weights import keeplora

ROOT = Path(__file__).resolve().parents[1]
F32 = 2.0 ** -24  # float32's unit roundoff


def _train(base, out, method, **kw):
    cfg = FinetuneConfig(**{"base": str(base), "output": str(out), "method": method, "steps": 2, "batch_size": 2,
                            "max_length": 512, "save_every": 1, "seed": 0, "argv": ["test"], **kw})
    return finetune(cfg)


def _factors(adapter_dir):
    t = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    out = {}
    for k, v in t.items():
        mod = k.removeprefix("base_model.model.").split(".lora_")[0]
        out.setdefault(mod, {})[k.split(".lora_")[1].split(".")[0]] = v
    return out


@pytest.fixture(scope="module")
def keeplora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("keeplora") / "run"
    res = _train(tiny_model_dir, out, "keeplora")
    return out, res


@pytest.fixture(scope="module")
def coft_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("coft") / "run"
    res = _train(tiny_model_dir, out, "coft")
    return out, res


# ---- registry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, metadata, want", [
    ({"peft_type": "OFT", "coft": True, "eps": 6e-5}, None, "coft"),
    ({"peft_type": "OFT", "coft": False}, None, "oft"),
    # a KeepLoRA adapter is a plain LoRA on disk: only peftarena's metadata names it
    ({"peft_type": "LORA", "init_lora_weights": True}, {"method": "keeplora"}, "keeplora"),
    ({"peft_type": "LORA", "init_lora_weights": True}, None, "lora"),
])
def test_the_two_methods_are_told_apart_from_their_neighbours(config, metadata, want):
    assert methods.method_name(config, metadata) == want


def test_registry_entries():
    k, c = methods.get_method("keeplora"), methods.get_method("coft")
    assert k.peft_type == "LORA" and k.native == "scale" and k.linear and k.init_from_batch and k.post_wrap
    assert c.peft_type == "OFT" and c.rotates and c.multiplicative and c.defaults["eps"] > 0
    assert "keeplora" in methods.native_methods() and "coft" in methods.native_methods()


# ---- KeepLoRA: the initial factors, by hand ------------------------------------------------------

def test_residual_gradient_removes_the_principal_input_directions():
    # W0 = diag(100, 1, 0.5): its leading right singular vector is e1, so k = 1 removes G's first column
    w0 = torch.diag(torch.tensor([100.0, 1.0, 0.5]))
    g = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
    res = keeplora.residual_gradient(w0, g, 1)
    torch.testing.assert_close(res, torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(keeplora.residual_gradient(w0, g, 0), g)


def test_keeplora_factors_are_the_truncated_svd_of_the_residual_gradient():
    # W0 (out 2, in 4) has leading right singular vector e1; G_res = G with column 1 zeroed =
    # [[0,1,0,2],[0,0,3,0]]: orthogonal rows, σ1 = 3 (u = e2, v = e3), σ2 = √5 (u = e1, v = (0,1,0,2)/√5)
    w0 = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    g = torch.tensor([[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0]])
    a, b = keeplora.keeplora_factors(w0, g, rank=1, k=1)
    assert a.shape == (1, 4) and b.shape == (2, 1)
    torch.testing.assert_close(b @ a, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.abs(), torch.tensor([[0.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    a2, b2 = keeplora.keeplora_factors(w0, g, rank=2, k=1)
    torch.testing.assert_close(b2 @ a2, torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(a2 @ a2.T, torch.eye(2), atol=1e-6, rtol=0)  # A's rows orthonormal
    torch.testing.assert_close(b2.norm(dim=0), torch.tensor([3.0, math.sqrt(5.0)]), atol=1e-6, rtol=0)
    # the default k is 4 r, capped at the smaller width
    assert keeplora.principal_rank(8, (64, 128)) == 32 and keeplora.principal_rank(1, (2, 4)) == 2


def _sft_batch():
    ids = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120, 7, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt: no loss
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_keeplora_init_uses_the_base_gradient_of_the_batch(tiny_model_dir):
    """Every module's initial s·B A equals s times the rank-r truncation of G − G V_k V_kᵀ, G taken by an
    independent backward pass through the unwrapped base model, in float64."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftarena_cli.training import methods as tm

    batch = _sft_batch()
    ref_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ref_model(**batch).loss.backward()
    grads = {n: m.weight.grad.double() for n, m in ref_model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.weight.grad is not None and n != "lm_head"}
    w0s = {n: m.weight.detach().double() for n, m in ref_model.named_modules() if n in grads}

    choice = tm.resolve_method("keeplora", rank=4)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pm = get_peft_model(model, tm.peft_config(choice, 10, model))
    tm.post_wrap(choice, pm)
    rng = torch.get_rng_state()
    assert keeplora.keeplora_init(pm, batch) == len(grads) == 14
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream is not consumed
    r, seen = 4, 0
    for name, mod in pm.named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        plain = name.removeprefix("base_model.model.")
        a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        assert not a.requires_grad and b.requires_grad
        assert mod.get_base_layer().weight.grad is None  # no stray gradient left on the base
        g, w0 = grads[plain], w0s[plain]
        k = min(4 * r, *w0.shape)
        _, sw, vh = torch.linalg.svd(w0, full_matrices=False)
        res = g - (g @ vh[:k].T) @ vh[:k]
        u, sg, vh2 = torch.linalg.svd(res, full_matrices=False)
        want = (u[:, :r] * sg[:r]) @ vh2[:r]
        # Wedin: float32 SVD subspaces are off by ~ u·σ1/gap (u = 2^-24) at W0's k-th and G_res's r-th
        # singular gaps, so the product by ~ u·(1 + both ratios)·‖G‖; allowed: ten times that
        amp = 1 + float(sw[0] / (sw[k - 1] - sw[k])) if k < sw.shape[0] else 1.0
        amp += float(sg[0] / (sg[r - 1] - sg[r]))
        tol = 10 * F32 * amp * float(g.norm())
        torch.testing.assert_close((b @ a).double(), want, atol=tol, rtol=0)
        assert float(want.norm()) > 100 * tol  # the check is not vacuous
        seen += 1
    assert seen == 14


def test_keeplora_init_refuses_a_batch_without_completion_tokens(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftarena_cli.training import methods as tm

    batch = _sft_batch()
    batch["labels"][:] = -100
    choice = tm.resolve_method("keeplora")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pm = get_peft_model(model, tm.peft_config(choice, 10, model))
    with pytest.raises(DataError, match="completion tokens"):
        keeplora.keeplora_init(pm, batch)


def test_keeplora_is_refused_under_rlvr_before_anything_is_written(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "rl"
    with pytest.raises(IncompatibleInputs, match="no reference completions"):
        _train(tiny_model_dir, out, "keeplora", regime="rlvr", batch_size=4)
    assert not out.exists()
    r = cli("finetune", tiny_model_dir, "-o", out, "--method", "keeplora", "--regime", "rlvr", "--steps", "1")
    assert r.returncode == 1 and "--regime sft" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# ---- KeepLoRA: a 2-step fine-tune and its merged weights -----------------------------------------

def test_keeplora_two_step_finetune_trains_b_only_and_merges_by_the_lora_formula(keeplora_run, tiny_model_dir):
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    out, res = keeplora_run
    assert res.steps == 2
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    first, final = _factors(out / "checkpoint-1"), _factors(out / "final")
    assert len(final) == 14
    # A is frozen from the initialisation on; B moves; only B counts as trainable
    for mod, f in final.items():
        assert torch.equal(f["A"], first[mod]["A"])
        torch.testing.assert_close(f["A"] @ f["A"].T, torch.eye(cfg["r"]), atol=1e-5, rtol=0)
    assert any(not torch.equal(f["B"], first[m]["B"]) for m, f in final.items())
    assert res.trainable_params == sum(f["B"].numel() for f in final.values())
    with safe_open(str(out / "final" / "adapter_model.safetensors"), framework="pt") as fh:
        assert fh.metadata()["method"] == "keeplora"

    # merged weights: W0 + (α/r) B A on every module (the study's formula), and PEFT's merge agrees
    ref = peft_merged(tiny_model_dir, out / "final")
    w0s = base_weights(tiny_model_dir)
    ft = open_finetuned(out / "final")
    n = 0
    for md in iter_module_deltas(WeightSource(tiny_model_dir / "model.safetensors"), ft):
        assert md.method == "keeplora"
        f = final[md.name]
        want = w0s[md.name + ".weight"] + s * f["B"] @ f["A"]
        # entries of size ~1 summed over r = 8 products: float32 rounding well under 1e-5
        torch.testing.assert_close(md.w1(), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ref[md.name + ".weight"], want, atol=1e-5, rtol=0)
        assert float((want - w0s[md.name + ".weight"]).abs().max()) > 1e-4
        n += 1
    assert n == 14


def test_keeplora_finetune_is_analysable(cli, keeplora_run, tiny_model_dir, tmp_path):
    out, _ = keeplora_run
    ft = out / "final"
    prompts = tmp_path / "p.txt"
    prompts.write_text("2 + 3 =\nthe capital of France is\nwater boils at\n")
    r = cli("spectrum", tiny_model_dir, ft, "-o", tmp_path / "s.parquet")
    assert r.returncode == 0, r.stderr
    r = cli("csd", tiny_model_dir, ft, "--general", prompts, "--target", "arith:3", "-o", tmp_path / "c.parquet")
    assert r.returncode == 0, r.stderr
    r = cli("act-geom", tiny_model_dir, ft, "-p", prompts, "-o", tmp_path / "a.parquet")
    assert r.returncode == 0, r.stderr
    r = cli("interpolate", tiny_model_dir, ft, "--path", "native", "--alphas", "0,0.5,1",
            "-o", tmp_path / "i.parquet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from peftarena_cli.artifacts.tables import read_table

    spec, prov = read_table(tmp_path / "s.parquet")
    assert prov["extra"]["method"] == "keeplora" and spec["module"].nunique() == 14
    curve, _ = read_table(tmp_path / "i.parquet")
    assert set(curve["method"]) == {"keeplora"} and set(curve["path"]) == {"native"}
    csd, _ = read_table(tmp_path / "c.parquet")
    assert csd["module"].nunique() == 14 and bool((csd["delta_fro2"] > 0).all())
    geom, _ = read_table(tmp_path / "a.parquet")
    assert geom["module"].nunique() == 14
    # rewind on the native path: B × α, A untouched (A is the frozen initialisation)
    rw = tmp_path / "rw"
    r = cli("rewind", ft, "--alpha", "0.5", "-o", rw)
    assert r.returncode == 0, r.stderr
    old, new = load_file(str(ft / "adapter_model.safetensors")), load_file(str(rw / "adapter_model.safetensors"))
    for k, v in old.items():
        torch.testing.assert_close(new[k], 0.5 * v if ".lora_B." in k else v)


def test_make_arena_plans_keeplora():
    if shutil.which("make") is None:
        pytest.skip("no make")
    cmd = ["make", "-n", "--no-print-directory", "arena", "ARENA_METHODS=keeplora", "ARENA_RUNS=/nonexistent-runs",
           f"PY={sys.executable}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--method keeplora" in p.stdout and f"--lr {methods.get_method('keeplora').arena_lr:g}" in p.stdout


# ---- COFT ----------------------------------------------------------------------------------------

def test_coft_projection_by_hand():
    from peftarena_cli.weights.oft import applied_generator

    # block size 2: one generator entry q per block, ‖Q_b‖_F = √2 |q|; the ball's radius is eps/√blocks
    cfg = {"coft": True, "eps": 2.0}
    got = applied_generator(torch.tensor([[3.0], [0.1]]), cfg)  # radius 2/√2 = √2: q = 3 -> 1, 0.1 stays
    torch.testing.assert_close(got, torch.tensor([[1.0], [0.1]]))
    got = applied_generator(torch.tensor([[-3.0]]), {"coft": True, "eps": math.sqrt(2.0)})  # radius √2
    torch.testing.assert_close(got, torch.tensor([[-1.0]]))
    v = torch.tensor([[3.0]])
    assert applied_generator(v, {"coft": False, "eps": 1.0}) is v


def _coft_adapter(tiny_model_dir, out):
    from references import peft_all_linear

    from helpers import make_adapter

    # generators of size ~0.2 per entry, far outside the ball (eps = 0.05 over the module)
    return make_adapter(tiny_model_dir, peft_all_linear("OFTConfig", r=0, oft_block_size=16, coft=True, eps=0.05,
                                                        use_cayley_neumann=False), out, scale=0.2)


def test_coft_merged_weights_equal_peft_merge_on_every_module(tiny_model_dir, tmp_path):
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned
    from peftarena_cli.weights.oft import cayley, skew

    ad = _coft_adapter(tiny_model_dir, tmp_path / "coft")
    saved = load_file(str(ad / "adapter_model.safetensors"))
    ref = peft_merged(tiny_model_dir, ad)
    w0s = base_weights(tiny_model_dir)
    n = 0
    for md in iter_module_deltas(WeightSource(tiny_model_dir / "model.safetensors"), open_finetuned(ad)):
        assert md.method == "coft" and "coft" in md.form
        key = md.name + ".weight"
        # exact Cayley of a block-diagonal rotation on widths <= 128: float32 rounding ~1e-6
        torch.testing.assert_close(md.w1(), ref[key], atol=1e-5, rtol=1e-5)
        # the saved generator lies outside the ball, so the projection matters: unprojected, W1 differs
        vec = saved[f"base_model.model.{md.name}.oft_R.weight"]
        assert float(skew(vec).flatten(1).norm()) > 0.05
        blocks = cayley(vec, neumann=False)
        unprojected = w0s[key] @ torch.block_diag(*blocks.transpose(1, 2))
        assert float((unprojected - ref[key]).abs().max()) > 1e-3
        n += 1
    assert n == 14


def test_coft_native_path_scales_the_projected_generator(tiny_model_dir, tmp_path):
    from peftarena_cli.interpolation.native import scale_adapter_tensors
    from peftarena_cli.weights.oft import applied_generator

    ad = _coft_adapter(tiny_model_dir, tmp_path / "coft")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    saved = load_file(str(ad / "adapter_model.safetensors"))
    half = scale_adapter_tensors(cfg, saved, 0.5)
    assert scale_adapter_tensors(cfg, saved, 1.0) == saved  # α = 1: the adapter as saved
    for k, v in saved.items():
        proj = applied_generator(v, cfg)
        torch.testing.assert_close(half[k], 0.5 * proj)
        # half the projected generator is inside the ball, so PEFT applies it as it is
        torch.testing.assert_close(applied_generator(half[k], cfg), half[k])
        assert float((half[k] - 0.5 * v).abs().max()) > 1e-3  # scaling the saved tensor would differ


def test_coft_rotation_strength_reads_the_projected_generator(tiny_model_dir, tmp_path):
    from peftarena_cli.interpolation.oft_rotation import oft_modules_by_layer, rotation_strengths
    from peftarena_cli.weights.oft import applied_generator

    ad = _coft_adapter(tiny_model_dir, tmp_path / "coft")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    saved = load_file(str(ad / "adapter_model.safetensors"))
    projected = {k: applied_generator(v, cfg) for k, v in saved.items()}
    plain_cfg = {**cfg, "coft": False}
    got = rotation_strengths(saved, cfg)
    assert set(got) == set(oft_modules_by_layer(saved)) == {0, 1}
    assert got == rotation_strengths(projected, plain_cfg)  # ρ of the rotation PEFT applies
    assert all(got[ly] < 0.5 * rotation_strengths(saved, plain_cfg)[ly] for ly in got)  # not of the saved Q


def test_coft_two_step_finetune_reloads_and_stays_in_the_ball(coft_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, res = coft_run
    assert res.steps == 2
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    assert cfg["coft"] is True and cfg["eps"] == methods.get_method("coft").defaults["eps"]
    ids = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120, 7, 9]])
    res.model.eval()
    with torch.no_grad():
        trained = res.model(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(out / "final"))
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, trained, atol=1e-6, rtol=0)
    assert float((got - base_logits).abs().max()) > 0  # the rotation moved something
    # the projected generator's norm over each module is at most eps
    eps = cfg["eps"]
    from peftarena_cli.weights.oft import applied_generator, skew

    for k, v in load_file(str(out / "final" / "adapter_model.safetensors")).items():
        q = skew(applied_generator(v, cfg).float())
        assert float(q.flatten().norm()) <= eps * (1 + 1e-5)
    with safe_open(str(out / "final" / "adapter_model.safetensors"), framework="pt") as fh:
        assert fh.metadata()["method"] == "coft"

"""interpolate: native and dense paths on one loaded model, checked against PEFT's own forward."""

from __future__ import annotations

import math

import pytest
import torch

from paths_helpers import METHODS, adapters_fixture, config_of, load_base, logits, peft_logits, tokens


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return adapters_fixture(tiny_model_dir, tmp_path_factory)


def _native(tiny_model_dir, adapter_dir, **kw):
    from peft import PeftModel

    from peftarena_cli.interpolation.inplace import NativePathModel

    pm = PeftModel.from_pretrained(load_base(tiny_model_dir), str(adapter_dir)).eval()
    return NativePathModel(pm, config_of(adapter_dir), **kw)


@pytest.mark.parametrize("method", METHODS)
def test_native_endpoints_match_base_and_peft(tiny_model_dir, adapters, method):
    ids = tokens()
    base = logits(load_base(tiny_model_dir), ids)
    ft = peft_logits(tiny_model_dir, adapters[method], ids)
    assert (ft - base).abs().max() > 1e-4, "the adapter must change the logits for the test to mean anything"
    path = _native(tiny_model_dir, adapters[method])
    for a, ref in ((0.0, base), (1.0, ft), (0.0, base)):  # back and forth on the same model
        path.set_alpha(a)
        torch.testing.assert_close(logits(path.model, ids), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ("lora", "dora", "oft", "ia3"))
def test_dense_endpoints_and_midpoint(tiny_model_dir, adapters, method):
    """Dense path W0 + αΔW: endpoints match; α=0.5 matches W0 + 0.5(W_merged − W0) from PEFT's own merge."""
    from peft import PeftModel

    from peftarena_cli.interpolation.sweep import open_path_model

    ids = tokens()
    base_model = load_base(tiny_model_dir)
    base = logits(base_model, ids)
    ft = peft_logits(tiny_model_dir, adapters[method], ids)
    setup = open_path_model(str(tiny_model_dir), str(adapters[method]), path="dense", device="cpu")
    assert setup.path == "dense"
    pm = setup.path_model
    pm.set_alpha(0.0)
    torch.testing.assert_close(logits(pm.model, ids), base, atol=1e-5, rtol=0)
    pm.set_alpha(1.0)
    torch.testing.assert_close(logits(pm.model, ids), ft, atol=1e-5, rtol=0)
    # independent midpoint: PEFT merge, then average the state dicts by hand
    merged = PeftModel.from_pretrained(load_base(tiny_model_dir), str(adapters[method])).merge_and_unload()
    sd0 = base_model.state_dict()
    mid = load_base(tiny_model_dir)
    mid.load_state_dict({k: sd0[k] + 0.5 * (v - sd0[k]) for k, v in merged.state_dict().items()})
    pm.set_alpha(0.5)
    torch.testing.assert_close(logits(pm.model, ids), logits(mid, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ("vera", "miss"))
def test_linear_methods_native_equals_dense(tiny_model_dir, adapters, method):
    from peftarena_cli.interpolation.sweep import open_path_model

    ids = tokens(1)
    nat = _native(tiny_model_dir, adapters[method])
    dense = open_path_model(str(tiny_model_dir), str(adapters[method]), path="dense", device="cpu").path_model
    for a in (0.3, 0.7):
        nat.set_alpha(a)
        dense.set_alpha(a)
        torch.testing.assert_close(logits(nat.model, ids), logits(dense.model, ids), atol=1e-5, rtol=0)


def test_dora_native_midpoint_formula(tiny_model_dir, adapters):
    """DoRA native α: W(α) = m(α)·(W0 + α s B A)/‖W0 + α s B A‖_row with m(α) = m0 + α(m1 − m0)."""
    from safetensors.torch import load_file

    path = _native(tiny_model_dir, adapters["dora"])
    cfg = config_of(adapters["dora"])
    s = cfg["lora_alpha"] / cfg["r"]
    tens = load_file(str(adapters["dora"] / "adapter_model.safetensors"))
    w0 = load_base(tiny_model_dir).model.layers[1].self_attn.q_proj.weight.detach()
    pre = "base_model.model.model.layers.1.self_attn.q_proj."
    B, A, m1 = tens[pre + "lora_B.weight"], tens[pre + "lora_A.weight"], tens[pre + "lora_magnitude_vector"]
    a = 0.35
    m0 = torch.linalg.norm(w0, dim=1)
    v = w0 + a * s * (B @ A)
    w_expected = ((m0 + a * (m1 - m0)) / torch.linalg.norm(v, dim=1))[:, None] * v
    path.set_alpha(a)
    layer = path.model.base_model.model.model.layers[1].self_attn.q_proj
    x = torch.randn(5, w0.shape[1])
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, x @ w_expected.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ("oft", "oft_exact"))
def test_oft_native_generator_scaling_and_orthogonality(tiny_model_dir, adapters, method):
    from safetensors.torch import load_file

    from peftarena_cli.weights.oft import cayley, orthogonality_error, variant_of

    neumann, terms = variant_of(config_of(adapters[method]))
    assert neumann == (method == "oft")
    orig = load_file(str(adapters[method] / "adapter_model.safetensors"))
    key = next(k for k in orig if k.endswith("oft_R.weight"))
    for mode, s_of in (("linear", lambda a: a), ("sqrt", math.sqrt)):
        path = _native(tiny_model_dir, adapters[method], scale_mode=mode)
        errs = []
        for a in (0.0, 0.25, 0.5, 1.0):
            path.set_alpha(a)
            live = dict(path.model.named_parameters())
            live_q = next(v for k, v in live.items() if k.endswith(key.replace("base_model.model.", "").replace(".weight", ".default.weight")))
            torch.testing.assert_close(live_q.detach(), orig[key] * s_of(a), atol=1e-7, rtol=0)
            errs.append(path.orthogonality_error())
            assert errs[-1] == pytest.approx(max(orthogonality_error(cayley(v * s_of(a), neumann, terms))
                                                 for k, v in orig.items() if k.endswith("oft_R.weight")), abs=1e-7)
        if neumann:  # the truncated series is orthogonal up to its error, which shrinks with the generator
            assert errs[0] < 1e-6 and errs == sorted(errs)
        else:  # exact Cayley: orthogonal at every α
            assert max(errs) < 1e-5


@pytest.mark.parametrize("method", ("oft", "oft_exact"))
def test_cayley_variants_match_peft_forward(tiny_model_dir, adapters, method):
    """Our R reproduces PEFT's forward for either variant: y = W0 (x R) per block."""
    from peft import PeftModel

    from peftarena_cli.weights.oft import cayley, skew, variant_of

    pm = PeftModel.from_pretrained(load_base(tiny_model_dir), str(adapters[method])).eval()
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    q = layer.oft_R["default"].weight.detach()
    neumann, terms = variant_of(config_of(adapters[method]))
    R = torch.block_diag(*cayley(q, neumann, terms))
    w0 = layer.get_base_layer().weight.detach()
    x = torch.randn(3, w0.shape[1])
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, (x @ R) @ w0.T, atol=1e-5, rtol=1e-5)
    # and the other variant gives (nearly) the transposed rotation, not the same one
    other = torch.block_diag(*cayley(q, not neumann, 40 if neumann else terms))
    if not neumann:
        other = torch.block_diag(*cayley(q, True, 40))
    assert (other - R).abs().max() > 1e-3
    # for a generator inside the series' convergence radius the long Neumann series is the exact Rᵀ
    qs = q * (0.5 / float(torch.linalg.matrix_norm(skew(q), ord=2).max()))
    torch.testing.assert_close(cayley(qs, False), cayley(qs, True, 80).transpose(-2, -1), atol=1e-5, rtol=0)


def test_full_finetune_dense_path(tiny_model_dir, tmp_path):
    from helpers import save_tiny_llama

    from peftarena_cli.interpolation.sweep import open_path_model

    ft_dir = save_tiny_llama(tmp_path / "ft", seed=3)  # same architecture, different weights
    ids = tokens()
    base = logits(load_base(tiny_model_dir), ids)
    ft = logits(load_base(ft_dir), ids)
    setup = open_path_model(str(tiny_model_dir), str(ft_dir), device="cpu")
    assert (setup.path, setup.method) == ("dense", "full")
    setup.path_model.set_alpha(1.0)
    torch.testing.assert_close(logits(setup.path_model.model, ids), ft, atol=1e-5, rtol=0)
    setup.path_model.set_alpha(0.0)
    torch.testing.assert_close(logits(setup.path_model.model, ids), base, atol=1e-5, rtol=0)
    # a dense checkpoint of α = 0.5 reloads as the same model
    from peftarena_cli.interpolation.sweep import save_checkpoint

    setup.path_model.set_alpha(0.5)
    (tmp_path / "ck").mkdir()
    ck = save_checkpoint(setup, 0.5, tmp_path / "ck")
    torch.testing.assert_close(logits(load_base(ck), ids), logits(setup.path_model.model, ids), atol=1e-6, rtol=0)


def test_path_choice_and_fallback(tiny_model_dir, adapters):
    from peftarena_cli.errors import UnsupportedMethod
    from peftarena_cli.interpolation.sweep import choose_path, open_path_model

    assert choose_path("lora", None, False) == ("native", None)
    path, note = choose_path("ia3", None, False)
    assert path == "dense" and "no native path" in note
    assert choose_path("full", None, True) == ("dense", None)  # a full fine-tune: the dense path is its path
    with pytest.raises(UnsupportedMethod):
        open_path_model(str(tiny_model_dir), str(adapters["ia3"]), path="native", device="cpu")


def test_sweep_collects_eval_columns(tiny_model_dir, adapters):
    """run_sweep with a hand-written evaluator: headline and summary columns per α, per-sample rows tagged."""
    import pandas as pd

    from peftarena_cli.interpolation.sweep import open_path_model, run_sweep

    ids = tokens()
    setup = open_path_model(str(tiny_model_dir), str(adapters["lora"]), device="cpu")

    def ev(model, tok):  # "score" = mean logit of the first token: a deterministic function of the weights
        v = float(logits(model, ids)[0, 0].mean())
        per = pd.DataFrame({"id": ["a"], "correct": [True]})
        return per, pd.DataFrame({"task": ["toy", "toy"], "metric": ["target_score", "raw"], "value": [v, 2 * v], "n": [1, 1]})

    curve, samples = run_sweep(setup, [0.0, 0.5, 1.0], {"target": ev})
    assert list(curve["alpha"]) == [0.0, 0.5, 1.0]
    assert {"alpha", "path", "target", "general", "toy.target_score", "toy.raw", "set_seconds"} <= set(curve.columns)
    assert curve["general"].isna().all()
    base_v = float(logits(load_base(tiny_model_dir), ids)[0, 0].mean())
    assert curve["target"].iloc[0] == pytest.approx(base_v, abs=1e-5)
    assert list(samples["target"]["alpha"]) == [0.0, 0.5, 1.0]


def _moments(modules, dims, seed=0):
    from peftarena_cli.activations.moments import InputMoments

    g = torch.Generator().manual_seed(seed)
    m = InputMoments(module_group={n: n for n in modules})
    for n in modules:
        h = torch.randn(50, dims[n], generator=g, dtype=torch.float64)
        m.add(n, h)
    return m


@pytest.mark.parametrize("method,path", (("oft", "native"), ("dora", "native"), ("lora", "dense")))
def test_csd_along_path_matches_merged_rewound_adapter(tiny_model_dir, adapters, method, path, tmp_path):
    """CSD at α from the live path equals CSD of ΔW(α) taken from PEFT's merge of the rewound adapter."""
    from peft import PeftModel

    from peftarena_cli.activations.csd import csd_metrics
    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.interpolation.csd_path import path_csd
    from peftarena_cli.interpolation.rewind import rewind_adapter
    from peftarena_cli.interpolation.sweep import open_path_model

    setup = open_path_model(str(tiny_model_dir), str(adapters[method]), path=path, device="cpu")
    base = load_base(tiny_model_dir)
    mods = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    dims = {n: base.get_submodule(n).weight.shape[1] for n in mods}
    sets = {"general": _moments(mods, dims, 0), "target": _moments(mods, dims, 1)}
    csd = path_csd(sets)
    a = 0.5
    setup.path_model.set_alpha(a)
    cols = csd(setup.path_model, a)
    new, _ = rewind_adapter(load_adapter(adapters[method]), a,
                            base_source=WeightSource.from_ref(resolve_model(str(tiny_model_dir))))
    merged = PeftModel.from_pretrained(load_base(tiny_model_dir), str(save_adapter(new, tmp_path / "rw"))).merge_and_unload()
    for role in ("general", "target"):
        vals = []
        for n in mods:
            w0 = base.get_submodule(n).weight.detach()
            dw = merged.get_submodule(n).weight.detach() - w0
            vals.append(csd_metrics(sets[role].S(n), sets[role].h2(n), w0, dw)["csd_abs"])
        assert cols[f"csd_abs_{role}"] == pytest.approx(sum(vals) / len(vals), rel=1e-4)
    assert len(csd.rows) == len(mods) and all(r["alpha"] == a for r in csd.rows)


def test_parse_alphas_grids_and_bounds():
    from peftarena_cli.errors import UsageError
    from peftarena_cli.interpolation.alphas import parse_alphas

    assert parse_alphas("0:1:0.1") == [round(i / 10, 10) for i in range(11)]
    assert parse_alphas("0:1:0.6") == [0.0, 0.6]  # never past stop
    assert parse_alphas("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    assert parse_alphas("-0.5:1.5:1", allow_extrapolate=True) == [-0.5, 0.5, 1.5]
    for bad in ("0:1.5:0.5", "-0.1,0.5", "0:1", "a,b", "1:0:0.1", ""):
        with pytest.raises(UsageError):
            parse_alphas(bad)


@pytest.mark.parametrize("method", ("oft", "dora", "lora", "vera", "miss"))
def test_native_merged_mode_equals_unmerged(tiny_model_dir, adapters, method):
    """merge=True (used when evaluating): PEFT's merge of W(α) from the kept W0 gives the same logits."""
    ids = tokens(3)
    plain = _native(tiny_model_dir, adapters[method])
    merged = _native(tiny_model_dir, adapters[method], merge=True)
    for a in (0.3, 0.0, 1.0, 0.6):
        plain.set_alpha(a)
        merged.set_alpha(a)
        torch.testing.assert_close(logits(merged.model, ids), logits(plain.model, ids), atol=1e-5, rtol=0)
    assert merged._tuners and all(mod.merged for mod, _, _ in merged._tuners)  # forwards use the merged weight
    assert any((w - w0).abs().max() > 1e-6 for _, w, w0 in merged._tuners)
    # LoRA, VeRA and MiSS move by one fused add W0 + αΔW(1) after the first α (checked linear once)
    assert (merged._delta1 is not None) == (method in ("lora", "vera", "miss"))
    assert (merged._oft_keys is not None) == (method == "oft")  # OFT: W0 Rᵀ(α) formed directly

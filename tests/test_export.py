"""`peftarena export`: a fine-tune merged into a plain HF model directory, for every method of the registry.

The references are independent of the export code: PEFT's own forward of the adapter
(``PeftModel.from_pretrained`` on a fresh base), transformers' load of a full fine-tune, and the
interpolation code's in-place path model (``open_path_model(..., merge=True)``, whose native path is
PEFT's merge) at α = 1/2.

Tolerances (float32 throughout, u = 2⁻²⁴).

* Weights: an exported weight is the reference's W1 computed in another order (W0 + ΔW formed in
  float32 and rounded once, against PEFT's merge or the path model's): a few roundings of numbers no
  larger than the tensor's largest entry, since the merge products here (low-rank sums, rescalings,
  near-orthogonal rotations) do not cancel beyond |W|. The tests allow 16·u·max|W| per tensor
  (≈ 9.5e-7 of max|W|; observed ≤ 3.5 ulps) and require every fine-tune to move some weight by more
  than 10 times that, so a merge that drops or misplaces the update fails (COFT, whose generator is
  held in an ε-ball of radius 6e-5, moves its weights by ~2e-5 of max|W|: 22 times the tolerance).
* Logits: the reference forward multiplies by W0 and applies the update separately (s·(x Aᵀ) Bᵀ, the
  rotated input, the rescaled activations). One layer's products then differ by at most γ_n·Σ|x||w|
  with n the inner dimension plus the update's own (≤ 2·128 here), γ_256 = 256·u ≈ 1.5e-5 relative to
  those products; two decoder layers and the head compose a handful of such steps, so the logits agree
  to within 1e-4 of their largest magnitude (observed ~3e-7 of it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftarena_cli import methods
from paths_helpers import load_base, logits, tokens

REL_TOL = 1e-4  # of max |logit|: see the module docstring
ULPS = 16  # weights: 16·u·max|W| per tensor, see the module docstring
EFFECT = 10  # a fine-tune must move some weight by more than this many weight tolerances

FINETUNE_ARGS = dict(steps=10, batch_size=2, max_length=512)


def _tol(ref) -> float:
    return REL_TOL * float(ref.abs().max())


def _weight_tol(ref) -> float:
    return ULPS * 2.0 ** -24 * float(ref.abs().max())


def assert_weights_close(got: dict, ref: dict, w0: dict) -> None:
    """Every exported tensor within its tolerance of the reference, and the reference moved by the
    fine-tune (somewhere) by more than EFFECT tolerances."""
    assert set(got) == set(w0)
    moved = 0.0
    for k in got:
        tol = _weight_tol(ref[k])
        gap = float((got[k].float() - ref[k].float()).abs().max())
        assert gap <= tol, f"{k}: |exported − reference| = {gap:.3g} > {tol:.3g}"
        if tol > 0:
            moved = max(moved, float((ref[k].float() - w0[k].float()).abs().max()) / tol)
    assert moved > EFFECT, f"the fine-tune moves no weight by more than {EFFECT} tolerances ({moved:.3g})"


def exported_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    out_w = {}
    for f in sorted(out.glob("*.safetensors")):
        out_w.update(load_file(str(f)))
    return out_w


def base_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def reference_weights(model_dir: Path, ft_dir: Path) -> dict:
    """PEFT's merge_and_unload of the adapter on a fresh base; a full fine-tune's own tensors."""
    if (ft_dir / "adapter_config.json").is_file():
        from references import peft_merged

        return peft_merged(model_dir, ft_dir)
    return exported_weights(ft_dir)


def path_model_weights(path_model) -> dict:
    """The weights of an in-place path model (a merged PeftModel's base layers, or a plain model) under
    the base's names."""
    m = path_model.model
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return {k.replace(".base_layer.", "."): v.detach() for k, v in m.state_dict().items()}


def _snapshot(p: Path) -> dict:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(e.name for e in parent.iterdir() if e.name.startswith((".tmp-", ".old-")))


def build_finetune(model_dir: Path, name: str, out: Path, seed: int = 3) -> Path:
    """A fine-tune of method ``name`` built by the training code the registry names (PEFT config,
    post-wrap hook, PiSSA/MiLoRA conversion on save), its trainable tensors perturbed by seeded noise
    instead of gradient steps so that its effect is large; saved as `finetune` saves it."""
    from transformers import AutoModelForCausalLM

    from peftarena_cli.artifacts.adapters import save_adapter
    from peftarena_cli.training.checkpoints import current_adapter
    from peftarena_cli.training.methods import resolve_method
    from peftarena_cli.training.runner import FinetuneConfig, prepare_model

    entry = methods.get_method(name)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pm, init = prepare_model(FinetuneConfig(base=str(model_dir), method=name, **FINETUNE_ARGS),
                                 resolve_method(name), model)
    g = torch.Generator().manual_seed(seed)
    scale = 0.2 if entry.multiplicative else (0.01 if entry.is_full else 0.05)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    if entry.is_full:
        from transformers import AutoTokenizer

        pm.save_pretrained(str(out), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
        return out
    save_adapter(current_adapter(pm, init, str(model_dir)), out, extra_metadata={"method": name})
    return out


@pytest.fixture(scope="module")
def finetunes(tiny_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export-finetunes")
    return {name: build_finetune(tiny_model_dir, name, root / name) for name in methods.METHODS}


def reference_logits(model_dir: Path, ft_dir: Path, ids):
    """PEFT's forward of the adapter on a fresh base; transformers' load of a full model."""
    from transformers import AutoModelForCausalLM

    if (ft_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return logits(PeftModel.from_pretrained(load_base(model_dir), str(ft_dir)).eval(), ids)
    return logits(AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=torch.float32).eval(), ids)


def exported_logits(out: Path, ids):
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(str(out)).eval(), ids)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_export_equals_the_fine_tunes_forward(name, finetunes, tiny_model_dir, tmp_path, cli):
    ft = finetunes[name]
    snap_ft, snap_base = _snapshot(ft), _snapshot(tiny_model_dir)
    out = tmp_path / "merged"
    r = cli("export", tiny_model_dir, ft, "-o", out, "--max-shard-size", "64K")
    assert r.returncode == 0, r.stderr
    w0 = base_weights(tiny_model_dir)
    ref_w = reference_weights(tiny_model_dir, ft)
    assert_weights_close(exported_weights(out), {k: ref_w[k] for k in w0}, w0)
    ids = tokens()
    ref = reference_logits(tiny_model_dir, ft, ids)
    torch.testing.assert_close(exported_logits(out, ids), ref, atol=_tol(ref), rtol=0)
    # a plain HF directory: sharded weights with an index, the config files, no adapter
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / f).is_file(), f
    assert not (out / "adapter_config.json").exists()
    rec = json.loads((out / "peftarena_export.json").read_text())
    assert rec["finetuned"]["method"] == name and rec["alpha"] == 1.0
    # the inputs are untouched
    assert _snapshot(ft) == snap_ft and _snapshot(tiny_model_dir) == snap_base


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_export_at_half_equals_the_interpolation_models_merge(name, finetunes, tiny_model_dir, tmp_path):
    from peftarena_cli.interpolation.export import ExportConfig, export
    from peftarena_cli.interpolation.sweep import open_path_model

    ft = finetunes[name]
    ids = tokens(1)
    setup = open_path_model(str(tiny_model_dir), str(ft), merge=True, device="cpu")
    setup.path_model.set_alpha(0.5)
    ref = logits(setup.path_model.model, ids)
    res = export(ExportConfig(base=str(tiny_model_dir), finetuned=str(ft), output=str(tmp_path / "half"), alpha=0.5))
    assert res.path == setup.path  # the same path: native where the method has one
    w0 = base_weights(tiny_model_dir)
    ref_w = path_model_weights(setup.path_model)
    assert_weights_close(exported_weights(tmp_path / "half"), {k: ref_w[k] for k in w0}, w0)
    torch.testing.assert_close(exported_logits(tmp_path / "half", ids), ref, atol=_tol(ref), rtol=0)


def test_dense_path_and_sqrt_generator_scale_follow_the_path_model(finetunes, tiny_model_dir, tmp_path):
    """The two path options: --path dense on a method whose native path differs (a rotation), and
    OFT's √α generator scale, each against the path model built with the same options."""
    from peftarena_cli.interpolation.export import ExportConfig, export
    from peftarena_cli.interpolation.sweep import open_path_model

    rot = next(m.name for m in methods.METHODS.values() if m.rotates)
    ids = tokens(2)
    outs = {}
    for opts in ({"path": "dense"}, {"generator_scale": "sqrt"}, {}):
        setup = open_path_model(str(tiny_model_dir), str(finetunes[rot]), merge=True, device="cpu",
                                path=opts.get("path"), scale_mode=opts.get("generator_scale", "linear"))
        setup.path_model.set_alpha(0.3)
        ref = logits(setup.path_model.model, ids)
        out = tmp_path / "-".join(opts.values() or ["native"])
        export(ExportConfig(base=str(tiny_model_dir), finetuned=str(finetunes[rot]), output=str(out), alpha=0.3, **opts))
        outs[out.name] = got = exported_logits(out, ids)
        torch.testing.assert_close(got, ref, atol=_tol(ref), rtol=0)
    # the three are different points (else the options would not have been applied)
    vals = list(outs.values())
    tol = _tol(vals[0])
    assert all((a - b).abs().max() > 100 * tol for i, a in enumerate(vals) for b in vals[i + 1:])


def test_a_rewound_adapter_exports_to_the_same_weights_as_the_alpha_export(finetunes, tiny_model_dir, tmp_path, cli):
    from safetensors.torch import load_file

    lora = methods.DEFAULT_METHOD
    rewound = tmp_path / "rewound"
    assert cli("rewind", finetunes[lora], "--alpha", "0.4", "-o", rewound).returncode == 0
    assert cli("export", tiny_model_dir, rewound, "-o", tmp_path / "a").returncode == 0
    assert cli("export", tiny_model_dir, finetunes[lora], "--alpha", "0.4", "-o", tmp_path / "b").returncode == 0
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    # the same scaled tensors go through the same former: bit for bit
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_shard_dtype_and_provenance(finetunes, tiny_model_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from peftarena_cli.artifacts.identity import weights_fingerprint
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.interpolation.export import ExportConfig, export

    ft = finetunes[methods.DEFAULT_METHOD]
    export(ExportConfig(base=str(tiny_model_dir), finetuned=str(ft), output=str(tmp_path / "f32")))
    export(ExportConfig(base=str(tiny_model_dir), finetuned=str(ft), output=str(tmp_path / "bf16"), dtype="bfloat16"))
    f32 = tmp_path / "f32"
    assert (f32 / "model.safetensors").is_file() and not (f32 / "model.safetensors.index.json").exists()
    w32, w16 = load_file(str(f32 / "model.safetensors")), load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert set(w32) == set(load_file(str(tiny_model_dir / "model.safetensors")))
    # one rounding from the same float32 merge: the bf16 export is the float32 one cast, bit for bit
    assert all(w16[k].dtype == torch.bfloat16 and torch.equal(w16[k], w32[k].to(torch.bfloat16)) for k in w32)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((f32 / "config.json").read_text())["dtype"] == "float32"
    with safe_open(str(f32 / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    rec = json.loads((f32 / "peftarena_export.json").read_text())
    assert rec["base"]["fingerprint"] == weights_fingerprint(resolve_model(str(tiny_model_dir)))
    assert rec["finetuned"]["spec"] == str(ft) and rec["alpha"] == 1.0 and rec["path"] == ""
    import peft
    import transformers

    assert rec["versions"]["transformers"] == transformers.__version__ and rec["versions"]["peft"] == peft.__version__
    assert sorted(rec["files"]) == sorted(p.name for p in f32.iterdir() if p.name != "peftarena_export.json")


def test_sharding_respects_the_size_and_the_index_is_complete(finetunes, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from peftarena_cli.interpolation.export import ExportConfig, export

    limit = 40 * 1024
    res = export(ExportConfig(base=str(tiny_model_dir), finetuned=str(finetunes[methods.DEFAULT_METHOD]),
                              output=str(tmp_path / "s"), max_shard_size="40K"))
    out = tmp_path / "s"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    n = len(res.shards)
    assert n > 2 and res.shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    total = 0
    for s in res.shards:
        t = load_file(str(out / s))
        size = sum(v.numel() * v.element_size() for v in t.values())
        assert size <= limit or len(t) == 1  # a tensor larger than the limit gets a shard of its own
        assert all(index["weight_map"][k] == s for k in t)
        total += size
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(load_file(str(tiny_model_dir / "model.safetensors")))


# ---- bad inputs and output rules -------------------------------------------------------------------

def test_output_inside_the_adapter_directory_is_refused(finetunes, tiny_model_dir, cli):
    ft = finetunes[methods.DEFAULT_METHOD]
    snap = _snapshot(ft)
    r = cli("export", tiny_model_dir, ft, "-o", ft / "merged")
    assert r.returncode == 1 and "inside the input directory" in r.stderr, r.stderr
    assert _snapshot(ft) == snap and not (ft / "merged").exists()


def test_an_existing_directory_with_files_is_refused(finetunes, tiny_model_dir, tmp_path, cli):
    ft = finetunes[methods.DEFAULT_METHOD]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("export", tiny_model_dir, ft, "-o", out)
    assert r.returncode == 1 and "not empty" in r.stderr, r.stderr
    r = cli("export", tiny_model_dir, ft, "-o", out, "--overwrite")  # not a previous export: never deleted
    assert r.returncode == 1 and "not a peftarena export" in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_empty_directory_is_used_and_overwrite_replaces_only_a_previous_export(finetunes, tiny_model_dir, tmp_path, cli):
    ft = finetunes[methods.DEFAULT_METHOD]
    out = tmp_path / "out"
    out.mkdir()
    assert cli("export", tiny_model_dir, ft, "-o", out).returncode == 0
    assert json.loads((out / "peftarena_export.json").read_text())["alpha"] == 1.0
    r = cli("export", tiny_model_dir, ft, "-o", out, "--alpha", "0.5")
    assert r.returncode == 1 and "--overwrite" in r.stderr
    assert cli("export", tiny_model_dir, ft, "-o", out, "--alpha", "0.5", "--overwrite").returncode == 0
    assert json.loads((out / "peftarena_export.json").read_text())["alpha"] == 0.5
    (out / "extra.bin").write_bytes(b"x")  # a file the export did not write: no longer only an export
    r = cli("export", tiny_model_dir, ft, "-o", out, "--overwrite")
    assert r.returncode == 1 and "extra.bin" in r.stderr
    assert json.loads((out / "peftarena_export.json").read_text())["alpha"] == 0.5
    assert _leftovers(tmp_path) == []


def test_an_adapter_of_another_base_is_refused(foreign_lora, tiny_model_dir, tmp_path, cli):
    snap = _snapshot(foreign_lora)
    r = cli("export", tiny_model_dir, foreign_lora, "-o", tmp_path / "out")
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "shape" in r.stderr
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    assert _snapshot(foreign_lora) == snap


@pytest.mark.parametrize("args,what", [
    (["--alpha", "1.5"], "outside [0, 1]"), (["--alpha", "-0.1"], "outside [0, 1]"), (["--alpha", "nan"], "not a finite"),
    (["--dtype", "int8"], "unknown --dtype"), (["--max-shard-size", "5X"], "--max-shard-size"),
    (["--max-shard-size", "10"], "below 1 KiB"), (["--path", "sideways", "--alpha", "0.5"], "unknown --path"),
    (["--generator-scale", "sqrt", "--alpha", "0.5"], "applies to OFT adapters only"),
])
def test_bad_option_values_are_usage_errors(args, what, finetunes, tiny_model_dir, tmp_path, cli):
    r = cli("export", tiny_model_dir, finetunes[methods.DEFAULT_METHOD], "-o", tmp_path / "out", *args)
    assert r.returncode == 2 and what in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_extrapolation_needs_the_flag(finetunes, tiny_model_dir, tmp_path, cli):
    r = cli("export", tiny_model_dir, finetunes[methods.DEFAULT_METHOD], "-o", tmp_path / "out", "--alpha", "1.5",
            "--allow-extrapolate")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "peftarena_export.json").read_text())["alpha"] == 1.5


def test_an_adapter_with_trained_biases_is_refused(tiny_model_dir, tmp_path, cli):
    """PEFT's lora_bias trains a bias on lora_B; the formers merge weights only, so export refuses it
    rather than write a model without it."""
    from peft import LoraConfig

    from helpers import make_adapter

    ad = make_adapter(tiny_model_dir, LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True), tmp_path / "lb")
    r = cli("export", tiny_model_dir, ad, "-o", tmp_path / "out")
    assert r.returncode == 1 and "trained biases" in r.stderr and "lora_B.bias" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_leaves_nothing(finetunes, tiny_model_dir, tmp_path, monkeypatch):
    """Ctrl-C while the weights are written (simulated by the tensor writer raising KeyboardInterrupt at
    its fifth tensor, with several shard files already on disk): no output directory, no temporary
    sibling, inputs unchanged."""
    import peftarena_cli.interpolation.export as ex

    ft = finetunes[methods.DEFAULT_METHOD]
    snap = _snapshot(ft)
    real, calls = ex._write_at, []

    def interrupted(path, offset, data):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(path, offset, data)

    monkeypatch.setattr(ex, "_write_at", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ex.export(ex.ExportConfig(base=str(tiny_model_dir), finetuned=str(ft), output=str(out), max_shard_size="40K"))
    assert len(calls) == 5 and calls[0].parent.name.startswith(".tmp-out.")  # it was writing into a temporary sibling
    assert not out.exists() and _leftovers(tmp_path) == []
    assert _snapshot(ft) == snap

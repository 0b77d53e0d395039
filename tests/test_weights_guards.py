"""Weights and adapters that do not fit: each case used to exit 0 with numbers, each is now refused
before any work (or, for the tied head and weights-only readers of an auto_map folder, accepted on
purpose). Every refusal also checks that nothing was written."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from helpers import make_adapter, save_tiny_llama


# ---- builders ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deep_lora(tmp_path_factory) -> Path:
    """A LoRA adapter of a 4-layer tiny model of the same width as the 2-layer tiny base: its layers 2
    and 3 name modules missing from the base, layers 0 and 1 fit exactly (same shapes)."""
    from peft import LoraConfig

    d = tmp_path_factory.mktemp("deep")
    m = save_tiny_llama(d / "model", layers=4)
    return make_adapter(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
                        d / "adapter", scale=0.2)


def _unmatched(adapter_dir: Path) -> tuple[list[str], int]:
    """(the keys of layers >= 2, the number of keys), read from the file's header by hand."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    bad = sorted(k for k in keys if int(re.search(r"\.layers\.(\d+)\.", k).group(1)) >= 2)
    return bad, len(keys)


def _full_finetune(base: Path, out: Path, drop: tuple[str, ...] = (), config_edit=None) -> Path:
    """A full fine-tune of ``base``: every tensor perturbed, the tensors in ``drop`` left out."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    ft = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() for k, v in sd.items() if k not in drop}
    out.mkdir(parents=True)
    save_file(ft, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in base.iterdir():
        if f.suffix == ".json" or f.name.startswith("tokenizer"):
            shutil.copy(f, out / f.name)
    if config_edit:
        cfg = json.loads((out / "config.json").read_text())
        config_edit(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    return out


def _relabel(path: Path, which, new_dtype: str) -> list[str]:
    """Rewrite the safetensors header of ``path`` so the tensors ``which(name)`` selects are declared
    ``new_dtype`` (same item size: the file stays self-consistent); return their names."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__" and which(k)]
    for k in names:
        header[k]["dtype"] = new_dtype
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    return names


def _snapshot(p: Path) -> dict:
    if p.is_file():
        return {p.name: p.read_bytes()}
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ---- 1. an adapter naming modules the base lacks ----------------------------------------------------

def test_unmatched_adapter_modules_are_refused_by_every_command(tiny_model_dir, deep_lora, tmp_path, cli):
    bad, total = _unmatched(deep_lora)
    assert len(bad) == total // 2 > 0  # half of the adapter matches nothing in the base
    snap = _snapshot(deep_lora)
    runs = {
        "eval-target": ("eval-target", tiny_model_dir, "--adapter", deep_lora, "--limit", "1", "--max-new-tokens", "2"),
        "interpolate": ("interpolate", tiny_model_dir, deep_lora, "--alphas", "0,1", "--eval", "target", "--limit", "1",
                        "--max-new-tokens", "2"),
        "drift": ("drift", tiny_model_dir, deep_lora, "--limit", "1", "--max-new-tokens", "1", "--sets", "target"),
        # a selection inside the layers that fit does not hide the misfit
        "spectrum": ("spectrum", tiny_model_dir, deep_lora, "--layers", "0"),
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.parquet"
        r = cli(*args, "-o", out)
        assert r.returncode == 1, (name, r.stderr)
        assert f"{len(bad)} of its {total} tensor(s) name modules missing from the base" in r.stderr, (name, r.stderr)
        assert bad[0] in r.stderr and "Traceback" not in r.stderr
        assert not out.exists(), name
    # eval refuses before loading the base or evaluating anything
    r = cli(*runs["eval-target"], "-o", tmp_path / "e.parquet")
    assert "loaded" not in r.stderr
    out = tmp_path / "rewound"
    r = cli("rewind", deep_lora, "--alpha", "0.5", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 1 and f"{len(bad)} of its {total}" in r.stderr, r.stderr
    assert not out.exists()
    assert _snapshot(deep_lora) == snap


def test_attach_adapter_refuses_unmatched_modules_on_a_live_model(tiny_model_dir, deep_lora, tiny_lora_dir):
    """The one attach point (eval, interpolate's native path, act-geom) checks the live model too, also
    when it already carries an adapter (PEFT's wrapped names are looked through)."""
    from peftarena_cli.artifacts.loading import attach_adapter, load_model
    from peftarena_cli.errors import IncompatibleInputs

    model, _, _ = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(IncompatibleInputs, match="name modules missing from the base"):
        attach_adapter(model, str(deep_lora))
    pm = attach_adapter(model, str(tiny_lora_dir))  # an adapter that fits is attached
    with pytest.raises(IncompatibleInputs, match="name modules missing from the base"):
        attach_adapter(pm, str(deep_lora), adapter_name="second")


# ---- 2. a full fine-tune missing a tensor -----------------------------------------------------------

def test_full_finetune_missing_a_tensor_is_refused(tiny_model_dir, tmp_path, cli):
    gone = "model.layers.1.mlp.down_proj.weight"
    ft = _full_finetune(tiny_model_dir, tmp_path / "ft", drop=(gone,))
    snap = _snapshot(ft)
    for name, args in {
        "drift": ("drift", tiny_model_dir, ft, "--limit", "1", "--max-new-tokens", "1", "--sets", "target"),
        "spectrum": ("spectrum", tiny_model_dir, ft),
        "interpolate": ("interpolate", tiny_model_dir, ft, "--alphas", "0.5", "--eval", "target", "--limit", "1",
                        "--max-new-tokens", "1"),
    }.items():
        out = tmp_path / f"{name}.parquet"
        r = cli(*args, "-o", out)
        assert r.returncode == 1, (name, r.stderr)
        assert f"lacks 1 tensor(s) of the base: {gone}" in r.stderr, (name, r.stderr)
        assert not out.exists()
    out = tmp_path / "rewound"
    r = cli("rewind", ft, "--alpha", "0.5", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 1 and gone in r.stderr, r.stderr
    assert not out.exists()
    assert _snapshot(ft) == snap


def test_full_finetune_with_a_tied_head_is_complete(tiny_model_dir, tmp_path, cli):
    """The tiny model ties lm_head to embed_tokens, so its checkpoint has no lm_head.weight: that
    absence is legitimate and drift measures the fine-tune."""
    from safetensors import safe_open

    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    ft = _full_finetune(tiny_model_dir, tmp_path / "ft")
    r = cli("drift", tiny_model_dir, ft, "--limit", "1", "--max-new-tokens", "1", "--sets", "target",
            "-o", tmp_path / "d.parquet")
    assert r.returncode == 0, r.stderr


def test_missing_head_is_legitimate_only_when_tied(tmp_path):
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.errors import InvalidArtifact
    from peftarena_cli.weights.full import check_full_finetune

    import torch
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(4, 2)}, str(tmp_path / "model.safetensors"))
    src = WeightSource(tmp_path / "model.safetensors")
    base_names = ["model.embed_tokens.weight", "lm_head.weight"]
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    check_full_finetune(base_names, src, "ft", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    with pytest.raises(InvalidArtifact, match=r"lacks 1 tensor\(s\) of the base: lm_head.weight"):
        check_full_finetune(base_names, src, "ft", tmp_path)


# ---- 3. integer dtypes in a weights header ----------------------------------------------------------

def test_adapter_relabelled_as_integers_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter

    ad = tmp_path / "a.safetensors"
    save_adapter(load_adapter(tiny_lora_dir), ad)
    names = _relabel(ad, lambda k: k.endswith("q_proj.lora_A.weight"), "I32")
    assert len(names) == 2  # one per layer
    before = ad.read_bytes()
    for args in (("spectrum", tiny_model_dir, ad), ("eval-target", tiny_model_dir, "--adapter", ad, "--limit", "1")):
        out = tmp_path / "out.parquet"
        r = cli(*args, "-o", out)
        assert r.returncode == 1, r.stderr
        assert "2 weight tensor(s) as integers or booleans" in r.stderr and "(I32)" in r.stderr, r.stderr
        assert not out.exists()
    r = cli("rewind", ad, "--alpha", "0.5", "-o", tmp_path / "rw")
    assert r.returncode == 1 and "integers or booleans" in r.stderr and not (tmp_path / "rw").exists()
    assert ad.read_bytes() == before


def test_full_finetune_weight_relabelled_as_integers_is_refused(tiny_model_dir, tmp_path, cli):
    ft = _full_finetune(tiny_model_dir, tmp_path / "ft")
    (name,) = _relabel(ft / "model.safetensors", lambda k: k == "model.layers.0.mlp.up_proj.weight", "I32")
    r = cli("spectrum", tiny_model_dir, ft, "-o", tmp_path / "s.parquet")
    assert r.returncode == 1 and f"{name} (I32)" in r.stderr, r.stderr
    assert not (tmp_path / "s.parquet").exists()


# ---- 4. rewind --curve provenance --------------------------------------------------------------------

def _curve(path: Path, finetuned: Path, base: Path | None = None, base_identity: str | None = None):
    import pandas as pd

    from peftarena_cli.artifacts.identity import path_identity
    from peftarena_cli.artifacts.tables import Provenance, write_table

    prov = Provenance(command="interpolate")
    if base is not None:
        prov.add_input("base", str(base), base_identity or path_identity(base))
    prov.add_input("finetuned", str(finetuned), path_identity(finetuned))
    write_table(pd.DataFrame({"alpha": [0.0, 0.5, 1.0], "path": ["native"] * 3, "target": [0.0, 40.0, 50.0],
                              "general": [50.0, 45.0, 30.0]}), path, prov)
    return path


def test_rewind_refuses_a_curve_without_provenance(tiny_lora_dir, tmp_path, cli):
    from peftarena_cli.artifacts.tables import read_table

    curve = _curve(tmp_path / "curve.parquet", tiny_lora_dir)
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "-o", tmp_path / "ok")
    assert r.returncode == 0, r.stderr  # the curve interpolate wrote (provenance intact) is accepted
    resaved = tmp_path / "resaved.parquet"
    read_table(curve)[0].to_parquet(resaved)  # pandas keeps the data, drops the provenance
    assert read_table(resaved)[1] == {}
    out = tmp_path / "out"
    r = cli("rewind", tiny_lora_dir, "--curve", resaved, "--pick", "max-target", "-o", out)
    assert r.returncode == 1 and "carries no provenance" in r.stderr, r.stderr
    assert "picked" not in r.stderr and not out.exists()


def test_rewind_refuses_a_curve_of_another_base(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    curve = _curve(tmp_path / "curve.parquet", tiny_lora_dir, base=tiny_model_dir, base_identity="0123456789abcdef")
    out = tmp_path / "out"
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 1 and "another base" in r.stderr, r.stderr
    assert not out.exists()
    good = _curve(tmp_path / "good.parquet", tiny_lora_dir, base=tiny_model_dir)
    r = cli("rewind", tiny_lora_dir, "--curve", good, "--pick", "max-target", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 0, r.stderr


# ---- 5. rewind --base with an adapter that does not fit it -----------------------------------------

def test_rewind_refuses_an_adapter_of_another_shape(tiny_model_dir, foreign_lora, tmp_path, cli):
    out = tmp_path / "out"
    r = cli("rewind", foreign_lora, "--alpha", "0.5", "--base", tiny_model_dir, "-o", out)
    assert r.returncode == 1, r.stderr
    assert "has shape" in r.stderr and "q_proj" in r.stderr, r.stderr
    assert not out.exists()
    r = cli("rewind", foreign_lora, "--alpha", "0.5", "-o", out)  # without --base there is nothing to check against
    assert r.returncode == 0, r.stderr


# ---- 6. a full fine-tune passed as --adapter ------------------------------------------------------

def test_eval_with_a_full_finetune_as_adapter_points_to_the_model_slot(tiny_model_dir, tmp_path, cli):
    ft = _full_finetune(tiny_model_dir, tmp_path / "ft")
    out = tmp_path / "e.parquet"
    r = cli("eval-target", tiny_model_dir, "--adapter", ft, "--limit", "1", "-o", out)
    assert r.returncode == 1 and "is a full model" in r.stderr, r.stderr
    assert f"peftarena eval-target {ft}" in r.stderr
    assert not out.exists()


# ---- 7. auto_map: weights-only readers accept, model builders refuse -------------------------------

def test_auto_map_folder_is_read_for_weights_but_never_built(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    base = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (base / "config.json").write_text(json.dumps(cfg))
    (base / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    r = cli("spectrum", base, tiny_lora_dir, "-o", tmp_path / "s.parquet")
    assert r.returncode == 0, r.stderr  # only safetensors are read: no foreign code can run
    r = cli("eval-target", base, "--adapter", tiny_lora_dir, "--limit", "1", "-o", tmp_path / "e.parquet")
    assert r.returncode == 1 and "auto_map" in r.stderr, r.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "e.parquet").exists()

"""`peftarena spectrum` end to end on tiny models: two bare files, tables, selection, cache, bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from helpers import make_adapter, save_tiny_llama
from peftarena_cli.artifacts.tables import read_table




@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTARENA_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def two_files(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    """The bare pair: base weights as one .st file, the adapter as one .st with its config embedded."""
    import shutil

    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter

    d = tmp_path_factory.mktemp("pair")
    shutil.copy(tiny_model_dir / "model.safetensors", d / "base.st")
    save_adapter(load_adapter(tiny_lora_dir), d / "adapter.st")
    return d / "base.st", d / "adapter.st"


def test_two_bare_files_piped_parquet(two_files, tmp_path):
    """Subprocess, stdout a pipe: Parquet bytes with the documented columns and provenance."""
    from helpers import run_cli as run

    base, adapter = two_files
    r = run("spectrum", base, adapter, env={"PEFTARENA_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr.decode()
    df, prov = read_table(io.BytesIO(r.stdout))
    assert list(df.columns) == ["module", "layer", "kind", "index", "sigma", "p_diag", "delta_p", "energy", "sva"]
    # tiny Llama: per layer q,o 64x64, k,v 32x64, gate,up 128x64, down 64x128 -> min dims 64+32+32+64+64+64+64
    assert len(df) == 2 * (64 * 5 + 32 * 2)
    assert df.module.nunique() == 14 and set(df.layer) == {0, 1}
    assert np.allclose(df.delta_p, (df.p_diag - df.sigma).abs(), atol=1e-6)
    assert df.sva.isna().all()  # LoRA is additive: no alignment by default
    assert prov["command"] == "spectrum" and set(prov["inputs"]) == {"base", "finetuned"}
    assert prov["extra"]["method"] == "lora"
    assert "modules/s" in r.stderr.decode() and "peak RSS" in r.stderr.decode()


def test_selection_summary_and_cache(cli, two_files, tmp_path):
    from peftarena_cli.spectral.spectrum import SUMMARY_COLUMNS

    base, adapter = two_files
    out, summ = tmp_path / "idx.parquet", tmp_path / "summ.parquet"
    code, err = cli("spectrum", base, adapter, "--modules", "down_proj,q_proj", "--layers", "1",
                    "-o", out, "--summary", summ)
    assert code == 0, err
    assert "0 hits, 2 misses" in err
    df, _ = read_table(out)
    s, prov = read_table(summ)
    assert list(s.columns) == SUMMARY_COLUMNS
    assert list(s.module) == ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    assert set(df.module) == set(s.module) and (s.method == "lora").all()
    assert ((s.effective_rank >= 1) & (s.effective_rank <= 4 + 1e-6)).all()  # rank-4 LoRA
    # the summary agrees with the per-index table it summarises
    for mod, g in df.groupby("module"):
        assert s.set_index("module").loc[mod, "sigma_1"] == pytest.approx(g.sigma.max())
    # the second run reads the base SVD from $PEFTARENA_HOME/cache/svd and gives the same numbers
    out2 = tmp_path / "idx2.parquet"
    code, err = cli("spectrum", base, adapter, "-m", "down_proj", "-m", "q_proj", "-l", "1", "-o", out2)
    assert code == 0 and "2 hits, 0 misses" in err, err
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(read_table(out2)[0], df)
    assert len(list((tmp_path / "home" / "cache" / "svd").glob("*.safetensors"))) == 2


def test_full_finetune_and_oft_alignment(cli, tiny_model_dir, tmp_path):
    """A full fine-tuned model directory as FINETUNED; --sva forces alignment for a non-OFT method."""
    import shutil

    from safetensors.torch import load_file, save_file

    ft = tmp_path / "full"
    shutil.copytree(tiny_model_dir, ft)
    sd = load_file(str(ft / "model.safetensors"))
    sd = {k: (v + 0.01 * torch.randn(v.shape) if v.ndim == 2 else v).contiguous() for k, v in sd.items()}
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "s.parquet"
    code, err = cli("spectrum", tiny_model_dir, ft, "--table", "summary", "--sva", "-o", out)
    assert code == 0, err
    s, _ = read_table(out)
    assert (s.method == "full").all() and len(s) == 14
    assert s.sva_mean.between(0, 1).all()
    assert (s.effective_rank > 4).all()  # a dense random update is far from low rank


def _bad(cli, tmp_path, *args, code=1):
    out = tmp_path / "never.parquet"
    got, err = cli("spectrum", *args, "-o", out)
    assert got == code, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    return err


def test_bad_inputs(cli, tiny_model_dir, tiny_lora_dir, two_files, tmp_path):
    from peft import LoHaConfig, LoraConfig

    # shape mismatch: an adapter trained on a wider model
    wide = save_tiny_llama(tmp_path / "wide", hidden=96)
    wide_ad = make_adapter(wide, LoraConfig(r=2, target_modules=["q_proj"]), tmp_path / "wide_ad")
    err = _bad(cli, tmp_path, tiny_model_dir, wide_ad)
    assert "model.layers.0.self_attn.q_proj" in err and "shape" in err
    # target module missing: a one-layer base under a two-layer adapter
    short = save_tiny_llama(tmp_path / "short", layers=1)
    err = _bad(cli, tmp_path, short, tiny_lora_dir)
    assert "model.layers.1." in err and "missing" in err
    # unsupported PEFT type
    loha = make_adapter(tiny_model_dir, LoHaConfig(r=2, target_modules=["q_proj"]), tmp_path / "loha")
    err = _bad(cli, tmp_path, tiny_model_dir, loha)
    assert "LOHA" in err and "unsupported" in err
    # NaN in one factor
    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter

    ad = load_adapter(tiny_lora_dir)
    key = next(k for k in ad.tensors if "layers.1.mlp.up_proj.lora_B" in k)
    ad.tensors[key] = ad.tensors[key].clone()
    ad.tensors[key][0, 0] = float("nan")
    save_adapter(ad, tmp_path / "nan.st")
    err = _bad(cli, tmp_path, tiny_model_dir, tmp_path / "nan.st")
    assert "model.layers.1.mlp.up_proj" in err and "NaN" in err
    # an empty selection: exit 1 (as for any input that does not fit), and the hint lists what there is
    err = _bad(cli, tmp_path, *two_files, "--layers", "7", code=1)
    assert "selection is empty" in err
    # a base that is not a model / a missing file
    _bad(cli, tmp_path, tmp_path / "nope.st", tiny_lora_dir)


def test_modules_take_the_one_selection_syntax(cli, two_files, tmp_path):
    """spectrum's -m takes globs and full names like csd/act-geom's (docs/design.md), and a pattern
    that matches nothing fails even when another pattern matches."""
    base, adapter = two_files
    out = tmp_path / "s.parquet"
    code, err = cli("spectrum", base, adapter, "-m", "model.layers.0.mlp.down_proj,*.layers.1.self_attn.q_proj",
                    "--table", "summary", "-o", out)
    assert code == 0, err
    s, _ = read_table(out)
    assert list(s.module) == ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    err = _bad(cli, tmp_path, base, adapter, "-m", "down_proj,qq_proj")
    assert "'qq_proj' matches no linear module" in err

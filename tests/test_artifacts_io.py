"""The artifact I/O core on tiny random Llama models: references, lazy tensors, adapters, tables."""

import json
import struct

import pytest
import torch

from peftarena_cli.artifacts.adapters import (
    Adapter, is_adapter_path, load_adapter, peft_dir_for, save_adapter,
)
from peftarena_cli.artifacts.atomic import atomic_path
from peftarena_cli.artifacts.tables import Provenance, read_table, require_columns, table_bytes, write_table
from peftarena_cli.artifacts.safetensors_io import WeightSource, linear_weight_names, resolve_model
from peftarena_cli.errors import (
    AdapterError, InputNotFound, InvalidArtifact, ModelNotAvailable, OutputError,
)


def _state(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).state_dict()


def test_resolve_dir_and_lazy_tensors_match_transformers(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "dir" and ref.weight_files == [tiny_model_dir / "model.safetensors"]
    src = WeightSource.from_ref(ref)
    sd = _state(tiny_model_dir)
    names = linear_weight_names(src)
    assert len(names) == 2 * 7  # 2 layers x (q,k,v,o,gate,up,down)
    for n in names:
        assert torch.equal(src.get(n), sd[n])
        assert src.shape(n) == tuple(sd[n].shape)


def test_resolve_sharded_dir(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    m.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ref = resolve_model(str(tmp_path / "sharded"))
    assert len(ref.weight_files) > 1
    src = WeightSource.from_ref(ref)
    one = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    assert sorted(src.keys()) == sorted(one.keys())
    for k in one.keys():
        assert torch.equal(src.get(k), one.get(k))


def test_resolve_single_file(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir / "model.safetensors"))
    assert ref.kind == "file" and ref.is_single_file


def test_missing_path(tmp_path):
    with pytest.raises(InputNotFound):
        resolve_model(str(tmp_path / "nope.safetensors"))


def test_directory_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArtifact, match="no safetensors weights"):
        resolve_model(str(tmp_path / "empty"))


def test_truncated_safetensors(tiny_model_dir, tmp_path):
    data = (tiny_model_dir / "model.safetensors").read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArtifact, match="truncated"):
        resolve_model(str(bad))


def test_corrupt_header(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 10)
    with pytest.raises(InvalidArtifact, match="not a safetensors file"):
        resolve_model(str(bad))


def test_not_safetensors(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_text("hello, I am text")
    with pytest.raises(InvalidArtifact):
        resolve_model(str(f))
    g = tmp_path / "notes.txt"
    g.write_text("x")
    with pytest.raises(InvalidArtifact, match="not a safetensors"):
        resolve_model(str(g))


def test_unknown_alias():
    with pytest.raises(ModelNotAvailable, match="unknown model alias"):
        resolve_model("smollm9-1b")


def test_hub_id_offline_gives_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="could not fetch"):
        resolve_model("nobody-here/definitely-not-a-model")


def test_adapter_dir_roundtrip_single_file(tiny_lora_dir, tmp_path):
    ad = load_adapter(str(tiny_lora_dir))
    assert ad.peft_type == "LORA" and ad.tensors
    out = tmp_path / "adapter.st"
    save_adapter(ad, out)
    assert is_adapter_path(out)
    # the single file stands alone: no adapter_config.json beside it
    assert not (tmp_path / "adapter_config.json").exists()
    back = load_adapter(str(out))
    assert back.config["peft_type"] == "LORA" and back.config["r"] == ad.config["r"]
    assert set(back.tensors) == set(ad.tensors)
    for k in ad.tensors:
        assert torch.equal(back.tensors[k], ad.tensors[k])


def test_single_file_adapter_gives_peft_logits(tiny_model_dir, tiny_lora_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 20, 30, 40, 50]])
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(tiny_lora_dir))
    want = ref_model(ids).logits
    st = tmp_path / "a.safetensors"
    save_adapter(load_adapter(str(tiny_lora_dir)), st)
    d, keep = peft_dir_for(load_adapter(str(st)))
    got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(d))(ids).logits
    keep.cleanup()
    assert torch.allclose(got, want, atol=1e-6)


def test_adapter_without_config(tiny_lora_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(tiny_lora_dir / "adapter_model.safetensors")), str(bare))
    with pytest.raises(AdapterError, match="no PEFT config"):
        load_adapter(str(bare))
    d = tmp_path / "dir"
    d.mkdir()
    save_file(load_file(str(tiny_lora_dir / "adapter_model.safetensors")), str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="no PEFT config"):
        load_adapter(str(d))


def test_model_passed_as_adapter_and_adapter_as_model(tiny_model_dir, tiny_lora_dir):
    with pytest.raises(InvalidArtifact, match="PEFT adapter, not a model"):
        resolve_model(str(tiny_lora_dir))
    assert not is_adapter_path(tiny_model_dir / "model.safetensors")


def test_save_adapter_refuses_existing_and_missing_dir(tiny_lora_dir, tmp_path):
    ad = load_adapter(str(tiny_lora_dir))
    with pytest.raises(OutputError, match="does not exist"):
        save_adapter(ad, tmp_path / "missing" / "a.st")
    save_adapter(ad, tmp_path / "a.st")
    with pytest.raises(OutputError, match="already exists"):
        save_adapter(ad, tmp_path / "a.st")


def test_table_provenance_roundtrip(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"module": ["a", "b"], "value": [1.5, 2.5]})
    prov = Provenance(command="spectrum", argv=["peftarena", "spectrum"], seed=3, dtype="float32", device="cpu")
    prov.add_input("base", "tiny", "abc123")
    write_table(df, tmp_path / "t.parquet", prov)
    back, meta = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, df)
    assert meta["command"] == "spectrum" and meta["seed"] == 3 and meta["inputs"]["base"] == "tiny@abc123"
    assert meta["version"]
    assert table_bytes(df, prov)[:4] == b"PAR1"
    with pytest.raises(InvalidArtifact, match="lacks column"):
        require_columns(back, ["module", "sigma"], "spectrum table")


def test_arrow_table_equals_pandas_route_and_imports_no_pandas(tmp_path):
    """arrow_table's Parquet reads back as the DataFrame it stands for, with pandas' own column
    types (large_string, int32, float64), and building and writing it never imports pandas."""
    import subprocess
    import sys

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from peftarena_cli.artifacts.tables import arrow_table

    cols = {"module": np.array(["a.q_proj", "b", "ünï", ""], dtype=object), "layer": np.array([0, 1, 2, 3], dtype=np.int32),
            "x": np.array([1.5, np.nan, -0.0, 1e300]), "n": np.arange(4, dtype=np.int64), "form": ["", "r", "s", "t"]}
    t = arrow_table(cols)
    assert t.schema.field("module").type == pa.large_string() and t.schema.field("layer").type == pa.int32()
    df = pd.DataFrame({k: list(v) if k in ("module", "form") else v for k, v in cols.items()})
    write_table(t, tmp_path / "a.parquet", Provenance(command="t"))
    write_table(df, tmp_path / "b.parquet", Provenance(command="t"))
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.parquet")[0], read_table(tmp_path / "b.parquet")[0])
    write_table(t, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text().splitlines()[1] == "a.q_proj,0,1.5,0,"
    with pytest.raises(TypeError, match="dtype bool"):
        arrow_table({"flag": np.array([True])})

    code = ("import sys, numpy as np; from peftarena_cli.artifacts.tables import arrow_table, table_bytes; "
            "b = table_bytes(arrow_table({'m': ['x'], 'v': np.ones(1)})); print(b[:4], 'pandas' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "b'PAR1' False", r.stderr


def test_read_table_errors(tmp_path):
    with pytest.raises(InputNotFound):
        read_table(tmp_path / "none.parquet")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InvalidArtifact):
        read_table(tmp_path / "x.parquet")


def test_output_in_missing_directory(tmp_path):
    import pandas as pd

    with pytest.raises(OutputError, match="does not exist"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "nope" / "t.parquet")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old finished artifact")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old finished artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_file_identity_changes_with_content(tiny_model_dir, tmp_path):
    from peftarena_cli.artifacts.identity import path_identity

    a = path_identity(tiny_model_dir / "model.safetensors")
    assert a == path_identity(tiny_model_dir / "model.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    assert path_identity(tmp_path / "other.safetensors") != a
    json.dumps({"id": a})


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    import stat

    import pandas as pd

    write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "t.parquet").stat().st_mode) == 0o666 & ~mask


def test_weight_source_reads_every_dtype_like_safetensors(tmp_path):
    """The pread reader gives the same tensors as safetensors' own loader, dtype by dtype."""
    import torch
    from safetensors.torch import load_file, save_file

    from peftarena_cli.artifacts.safetensors_io import WeightSource

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    tensors = {
        "f64": x.double(), "f32": x, "f16": x.half(), "bf16": x.bfloat16(), "i64": (x * 100).long(),
        "i32": (x * 100).int(), "i8": (x * 10).to(torch.int8), "u8": (x.abs() * 10).to(torch.uint8),
        "bool": x > 0, "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "3d": torch.randn(2, 3, 4, generator=g),
    }
    p = tmp_path / "w.safetensors"
    save_file(tensors, str(p), metadata={"format": "pt"})
    want = load_file(str(p))
    src = WeightSource(p)
    assert sorted(src.keys()) == sorted(tensors)
    for k, t in want.items():
        got = src.get(k)
        assert got.dtype == t.dtype and got.shape == t.shape, k
        assert torch.equal(got, t), k
    # the tensor owns its memory: writing to it leaves the next read alone
    src.get("f32").zero_()
    assert torch.equal(src.get("f32"), x)


def test_one_module_selection_syntax():
    """-m means the same in every command: kinds, full names and globs mix (their union), --layers
    restricts, and a pattern matching nothing or an empty selection is an error naming what exists."""
    from peftarena_cli.artifacts.keys import canonical_order, module_kind, module_layer, select_modules
    from peftarena_cli.errors import IncompatibleInputs

    names = [f"model.layers.{i}.{k}" for i in range(3) for k in ("mlp.down_proj", "self_attn.q_proj", "mlp.up_proj")]
    assert select_modules(names, None) == names
    assert select_modules(names, ["down_proj"]) == [n for n in names if n.endswith("down_proj")]
    mixed = select_modules(names, ["model.layers.0.self_attn.q_proj,*.layers.2.mlp.*", "up_proj"])
    assert mixed == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj",
                     "model.layers.2.mlp.down_proj", "model.layers.2.mlp.up_proj"]
    assert select_modules(names, ["*_proj"], layers=[1]) == [n for n in names if ".1." in n]
    with pytest.raises(IncompatibleInputs, match="'qq_proj' matches no linear module") as e:
        select_modules(names, ["down_proj", "qq_proj"])
    assert "down_proj, q_proj, up_proj" in e.value.hint
    with pytest.raises(IncompatibleInputs, match="selection is empty"):
        select_modules(names, ["down_proj"], layers=[7])
    assert canonical_order(reversed(names))[:3] == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
                                                   "model.layers.0.mlp.down_proj"]
    assert (module_layer("model.layers.12.mlp.down_proj.weight"), module_kind("model.layers.12.mlp.down_proj.weight")) == (12, "down_proj")
    assert module_layer("lm_head") == -1 and module_layer("layers.4.self_attn.o_proj") == 4

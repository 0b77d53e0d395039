"""Evaluation with the adapter merged (the default of eval-target / eval-general): PEFT's merge into
the loaded weights, restored bit for bit afterwards, with the same outputs as PEFT's unmerged forward."""

from __future__ import annotations

import pytest
import torch

from helpers import make_adapter
from references import METHOD_CASES

from peftarena_cli.artifacts.loading import attach_adapter, load_model, applied_adapter
from peftarena_cli.artifacts.tables import read_table

CASES = ["lora", "dora", "vera", "oft_exact", "miss", "boft"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return {c: make_adapter(tiny_model_dir, METHOD_CASES[c][0](), root / c, scale=0.3) for c in CASES}


@pytest.mark.parametrize("case", CASES)
def test_merged_logits_match_peft_and_weights_are_restored(case, adapters, tiny_model_dir):
    model, tok, _ = load_model(str(tiny_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tok(["What is 12 + 7?", "Hello there"], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = model(**ids).logits
    # PEFT's own unmerged forward, on a separately loaded base
    other, _, _ = load_model(str(tiny_model_dir))
    with torch.no_grad():
        ref = attach_adapter(other, adapters[case])(**ids).logits
    with applied_adapter(model, adapters[case]) as m:
        assert m.__class__.__name__ != "PeftModel"  # really merged: a plain model
        with torch.no_grad():
            got = m(**ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert (got - base_logits).abs().max() > 1e-3  # the adapter did something
    after = model.state_dict()
    assert set(after) == set(before)  # PEFT's layers are gone again
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # bit for bit
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, base_logits)


def test_unmergeable_adapter_falls_back_to_peft_forward(adapters, tiny_model_dir, monkeypatch):
    from peft import PeftModel

    def refuse(self, *a, **k):
        raise NotImplementedError("no merge")

    monkeypatch.setattr(PeftModel, "merge_and_unload", refuse, raising=False)
    model, tok, _ = load_model(str(tiny_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tok(["What is 12 + 7?"], return_tensors="pt")
    other, _, _ = load_model(str(tiny_model_dir))
    with torch.no_grad():
        ref = attach_adapter(other, adapters["lora"])(**ids).logits
    ctx = applied_adapter(model, adapters["lora"])
    with ctx as m:
        assert not ctx.merged
        with torch.no_grad():
            torch.testing.assert_close(m(**ids).logits, ref)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_eval_merge_and_no_merge_give_the_same_rows(cli, adapters, tiny_model_dir, tmp_path):
    """Several adapters on one loaded base, merged and restored in turn, give PEFT's unmerged rows."""
    ads = [str(adapters[c]) for c in ("lora", "oft_exact", "dora")]
    outs = {}
    for flag in ("--merge", "--no-merge"):
        out = tmp_path / f"{flag[2:]}.parquet"
        args = ["eval-target", str(tiny_model_dir), "--include-base", "--limit", "4", "--max-new-tokens", "10", flag, "-o", str(out)]
        for a in ads:
            args += ["--adapter", a]
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        outs[flag], _ = read_table(out)
    a, b = outs["--merge"], outs["--no-merge"]
    assert len(a) == 16
    pd_cols = ["model", "id", "completion", "correct"]
    assert a[pd_cols].equals(b[pd_cols])
    # the base evaluated first, then the adapters applied and removed in turn (that each one is really
    # applied is the logits test above; the tiny model's greedy text moves only for some)
    by = a.pivot(index="id", columns="model", values="completion")
    assert any((by[ad] != by["base"]).any() for ad in ads)

"""Real smollm2-135m (slow): act-geom and csd on layer 0 with a perturbed LoRA, 4 prompts,
against dense computations on stored activations (covers the d = 1536 fast paths)."""

import pytest
import torch

from helpers import make_adapter
from references import dense_reference
from peftarena_cli.artifacts.tables import read_table

pytestmark = pytest.mark.slow
PROMPTS = ["Ava has 12 apples and gives 5 away. How many are left?", "Name three primary colours.",
           "Write a haiku about rain.", "What is the capital of Japan?"]


def test_real_model_layer0(cli, tmp_path, smollm2_dir):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "up_proj", "down_proj"], layers_to_transform=[0])
    ad = make_adapter(smollm2_dir, cfg, tmp_path / "lora", scale=0.02)
    pf = tmp_path / "p.txt"
    pf.write_text("\n".join(PROMPTS))
    out = tmp_path / "g.parquet"
    code, err = cli("act-geom", smollm2_dir, ad, "-p", pf, "-m", "model.layers.0.mlp.up_proj", "-o", out, "-b", "4")
    assert code == 0, err
    df, _ = read_table(out)
    assert list(df.kind) == ["up_proj"]
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(smollm2_dir)), str(ad)).eval()
    mod = dict(pm.named_modules())["base_model.model.model.layers.0.mlp.up_proj"]
    X = []
    with torch.no_grad():
        for on in (False, True):
            rows = []
            h = mod.register_forward_hook(lambda m, i, o: rows.append(o[0].double()))
            for p in PROMPTS:
                ids = torch.tensor([tok(p)["input_ids"]])
                if on:
                    pm(input_ids=ids)
                else:
                    with pm.disable_adapter():
                        pm(input_ids=ids)
            h.remove()
            X.append(torch.cat(rows))
    want = dense_reference(X[0], X[1], ks=(32,))
    row = df[df.kind == "up_proj"].iloc[0]
    assert row.n_tokens == X[0].shape[0] and X[0].shape[1] == 1536
    for k, v in want.items():
        assert row[k] == pytest.approx(v, rel=5e-4, abs=1e-6), k
    # csd of layer-0 q_proj: its input (input_layernorm of the embeddings) does not depend on the
    # adapter, so compute E‖ΔW h‖² directly with PEFT's own delta weight
    out2 = tmp_path / "c.parquet"
    code, err = cli("csd", smollm2_dir, ad, "--general", pf, "-m", "model.layers.0.self_attn.q_proj", "-o", out2)
    assert code == 0, err
    c, _ = read_table(out2)
    assert list(c.kind) == ["q_proj"]
    inner = pm.get_base_model().model
    q = dict(pm.named_modules())["base_model.model.model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        dW = q.get_delta_weight("default").double()
        H = torch.cat([inner.layers[0].input_layernorm(inner.embed_tokens(torch.tensor([tok(p)["input_ids"]])))[0]
                       for p in PROMPTS]).double()
    assert c.csd_abs_general.iloc[0] == pytest.approx(float((H @ dW.T).pow(2).sum(1).mean()), rel=1e-5)

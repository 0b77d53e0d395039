"""`--backend vllm` against a stand-in `vllm` module (vLLM needs CUDA; the real one is not installed
here). Checks the glue: one engine per base with LoRA enabled, the same prompt tokens as the HF
engine, one LoRA request per adapter on that engine, the sampling settings, the completions landing
in the per-sample table, and the refusals (non-LoRA adapters)."""

import sys
import types

import pytest
from peft import OFTConfig

from helpers import make_adapter
from peftarena_cli.artifacts.tables import read_table


class FakeLLM:
    instances: list = []

    def __init__(self, **kw):
        self.kw = kw
        self.calls = []
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params, lora_request))
        outs = []
        for i, p in enumerate(prompts):
            ids = p["prompt_token_ids"]
            tag = lora_request.lora_name if lora_request else "base"
            text = f"{tag} {len(ids)} The answer is 3.\n\nQuestion: more"  # "\n\nQuestion:" only cut when a stop
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=list(range(5)))
                                                       for _ in range(params.n)]))
        return outs


class FakeParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeParams
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = FakeLoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", req)
    return FakeLLM


def test_one_engine_for_base_and_adapters(fake_vllm, cli, tmp_path, tiny_model_dir, tiny_lora_dir):
    from transformers import AutoTokenizer

    from peftarena_cli.evaluation.engine import encode_prompts

    out = tmp_path / "t.parquet"
    code, err = cli("eval-target", tiny_model_dir, "--backend", "vllm", "--include-base", "--adapter", tiny_lora_dir,
                    "--limit", "3", "-o", out)
    assert code == 0, err
    assert len(fake_vllm.instances) == 1  # the base is loaded once
    llm = fake_vllm.instances[0]
    assert llm.kw["model"] == str(tiny_model_dir) and llm.kw["enable_lora"] is True
    assert llm.kw["trust_remote_code"] is False
    assert len(llm.calls) == 2
    (p0, params, r0), (p1, _, r1) = llm.calls
    assert r0 is None and r1.lora_path == str(tiny_lora_dir)
    assert params.n == 1 and params.temperature == 0.0 and params.max_tokens > 0
    df, _ = read_table(out)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base_rows = df[df.model == "base"]
    # the engine got the HF engine's tokens for the rendered prompts
    assert [p["prompt_token_ids"] for p in p0] == encode_prompts(tok, base_rows.prompt.tolist())
    # completions as the engine returned them, scored by the shared scorers
    assert all(c.startswith("base ") for c in base_rows.completion)
    assert (df[df.model != "base"].completion.str.startswith("a1 ")).all()
    assert set(df.extracted) == {"3"}


def test_sampling_settings_and_samples(fake_vllm, cli, tmp_path, tiny_model_dir):
    out = tmp_path / "t.parquet"
    code, err = cli("eval-target", tiny_model_dir, "--backend", "vllm", "-n", "4", "--temperature", "0.7",
                    "--k", "1,4", "--limit", "2", "--seed", "5", "-o", out)
    assert code == 0, err
    _, params, _ = fake_vllm.instances[0].calls[0]
    assert (params.n, params.temperature, params.seed) == (4, 0.7, 5)
    df, _ = read_table(out)
    assert len(df) == 2 * 4 and sorted(df["sample"].unique()) == [0, 1, 2, 3]


def test_non_lora_adapter_is_refused(fake_vllm, cli, tmp_path, tiny_model_dir):
    oft = make_adapter(tiny_model_dir, OFTConfig(oft_block_size=8, target_modules=["q_proj"]), tmp_path / "oft")
    out = tmp_path / "t.parquet"
    code, err = cli("eval-target", tiny_model_dir, "--backend", "vllm", "--adapter", oft, "--limit", "2", "-o", out)
    assert code == 1 and "LoRA adapters only" in err and "--backend hf" in err
    assert not out.exists()


def test_stop_sequences_cut_the_completion(fake_vllm, tiny_model_dir):
    from transformers import AutoTokenizer

    from peftarena_cli.evaluation.engine import generate
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    m = VllmModel(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    g = generate(m, tok, ["one", "two three"], stop=("\n\nQuestion:",), max_new_tokens=7, n_samples=3)
    _, params, _ = fake_vllm.instances[0].calls[0]
    assert params.stop == ["\n\nQuestion:"] and params.max_tokens == 7 and params.n == 1
    assert [len(t) for t in g.texts] == [3, 3]  # greedy: one decode, repeated per sample
    assert all(t.endswith("The answer is 3.") for ts in g.texts for t in ts)
    assert g.generated_tokens == 10 and g.extra["backend"] == "vllm"


def test_eval_general_through_vllm(fake_vllm, cli, tmp_path, tiny_model_dir):
    out = tmp_path / "g.parquet"
    code, err = cli("eval-general", tiny_model_dir, "--backend", "vllm", "--limit", "2", "-o", out)
    assert code == 0, err
    assert len(fake_vllm.instances) == 1
    df, _ = read_table(out)
    assert set(df.task) == {"ifeval_builtin", "bbh_builtin", "facts"} and len(df) == 6
    assert df.completion.str.startswith("base ").all()

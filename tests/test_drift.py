"""Output drift (mean per-token KL(base ‖ tuned) on the base's greedy continuations) against a direct
dense computation on the tiny model, and exactly 0 for the base and at α = 0."""

import math

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_lora_dir):
    from peftarena_cli.interpolation.sweep import open_path_model

    return open_path_model(str(tiny_model_dir), str(tiny_lora_dir), device="cpu")


@pytest.fixture(scope="module")
def tasks():
    from peftarena_cli.evaluation.api import load_general_tasks, load_target_tasks

    return {"target": load_target_tasks("arith", limit=3), "general": load_general_tasks("builtin.facts", limit=3)}


def _dense_drift(model_dir, adapter_dir, tok, text_ids, max_new, eos):
    """One prompt, no batching, no KV cache: the base's greedy continuation by full forward passes,
    then KL(base ‖ merged fine-tune) position by position in float64."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                                      str(adapter_dir)).merge_and_unload().eval()
    seq = list(text_ids)
    cont = []
    with torch.no_grad():
        for _ in range(max_new):
            t = int(base(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(t)
            cont.append(t)
            if t in eos:
                break
        lb = torch.log_softmax(base(torch.tensor([seq])).logits[0].double(), -1)
        lt = torch.log_softmax(tuned(torch.tensor([seq])).logits[0].double(), -1)
    kls = []
    for j in range(len(cont)):
        pos = len(text_ids) - 1 + j
        kls.append(float((lb[pos].exp() * (lb[pos] - lt[pos])).sum()))
    return sum(kls) / len(kls), len(cont)


def test_drift_equals_a_direct_dense_computation(setup, tasks, tiny_model_dir, tiny_lora_dir):
    from peftarena_cli.evaluation.drift import measure_drift
    from peftarena_cli.evaluation.engine import encode_prompts, eos_ids

    df = measure_drift(setup.path_model, setup.tokenizer, tasks, [0.0, 1.0], max_new_tokens=6, batch_size=4)
    assert set(df["source"]) == {"greedy", "reference"}
    # exactly 0 at α = 0 (the base against itself), every prompt and source
    assert (df[df["alpha"] == 0.0]["kl"] == 0.0).all()
    g = df[(df["alpha"] == 1.0) & (df["source"] == "greedy")]
    assert (g["kl"] > 0).all()
    eos = eos_ids(setup.path_model.model, setup.tokenizer)
    for t in tasks["target"] + tasks["general"]:
        for it in t.items[:2]:
            ids = encode_prompts(setup.tokenizer, [t.render(setup.tokenizer, it)])[0]
            want, n = _dense_drift(tiny_model_dir, tiny_lora_dir, setup.tokenizer, ids, 6, eos)
            row = g[(g["task"] == t.name) & (g["id"] == it.id)].iloc[0]
            assert row["n_tokens"] == n
            assert row["kl"] == pytest.approx(want, rel=1e-3, abs=1e-7)


def test_drift_of_the_base_itself_is_zero(tiny_model_dir, tasks):
    from peftarena_cli.evaluation.drift import measure_drift
    from peftarena_cli.artifacts.loading import load_model

    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")

    class Same:  # the base as its own "fine-tune": set_alpha changes nothing
        def __init__(self, m):
            self.model = m

        def set_alpha(self, a):
            pass

    df = measure_drift(Same(model), tok, {"target": tasks["target"]}, [1.0], max_new_tokens=4)
    assert len(df) and (df["kl"] == 0.0).all()


def test_drift_summary_interval(setup, tasks):
    from peftarena_cli import stats
    from peftarena_cli.evaluation.drift import drift_summary, measure_drift

    df = measure_drift(setup.path_model, setup.tokenizer, {"target": tasks["target"]}, [0.5], max_new_tokens=4,
                       reference=False)
    s = drift_summary(df).iloc[0]
    iv = stats.mean_normal(df["kl"], bounds=(0, math.inf))
    assert s["kl"] == pytest.approx(df["kl"].mean()) and s["ci_high"] == pytest.approx(iv.high)


def test_chunked_batches_give_the_same_rows_with_fewer_alpha_switches(setup, tasks):
    """Batches in chunks (α set once per chunk) give exactly the rows of one batch at a time."""
    from peftarena_cli.evaluation.drift import measure_drift

    calls = []

    class Counting:
        def __init__(self, pm):
            self.pm, self.model = pm, pm.model

        def set_alpha(self, a):
            calls.append(a)
            self.pm.set_alpha(a)

    one = measure_drift(Counting(setup.path_model), setup.tokenizer, tasks, [0.5, 1.0], max_new_tokens=5, batch_size=2,
                        chunk_bytes=1)
    n_one = len(calls)
    calls.clear()
    all_ = measure_drift(Counting(setup.path_model), setup.tokenizer, tasks, [0.5, 1.0], max_new_tokens=5, batch_size=2)
    assert n_one == 3 * 3 and len(calls) == 3  # 6 prompts in 3 batches: (0, 0.5, 1) per batch, or once
    assert one.equals(all_)


def test_merged_path_model_gives_the_same_drift(setup, tasks, tiny_model_dir, tiny_lora_dir):
    """The CLI opens the path with merge=True (each α merged into the weights, for speed): the same
    drift as PEFT's unmerged forward, and still exactly 0 at α = 0."""
    from peftarena_cli.evaluation.drift import measure_drift
    from peftarena_cli.interpolation.sweep import open_path_model

    merged = open_path_model(str(tiny_model_dir), str(tiny_lora_dir), device="cpu", merge=True)
    a = measure_drift(merged.path_model, merged.tokenizer, tasks, [0.0, 1.0], max_new_tokens=5, batch_size=2)
    b = measure_drift(setup.path_model, setup.tokenizer, tasks, [0.0, 1.0], max_new_tokens=5, batch_size=2)
    assert (a[a["alpha"] == 0.0]["kl"] == 0.0).all()
    assert a[["alpha", "prompt_set", "task", "id", "source", "n_tokens"]].equals(b[["alpha", "prompt_set", "task", "id", "source", "n_tokens"]])
    assert a["kl"].to_numpy() == pytest.approx(b["kl"].to_numpy(), rel=1e-4, abs=1e-7)

"""act-geom on a tiny model: batched, hooked, streamed collection vs unbatched dense computation
with PEFT's merged model as an independent source of the fine-tuned activations."""

import pytest
import torch

from peftarena_cli.activations.capture import linear_module_names, tokenize
from peftarena_cli.artifacts.keys import select_modules
from peftarena_cli.activations.collect import collect_pair_sums
from peftarena_cli.activations.metrics import geometry_from_sums, gram_distortion_dense

from float_bounds import act_geom_bounds
from references import PROMPTS, dense_reference, direct_outputs


@pytest.fixture(scope="module")
def models64(tiny_model_dir, tiny_lora_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64).eval()
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64),
                                   str(tiny_lora_dir)).eval()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64),
                                       str(tiny_lora_dir)).merge_and_unload().eval()
    return tok, plain, pm, merged


def test_streamed_metrics_match_unbatched_dense_on_tiny_model(models64):
    tok, plain, pm, merged = models64
    names = linear_module_names(plain)
    assert len(names) == 14
    sums, sample = collect_pair_sums(pm, tok, PROMPTS, names, batch_size=4, gram_sample=10_000)
    X0 = direct_outputs(plain, tok, PROMPTS, names)
    X1 = direct_outputs(merged, tok, PROMPTS, names)
    n = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    for name in names:
        got = geometry_from_sums(sums[name])
        want = dense_reference(X0[name], X1[name], ks=(32,))
        assert got["n_tokens"] == n
        for k, v in want.items():
            if k == "pca_dist_32" and X0[name].shape[1] <= 32:
                assert got[k] != got[k]  # NaN: the top-32 projector of a 32-dim output is trivial
                continue
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (name, k)
        # with a sample larger than the token count, the sampled Gram is the exact one
        s0, s1 = sample.matrices(name)
        assert s0.shape[0] == n
        assert gram_distortion_dense(s0, s1) == pytest.approx(got["gram_distortion"], rel=1e-6)


def test_truncation_is_counted_and_batching_does_not_matter(models64):
    tok, plain, pm, merged = models64
    names = select_modules(linear_module_names(plain), ["down_proj"])
    t = tokenize(tok, PROMPTS, max_length=8)
    assert t.n_truncated == sum(len(tok(p)["input_ids"]) > 8 for p in PROMPTS) > 0
    a, _ = collect_pair_sums(pm, tok, PROMPTS, names, batch_size=1, max_length=8)
    b, _ = collect_pair_sums(pm, tok, PROMPTS, names, batch_size=6, max_length=8)
    X0 = direct_outputs(plain, tok, PROMPTS, names, max_length=8)
    for name in names:
        ga, gb = geometry_from_sums(a[name]), geometry_from_sums(b[name])
        assert ga["n_tokens"] == t.n_tokens == X0[name].shape[0]
        # the same tokens' outputs summed in other batches: equal up to each metric's float64
        # summation bound (float_bounds.act_geom_bounds), not a fixed relative tolerance
        bound = act_geom_bounds(b[name])
        for k in ga:
            if isinstance(ga[k], str) or ga[k] != ga[k]:  # pca_reason_k; NaN in both
                assert gb[k] == ga[k] or (gb[k] != gb[k] and ga[k] != ga[k]), k
            else:
                assert abs(gb[k] - ga[k]) <= bound[k], (name, k, ga[k], gb[k], bound[k])


def test_sampled_gram_subset_is_the_dense_gram_of_those_tokens(models64):
    tok, plain, pm, merged = models64
    names = ["model.layers.1.mlp.down_proj"]
    sums, sample = collect_pair_sums(pm, tok, PROMPTS, names, batch_size=3, gram_sample=20, seed=3)
    X0 = direct_outputs(plain, tok, PROMPTS, names)[names[0]]
    X1 = direct_outputs(merged, tok, PROMPTS, names)[names[0]]
    idx = sample.indices
    s0, s1 = sample.matrices(names[0])
    assert s0.shape == (20, 64)
    assert torch.allclose(s0, X0[idx], atol=1e-10)
    assert gram_distortion_dense(s0, s1) == pytest.approx(gram_distortion_dense(X0[idx], X1[idx]), rel=1e-6)

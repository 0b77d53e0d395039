"""The batched generation engine against transformers' own batch-1 ``generate`` (the independent
reference), its determinism across batch sizes, stop sequences, EOS, sampling, and PEFT models."""

from __future__ import annotations

import pytest
import torch

from peftarena_cli.evaluation.engine import generate

PROMPTS = ["hello world " * k for k in range(1, 6)] + ["abc", "What is 2+2?", "x"]




@pytest.fixture(scope="module")
def varied_model():
    """A tiny random Llama with larger weights, so greedy completions vary from token to token."""
    from helpers import make_tiny_llama

    model, tok = make_tiny_llama(seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model, tok


def _hf_generate(model, tok, prompt, max_new_tokens, eos=None):
    ids = tok(prompt, return_tensors="pt")
    kw = {"eos_token_id": eos} if eos is not None else {}
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_matches_batch1_generate_and_is_batch_size_invariant(varied_model):
    model, tok = varied_model
    ref = [_hf_generate(model, tok, p, 16) for p in PROMPTS]
    for bs in (1, 3, 64):
        g = generate(model, tok, PROMPTS, max_new_tokens=16, batch_size=bs)
        assert [t[0] for t in g.texts] == ref, bs
        assert g.generated_tokens == 16 * len(PROMPTS)


def test_stop_sequences_cut_rows_at_different_steps(varied_model):
    model, tok = varied_model
    full = [_hf_generate(model, tok, p, 20) for p in PROMPTS]
    stop = "l"  # a frequent character: rows stop at different steps and leave the batch early
    want = [f.split(stop)[0] for f in full]
    assert len({len(w) for w in want}) > 2  # really different stopping points
    for bs in (1, 8):
        g = generate(model, tok, PROMPTS, max_new_tokens=20, stop=(stop,), batch_size=bs)
        assert [t[0] for t in g.texts] == want
        assert any(n[0] < 20 for n in g.n_tokens)


def test_eos_ends_a_row(varied_model):
    model, tok = varied_model
    # declare a token that greedy decoding emits as an extra EOS (via the generation config)
    ids = tok(PROMPTS[2], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    tid = int(out[0, ids["input_ids"].shape[1] + 5])
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tid]
    try:
        g = generate(model, tok, PROMPTS, max_new_tokens=24, batch_size=4)
        ref = [_hf_generate(model, tok, p, 24, eos=[tok.eos_token_id, tid]) for p in PROMPTS]
    finally:
        model.generation_config.eos_token_id = old
    assert [t[0] for t in g.texts] == ref
    assert g.n_tokens[2][0] <= 6  # the row stopped at (or before) the declared EOS


def test_sampling_is_seeded_and_varies(varied_model):
    model, tok = varied_model
    a = generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=1.0, n_samples=3, seed=5)
    b = generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=1.0, n_samples=3, seed=5)
    assert a.texts == b.texts
    assert all(len(set(s)) > 1 for s in a.texts)  # samples of one prompt differ
    gr = generate(model, tok, PROMPTS[:2], max_new_tokens=8, n_samples=3)  # greedy: computed once, copied
    assert all(len(set(s)) == 1 for s in gr.texts) and gr.generated_tokens == 16


def test_peft_model_matches_peft_generate(tiny_model_dir, tiny_lora_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(tiny_lora_dir)).eval()
    ref = []
    for p in PROMPTS[:4]:
        ids = tok(p, return_tensors="pt")
        out = pm.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        ref.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    g = generate(pm, tok, PROMPTS[:4], max_new_tokens=12, batch_size=4)
    assert [t[0] for t in g.texts] == ref


def test_evaluate_target_greedy_scores_identical_across_batch_sizes(varied_model):
    from peftarena_cli.evaluation import evaluate_general, evaluate_target

    model, tok = varied_model
    from peftarena_cli.tasks.target_tasks import load_target_task

    task = load_target_task("arith", limit=5)
    task.max_new_tokens = 16  # short: the point is equality, not accuracy
    runs = [evaluate_target(model, tok, task=task, batch_size=bs) for bs in (1, 4)]
    cols = ["id", "completion", "extracted", "correct"]
    assert runs[0][0][cols].equals(runs[1][0][cols])
    assert runs[0][1].equals(runs[1][1])
    g = [evaluate_general(model, tok, suite="builtin.facts", limit=6, batch_size=bs) for bs in (1, 8)]
    assert g[0][0][cols].equals(g[1][0][cols]) and g[0][1].equals(g[1][1])
    s = runs[0][1].set_index(["task", "metric"])["value"]
    assert ("target", "target_score") in s.index


@pytest.mark.slow
def test_smollm2_engine_matches_generate_and_knows_facts(smollm2_dir):
    from peftarena_cli.artifacts.loading import load_model
    from peftarena_cli.evaluation import evaluate_general
    from peftarena_cli.evaluation.api import builtin_prompts
    from peftarena_cli.tasks.prompting import render_prompt

    model, tok, _ = load_model(smollm2_dir, device="cpu")
    prompts = [render_prompt(tok, q, instruction=None) for q in builtin_prompts("arith", 3)]
    g = generate(model, tok, prompts, max_new_tokens=24)
    assert [t[0] for t in g.texts] == [_hf_generate(model, tok, p, 24) for p in prompts]
    per, summ = evaluate_general(model, tok, suite="builtin.facts", limit=12)
    em = summ.set_index("metric")["value"]["exact_match"]
    assert em == pytest.approx(100.0 * per["correct"].mean()) and em > 0  # it knows some capitals


SHOTS = "Q: two plus two\nA: four.\n\nQ: three plus one\nA: four.\n\nQ: one plus one\nA: two.\n\n"  # 78 shared tokens
SHARED = [SHOTS + f"Q: {q}\nA:" for q in ("five minus two", "six", "nine plus nine plus nine", "ten", "x", "seven times")]


def test_shared_prefix_prefill_gives_the_same_greedy_completions(varied_model):
    """Prompts that share a long prefix (few-shot exemplars) prefill it once for the whole batch; the
    completions equal transformers' batch-1 generate at batch sizes 1, 3 and 64, stops included."""
    from peftarena_cli.evaluation.engine import MIN_SHARED_PREFIX, encode_prompts, shared_prefix_len

    model, tok = varied_model
    enc = encode_prompts(tok, SHARED)
    assert shared_prefix_len(enc) >= MIN_SHARED_PREFIX  # the path under test is taken
    assert shared_prefix_len(encode_prompts(tok, SHARED + ["unrelated prompt of its own " * 4])) == 0
    ref = [_hf_generate(model, tok, p, 16) for p in SHARED]
    for bs in (1, 3, 64):
        g = generate(model, tok, SHARED, max_new_tokens=16, batch_size=bs)
        assert [t[0] for t in g.texts] == ref, bs
    stop = "e"
    want = [r.split(stop)[0] for r in ref]
    g = generate(model, tok, SHARED, max_new_tokens=16, stop=(stop,), batch_size=64)
    assert [t[0] for t in g.texts] == want


def test_shared_prefix_len():
    from peftarena_cli.evaluation.engine import shared_prefix_len

    a = list(range(100))
    assert shared_prefix_len([a + [1, 2], a + [3]], minimum=10) == 100
    assert shared_prefix_len([a, a], minimum=10) == 99  # every row keeps one token to prefill
    assert shared_prefix_len([a], minimum=10) == 0
    assert shared_prefix_len([a[:5] + [7] + a, a], minimum=10) == 0


def test_prefix_groups_batch_shared_prompts_together(varied_model):
    from peftarena_cli.evaluation.engine import encode_prompts, prefix_groups

    model, tok = varied_model
    other = "Z: " + SHOTS[3:]  # a second few-shot group with its own prefix
    mixed = [SHARED[0], PROMPTS[0], other + "Q: a\nA:", SHARED[1], PROMPTS[3], other + "Q: bb\nA:", SHARED[2]]
    g = prefix_groups(encode_prompts(tok, mixed))
    assert g[0] == g[3] == g[6] and g[2] == g[5] and len({g[0], g[2], g[1], g[4]}) == 4
    ref = [_hf_generate(model, tok, p, 12) for p in mixed]
    for bs in (2, 64):
        assert [t[0] for t in generate(model, tok, mixed, max_new_tokens=12, batch_size=bs).texts] == ref
    off = generate(model, tok, mixed, max_new_tokens=12, batch_size=64, share_prefix=False)
    assert [t[0] for t in off.texts] == ref


HEAD = "<sys>Be brief.</sys>\n"  # a short shared head, like a chat template's system turn (~20 tokens)
HEADED = [HEAD + q for q in ("two plus two?", "name a colour", "x", "count to three please", "why?")]


def test_short_shared_head_is_prefilled_once_with_the_same_completions(varied_model):
    """A batch whose rows share a head shorter than a prefix group's (MIN_BATCH_PREFIX <= head <
    MIN_SHARED_PREFIX) prefills it once; greedy completions still equal batch-1 generate."""
    from peftarena_cli.evaluation.engine import MIN_BATCH_PREFIX, MIN_SHARED_PREFIX, encode_prompts, shared_prefix_len

    model, tok = varied_model
    head = shared_prefix_len(encode_prompts(tok, HEADED), MIN_BATCH_PREFIX)
    assert MIN_BATCH_PREFIX <= head < MIN_SHARED_PREFIX  # the path under test is taken
    ref = [_hf_generate(model, tok, p, 12) for p in HEADED]
    for bs in (2, 5):
        g = generate(model, tok, HEADED, max_new_tokens=12, batch_size=bs)
        assert [t[0] for t in g.texts] == ref, bs


# ------------------------------------------------------------------ continuous batching
MANY = (PROMPTS + SHARED + HEADED + [f"item {k}: " + "ab" * (k % 7) for k in range(23)])


def test_continuous_batching_equals_batch1_generate_with_refills_stops_and_eos(varied_model, monkeypatch):
    """Continuous batching (the default) refills the batch from the queue as rows finish; each row's
    greedy completion still equals transformers' batch-1 generate, with EOS and a stop sequence
    ending rows at different steps, at batch sizes that force many refills, and under a token budget
    that caps the rows per batch."""
    import peftarena_cli.evaluation.engine as eng

    model, tok = varied_model
    tid = tok("e", add_special_tokens=False)["input_ids"][-1]
    ref = [_hf_generate(model, tok, p, 20, eos=[tok.eos_token_id, tid]) for p in MANY]
    with torch.no_grad():
        model.generation_config.eos_token_id = [tok.eos_token_id, tid]
        try:
            ends = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in ref]
            assert len(set(ends)) > 3  # rows really end at different steps
            for bs in (2, 5, 64):
                g = generate(model, tok, MANY, max_new_tokens=20, batch_size=bs)
                assert g.extra["batching"] == "continuous"
                assert [t[0] for t in g.texts] == ref, bs
            stop = "o"
            want = [r.split(stop)[0] for r in ref]
            g = generate(model, tok, MANY, max_new_tokens=20, stop=(stop,), batch_size=4)
            assert [t[0] for t in g.texts] == want
            monkeypatch.setattr(eng, "MAX_BATCH_TOKENS_CPU", 160)  # ~3 rows per batch
            g = generate(model, tok, MANY, max_new_tokens=20, batch_size=64)
            assert [t[0] for t in g.texts] == ref
        finally:
            model.generation_config.eos_token_id = tok.eos_token_id


def test_continuous_refills_happen_and_sampling_matches_static_batches(varied_model, monkeypatch):
    """The stream decoder admits prompts in several refills (not one static batch), and a sampled
    completion is the same under continuous and static batching (each row draws from its own
    generator), as the greedy ones are."""
    import peftarena_cli.evaluation.engine as eng

    model, tok = varied_model
    admitted = []
    real = eng._Stream.prefill

    def spy(self, new_rows):
        admitted.append(len(new_rows))
        return real(self, new_rows)

    monkeypatch.setattr(eng._Stream, "prefill", spy)
    kw = dict(max_new_tokens=10, temperature=0.9, n_samples=2, seed=11, batch_size=8)
    a = generate(model, tok, MANY, **kw)
    assert len(admitted) > 3 and max(admitted) <= 8 and sum(admitted) == 2 * len(MANY)
    b = generate(model, tok, MANY, continuous=False, **kw)
    assert b.extra["batching"] == "static"
    assert a.texts == b.texts and a.token_ids == b.token_ids
    greedy = [generate(model, tok, MANY, max_new_tokens=10, batch_size=3, continuous=c).texts for c in (True, False)]
    assert greedy[0] == greedy[1]


def test_continuous_batching_keeps_the_shared_head_when_the_longest_row_ends_first(varied_model, monkeypatch):
    """Rows that share a head (prefilled once, kept at the left of the cache) and end at different
    steps: after the longest row has ended, a refill cuts the columns no row uses any more; the
    head must survive that cut (regression: a cut that treated each row's columns as one block at
    the right dropped it). Greedy completions equal batch-1 generate, for a short head and for a
    few-shot prefix group."""
    import peftarena_cli.evaluation.engine as eng

    model, tok = varied_model
    qs = ["a long question that goes on and on " * 3, "b", "two plus two?", "count", "cc dd", "why not?",
          "name a colour please", "x y z", "q", "what is the capital of france", "ok", "yes or no"]
    cuts = []
    real = eng._Stream.merge

    def spy(self, keep, new_rows, *a):
        if keep and self.p:
            cuts.append(self.cur - max(self.occupied(j, a[-1]) for j in keep))
        return real(self, keep, new_rows, *a)

    monkeypatch.setattr(eng._Stream, "merge", spy)
    for head in (HEAD, SHOTS):
        prompts = [head + q for q in qs]
        # an EOS the rows reach at many different steps: the token whose first occurrences are most spread
        free = generate(model, tok, prompts, max_new_tokens=24, continuous=False).token_ids
        firsts = {}
        for ids in (x[0] for x in free):
            for k, t in enumerate(ids):
                firsts.setdefault(t, {})
                firsts[t].setdefault(id(ids), k)
        tid = max(firsts, key=lambda t: len(set(firsts[t].values())))
        ref = [_hf_generate(model, tok, p, 24, eos=[tok.eos_token_id, tid]) for p in prompts]
        model.generation_config.eos_token_id = [tok.eos_token_id, tid]
        try:
            for bs in (3, 5):
                g = generate(model, tok, prompts, max_new_tokens=24, batch_size=bs)
                assert [t[0] for t in g.texts] == ref, (head[:5], bs)
        finally:
            model.generation_config.eos_token_id = tok.eos_token_id
    assert any(c > 0 for c in cuts)  # the path under test was taken: a refill cut unused columns

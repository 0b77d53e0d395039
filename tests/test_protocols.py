"""Evaluation protocols (docs/eval.md, "Protocols"): every behaviour the protocols issue names,
pinned on hand-scored strings, and lm-evaluation-harness's own filters and metric where it is
installed (the Makefile installs lm_eval 0.4.13 without its dependencies)."""

from __future__ import annotations

import sys
import types

import pytest

from peftarena_cli.evaluation.scorers import bbh, choice, math_lmeval, math_study, nq


# --- NQ-open -----------------------------------------------------------------------------------
def test_nq_study_substring_after_answer_is():
    assert nq.score_nq_study(" The capital of Australia is Canberra", ["Canberra"])["correct"]
    assert nq.score_nq_study("The answer is Canberra, the capital.", ["Canberra"])["extracted"] == "canberra"
    # first line only, lower-cased; cut at the first period or comma
    assert not nq.score_nq_study("I do not know.\nThe answer is Canberra", ["Canberra"])["correct"]
    assert not nq.score_nq_study("Sydney. Canberra", ["Canberra"])["correct"]
    # articles and punctuation dropped on both sides
    assert nq.score_nq_study("The answer is the Beatles!", ["The Beatles"])["correct"]


def test_nq_lmeval_exact_match():
    assert not nq.score_nq_lmeval(" The capital of Australia is Canberra", ["Canberra"])["correct"]
    assert nq.score_nq_lmeval(" the Beatles", ["The Beatles"])["correct"]
    assert nq.score_nq_lmeval(" canberra", ["x", "Canberra"])["correct"]


def test_nq_lmeval_matches_lm_eval_metric():
    lm = _lm_eval_metrics()
    cases = [(" The capital of Australia is Canberra", "Canberra"), (" the Beatles", "The Beatles"), ("Paris!", "paris"),
             (" An apple", "apple"), ("U.S.", "US"), ("1,000", "1000")]
    for pred, ref in cases:
        want = lm.exact_match_hf_evaluate([pred.strip()], [ref], ignore_case=True, ignore_punctuation=True,
                                          regexes_to_ignore=[r"\b(?:The |the |An |A |The |a |an )"])["exact_match"]
        assert nq.score_nq_lmeval(pred, [ref])["correct"] == bool(want), (pred, ref)


# --- BBH ---------------------------------------------------------------------------------------
def test_bbh_study_first_answer_is_and_letters():
    hedge = "So the answer is (A) or (B)."
    assert bbh.score_bbh_study(hedge, "(A)", "snarks") == {"extracted": "A", "correct": True}
    assert bbh.score_bbh_study("the answer is B, I think. Later the answer is (C).", "(B)", "hyperbaton")["correct"]
    assert bbh.study_mcq("no letter here") == "no letter here"
    # free-form: first line, final period dropped, bold unwrapped, case-sensitive
    assert bbh.score_bbh_study("So the answer is **True**.", "True", "boolean_expressions")["correct"]
    assert not bbh.score_bbh_study("So the answer is true.", "True", "boolean_expressions")["correct"]
    assert bbh.score_bbh_study("So the answer is 24.\nQ: next", "24", "object_counting")["correct"]


def test_bbh_lmeval_strict_exact_after_the_answer_is():
    assert not bbh.score_bbh_lmeval("So the answer is (A) or (B).", "(A)")["correct"]
    assert bbh.score_bbh_lmeval("So the answer is (A).", "(A)")["correct"]
    assert bbh.score_bbh_lmeval("no answer", "(A)")["extracted"] == "[invalid]"
    assert not bbh.score_bbh_lmeval("So the answer is true.", "True")["correct"]


def test_bbh_lmeval_matches_lm_eval_filter():
    pytest.importorskip("lm_eval")
    from lm_eval.filters.extraction import RegexFilter

    f = RegexFilter(regex_pattern=r"(?<=the answer is )(.*)(?=.)")
    texts = ["So the answer is (A) or (B).", "So the answer is (A).", "x the answer is True.\nthe answer is False.",
             "nothing", "So the answer is 24", "the answer is ) ] }."]
    want = [r[0] for r in f.apply([[t] for t in texts], [{}] * len(texts))]
    assert [bbh.score_bbh_lmeval(t, "")["extracted"] for t in texts] == want


# --- math --------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion,gold", [
    (r"The answer is $\frac{3}{4}$.", r"\frac{3}{4}"),     # not just the number 4
    (r"so \boxed{0.25}", "25"),                             # percentage / 100
    (r"\boxed{2500}", "25"),                                # percentage * 100
    (r"\boxed{0.33333}", r"\frac13"),                       # relative tolerance 1e-4
    (r"\boxed{five}", "5"),                                 # number words
    ("He has 12 apples left", "12"),                        # last-number fallback
    (r"\boxed{\dfrac{1}{2}} and later The answer is 7", r"\frac{1}{2}"),  # boxed before "he answer is"
    ("Final Answer: The final answer is $(1,2)$. I hope it is correct.", "(1, 2)"),
    (r"\boxed{x=3}", "3"),
])
def test_math_study_extraction_and_grading(completion, gold):
    assert math_study.score_math_study(completion, gold)["correct"], math_study.extract_answer(completion)


def test_math_study_rejects_wrong_answers():
    assert not math_study.score_math_study(r"\boxed{0.3}", r"\frac13")["correct"]
    assert not math_study.score_math_study("The answer is 5", "6")["correct"]
    assert not math_study.score_math_study("no digits", "6")["correct"]


def test_math500_gold_sentences_all_credited(shared_data):
    """Gold answers written as "The answer is GOLD." are all credited by the study's scorer."""
    import json

    recs = [json.loads(x) for x in (shared_data / "math" / "math500_test.jsonl").read_text().splitlines()]
    ok = [math_study.score_math_study(f"The answer is {r['answer']}.", r["answer"])["correct"] for r in recs]
    assert sum(ok) == len(recs), [r["answer"] for r, o in zip(recs, ok) if not o][:10]


def test_gsm8k_lmeval_matches_lm_eval_filters_and_metric():
    lm = _lm_eval_metrics()
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flex = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    texts = ["so #### 1,234.", "The answer is $18.", "#### 5 then #### 6", "nothing", "costs $3.50 total 7"]
    gold = ["1234", "18", "5", "1", "7"]
    ign = [",", r"\$", r"(?s).*#### ", r"\.$"]
    for t, g in zip(texts, gold):
        r = math_lmeval.score_gsm8k_lmeval(t, g)
        s = strict.apply([[t]], [{}])[0][0]
        fx = flex.apply([[t]], [{}])[0][0]
        assert r["extracted"] == s
        for got, pred in ((r["correct_strict"], s), (r["correct_flexible"], fx)):
            want = lm.exact_match_hf_evaluate([pred], [g], ignore_case=True, regexes_to_ignore=ign)["exact_match"]
            assert got == bool(want), (t, pred)


def test_minerva_lmeval():
    good = "We get it. Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct."
    assert math_lmeval.score_minerva_lmeval(good, "\\frac{3}{4}")["correct"]
    assert math_lmeval.minerva_answer("The answer is 3") == "[invalidanswer]"
    assert not math_lmeval.score_minerva_lmeval("The answer is 3", "3")["correct"]
    assert math_lmeval.minerva_normalize("10 \\text{ inches}") == "10"


# --- medical -----------------------------------------------------------------------------------
def test_medical_study_matcher_last_and_never_empty():
    from peftarena_cli.evaluation.scorers.choice_study import extract_study

    opts = ["aspirin", "heparin", "warfarin", "insulin"]
    assert extract_study("Option A is unlikely and B is unlikely; C fits best.", opts) == "C"
    assert extract_study("**C**", opts) == "C"
    assert extract_study("so \\boxed{B}", opts) == "B"
    assert extract_study("the answer is (D) not A", opts) == "A"   # "(D)" is no "answer is"; the last letter is A
    assert extract_study("A patient like this needs warfarin.", opts) == "C"   # option text
    assert extract_study("heparn", opts) == "B"                                # closest option
    assert extract_study("", opts) == "D"                                      # all ratios 0: the last option
    # the first-letter scorer of the built-in suite reads the same text differently
    assert choice.extract_flexible("Option A is unlikely and B is unlikely; C fits best.", opts) == "A"


# --- the protocols themselves ------------------------------------------------------------------
def test_protocol_settings_and_overrides(shared_data):
    from peftarena_cli.evaluation.protocols import apply
    from peftarena_cli.tasks.general_tasks import nq_open_task
    from peftarena_cli.tasks.target_tasks import load_target_task

    raw = nq_open_task(shared_data / "nq_open" / "NQ-open.dev.jsonl", limit=2)
    st, le = apply(raw, "study"), apply(raw, "lm-eval")
    q = raw.items[0].prompt
    assert st.items[0].prompt == ("Answer these questions, your answer should be as simple as possible, start your answer "
                                  f"with the prompt 'The answer is '.\nQ: {q}?")
    assert (st.chat, st.max_new_tokens, st.stop, st.scorer, st.protocol) == (True, 50, (), "nq:study", "study@2")
    assert le.items[0].prompt == f"Answer these questions:\n\nQ: {q}?\nA:"
    assert (le.chat, le.stop, le.scorer) == (False, ("\n", ".", ","), "nq:lm-eval")
    m = load_target_task(f"math500={shared_data / 'math' / 'math500_test.jsonl'}", limit=2)
    sm = apply(m, "study")
    assert sm.items[0].prompt == f"Question: {m.items[0].prompt}\nAnswer:"
    assert (sm.n_samples, sm.temperature, sm.max_new_tokens, sm.overrides) == (16, 0.6, 8192, "")
    ov = apply(m, "study", n=1, max_new_tokens=512)
    assert (ov.n_samples, ov.temperature, ov.max_new_tokens, ov.overrides) == (1, 0.6, 512, "max_new_tokens=512,n=1")
    assert apply(ov, "study").overrides == ov.overrides  # applying again keeps what was overridden
    lm = apply(m, "lm-eval")
    assert lm.items[0].prompt.startswith("Problem:\nFind the domain") and lm.items[0].prompt.count("Problem:") == 5
    pq = load_target_task(f"pubmedqa={shared_data / 'medical' / 'pubmedqa_ori_pqal.json'}", limit=2)
    med = apply(pq, "study")
    assert med.system == "You are a helpful assistant." and med.items[0].prompt.endswith(
        "\nPlease reason step by step, and put your final answer within \\boxed{}.")


def test_unknown_protocol_and_what_cannot_apply(shared_data, tmp_path):
    from peftarena_cli.errors import IncompatibleInputs, UsageError
    from peftarena_cli.evaluation.api import rescore_table, score_responses
    from peftarena_cli.evaluation.protocols import get_protocol
    from peftarena_cli.tasks.target_tasks import load_target_task

    with pytest.raises(UsageError, match="unknown protocol") as e:
        get_protocol("helm")
    assert "study, lm-eval" in e.value.hint
    # generated text cannot be re-scored by lm-eval's option log-likelihoods
    pq = load_target_task(f"pubmedqa={shared_data / 'medical' / 'pubmedqa_ori_pqal.json'}", limit=1)
    per, _ = score_responses(pq, [{"id": pq.items[0].id, "response": "\\boxed{A}"}], kind="target")
    with pytest.raises(IncompatibleInputs, match="log-likelihood"):
        rescore_table(per, kind="target", protocol="lm-eval")


def test_lmeval_medical_prompts(shared_data):
    from peftarena_cli.evaluation.protocols import apply
    from peftarena_cli.tasks.target_tasks import load_target_task

    pq = apply(load_target_task(f"pubmedqa={shared_data / 'medical' / 'pubmedqa_ori_pqal.json'}", limit=1), "lm-eval")
    assert pq.loglik == "options" and not pq.chat
    assert pq.items[0].prompt.startswith("Abstract: ") and pq.items[0].prompt.endswith("?\nAnswer:")
    assert "\nQuestion: " in pq.items[0].prompt


def test_loglik_matches_a_direct_computation():
    """Each choice's summed log-probability equals one unbatched forward pass per sequence."""
    import torch
    from helpers import make_tiny_llama

    from peftarena_cli.evaluation.loglik import choice_logliks, encode_pair

    model, tok = make_tiny_llama(seed=3)
    ctxs = ["Question: is the sky blue?\nAnswer:", "Abstract: short.\nQuestion: x?\nAnswer: "]
    conts = [[" yes", " no", " maybe"], [" A", " B", " C", " D"]]
    got, lens = choice_logliks(model, tok, ctxs, conts)
    for ctx, cs, row in zip(ctxs, conts, got):
        for c, v in zip(cs, row):
            ci, ki = encode_pair(tok, ctx, c)
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([ci + ki])).logits[0].double(), -1)
            want = sum(float(lp[len(ci) - 1 + j, t]) for j, t in enumerate(ki))
            assert v == pytest.approx(want, abs=1e-6)
    assert lens[1] == [len(encode_pair(tok, ctxs[1], c)[1]) for c in conts[1]]
    # trailing white space of the context moves to the continuation (lm-eval's _encode_pair)
    assert encode_pair(tok, "Answer: ", "A") == encode_pair(tok, "Answer:", " A")


def test_study_target_score_leaves_gsm8k_out():
    from peftarena_cli.evaluation.api import general_metric_name, target_score_parts
    from peftarena_cli.tasks.spec import Task

    ts = [Task(n, [], "math:study", protocol="study@2") for n in ("gsm8k", "math500", "aime24")]
    assert [t.name for t in target_score_parts(ts)] == ["math500", "aime24"]
    assert [t.name for t in target_score_parts(ts[:1])] == ["gsm8k"]
    assert general_metric_name(["ifeval", "bbh", "nq_open"]) == "general_score"
    assert general_metric_name(["ifeval_builtin", "bbh_builtin", "facts"]) == "builtin_general_score"
    assert general_metric_name(["ifeval", "bbh"]) == "general_mean"


def test_rescore_under_another_protocol_says_so(tmp_path, shared_data):
    import json

    from peftarena_cli.evaluation.api import rescore_table, score_responses
    from peftarena_cli.tasks.general_tasks import nq_open_task

    raw = nq_open_task(shared_data / "nq_open" / "NQ-open.dev.jsonl", limit=1)
    ref = raw.items[0].reference[0]
    per, summ = score_responses(raw, [{"id": raw.items[0].id, "response": f" The answer is {ref}"}], kind="general")
    assert per["correct"].tolist() == [True] and json.loads(per["meta"][0])["protocol"] == "study@2"
    per2, summ2 = rescore_table(per, kind="general", protocol="lm-eval")
    assert per2["correct"].tolist() == [False]  # lm-eval's exact match
    row = summ2[summ2["task"] == "nq_open"].iloc[0]
    assert row["protocol"] == "lm-eval@1" and row["generated_under"] == "external"


def _lm_eval_metrics():
    pytest.importorskip("lm_eval")
    sys.modules.setdefault("sacrebleu", types.ModuleType("sacrebleu"))  # imported at module level, unused here
    from lm_eval.api import metrics

    return metrics


def test_lmeval_medical_scores_the_argmax_choice(shared_data):
    from helpers import make_tiny_llama

    from peftarena_cli.evaluation.api import evaluate_target, load_target_tasks
    from peftarena_cli.evaluation.loglik import choice_logliks

    model, tok = make_tiny_llama(seed=1)
    spec = f"pubmedqa={shared_data / 'medical' / 'pubmedqa_ori_pqal.json'}"
    per, summ = evaluate_target(model, tok, task=spec, limit=3, protocol="lm-eval")
    task = load_target_tasks(spec, 3, protocol="lm-eval")[0]
    ll, _ = choice_logliks(model, tok, [task.render(tok, it) for it in task.items], [[" yes", " no", " maybe"]] * 3)
    want = ["ABC"[max(range(3), key=lambda j: row[j])] for row in ll]
    assert per["extracted"].tolist() == want
    assert per["correct"].tolist() == [w == it.reference for w, it in zip(want, task.items)]
    assert set(summ["protocol"]) == {"lm-eval@1"}


def test_report_warns_when_an_axis_mixes_protocols():
    import pandas as pd

    from peftarena_cli.report.leaderboard import axis_measures, protocol_notes

    class M:
        def __init__(self, gen_protocol):
            self.tables = {"eval_summary": pd.DataFrame({
                "task": ["target", "general"], "metric": ["target_score", "general_score"], "value": [1.0, 2.0],
                "protocol": ["study@2", gen_protocol]})}

    same = {"base": M("study@2"), "lora": M("study@2")}
    assert protocol_notes(same) == []
    assert axis_measures(same)["general"] == (["general_score"], ["study@2"])
    mixed = {"base": M("study@2"), "lora": M("lm-eval@1")}
    notes = protocol_notes(mixed)
    assert len(notes) == 1 and "general axis mixes" in notes[0] and "lm-eval@1" in notes[0]

"""Scorers and loaders: hand-scored cases for every IFEval instruction id, math/MC/BBH/NQ scorers,
pass@k against brute force, and the loaders on the real benchmark files in ../shared/data."""

from __future__ import annotations

import itertools
import json

import pytest

from peftarena_cli.evaluation import metrics
from peftarena_cli.evaluation.scorers import bbh, choice, ifeval, nq
from peftarena_cli.evaluation.scorers import math as m
from peftarena_cli.evaluation.scorers.text_utils import count_sentences, count_words

# (instruction id, kwargs, a response that follows it, a response that does not)
IFEVAL_CASES = [
    ("keywords:existence", {"keywords": ["river", "stone"]}, "A stone by the River.", "A stone by the sea."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat Cat CAT", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat and cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["good", "bad"]}, "It is goodness itself.", "It is Good."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zoo zebra", "Zoo"),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je suis très heureux de vous voir aujourd'hui et nous allons parler de la cuisine française.",
     "Hello, I am very happy to see you today and we are going to talk about French cooking."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith arrived. He sat down.", "One. Two. Three. Four."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First.\n***\n\n***\nThird."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "one two"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Start here.\n\nThen, the end.", "Start here.\n\nAfter that, the end."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. See you.", "Hello. See you."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S more", "Hi.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes, definitely."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nabc\nSECTION 2\ndef", "SECTION 1\nabc"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<My Title>>\nText", "<< >> no title"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.", "Roses are red."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Any other questions? Done."),
    ("startend:quotation", {}, '"All quoted."', 'Not "quoted".'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY big", "This is VERY big"),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITAL LETTERS IN ENGLISH.", "This is not all capitals."),
    ("change_case:english_lowercase", {}, "this is all lowercase english text.", "This is Not lowercase."),
    ("punctuation:no_comma", {}, "No commas here.", "Commas, here."),
]


def test_every_ifeval_instruction_id_has_hand_made_cases():
    assert len(ifeval.CHECKS) == 25
    assert {c[0] for c in IFEVAL_CASES} == set(ifeval.CHECKS)


@pytest.mark.parametrize("iid,kw,good,bad", IFEVAL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(IFEVAL_CASES)])
def test_ifeval_instruction(iid, kw, good, bad):
    assert ifeval.check_instruction(iid, good, kw) is True
    assert ifeval.check_instruction(iid, bad, kw) is False


def test_ifeval_loose_variants_and_levels():
    # a chatty first line breaks strict "quotation" but the loose variant without it passes
    resp = 'Sure here it is:\n"All, quoted."\nBye'
    assert ifeval.check_instruction("startend:quotation", resp) is False
    assert ifeval.check_instruction("startend:quotation", resp, loose=True) is True
    assert len(ifeval.response_variants(resp)) == 8
    r = ifeval.score_ifeval(resp, ["startend:quotation", "punctuation:no_comma"], [{}, {}])
    assert r["inst_strict"] == [False, False] and r["inst_loose"] == [True, False]
    assert r["prompt_strict"] is False and r["prompt_loose"] is False
    r = ifeval.score_ifeval(resp, ["startend:quotation"], [{}])
    assert r["prompt_strict"] is False and r["prompt_loose"] is True


def test_text_utils_offline():
    assert count_sentences("Mr. Brown went to Washington. He met the U.S. president! Was it fun? Yes.") == 4
    assert count_words("Hello, world: it's 3.5 o'clock") == 8  # \w+ runs, as IFEval counts


def test_math_extraction_and_equivalence():
    assert m.extract_boxed(r"so \boxed{\frac{1}{2}} and \boxed{x^{2}+1}") == "x^{2}+1"
    assert m.extract_strict("We get 3.\n#### 1,234") == "1234"
    assert m.extract_strict("So the answer is $18.") == "18"
    assert m.extract_flexible("first 3 then 4.50 dollars") == "4.50"
    assert m.equivalent("0.5", r"\frac{1}{2}")
    assert m.equivalent(r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})")
    assert not m.equivalent("18", "17")
    r = m.score_math("Janet has 9 eggs. 9 * 2 = 18. The answer is 18.", "18")
    assert r["correct"] and r["correct_strict"] and r["correct_flexible"]
    r = m.score_math("The answer is 18. Wait, 20", "18")
    assert r["correct"] and r["correct_strict"] and not r["correct_flexible"]
    r = m.score_math("I cannot solve this.", "18")   # unparsable: wrong, extracted empty
    assert r == {"extracted": "", "correct": False, "correct_strict": False, "correct_flexible": False}


def test_multiple_choice_strict_and_flexible():
    opts = ["aspirin", "ibuprofen", "paracetamol", "morphine"]
    assert choice.score_choice("The answer is (C).", "C", opts)["correct_strict"]
    r = choice.score_choice("I think it is paracetamol, because...", "C", opts)
    assert r["correct"] and not r["correct_strict"]
    assert choice.score_choice("B", "B", opts)["correct_strict"]
    assert not choice.score_choice("no idea", "A", opts)["correct"]


def test_nq_normalisation():
    assert nq.normalize_answer("The  Beatles!") == "beatles"
    assert nq.score_nq(" The Beatles", ["Beatles", "the beatles band"])["correct"]
    assert not nq.score_nq(" Rolling Stones", ["Beatles"])["correct"]
    assert nq.score_nq("", ["x"])["correct"] is False
    assert nq.score_facts(" The capital of France is Paris.", ["Paris"])["correct"]
    assert not nq.score_facts(" Parisian food", ["Paris"])["correct"]


def test_bbh_extraction():
    assert bbh.score_bbh("A is True. So the answer is False.", "False")["correct"]
    assert bbh.score_bbh("So the answer is (B).", "(B)")["correct"]
    assert bbh.score_bbh("So the answer is B.", "(B)")["correct"]
    assert not bbh.score_bbh("So the answer is (C).", "(B)")["correct"]
    assert bbh.score_bbh("the answer is apple banana.", "apple banana")["correct"]
    assert not bbh.score_bbh("no conclusion", "True")["correct"]


def test_pass_at_k_matches_brute_force():
    for n, c in [(5, 0), (5, 2), (6, 3), (4, 4)]:
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        metrics.pass_at_k(2, 1, 3)
    assert metrics.maj_at_k(["3", "4", "4", ""], [False, True, True, False], 4) == 1.0
    assert metrics.maj_at_k(["3", "3", "4", "4"], [True, True, False, False], 4) == 1.0  # tie: first seen
    assert metrics.maj_at_k(["", ""], [False, False], 2) == 0.0


# --- real files -----------------------------------------------------------------------------------
def test_ifeval_loader_real_file(shared_data):
    from peftarena_cli.tasks.general_tasks import ifeval_task

    path = shared_data / "ifeval" / "input_data.jsonl"
    t = ifeval_task(path)
    assert len(t.items) == sum(1 for line in path.read_text().splitlines() if line.strip())  # 540 here
    ids = {i for it in t.items for i in it.meta["instruction_id_list"]}
    assert ids <= set(ifeval.CHECKS) and len(ids) == 25
    for it in t.items:  # every kwargs set of the real file is accepted by its check
        ifeval.score_ifeval("A short response.", it.meta["instruction_id_list"], it.meta["kwargs"])
    first = t.items[0]  # no commas, 3 highlights, 300+ words
    good = " ".join(["word"] * 300) + " *one* *two* *three*"
    r = ifeval.score_ifeval(good, first.meta["instruction_id_list"], first.meta["kwargs"])
    assert r["inst_strict"] == [True, True, True]
    r = ifeval.score_ifeval("Too short, with a comma.", first.meta["instruction_id_list"], first.meta["kwargs"])
    assert r["inst_strict"] == [False, False, False]


def test_bbh_loader_real_files_and_gold_answers_score(shared_data):
    from peftarena_cli.evaluation.protocols import apply
    from peftarena_cli.tasks.general_tasks import BBH_SUBTASKS, bbh_task

    t = bbh_task(shared_data / "bbh", limit=3)
    subs = {it.meta["subtask"] for it in t.items}
    assert subs == set(BBH_SUBTASKS) and len(subs) == 27
    study, lme = apply(t, "study"), apply(t, "lm-eval")
    assert (study.max_new_tokens, study.stop, study.chat) == (512, (), True)
    assert (lme.max_new_tokens, lme.stop, lme.chat) == (1024, ("</s>", "Q", "\n\n"), False)
    for it, s_it, l_it in zip(t.items, study.items, lme.items):
        assert s_it.prompt.startswith("Follow the given examples and answer the question.\n")
        assert s_it.prompt.endswith(f"\n\nQ: {it.prompt}\nA: Let's think step by step.")
        assert l_it.prompt.endswith(f"\n\nQ: {it.prompt}\nA: Let's think step by step.\n")
        for p in (s_it.prompt, l_it.prompt):
            assert p.count("\nA: Let's think step by step.") == 4 and "canary" not in p  # 3 shots + the question
        # the gold answer in the prompts' own format scores correct under both protocols, a wrong one does not
        gold = f"... So the answer is {it.reference}."
        assert bbh.score_bbh_study(gold, it.reference, it.meta["subtask"])["correct"], it.id
        assert bbh.score_bbh_lmeval(gold, it.reference)["correct"], it.id
        assert not bbh.score_bbh_study("... So the answer is zzz.", it.reference, it.meta["subtask"])["correct"]
        assert not bbh.score_bbh_lmeval("... So the answer is zzz.", it.reference)["correct"]


def test_math_and_medical_loaders_real_files(shared_data):
    from peftarena_cli.tasks.target_tasks import load_target_task

    g = load_target_task(f"gsm8k={shared_data / 'math' / 'gsm8k_test.jsonl'}", limit=5)
    assert g.items[0].reference == "18" and g.scorer == "math"
    first = json.loads((shared_data / "math" / "gsm8k_test.jsonl").read_text().splitlines()[0])
    assert m.score_math(first["answer"].replace("####", "The answer is"), g.items[0].reference)["correct"]
    m5 = load_target_task(str(shared_data / "math" / "math500_test.jsonl"), limit=5)  # format guessed from fields
    assert m5.name == "math500"
    assert m.score_math(rf"so \boxed{{{m5.items[0].reference}}}", m5.items[0].reference)["correct"]
    for name in ("aime24", "amc23"):
        t = load_target_task(f"{name}={shared_data / 'math' / (name + '_test.jsonl')}")
        assert len(t.items) in (30, 40) and all(it.reference for it in t.items)
    p = load_target_task(f"pubmedqa={shared_data / 'medical' / 'pubmedqa_ori_pqal.json'}")
    assert len(p.items) == 500  # the test split, from the ground-truth file beside it
    assert {it.reference for it in p.items} <= {"A", "B", "C"}


def test_nq_loader_real_file(shared_data):
    from peftarena_cli.tasks.general_tasks import nq_open_task

    t = nq_open_task(shared_data / "nq_open" / "NQ-open.dev.jsonl", limit=10)
    assert len(t.items) == 10 and t.items[0].reference == ["14 December 1972 UTC", "December 1972"]
    assert nq.score_nq(" December 1972", t.items[0].reference)["correct"]


def test_builtin_suite_deterministic_and_self_consistent():
    from peftarena_cli.evaluation.api import builtin_prompts
    from peftarena_cli.tasks.builtin_general import BBH_FORMATS, builtin_task

    for part in ("ifeval", "bbh", "facts"):
        a, b = builtin_task(part, seed=3), builtin_task(part, seed=3)
        assert [(i.prompt, i.reference) for i in a.items] == [(i.prompt, i.reference) for i in b.items]
        assert [i.prompt for i in builtin_task(part, seed=4).items] != [i.prompt for i in a.items]
    bt = builtin_task("bbh", limit=40)
    assert {i.meta["subtask"] for i in bt.items} == set(BBH_FORMATS)
    for it in bt.items:  # references are exact: re-derive the verifiable ones independently
        q = it.prompt.split("\n")[0]
        if it.meta["subtask"] == "boolean_expressions":
            assert it.reference == str(eval(q.split(": ", 1)[1]))
        if it.meta["subtask"] == "multistep_arithmetic":
            assert it.reference == str(eval(q.split(": ", 1)[1].rstrip(" =")))
        if it.meta["subtask"] == "word_sorting":
            assert it.reference.split() == sorted(q.split("List: ")[1].split())
        assert bbh.score_bbh(f"So the answer is {it.reference}.", it.reference)["correct"]
    for it in builtin_task("ifeval").items:
        assert all(i in ifeval.CHECKS for i in it.meta["instruction_id_list"])
    assert len(builtin_prompts("general", 9)) == 9 and builtin_prompts("arith", 3, seed=1) == builtin_prompts("arith", 3, seed=1)


def test_ifeval_nth_paragraph_edge_cases():
    kw = {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "don"}
    assert ifeval.check_instruction("length_constraints:nth_paragraph_first_word", "Intro.\n\n\"Don't stop.\"", kw)
    # an empty paragraph in second position: the 2nd split part is empty -> fails
    assert not ifeval.check_instruction("length_constraints:nth_paragraph_first_word", "Intro.\n\n\n\nDon't.", kw)


# ------------------------------------------------------------------ medical MCQ files in the hub formats
MEDMCQA_HUB = [  # openlifescienceai/medmcqa: cop is a ClassLabel 0..3
    {"id": "q1", "question": "Which vitamin deficiency causes scurvy?", "opa": "A", "opb": "B12", "opc": "C", "opd": "D",
     "cop": 2, "choice_type": "single", "exp": "", "subject_name": "Biochemistry", "topic_name": ""},
    {"id": "q2", "question": "Largest organ?", "opa": "Skin", "opb": "Liver", "opc": "Lung", "opd": "Brain", "cop": 0,
     "choice_type": "single", "exp": None, "subject_name": "Anatomy", "topic_name": None},
    {"id": "q3", "question": "Normal adult heart rate?", "opa": "20", "opb": "40", "opc": "200", "opd": "60-100", "cop": 3,
     "choice_type": "single", "exp": "", "subject_name": "Physiology", "topic_name": ""},
]


def _jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def test_medmcqa_hub_and_original_numbering(tmp_path):
    from peftarena_cli.errors import DataError
    from peftarena_cli.tasks.target_tasks import load_target_task

    t = load_target_task(f"medmcqa={_jsonl(tmp_path / 'hub.jsonl', MEDMCQA_HUB)}")
    assert [it.reference for it in t.items] == ["C", "A", "D"] and t.items[0].id == "medmcqa-q1"
    assert "\nC. C\n" in t.items[0].prompt and "\nD. D" in t.items[0].prompt
    # the original release numbers the options 1..4
    orig = [dict(r, cop=r["cop"] + 1) for r in MEDMCQA_HUB]
    t1 = load_target_task(f"medmcqa={_jsonl(tmp_path / 'orig.jsonl', orig)}")
    assert [it.reference for it in t1.items] == ["C", "A", "D"]
    # the unlabelled test split (cop = -1) is refused, not scored as wrong
    with pytest.raises(DataError, match="no answer"):
        load_target_task(f"medmcqa={_jsonl(tmp_path / 'test.jsonl', [dict(r, cop=-1) for r in MEDMCQA_HUB])}")
    with pytest.raises(DataError, match="cop"):
        load_target_task(f"medmcqa={_jsonl(tmp_path / 'bad.jsonl', [dict(MEDMCQA_HUB[0], cop=7)])}")
    # the format is recognised from the fields alone
    assert load_target_task(str(tmp_path / "hub.jsonl")).name == "medmcqa"


def test_medqa_formats_and_scoring(tmp_path):
    from peftarena_cli.evaluation.api import score_responses
    from peftarena_cli.tasks.target_tasks import load_target_task

    gbaker = [  # GBaker/MedQA-USMLE-4-options: options as a dict, answer_idx a letter
        {"question": "A 23-year-old ... most likely diagnosis?", "answer": "Asthma",
         "options": {"A": "COPD", "B": "Asthma", "C": "Pneumonia", "D": "Sarcoidosis"}, "meta_info": "step1", "answer_idx": "B"},
        {"question": "Drug of choice?", "answer": "Penicillin",
         "options": {"A": "Penicillin", "B": "Vancomycin", "C": "Linezolid", "D": "Daptomycin"}, "meta_info": "step2&3", "answer_idx": "A"},
    ]
    bigbio = [  # bigbio/med_qa (source schema): options as a list of {key, value}
        {"question": "Next best step?", "answer": "CT scan",
         "options": [{"key": "A", "value": "MRI"}, {"key": "B", "value": "X-ray"}, {"key": "C", "value": "CT scan"},
                     {"key": "D", "value": "Biopsy"}, {"key": "E", "value": "Observation"}], "meta_info": "step1", "answer_idx": "C"},
    ]
    g = load_target_task(f"medqa={_jsonl(tmp_path / 'g.jsonl', gbaker)}")
    assert [it.reference for it in g.items] == ["B", "A"] and "\nB. Asthma\n" in g.items[0].prompt
    b = load_target_task(f"medqa={_jsonl(tmp_path / 'b.jsonl', bigbio)}")
    assert b.items[0].reference == "C" and "\nE. Observation" in b.items[0].prompt
    no_idx = [{k: v for k, v in r.items() if k != "answer_idx"} for r in gbaker]
    assert [it.reference for it in load_target_task(f"medqa={_jsonl(tmp_path / 'n.jsonl', no_idx)}").items] == ["B", "A"]
    # hand-scored responses under the study's matcher (the last option letter named)
    recs = [{"id": g.items[0].id, "response": "The answer is (B)."},
            {"id": g.items[1].id, "response": "I think it is C, Linezolid."}]
    per, summ = score_responses(g, recs, kind="target")
    assert per["correct"].tolist() == [True, False]
    acc = summ.set_index("metric")["value"]
    assert acc["accuracy"] == 50.0


def test_builtin_facts_table_order_and_answers():
    """The fact table's first block keeps its draw order (small --limit values are the items they were
    before the second block), every item is distinct, and each fact's own first accepted answer
    scores correct while another fact's answer does not (no accepted answer is a common word)."""
    from peftarena_cli.evaluation.scorers.nq import score_facts
    from peftarena_cli.tasks.builtin_general import ALL_FACTS, builtin_task
    from peftarena_cli.tasks.facts_table import FACTS

    first = [i.id for i in builtin_task("facts", limit=6).items]
    assert first == ["facts-43", "facts-35", "facts-54", "facts-37", "facts-49", "facts-8"]  # pinned before the 2nd block
    allf = builtin_task("facts", limit=10_000).items
    assert len(allf) == len(ALL_FACTS) >= 300 and len({i.id for i in allf}) == len(allf)
    assert {int(i.id.split("-")[1]) for i in allf[:len(FACTS)]} == set(range(len(FACTS)))
    assert len({q.lower() for q, _ in ALL_FACTS}) == len(ALL_FACTS)
    for it in allf:
        assert score_facts(f"The answer is {it.reference[0]}.", it.reference)["correct"], it.id
    assert not score_facts("I think it is one of those things.", ["Paris"])["correct"]

"""MMLU's medical subsets (``mmlu_medical``): the loader on hand-made files in the hub's format
(cais/mmlu: question, subject, choices, answer index), both protocols' prompts written out by hand
from their references, both protocols run on the tiny model, and the study's aggregation over
the medical sets (the mean of the sets' accuracies) against a hand computation."""

from __future__ import annotations

import hashlib
import json

import pytest

from peftarena_cli.errors import DataError

# Hand-made records in cais/mmlu's format: two of another subject (left out), the medical ones
# out of subject order (the loader lists them in its fixed subject order).
RECORDS = [
    {"question": "Which bone is in the thigh?", "subject": "anatomy", "choices": ["ulna", "femur", "rib", "skull"], "answer": 1},
    {"question": "What orbits the Earth?", "subject": "astronomy", "choices": ["Moon", "Mars", "Sun", "Venus"], "answer": 0},
    {"question": " Which gene causes cystic fibrosis? ", "subject": "medical_genetics",
     "choices": ["BRCA1", "CFTR", "TP53", "HBB"], "answer": 1},
    {"question": "Where is insulin made?", "subject": "college_medicine", "choices": ["liver", "kidney", "pancreas", "spleen"], "answer": 2},
    {"question": "Which chamber pumps blood to the body?", "subject": "anatomy",
     "choices": ["right atrium", "right ventricle", "left atrium", "left ventricle"], "answer": 3},
    {"question": "Which planet is red?", "subject": "astronomy", "choices": ["Mars", "Moon", "Sun", "Venus"], "answer": 0},
]
# (id, reference letter, subject) in the loader's order: anatomy, ..., college_medicine, medical_genetics
EXPECTED = [("mmlu_medical-anatomy-0", "B", "anatomy"), ("mmlu_medical-anatomy-1", "D", "anatomy"),
            ("mmlu_medical-college_medicine-0", "C", "college_medicine"),
            ("mmlu_medical-medical_genetics-0", "B", "medical_genetics")]
MEDQA = [{"question": "First-line drug for anaphylaxis?", "options": {"A": "epinephrine", "B": "aspirin", "C": "insulin", "D": "heparin"},
          "answer_idx": "A"},
         {"question": "Vitamin deficient in scurvy?", "options": {"A": "A", "B": "B12", "C": "C", "D": "D"}, "answer_idx": "C"}]


def _write(tmp_path, recs=RECORDS):
    import pandas as pd

    pq = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame(recs).to_parquet(pq)
    jl = tmp_path / "mmlu_test.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return pq, jl


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- the loader -------------------------------------------------------------------------------------
def test_parquet_and_jsonl_give_the_medical_items_in_subject_order(tmp_path):
    from peftarena_cli.tasks.target_tasks import load_target_task

    pq, jl = _write(tmp_path)
    before = (_digest(pq), _digest(jl))
    for path in (pq, jl):
        t = load_target_task(f"mmlu_medical={path}")
        assert [(it.id, it.reference, it.meta["subject"]) for it in t.items] == EXPECTED
        assert t.items[0].meta["options"] == ["ulna", "femur", "rib", "skull"]
        assert t.subtask_key == "subject" and t.raw and t.scorer == "choice"
    # a bare file is recognised by its fields (subject + choices + answer)
    assert [it.id for it in load_target_task(str(jl)).items] == [e[0] for e in EXPECTED]
    assert (_digest(pq), _digest(jl)) == before  # the inputs are read, never written


def test_limit_counts_items_per_subject(tmp_path):
    from peftarena_cli.tasks.target_tasks import load_target_task

    _, jl = _write(tmp_path)
    t = load_target_task(f"mmlu_medical={jl}", limit=1)
    assert [it.id for it in t.items] == ["mmlu_medical-anatomy-0", "mmlu_medical-college_medicine-0",
                                         "mmlu_medical-medical_genetics-0"]


def test_a_folder_of_the_hubs_per_subject_test_files(tmp_path):
    import pandas as pd

    from peftarena_cli.tasks.target_tasks import load_target_task

    for subject in ("anatomy", "college_medicine", "medical_genetics", "astronomy"):
        d = tmp_path / subject
        d.mkdir()
        pd.DataFrame([r for r in RECORDS if r["subject"] == subject]).to_parquet(d / "test-00000-of-00001.parquet")
        # another split beside it is not read
        pd.DataFrame([dict(RECORDS[0], answer=0)]).to_parquet(d / "dev-00000-of-00001.parquet")
    t = load_target_task(f"mmlu_medical={tmp_path}")
    assert [(it.id, it.reference, it.meta["subject"]) for it in t.items] == EXPECTED


@pytest.mark.parametrize("bad, message", [
    ([{"question": "q", "subject": "astronomy", "choices": ["a", "b", "c", "d"], "answer": 0}], "none of the medical subjects"),
    ([{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c"], "answer": 0}], "3 choices"),
    ([{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 4}], "outside 0..3"),
    ([{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": "maybe"}], "neither an index"),
    ([{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"]}], "lacks the field 'answer'"),
])
def test_malformed_files_are_data_errors(tmp_path, bad, message):
    from peftarena_cli.tasks.target_tasks import load_target_task

    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match=message):
        load_target_task(f"mmlu_medical={p}")


def test_the_cli_refuses_a_file_without_medical_subjects(tmp_path, cli, tiny_model_dir):
    p = tmp_path / "astro.jsonl"
    p.write_text(json.dumps(RECORDS[1]) + "\n")
    r = cli("eval-target", tiny_model_dir, "--task", f"mmlu_medical={p}", "-o", tmp_path / "o.parquet")
    assert r.returncode == 1 and "none of the medical subjects" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.parquet").exists()


# --- the protocols' prompts, written out from their references ----------------------------------------
def test_lmeval_prompt_is_mmlus_description_question_choices_answer(tmp_path):
    from peftarena_cli.evaluation.api import load_target_tasks

    _, jl = _write(tmp_path)
    t = load_target_tasks(f"mmlu_medical={jl}", protocol="lm-eval")[0]
    # lm_eval/tasks/mmlu/default/_default_template_yaml + mmlu_medical_genetics.yaml's description;
    # the question stripped (question.strip())
    assert t.items[3].prompt == ("The following are multiple choice questions (with answers) about medical genetics.\n\n"
                                 "Which gene causes cystic fibrosis?\nA. BRCA1\nB. CFTR\nC. TP53\nD. HBB\nAnswer:")
    assert t.items[2].prompt.startswith("The following are multiple choice questions (with answers) about college medicine.\n\n")
    assert t.loglik == "letters" and t.chat is False and t.protocol == "lm-eval@1"


def test_study_prompt_is_the_medical_sets_prompt(tmp_path):
    from peftarena_cli.evaluation.api import load_target_tasks

    _, jl = _write(tmp_path)
    t = load_target_tasks(f"mmlu_medical={jl}", protocol="study")[0]
    assert t.items[0].prompt == ("Which bone is in the thigh?\nA. ulna\nB. femur\nC. rib\nD. skull\n"
                                 "Please reason step by step, and put your final answer within \\boxed{}.")
    assert t.system == "You are a helpful assistant." and t.chat is True
    assert t.scorer == "choice:study" and t.max_new_tokens == 8192 and t.loglik is None


# --- both protocols on the tiny model -------------------------------------------------------------------
def test_lmeval_runs_the_argmax_of_the_letters_loglikelihood(tmp_path):
    from helpers import make_tiny_llama

    from peftarena_cli.evaluation.api import evaluate_target
    from peftarena_cli.evaluation.loglik import choice_logliks

    _, jl = _write(tmp_path)
    model, tok = make_tiny_llama(seed=3)
    per, summ = evaluate_target(model, tok, task=f"mmlu_medical={jl}", protocol="lm-eval")
    prompts = ["The following are multiple choice questions (with answers) about anatomy.\n\n"
               "Which bone is in the thigh?\nA. ulna\nB. femur\nC. rib\nD. skull\nAnswer:",
               "The following are multiple choice questions (with answers) about anatomy.\n\n"
               "Which chamber pumps blood to the body?\nA. right atrium\nB. right ventricle\nC. left atrium\n"
               "D. left ventricle\nAnswer:",
               "The following are multiple choice questions (with answers) about college medicine.\n\n"
               "Where is insulin made?\nA. liver\nB. kidney\nC. pancreas\nD. spleen\nAnswer:",
               "The following are multiple choice questions (with answers) about medical genetics.\n\n"
               "Which gene causes cystic fibrosis?\nA. BRCA1\nB. CFTR\nC. TP53\nD. HBB\nAnswer:"]
    ll, _ = choice_logliks(model, tok, prompts, [[" A", " B", " C", " D"]] * 4)
    want = ["ABCD"[max(range(4), key=lambda j: row[j])] for row in ll]
    assert per["prompt"].tolist() == prompts
    assert per["extracted"].tolist() == want
    assert per["correct"].tolist() == [w == e[1] for w, e in zip(want, EXPECTED)]
    assert per["subtask"].tolist() == [e[2] for e in EXPECTED]
    acc = summ[(summ["task"] == "mmlu_medical") & (summ["metric"] == "avg@1")]["value"].item()
    assert acc == pytest.approx(100 * sum(w == e[1] for w, e in zip(want, EXPECTED)) / 4, abs=1e-9)


def test_study_runs_generation_scored_by_the_medical_matcher(tmp_path):
    from helpers import make_tiny_llama

    from peftarena_cli.evaluation.api import evaluate_target
    from peftarena_cli.evaluation.scorers.choice_study import extract_study

    _, jl = _write(tmp_path)
    model, tok = make_tiny_llama(seed=3)
    per, summ = evaluate_target(model, tok, task=f"mmlu_medical={jl}", protocol="study", max_new_tokens=6)
    assert per["id"].tolist() == [e[0] for e in EXPECTED]
    # the tiny tokenizer's ChatML template around the study's system prompt and question
    assert per["prompt"].iloc[0] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                     "Which bone is in the thigh?\nA. ulna\nB. femur\nC. rib\nD. skull\n"
                                     "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                                     "<|im_start|>assistant\n")
    options = [r["choices"] for r in sorted((r for r in RECORDS if r["subject"] != "astronomy"),
                                            key=lambda r: (r["subject"], RECORDS.index(r)))]
    for (comp, ext), opts in zip(zip(per["completion"], per["extracted"]), options):
        assert ext == extract_study(comp, opts)
    assert set(summ["protocol"].dropna()) == {"study@2"}
    assert summ[summ["metric"] == "target_score"]["value"].item() == pytest.approx(100 * per["correct"].mean(), abs=1e-9)


# --- the study's aggregation over the medical sets ------------------------------------------------------
def test_study_target_score_is_the_mean_of_the_sets_accuracies(tmp_path):
    import pandas as pd

    from peftarena_cli.evaluation.api import rescore_table, score_responses
    from peftarena_cli.tasks.target_tasks import load_target_task

    _, jl = _write(tmp_path)
    mq = tmp_path / "medqa.jsonl"
    mq.write_text("".join(json.dumps(r) + "\n" for r in MEDQA))
    mmlu = load_target_task(f"mmlu_medical={jl}")
    medqa = load_target_task(f"medqa={mq}")
    # MMLU: 3 of 4 right (the third answers A, its gold is C); MedQA: 1 of 2 right
    mmlu_answers = {"mmlu_medical-anatomy-0": "The answer is B.", "mmlu_medical-anatomy-1": "The answer is D.",
                    "mmlu_medical-college_medicine-0": "The answer is A.", "mmlu_medical-medical_genetics-0": "The answer is B."}
    per1, s1 = score_responses(mmlu, [{"id": k, "response": v} for k, v in mmlu_answers.items()])
    per2, s2 = score_responses(medqa, [{"id": "medqa-0", "response": "The answer is A."},
                                       {"id": "medqa-1", "response": "The answer is B."}])
    assert per1["correct"].tolist() == [True, True, False, True] and per2["correct"].tolist() == [True, False]
    _, summ = rescore_table(pd.concat([per1, per2], ignore_index=True))
    value = lambda task, metric: summ[(summ["task"] == task) & (summ["metric"] == metric)]["value"].item()  # noqa: E731
    assert value("mmlu_medical", "avg@1") == pytest.approx(75.0, abs=1e-9)
    assert value("medqa", "avg@1") == pytest.approx(50.0, abs=1e-9)
    # med_eval main.py: 'average' = the mean of the sources' accuracies = (75 + 50) / 2, not 4/6 of the items
    assert value("target", "target_score") == pytest.approx(62.5, abs=1e-9)


def test_mmlu_medical_is_one_of_the_studys_target_sets():
    from peftarena_cli.evaluation.protocols import STUDY
    from peftarena_cli.tasks import benchmarks

    assert "mmlu_medical" in STUDY.target_mean
    b = benchmarks.get("mmlu_medical")
    assert b.hub == ("cais/mmlu", "all", "test") and b.domain == "medical" and b.loglik == "letters"

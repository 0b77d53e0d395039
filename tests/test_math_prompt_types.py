"""The study's math prompt types (tasks/math_prompts.py): the rule that picks one for a model, against a
table of model names, and the exact prompts, written out by hand from PEFT-Arena's
third_party/math_eval/utils.py PROMPT_TEMPLATES; auto keeps the study@2 prompt; the choice is
recorded (overrides, per-sample meta, provenance)."""

from __future__ import annotations

import json

import pytest

from peftarena_cli.errors import IncompatibleInputs, UsageError

PROBLEM = "What is $1+1$?"
# The prompts of PROBLEM, by hand from the study's templates ({{}} is a literal {} there).
COT = "Question: What is $1+1$?\nAnswer:"
QWEN_BOXED = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nWhat is $1+1$?\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
              "<|im_start|>assistant\n")
LLAMA_BOXED = ("<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\n"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat is $1+1$?\nPlease reason step by step, and put your final "
               "answer within \\boxed{}.<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\n")
QWEN25_MATH_COT = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                   "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("names, boxed", [
    (["Qwen/Qwen2.5-7B"], "qwen-boxed"),
    (["Qwen/Qwen2.5-Math-7B-Instruct"], "qwen-boxed"),
    (["meta-llama/Llama-3.2-3B-Instruct"], "llama-boxed"),
    (["llama3.2-3b-ins"], "llama-boxed"),
    (["TinyLlama/TinyLlama-1.1B-Chat-v1.0"], "llama-boxed"),
    (["qwen-distilled-into-llama"], "llama-boxed"),   # 'llama' is tested first, over every name
    (["global_step_780", "Qwen/Qwen2.5-7B"], "qwen-boxed"),  # a checkpoint folder's name, then its config's
    (["QWEN2-1.5B"], "qwen-boxed"),                   # case-insensitive
])
def test_boxed_picks_the_family_format_and_auto_is_always_cot(names, boxed):
    from peftarena_cli.tasks.math_prompts import pick

    assert pick("boxed", names)[0] == boxed
    assert pick("auto", names)[0] == "cot"
    assert pick(None, names)[0] == "cot"
    assert pick("qwen25-math-cot", names)[0] == "qwen25-math-cot"


@pytest.mark.parametrize("names", [["mistralai/Mistral-7B-v0.1"], ["HuggingFaceTB/SmolLM2-135M-Instruct"], []])
def test_boxed_refuses_a_model_of_neither_family(names):
    from peftarena_cli.tasks.math_prompts import pick

    with pytest.raises(IncompatibleInputs, match="neither 'llama' nor 'qwen'"):
        pick("boxed", names)


def test_unknown_prompt_type_is_a_usage_error():
    from peftarena_cli.tasks.math_prompts import check_prompt_type

    with pytest.raises(UsageError, match="expected one of auto, boxed, cot"):
        check_prompt_type("pal")
    assert check_prompt_type(" Qwen-Boxed ") == "qwen-boxed"


def _math_file(tmp_path):
    p = tmp_path / "math500.jsonl"
    p.write_text(json.dumps({"problem": PROBLEM, "answer": "2", "unique_id": "t/1.json"}) + "\n")
    return p


@pytest.mark.parametrize("choice, names, prompt, chat, stop", [
    ("auto", ["Qwen/Qwen2.5-7B"], COT, True, ("\n\nQuestion:",)),
    ("boxed", ["Qwen/Qwen2.5-7B"], QWEN_BOXED, False,
     ("</s>", "<|im_end|>", "<|endoftext|>", "assistant", "user", "_end", "_start")),
    ("boxed", ["meta-llama/Llama-3.2-3B-Instruct"], LLAMA_BOXED, False, ("</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")),
    ("qwen25-math-cot", ["anything"], QWEN25_MATH_COT, False,
     ("</s>", "<|im_end|>", "<|endoftext|>", "assistant", "user", "_end", "_start")),
    ("cot", ["meta-llama/Llama-3.2-3B"], COT, True, ("\n\nQuestion:",)),
])
def test_rendered_prompts_are_the_studys_templates(tmp_path, choice, names, prompt, chat, stop):
    from helpers import make_tokenizer

    from peftarena_cli.evaluation.api import load_target_tasks, tasks_for_model

    tok = make_tokenizer()  # ChatML template
    task = load_target_tasks(f"math500={_math_file(tmp_path)}", protocol="study")[0]
    t = tasks_for_model([task], tok, "auto", names=names, prompt_type=choice)[0]
    assert t.items[0].prompt == prompt
    assert t.chat_template is chat and t.stop == stop
    rendered = t.render(tok, t.items[0])
    if chat:  # cot goes in a user turn of the tokenizer's template, as math_eval.py --apply_chat_template
        assert rendered == f"<|im_start|>user\n{COT}<|im_end|>\n<|im_start|>assistant\n"
    else:     # the family formats write the turns out: no second wrapping
        assert rendered == prompt
    ptype = {"auto": "cot", "boxed": "qwen-boxed" if "Qwen" in names[0] else "llama-boxed"}.get(choice, choice)
    assert t.prompt_type == ptype
    assert t.overrides == ("" if ptype == "cot" else f"prompt_type={ptype}")


def test_auto_leaves_the_study2_task_as_it_was(tmp_path):
    from dataclasses import replace

    from helpers import make_tokenizer

    from peftarena_cli.evaluation.api import load_target_tasks, tasks_for_model

    tok = make_tokenizer()
    task = load_target_tasks(f"math500={_math_file(tmp_path)}", protocol="study")[0]
    t = tasks_for_model([task], tok, "auto", names=["Qwen/Qwen2.5-7B"])[0]
    assert replace(t, chat_template=None, chat_rule="", prompt_rule="") == task


def test_lmeval_tasks_have_no_prompt_type(tmp_path):
    from helpers import make_tokenizer

    from peftarena_cli.evaluation.api import load_target_tasks, tasks_for_model

    task = load_target_tasks(f"math500={_math_file(tmp_path)}", protocol="lm-eval")[0]
    t = tasks_for_model([task], make_tokenizer(), "auto", names=["Qwen/Qwen2.5-7B"], prompt_type="boxed")[0]
    assert t.prompt_type == "" and t.items[0].prompt == task.items[0].prompt


def test_cli_records_the_prompt_type(tmp_path, cli, tiny_model_dir):
    from peftarena_cli.artifacts.tables import read_table

    out = tmp_path / "o.parquet"
    r = cli("eval-target", tiny_model_dir, "--task", f"math500={_math_file(tmp_path)}", "--prompt-type", "qwen25-math-cot",
            "-n", "1", "--temperature", "0", "--max-new-tokens", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    per, prov = read_table(out)
    assert per["prompt"].tolist() == [QWEN25_MATH_COT]
    assert json.loads(per["meta"].iloc[0])["prompt_type"] == "qwen25-math-cot"
    summ, _ = read_table(tmp_path / "o.summary.parquet")
    assert set(summ["overrides"]) == {"max_new_tokens=3,n=1,prompt_type=qwen25-math-cot,temperature=0.0"}
    assert prov["extra"]["math_prompt_types"] == {"math500": "qwen25-math-cot (--prompt-type qwen25-math-cot)"}


def test_cli_refusals_come_before_the_model_loads(tmp_path, cli, tiny_model_dir):
    f = _math_file(tmp_path)
    r = cli("eval-target", tiny_model_dir, "--task", f"math500={f}", "--prompt-type", "pal", "-o", tmp_path / "a.parquet")
    assert r.returncode == 2 and "--prompt-type 'pal'" in r.stderr
    # the tiny model's folder is named "model": no family for boxed
    r = cli("eval-target", tiny_model_dir, "--task", f"math500={f}", "--prompt-type", "boxed", "-o", tmp_path / "b.parquet")
    assert r.returncode == 1 and "neither 'llama' nor 'qwen'" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval-target", tiny_model_dir, "--task", f"math500={f}", "--protocol", "lm-eval", "--prompt-type", "qwen-boxed",
            "-o", tmp_path / "c.parquet")
    assert r.returncode == 1 and "no task here has a math prompt type" in r.stderr
    assert not any((tmp_path / n).exists() for n in ("a.parquet", "b.parquet", "c.parquet"))

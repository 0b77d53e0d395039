"""--chat-template auto|on|off and the PEFT-Arena study's model-name rule (docs/eval.md, "Chat template").

The study (eval/generate_opencompass_config.py, is_instruct_model) lower-cases the model's name and
looks for any of the substrings instruct, -ins, ins-, chat, it-; a hit means the chat-template model
class on BBH. The expected values below are that test worked by hand on each name."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from peftarena_cli.tasks.prompting import (BY_NAME, check_chat_template_mode, decide_chat_template, model_names,
                                           study_name_rule)
from peftarena_cli.tasks.spec import Item, Task

# (name, template used under the study's rule, the marker that decides) -- worked by hand:
NAME_TABLE = [
    ("Qwen/Qwen2.5-7B", False, None),                      # no marker: "qwen/qwen2.5-7b"
    ("Qwen/Qwen2.5-7B-Instruct", True, "instruct"),
    ("meta-llama/Llama-3.2-3B-Instruct", True, "instruct"),
    ("meta-llama/Llama-3.1-8B", False, None),
    ("Qwen/Qwen1.5-7B-Chat", True, "chat"),
    ("mistralai/Mistral-7B-Instruct-v0.3", True, "instruct"),
    # "gemma-2-2b-it" ends in "-it": the study's marker is "it-" (hyphen after), so no hit
    ("google/gemma-2-2b-it", False, None),
    ("google/gemma-it-7b", True, "it-"),
    ("SeaLLM-7B-ins-v2", True, "-ins"),                     # "-ins" comes before "ins-" in the list
    # ambiguous names: the plain substring test decides, as in the study
    ("mistral-instruction-tuned-base", True, "instruct"),   # "instruct" inside "instruction"
    ("commit-7b", True, "it-"),                             # "it-" inside "commit-"
    ("acme/llama-insight-7b", True, "-ins"),                # "-ins" inside "-insight"
    ("INSTRUCT-MODEL", True, "instruct"),                   # case-insensitive
]


@pytest.mark.parametrize("name,expected,marker", NAME_TABLE)
def test_study_name_rule_on_real_names(name, expected, marker):
    use, why = study_name_rule([name])
    assert use is expected
    if marker:
        assert why == f"study name rule: {marker!r} in {name!r}"
    else:
        assert why.startswith("study name rule: no instruct marker")


def test_names_of_an_alias_and_a_directory(tmp_path):
    assert model_names("smollm2-135m") == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    d = tmp_path / "chat-runs" / "merged"  # a parent folder's name is not read (documented choice)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}))
    assert model_names(str(d)) == ["merged", "Qwen/Qwen2.5-7B-Instruct"]
    assert study_name_rule(model_names(str(d)))[0] is True
    (d / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-7B"}))
    assert study_name_rule(model_names(str(d)))[0] is False
    assert model_names("Qwen/Qwen2.5-7B") == ["Qwen/Qwen2.5-7B"]  # a hub id: as given


def test_decision_per_protocol_setting():
    base, inst = ["Qwen/Qwen2.5-7B"], ["Qwen/Qwen2.5-7B-Instruct"]
    # study BBH: the name rule (a base model that ships a template gets plain prompts)
    assert decide_chat_template("auto", BY_NAME, "study@2", True, base)[0] is False
    assert decide_chat_template("auto", BY_NAME, "study@2", True, inst)[0] is True
    assert decide_chat_template("auto", BY_NAME, "study@2", False, inst)[0] is False  # nothing to apply
    # study IFEval / NQ / math / medical: always the template (the study's scripts), whatever the name
    assert decide_chat_template("auto", True, "study@2", True, base)[0] is True
    # lm-eval: off unless asked
    assert decide_chat_template("auto", False, "lm-eval@1", True, inst) == (False, "lm-eval protocol: no chat template")
    # built-in suites: today's behaviour, the template when the tokenizer has one
    assert decide_chat_template("auto", True, "builtin@1", True, [])[0] is True
    assert decide_chat_template("auto", True, "builtin@1", False, [])[0] is False
    assert decide_chat_template("on", False, "lm-eval@1", True, base) == (True, "--chat-template on")
    assert decide_chat_template("off", BY_NAME, "study@2", True, inst) == (False, "--chat-template off")


def test_registry_holds_the_study_setting():
    from peftarena_cli.tasks import benchmarks

    study = benchmarks.protocol_settings("study")
    assert study["bbh"].chat is True and study["bbh"].chat_by_name is True
    assert all(study[f].chat is True and not study[f].chat_by_name for f in ("ifeval", "nq_open", "math", "gsm8k", "medical"))
    assert all(s.chat is False for s in benchmarks.protocol_settings("lm-eval").values())


def test_study_bbh_keeps_the_name_rule_through_the_protocol(tiny_model_dir):
    from peftarena_cli.evaluation.protocols import apply

    raw = Task("bbh", [Item("bbh-0", "", "(A)", {"subtask": "navigate", "fields": {"input": "Go left?"}})], "bbh",
               raw=True, subtask_key="subtask", fewshot={"navigate": "Q: x\nA: y"})
    tok = _tok(tiny_model_dir)
    study, lme = apply(raw, "study"), apply(raw, "lm-eval")
    assert study.chat_by_name and not lme.chat_by_name
    it = study.items[0]
    assert study.for_model("auto", tok, ["Qwen/Qwen2.5-7B"]).render(tok, it) == it.prompt
    assert study.for_model("auto", tok, ["Qwen/Qwen2.5-7B-Instruct"]).render(tok, it) == tok.apply_chat_template(
        [{"role": "user", "content": it.prompt}], tokenize=False, add_generation_prompt=True)
    assert lme.for_model("auto", tok, ["Qwen/Qwen2.5-7B-Instruct"]).render(tok, lme.items[0]) == lme.items[0].prompt


def test_mode_values():
    from peftarena_cli.errors import UsageError

    assert [check_chat_template_mode(m) for m in ("auto", "ON", None)] == ["auto", "on", "auto"]
    with pytest.raises(UsageError):
        check_chat_template_mode("yes")


def _tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_prompt_rendered_with_and_without(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    assert tok.chat_template  # the fixture ships a template
    item = Item("x-0", "Q: is 2 > 1?\nA: Let's think step by step.", None)
    task = Task("bbh", [item], "bbh:study", chat=True, chat_by_name=True, protocol="study@2")
    expected_chat = tok.apply_chat_template([{"role": "user", "content": item.prompt}], tokenize=False,
                                            add_generation_prompt=True)
    assert expected_chat != item.prompt
    on_name = task.for_model("auto", tok, ["Qwen/Qwen2.5-7B-Instruct"])
    off_name = task.for_model("auto", tok, ["Qwen/Qwen2.5-7B"])
    assert on_name.render(tok, item) == expected_chat
    assert off_name.render(tok, item) == item.prompt
    assert task.for_model("off", tok, ["x-Instruct"]).render(tok, item) == item.prompt
    assert task.for_model("on", tok, ["Qwen/Qwen2.5-7B"]).render(tok, item) == expected_chat
    # undecided (callers that never decide): the template whenever the tokenizer has one, as before
    assert task.render(tok, item) == expected_chat
    # a built-in task switched off takes training's "Question: ...\nAnswer:" form
    b = Task("arith", [item], "math", protocol="builtin@1")
    assert b.for_model("off", tok).render(tok, item) == f"Question: {item.prompt}\nAnswer:"
    assert b.for_model("auto", tok).render(tok, item) == expected_chat


def _no_template_copy(tiny_model_dir, tmp_path):
    d = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, d)
    cfg_p = d / "tokenizer_config.json"
    cfg = json.loads(cfg_p.read_text())
    cfg.pop("chat_template", None)
    cfg_p.write_text(json.dumps(cfg))
    for f in d.glob("chat_template.*"):
        f.unlink()
    return d


def test_on_without_template_refused_before_model_work(tiny_model_dir, tmp_path, cli, monkeypatch):
    d = _no_template_copy(tiny_model_dir, tmp_path)
    import peftarena_cli.artifacts.loading as loading

    def no_load(*a, **k):  # the refusal must come before any model is loaded
        raise AssertionError("model loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    out = tmp_path / "g.parquet"
    r = cli("eval-general", d, "--suite", "builtin.facts", "--limit", "2", "--chat-template", "on", "-o", out)
    assert r.returncode == 1
    assert "has no chat template" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = cli("eval-target", d, "--limit", "2", "--chat-template", "maybe", "-o", out)
    assert r.returncode == 2


def test_summary_column_and_provenance(tiny_model_dir, tmp_path, cli):
    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.evaluation.api import builtin_prompts

    tok = _tok(tiny_model_dir)
    raw = builtin_prompts("ifeval", 2, 0)  # the suite's user messages, independent of the renderer
    chat = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in raw]
    expected_prompts = {"on": chat, "auto": chat, "off": [f"Question: {q}\nAnswer:" for q in raw]}
    rules = {"on": "--chat-template on", "off": "--chat-template off",
             "auto": "builtin protocol: chat template (the tokenizer has one)"}
    for mode in ("on", "off", "auto"):
        out = tmp_path / f"{mode}.parquet"
        r = cli("eval-general", tiny_model_dir, "--suite", "builtin.ifeval", "--limit", "2", "--max-new-tokens", "2",
                "--chat-template", mode, "-o", out)
        assert r.returncode == 0, r.stderr
        per, _ = read_table(out)
        assert per.drop_duplicates("id")["prompt"].tolist() == expected_prompts[mode]
        summ, prov = read_table(out.with_name(f"{mode}.summary.parquet"))
        assert summ["chat_template"].tolist() == [mode != "off"] * len(summ)  # aggregate row included
        assert prov["extra"]["chat_template"] == mode
        assert prov["extra"]["chat_template_rules"] == {"ifeval_builtin": rules[mode]}


def test_finetune_no_chat_template_is_an_alias_of_off(capsys):
    from peftarena_cli.cli.finetune import _chat_template_mode
    from peftarena_cli.errors import UsageError

    assert _chat_template_mode("auto", False) == "auto"
    assert _chat_template_mode("on", False) == "on"
    assert _chat_template_mode("auto", True) == "off"
    assert "--no-chat-template is deprecated" in capsys.readouterr().err
    with pytest.raises(UsageError):
        _chat_template_mode("on", True)

"""`peftarena eval-target` / `eval-general` end to end on the tiny model: tables, several adapters on
one base, --responses scoring (IFEval's official response format, re-scoring a Parquet), and every
bad input of the issue (clear error, exit 1, nothing written)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from helpers import run_cli  # the fixture run and the pipe: stdout a real pipe, one thread via the environment

from peftarena_cli.artifacts.tables import read_table

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def target_run(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evt") / "target.parquet"
    r = run_cli("eval-target", tiny_model_dir, "--adapter", tiny_lora_dir, "--include-base", "--limit", "3",
                "--max-new-tokens", "12", "--batch-size", "2", "-o", out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr.decode()
    return out, r


def test_eval_target_tables_and_several_adapters(target_run, tiny_lora_dir):
    out, r = target_run
    df, prov = read_table(out)
    for c in ("model", "task", "id", "sample", "prompt", "completion", "extracted", "reference", "correct"):
        assert c in df.columns
    assert set(df["model"]) == {"base", str(tiny_lora_dir)}
    assert len(df) == 6 and prov["command"] == "eval-target" and "base" in prov["inputs"]
    # the base and the adapter generate different text (the adapter is really applied)
    by = df.pivot(index="id", columns="model", values="completion")
    assert (by["base"] != by[str(tiny_lora_dir)]).any()
    summ, _ = read_table(out.with_name("target.summary.parquet"))
    assert list(summ.columns)[:5] == ["model", "task", "metric", "value", "n"]
    assert set(summ["protocol"]) == {"builtin@1"} and set(summ["overrides"]) == {"max_new_tokens=12"}
    ts = summ[summ["metric"] == "target_score"]
    assert len(ts) == 2 and set(ts["task"]) == {"target"}
    # summary recomputed independently from the per-sample rows
    for model, g in df.groupby("model"):
        assert ts[ts["model"] == model]["value"].item() == pytest.approx(100.0 * g["correct"].mean())


def test_rescore_parquet_reproduces_scores(cli, target_run, tmp_path):
    out, _ = target_run
    df, _ = read_table(out)
    base_rows = df[df["model"] == "base"].drop(columns=["model"])
    src = tmp_path / "base.parquet"
    base_rows.to_parquet(src)
    r = cli("eval-target", "--responses", src, "-o", tmp_path / "re.parquet")
    assert r.returncode == 0, r.stderr
    re, _ = read_table(tmp_path / "re.parquet")
    assert list(re["correct"]) == list(base_rows["correct"]) and list(re["extracted"]) == list(base_rows["extracted"])


def test_eval_general_pipe_gives_parquet(tiny_model_dir):
    r = run_cli("eval-general", tiny_model_dir, "--suite", "builtin.facts,builtin.ifeval", "--limit", "2",
                "--max-new-tokens", "8", env={**ONE_THREAD, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr.decode()
    df, _ = read_table(io.BytesIO(r.stdout))
    assert set(df["task"]) == {"facts", "ifeval_builtin"} and len(df) == 4
    assert df.loc[df["task"] == "ifeval_builtin", "inst_strict"].map(len).ge(1).all()
    assert "builtin_general_score" in r.stderr.decode()  # the built-in suite's own aggregate, not the study's


def test_ifeval_official_response_format(cli, shared_data, tmp_path):
    recs = [json.loads(x) for x in (shared_data / "ifeval" / "input_data.jsonl").read_text().splitlines()[:2]]
    good = " ".join(["word"] * 300) + " *one* *two* *three*"  # follows all 3 instructions of the first prompt
    resp = tmp_path / "input_response_data.jsonl"
    resp.write_text("\n".join(json.dumps({"prompt": r["prompt"], "response": t})
                              for r, t in zip(recs, [good, "Short, bad."])) + "\n")
    out = tmp_path / "if.parquet"
    r = cli("eval-general", "--suite", f"ifeval={shared_data / 'ifeval' / 'input_data.jsonl'}",
                "--responses", resp, "-o", out)
    assert r.returncode == 0, r.stderr
    df, _ = read_table(out)
    assert list(df["inst_strict"].iloc[0]) == [True, True, True]
    assert df["prompt_strict"].tolist() == [True, False]
    summ, _ = read_table(tmp_path / "if.summary.parquet")
    s = summ.set_index(["task", "metric"])["value"]
    n_inst = len(recs[0]["instruction_id_list"]) + len(recs[1]["instruction_id_list"])
    expected = 100.0 * (3 + sum(df["inst_strict"].iloc[1])) / n_inst
    assert s[("ifeval", "inst_strict")] == pytest.approx(expected)
    assert s[("general", "general_mean")] == pytest.approx(expected)  # IFEval alone is not the study's general_score


def test_unparsable_completion_is_kept_and_wrong(cli, tmp_path):
    resp = tmp_path / "gsm.jsonl"
    rows = [{"question": "1+1?", "answer": "so\n#### 2", "response": "The answer is 2."},
            {"question": "2+2?", "answer": "#### 4", "response": "I have no idea."},
            {"question": "3+3?", "answer": "#### 6", "response": "6 #### 6"}]
    resp.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "s.parquet"
    r = cli("eval-target", "--task", "gsm8k", "--responses", resp, "-o", out)
    assert r.returncode == 0, r.stderr
    df, _ = read_table(out)
    assert df["correct"].tolist() == [True, False, True] and df["extracted"].tolist()[1] == ""
    assert df["correct_strict"].isna().all()  # the study grades once (no strict/flexible pair)
    # lm-eval's gsm8k: strict-match wants "#### N", flexible-extract takes the last number
    r = cli("eval-target", "--task", "gsm8k", "--responses", resp, "--protocol", "lm-eval", "-o", tmp_path / "l.parquet")
    assert r.returncode == 0, r.stderr
    df, _ = read_table(tmp_path / "l.parquet")
    assert df["correct_strict"].tolist() == [False, False, True] and df["correct_flexible"].tolist() == [True, False, True]


@pytest.mark.parametrize("case", ["unknown_task", "unknown_suite", "missing_fields", "k_gt_n", "empty", "vllm"])
def test_bad_inputs_exit_1_without_output(cli, case, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    args = {
        "unknown_task": ["eval-target", tiny_model_dir, "--task", "nosuchtask"],
        "unknown_suite": ["eval-general", tiny_model_dir, "--suite", "builtin,nosuch"],
        "missing_fields": ["eval-target", tiny_model_dir, "--task", f"gsm8k={bad}"],
        "k_gt_n": ["eval-target", tiny_model_dir, "-n", "2", "--temperature", "0.7", "--k", "1,4"],
        "empty": ["eval-target", tiny_model_dir, "--task", f"math500={tmp_path / 'empty.jsonl'}"],
        "vllm": ["eval-general", tiny_model_dir, "--backend", "vllm"],
    }[case]
    bad.write_text(json.dumps({"prompt": "x", "solution": "y"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "out.parquet"
    r = cli(*args, "-o", out)
    err = r.stderr
    assert r.returncode == 1, err
    assert err.startswith("error: ") and "Traceback" not in err and "hint: " in err
    assert not out.exists() and not (tmp_path / "out.summary.parquet").exists()
    assert {"unknown_task": "nosuchtask", "unknown_suite": "nosuch", "missing_fields": "lacks the field",
            "k_gt_n": "k=4", "empty": "no records", "vllm": "vllm"}[case] in err


def test_parse_limit_forms():
    from peftarena_cli.errors import UsageError
    from peftarena_cli.tasks.limits import parse_limit, part_limit

    assert parse_limit(None) is None and parse_limit("300") == 300 and parse_limit(" 12 ") == 12
    lim = parse_limit("ifeval=280,bbh=200,facts=358")
    assert lim == {"ifeval": 280, "bbh": 200, "facts": 358}
    assert [part_limit(lim, p) for p in ("ifeval", "bbh", "facts", "nq_open", "*")] == [280, 200, 358, None, None]
    lim = parse_limit("250,facts=358")
    assert part_limit(lim, "facts") == 358 and part_limit(lim, "ifeval") == 250 and part_limit(lim, "*") == 250
    for bad, msg in [("ifevall=3", "unknown part"), ("0", "at least 1"), ("bbh=x", "whole number"),
                     ("bbh=2,bbh=3", "twice"), ("facts=-1", "at least 1")]:
        with pytest.raises(UsageError, match=msg):
            parse_limit(bad)


def test_eval_general_limit_per_part(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "g.parquet"
    r = cli("eval-general", tiny_model_dir, "--limit", "2,facts=5", "--max-new-tokens", "4", "-o", out)
    assert r.returncode == 0, r.stderr
    df, prov = read_table(out)
    assert df.groupby("task").size().to_dict() == {"bbh_builtin": 2, "facts": 5, "ifeval_builtin": 2}
    summ, _ = read_table(out.with_name("g.summary.parquet"))
    n = summ.drop_duplicates("task").set_index("task")["n"].to_dict()
    assert n["facts"] == 5 and n["ifeval_builtin"] == 2


@pytest.mark.parametrize("limit", ["ifevall=2", "0", "bbh=two"])
def test_eval_general_bad_limit_is_a_usage_error(cli, tiny_model_dir, tmp_path, limit):
    out = tmp_path / "g.parquet"
    r = cli("eval-general", tiny_model_dir, "--limit", limit, "-o", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "--limit" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()

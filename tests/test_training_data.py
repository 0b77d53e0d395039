"""Training data loading (built-in task, local files, dataset dirs = the hub code path) and rewards."""

from __future__ import annotations

import json

import pytest

from peftarena_cli.errors import DataError, InputNotFound
from peftarena_cli.tasks import arith
from peftarena_cli.tasks.prompting import render_prompt
from peftarena_cli.training import rewards
from peftarena_cli.training.data import load_train_data


@pytest.fixture(scope="module")
def tok():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import make_tokenizer

    return make_tokenizer()


def test_arith_sft_uses_train_split_and_shared_prompt(tok):
    d = load_train_data("arith", tok, "sft", n=20, seed=3)
    recs = arith.generate("train", 20, 3)
    assert len(d) == 20
    assert d.records[0]["prompt"] == render_prompt(tok, recs[0]["question"])
    assert d.records[0]["completion"] == recs[0]["solution"]
    assert d.records[0]["prompt"].startswith("<|im_start|>user")  # chat template applied
    test_q = {r["question"] for r in arith.generate("test", 200, 0)}
    assert not test_q & {r["question"] for r in arith.generate("train", 500, 3)}
    r = load_train_data("arith", tok, "rlvr", n=5, seed=3)
    assert r.records[0]["answer"] == recs[0]["answer"] and "completion" not in r.records[0]


def _write_jsonl(p, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_files(tok, tmp_path, fmt):
    import pandas as pd

    rows = [{"prompt": "What is 2+3?", "response": "2+3=5. The answer is 5.", "answer": "5"},
            {"prompt": "What is 4*4?", "response": "The answer is 16.", "answer": "16"}]
    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(p, rows)
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    else:
        pd.DataFrame(rows).to_parquet(p)
    sft = load_train_data(str(p), tok, "sft")
    assert [r["completion"] for r in sft.records] == [r["response"] for r in rows]
    assert sft.records[1]["prompt"] == render_prompt(tok, "What is 4*4?")
    rl = load_train_data(str(p), tok, "rlvr")
    assert [r["answer"] for r in rl.records] == ["5", "16"]


def test_gsm8k_format_and_dataset_dir(tok, tmp_path, shared_data):
    """A dataset directory goes through datasets.load_dataset(name, config, split), the hub code path."""
    src = shared_data / "math" / "gsm8k_test.jsonl"
    lines = src.read_text().splitlines()[:5]
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    first = json.loads(lines[0])
    sft = load_train_data(str(d), tok, "sft", split="train")
    assert sft.source["kind"] == "dir" and len(sft) == 5
    final = first["answer"].split("####")[-1].strip()
    assert sft.records[0]["completion"].endswith(f"The answer is {final}.")
    assert "####" not in sft.records[0]["completion"]
    rl = load_train_data(str(d), tok, "rlvr", split="train")
    assert rewards.score(f"so the answer is {final}", rl.records[0]["answer"]) == 1.0
    assert rewards.score("the answer is 123456789", rl.records[0]["answer"]) == 0.0


def test_multiple_choice_records(tok, tmp_path):
    p = _write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "Which organ pumps blood?", "opa": "Liver", "opb": "Heart", "opc": "Lung", "opd": "Skin", "cop": 1},
        {"question": "Largest bone?", "options": {"A": "Femur", "B": "Ulna"}, "answer_idx": "A"},
    ])
    rl = load_train_data(str(p), tok, "rlvr")
    assert [r["answer"] for r in rl.records] == ["B", "A"] and rl.records[0]["kind"] == "choice"
    assert "B. Heart" in rl.records[0]["prompt"]
    sft = load_train_data(str(p), tok, "sft")
    assert sft.records[0]["completion"] == "The answer is B."


def test_bad_data(tok, tmp_path):
    with pytest.raises(InputNotFound):
        load_train_data(str(tmp_path / "missing.jsonl"), tok, "sft")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_train_data(str(empty), tok, "sft")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": \n not json at all\n')
    with pytest.raises(DataError, match="cannot read"):
        load_train_data(str(bad), tok, "sft")
    cols = _write_jsonl(tmp_path / "cols.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="lacks a prompt column"):
        load_train_data(str(cols), tok, "sft")
    noresp = _write_jsonl(tmp_path / "noresp.jsonl", [{"prompt": "hello"}])
    with pytest.raises(DataError, match="lacks a response column"):
        load_train_data(str(noresp), tok, "sft")
    with pytest.raises(DataError, match="no column 'nope'"):
        load_train_data(str(noresp), tok, "sft", prompt_column="nope")


@pytest.mark.parametrize("completion,ref,kind,want", [
    ("12 + 7 = 19. The answer is 19.", "19", "math", 1.0),
    ("The answer is 19", "#### 19", "math", 1.0),
    ("so \\boxed{1,200}", "1200", "math", 1.0),
    ("The answer is 18.", "19", "math", 0.0),
    ("I think 3 then 19", "19", "math", 1.0),       # last number
    ("no number here", "19", "math", 0.0),
    ("The answer is \\frac{1}{2}", "\\frac{1}{2}", "math", 1.0),
    ("The answer is (B).", "B", "choice", 1.0),
    ("The answer is C", "B", "choice", 0.0),
    ("B", "B", "choice", 1.0),
    ("I am not sure", "B", "choice", 0.0),
])
def test_rewards_hand_scored(completion, ref, kind, want):
    assert rewards.score(completion, ref, kind) == want
    assert rewards.verifiable_reward([completion], [ref], [kind]) == [want]

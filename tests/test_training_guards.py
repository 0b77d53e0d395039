"""`peftarena finetune` refuses to train on garbage: numeric options out of range (exit 2), a run whose
loss or weights become NaN/Inf (stopped, exit 1, only finite checkpoints kept), a tokenizer without
EOS, local data that reached for the network, JSON nested deep enough to crash a parser, and text
files that are not UTF-8. Each test fails on the code before these guards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

TINY = ["--max-length", "512", "--batch-size", "2"]
RLVR = ["--regime", "rlvr", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "4"]
ROOT = Path(__file__).resolve().parents[1]


def _snapshot(d: Path) -> dict:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def _one_line_error(r, code: int) -> str:
    assert r.returncode == code, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return err[0]


# ---- 1. every numeric option is checked before any work (exit 2) ------------------------------------

@pytest.mark.parametrize("args,flag", [
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "inf"], "--alpha"),
    (["--rank", "0"], "--rank"),
    (["--method", "oft", "--block-size", "0"], "--block-size"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--num-examples", "0"], "--num-examples"),
    (["--seed", "-1"], "--seed"),
    (["--lr-scheduler", "foo"], "--lr-scheduler"),
    (["--lr-scheduler", "reduce_lr_on_plateau"], "--lr-scheduler"),  # needs an evaluation strategy
    ([*RLVR, "--temperature", "0"], "--temperature"),
    ([*RLVR, "--temperature", "inf"], "--temperature"),
    ([*RLVR, "--temperature", "nan"], "--temperature"),
    ([*RLVR, "--beta", "-1"], "--beta"),
    ([*RLVR, "--beta", "nan"], "--beta"),
    # the tiny model has 512 positions (tests/helpers.py)
    ([*RLVR, "--max-completion-length", "1000000000"], "--max-completion-length"),
    (["--max-length", "100000"], "--max-length"),
])
def test_out_of_range_options_are_usage_errors(tiny_model_dir, tmp_path, cli, args, flag):
    out = tmp_path / "run"
    base = ["--steps", "1", "--max-length", "512", "--batch-size", "2"]
    r = cli("finetune", tiny_model_dir, "-o", out, *base, *args)
    line = _one_line_error(r, 2)
    assert flag in line
    assert not out.exists()


def test_scheduler_error_lists_the_valid_names(tiny_model_dir, tmp_path, cli):
    r = cli("finetune", tiny_model_dir, "-o", tmp_path / "run", "--steps", "1", "--lr-scheduler", "foo")
    _one_line_error(r, 2)
    for name in ("linear", "cosine", "constant", "constant_with_warmup"):
        assert name in r.stderr


def test_context_length_error_names_the_limit(tiny_model_dir, tmp_path, cli):
    r = cli("finetune", tiny_model_dir, "-o", tmp_path / "run", "--steps", "1", *RLVR,
            "--max-completion-length", "513")
    line = _one_line_error(r, 2)
    assert "513" in line and "512" in line


# ---- 2. a diverging run stops; only finite checkpoints stay ----------------------------------------

def _all_finite(path: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values())


def test_divergence_stops_the_run_and_keeps_the_finite_checkpoints(tiny_model_dir, tmp_path, cli):
    # lr 1e30: Adam's first step moves each LoRA B entry by ~1e30 (finite); the next forward pass
    # overflows, so step 2's loss and weights are NaN. Before the guard the run went on to "complete".
    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "4", "--save-every", "1", "--lr", "1e30", *TINY)
    line = _one_line_error(r, 1)
    assert "diverged at step 2" in line
    assert "checkpoint-1" in r.stderr  # the hint says what is kept
    ckpts = sorted(out.glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-1"]
    assert _all_finite(ckpts[0] / "adapter_model.safetensors")
    assert not (out / "final").exists()
    for f in (out / "resume").rglob("*.safetensors"):  # the trainer state kept for --resume
        assert _all_finite(f), f
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "diverged" and man["stopped_at_step"] == 2 and man["last_step"] == 1
    assert man["last_finite_checkpoint"] == "checkpoint-1" and man["stop_reason"]
    assert [c["step"] for c in man["checkpoints"]] == [1]

    # resuming the same settings would diverge the same way: refused, nothing touched
    before = _snapshot(out)
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "4", "--save-every", "1", "--lr", "1e30", *TINY,
            "--resume")
    line = _one_line_error(r, 1)
    assert "diverged at step 2" in line
    assert _snapshot(out) == before


def test_non_finite_loss_before_any_checkpoint_keeps_only_the_manifest(tiny_model_dir, tmp_path, cli):
    # no save before step 4: the NaN loss logged at step 2 stops the run (the trainer's default
    # logging filter used to hide it as 0.0); no checkpoint is written, and the manifest records
    # the divergence with no finite checkpoint
    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "4", "--save-every", "4", "--lr", "1e30", *TINY)
    line = _one_line_error(r, 1)
    assert "diverged at step 2" in line and "loss" in line
    assert "no checkpoint had been saved" in r.stderr
    assert not list(out.glob("checkpoint-*")) and not (out / "final").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "diverged" and man["stopped_at_step"] == 2 and "loss" in man["stop_reason"]
    assert man["last_finite_checkpoint"] is None and man["last_step"] is None and man["checkpoints"] == []


# ---- 3. a tokenizer without EOS ---------------------------------------------------------------------

def _model_without_eos(src: Path, dst: Path, config_too: bool) -> Path:
    shutil.copytree(src, dst)
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    tc["eos_token"] = None
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    if config_too:
        for name in ("config.json", "generation_config.json"):
            c = json.loads((dst / name).read_text())
            c["eos_token_id"] = None
            (dst / name).write_text(json.dumps(c))
    return dst


def test_tokenizer_without_eos_takes_the_config_eos(tiny_model_dir, tmp_path, cli):
    from peftarena_cli.artifacts.loading import load_tokenizer
    from peftarena_cli.artifacts.safetensors_io import resolve_model

    m = _model_without_eos(tiny_model_dir, tmp_path / "m", config_too=False)
    assert load_tokenizer(resolve_model(str(m))).eos_token is None  # the premise
    out = tmp_path / "run"
    r = cli("finetune", m, "-o", out, "--steps", "1", *TINY)
    assert r.returncode == 0, r.stderr
    assert "no EOS token" in r.stderr and "'<|im_end|>'" in r.stderr  # id 4 in tests/helpers.py
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_tokenizer_and_config_without_eos_is_a_one_line_error(tiny_model_dir, tmp_path, cli):
    m = _model_without_eos(tiny_model_dir, tmp_path / "m", config_too=True)
    out = tmp_path / "run"
    r = cli("finetune", m, "-o", out, "--steps", "1", *TINY)
    line = _one_line_error(r, 1)
    assert "no EOS token" in line
    assert not out.exists()


# ---- 4. local data never touches the network --------------------------------------------------------

def test_local_data_makes_no_network_call(tiny_model_dir, tmp_path, cli, monkeypatch):
    rows = [{"prompt": f"What is {i}+1?", "response": f"The answer is {i + 1}."} for i in range(4)]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = tmp_path / "dsdir"
    d.mkdir()
    (d / "train.jsonl").write_text(f.read_text())
    calls = []

    def where() -> str:  # the caller's frames, for the failure message
        return " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(traceback.extract_stack()[-25:-2]))

    def no_lookup(*a, **k):
        calls.append(("getaddrinfo", a[:2], where()))
        raise OSError("network use in a test")

    def no_connect(self, *a, **k):
        calls.append(("connect", a[:1], where()))
        raise OSError("network use in a test")

    # the libraries' own defaults, whatever this machine's environment says: TRL skips its usage report
    # under CI, and HF_HUB_OFFLINE / HF_HUB_DISABLE_TELEMETRY (read at import) would hide the calls
    import datasets
    from huggingface_hub import constants

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    for data in (f, d):
        out = tmp_path / f"run-{data.name}"
        r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", "--data", data, *TINY)
        assert r.returncode == 0, r.stderr
        assert calls == [], (data, calls)


# ---- 5. JSON nested deeply enough to crash a parser -------------------------------------------------

def test_deeply_nested_data_line_is_an_error_not_a_crash(tiny_model_dir, tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text('{"prompt": "1+1", "response": "2"}\n' + "[" * 100000 + "]" * 100000 + "\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a subprocess: the crash this guards against was a segfault, which would take pytest down with it
    p = subprocess.run([sys.executable, "-m", "peftarena_cli", "finetune", str(tiny_model_dir), "-o", str(out),
                        "--steps", "1", "--data", str(f), *TINY], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "line 2: nesting too deep" in err[0], p.stderr[-2000:]
    assert not out.exists()


def test_nesting_bound_in_prompt_and_task_files(tmp_path):
    from peftarena_cli.activations.prompts import read_prompt_file
    from peftarena_cli.errors import PeftArenaError
    from peftarena_cli.tasks.sources import read_records

    deep = "[" * 100000 + "]" * 100000
    for name, reader in (("p.jsonl", read_prompt_file), ("t.jsonl", read_records)):
        f = tmp_path / name
        f.write_text('{"prompt": "a"}\n{"prompt": "b"}\n' + deep + "\n")
        with pytest.raises(PeftArenaError, match="line 3: nesting too deep"):
            reader(f)
    # brackets inside strings are text, not nesting: 500 of them parse
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps({"prompt": "[" * 500 + "{" * 500}) + "\n")
    assert read_prompt_file(f) == ["[" * 500 + "{" * 500]
    # exactly at the bound (100 levels) is accepted, one more is not
    f.write_text(json.dumps({"prompt": "x", "n": json.loads("[" * 99 + "]" * 99)}) + "\n")  # 1 + 99 levels
    assert read_prompt_file(f) == ["x"]
    f.write_text(json.dumps({"prompt": "x", "n": json.loads("[" * 100 + "]" * 100)}) + "\n")
    with pytest.raises(PeftArenaError, match="line 1: nesting too deep"):
        read_prompt_file(f)


# ---- 6. text files that are not UTF-8 ---------------------------------------------------------------

def test_utf16_data_file_says_it_must_be_utf8(tiny_model_dir, tmp_path, cli):
    f = tmp_path / "d.jsonl"
    f.write_bytes('{"prompt": "1+1", "response": "2"}\n'.encode("utf-16"))
    before = f.read_bytes()
    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", "--data", f, *TINY)
    line = _one_line_error(r, 1)
    assert "UTF-16" in line and "must be UTF-8" in line
    assert not out.exists() and f.read_bytes() == before


@pytest.mark.parametrize("encoding,says", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32"),
                                           ("latin-1", "not UTF-8")])
def test_non_utf8_prompt_and_task_files(tmp_path, encoding, says):
    from peftarena_cli.activations.prompts import read_prompt_file
    from peftarena_cli.errors import PeftArenaError
    from peftarena_cli.tasks.sources import read_records

    text = '{"prompt": "café"}\n'
    for name, reader in (("p.jsonl", read_prompt_file), ("p.txt", read_prompt_file), ("t.jsonl", read_records),
                         ("t.json", read_records)):
        f = tmp_path / name
        f.write_bytes((text if name != "t.json" else "[" + text.strip() + "]").encode(encoding))
        with pytest.raises(PeftArenaError, match="must be UTF-8") as e:
            reader(f)
        assert says in str(e.value)
    # the same text in UTF-8, with or without a byte-order mark, reads
    f = tmp_path / "p.jsonl"
    for raw in (text.encode("utf-8"), text.encode("utf-8-sig")):
        f.write_bytes(raw)
        assert read_prompt_file(f) == ["café"]


def test_arith_level_asked_for_more_problems_than_it_has_stops_with_an_error(monkeypatch):
    """arith-1 has ~61,000 distinct train questions: asking for more used to loop forever. The exact
    limit stays the module's; a smaller stall limit here keeps the test short, and the problems
    found before it are the same ones (generation is deterministic)."""
    from peftarena_cli.errors import DataError
    from peftarena_cli.tasks import arith

    first = arith.generate("train", 50, 0, level=1)
    monkeypatch.setattr(arith, "_stall_limit", lambda found: 100_000 + found)
    with pytest.raises(DataError, match=r"arith-1 has only about \d+ distinct train problems; 70000 were asked for"):
        arith.generate("train", 70_000, 0, level=1)
    assert arith.generate("train", 50, 0, level=1) == first

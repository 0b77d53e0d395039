"""Data-parallel evaluation under torchrun (evaluation/distributed.py) on the tiny model with gloo, the
engine's thread governor (evaluation/cpu_share.py), and sampling that does not depend on the batch.

The torchrun tests start real processes (two ranks, one thread each): each takes a few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftarena_cli.artifacts.tables import read_table

PORTS = iter(range(29581, 29599))


def _torchrun(args, tmp_path, env=None, nproc=2):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    e.pop("PEFTARENA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(next(PORTS)), "-m", "peftarena_cli", *map(str, args)],
                          capture_output=True, env=e, cwd=tmp_path, timeout=600)


@pytest.fixture(scope="module")
def one_item_gsm8k(tmp_path_factory):
    p = tmp_path_factory.mktemp("gsm") / "one.jsonl"
    p.write_text(json.dumps({"question": "Tom has 2 apples and buys 3 more. How many now?", "answer": "2+3=5 #### 5"}) + "\n")
    return p


@pytest.mark.torchrun
def test_torchrun_two_ranks_write_the_single_process_tables(tiny_model_dir, one_item_gsm8k, tmp_path, cli):
    """Two ranks shard arith (5 items: 3 + 2) and a one-item sampled task (16 samples at T=0.6,
    rank 1 idle); rank 0 writes per-sample rows and a summary equal to one process's, world_size 2."""
    args = [tiny_model_dir, "--task", f"arith,gsm8k={one_item_gsm8k}", "--limit", "5", "--max-new-tokens", "6"]
    r = _torchrun(["eval-target", *args, "-o", tmp_path / "dp.parquet"], tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout == b""
    one = cli("eval-target", *args, "-o", tmp_path / "one.parquet")
    assert one.returncode == 0, one.stderr
    dp, prov = read_table(tmp_path / "dp.parquet")
    sp, prov1 = read_table(tmp_path / "one.parquet")
    assert len(dp) == 5 + 16 and dp["sample"].max() == 15  # the sampled task really ran 16 samples
    assert dp.equals(sp)
    assert read_table(tmp_path / "dp.summary.parquet")[0].equals(read_table(tmp_path / "one.summary.parquet")[0])
    assert prov["extra"]["world_size"] == 2 and prov1["extra"]["world_size"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []  # rank 1 left nothing


@pytest.mark.torchrun
def test_a_rank_that_dies_fails_the_run_and_nothing_is_written(tiny_model_dir, tmp_path):
    """Rank 1 fails during generation (injected by a sitecustomize on its PYTHONPATH): the run exits
    non-zero, rank 1 says why, and rank 0 writes no summary and no per-sample table."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import peftarena_cli.evaluation.engine as e\n"
        "    from peftarena_cli.errors import DataError\n"
        "    def dying(*a, **k):\n"
        "        raise DataError('rank 1 lost its data (injected)')\n"
        "    e.generate = dying\n")
    pp = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    r = _torchrun(["eval-target", tiny_model_dir, "--limit", "4", "--max-new-tokens", "4", "-o", tmp_path / "x.parquet"],
                  tmp_path, env={"PYTHONPATH": pp})
    err = r.stderr.decode()
    assert r.returncode != 0, err[-2000:]
    assert "rank 1 lost its data (injected)" in err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.summary.parquet").exists()


def test_vllm_backend_is_refused_under_torchrun(monkeypatch, tmp_path, cli):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    r = cli("eval-target", "smollm2-135m", "--backend", "vllm", "--limit", "2", "-o", tmp_path / "v.parquet")
    assert r.returncode == 1
    assert "cannot run under torchrun" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v.parquet").exists()


def test_sharded_map_in_one_process_is_the_plain_call(monkeypatch):
    from peftarena_cli.evaluation.distributed import sharded_map

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    vals, stats = sharded_map(4, lambda idx: ([i * i for i in idx], {"n": len(idx)}))
    assert vals == [0, 1, 4, 9] and stats == [{"n": 4}]


def test_thread_governor_follows_the_cores_others_use(monkeypatch):
    """Fed a machine whose other processes use 1 of 2 cores, the governor drops to 1 intra-op thread;
    when they stop, it goes back to 2; close() restores the caller's count."""
    import torch

    from peftarena_cli.evaluation import cpu_share

    assert [cpu_share.threads_for(o, 2, 2) for o in (0.0, 0.4, 0.6, 1.0, 3.0)] == [2, 2, 1, 1, 1]
    assert cpu_share.threads_for(1.0, 8, 4) == 4 and cpu_share.threads_for(6.2, 8, 4) == 2
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(cpu_share, "machine_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(cpu_share, "machine_cpus", lambda: 2)
    monkeypatch.setattr(cpu_share.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(cpu_share.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(cpu_share.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    try:
        gov = cpu_share.ThreadGovernor(interval=1.0)
        assert gov.enabled
        clock.update(t=1.0, busy=2.0, own=1.0)   # 2 busy core-seconds in 1 s, 1 of them ours
        gov.poll()
        assert torch.get_num_threads() == 1
        clock.update(t=1.5, busy=2.9, own=1.5)   # within the interval: no decision
        gov.poll()
        assert len(gov.history) == 1
        clock.update(t=2.0, busy=3.0, own=2.0)   # the others stopped: busy time is all ours
        gov.poll()
        assert torch.get_num_threads() == 2 and [h[2] for h in gov.history] == [1, 2]
        torch.set_num_threads(1)
        gov.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_sampled_completions_do_not_depend_on_the_batch(tiny_model_dir):
    """Each row samples from its own generator (seed, prompt index, sample): batch size 1 and 8 give
    the same samples, and a prompt's samples are the same when it runs in a shard (row_ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftarena_cli.evaluation.engine import generate

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompts = ["hello world " * k for k in range(1, 5)] + ["abc", "x"]
    kw = dict(max_new_tokens=6, temperature=1.0, n_samples=3, seed=7)
    a = generate(model, tok, prompts, batch_size=1, **kw)
    b = generate(model, tok, prompts, batch_size=8, **kw)
    assert a.texts == b.texts
    assert any(len(set(s)) > 1 for s in a.texts)
    shard = generate(model, tok, prompts[1::2], row_ids=list(range(1, len(prompts), 2)), **kw)
    assert shard.texts == a.texts[1::2]

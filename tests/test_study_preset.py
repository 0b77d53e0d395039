"""The study preset (`make arena PRESET=study`, scripts/study.mk, peftarena_cli/presets.py; docs/report.md,
"The study preset"), finetune's peft-arena record format (training/data.py), and the cluster recipe
(every Make stage through $(PEFTARENA), e.g. `PEFTARENA="srun ... peftarena"`; docs/large-models.md).

The planned values are checked against numbers worked by hand from the study's files (train/train_sft.sh,
train/train_rl.sh, configs/train/sft_full_qwen_math.yaml, sft_trainer.yaml, eval/eval_math.sh), not
against the preset table itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"
PEFTARENA = ROOT / ".venv" / "bin" / "peftarena"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _make_n(*extra: str) -> list[str]:
    """`make -n` of the study preset, each recipe as one line (continuations joined)."""
    cmd = ["make", "-n", "--no-print-directory", "arena", "PRESET=study", "STUDY_RUNS=/nonexistent-study", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [" ".join(x.split()) for x in out.replace("\\\n", " ").splitlines()]


def _opts(line: str) -> dict:
    """The --option value pairs of one command line."""
    toks = shlex.split(line)
    return {t: (toks[i + 1] if i + 1 < len(toks) and not toks[i + 1].startswith("--") else True)
            for i, t in enumerate(toks) if t.startswith("--")}


def _one(lines, *needles):
    hit = [x for x in lines if all(n in x for n in needles)]
    assert len(hit) == 1, (needles, "\n".join(lines))
    return hit[0]


# ---------------------------------------------------------------- make -n: the planned commands
@needs_make
def test_math_sft_plan_carries_the_study_values():
    lines = _make_n("MODEL=Qwen/Qwen2.5-7B", "DOMAIN=math", "STUDY_METHODS=lora oft vera full")
    d = "/nonexistent-study"
    # no model pull for a hub id: only the default alias is pulled
    assert not any("models pull" in x for x in lines)
    # train_sft.sh: LR 2e-4, 4 epochs, MAX_LENGTH 8192, global batch 256 of micro-batches of 2 on one
    # process (256 / 2 = 128 accumulation steps); README: 780 steps = 4 epochs x 195; sft_trainer.yaml:
    # warm-up ratio 0.1 (78 of 780 steps), cosine schedule, weight decay 0.01; SAVE_FREQ 91
    peft = {"--lr": "0.0002", "--steps": "780", "--batch-size": "2", "--grad-accum": "128", "--max-length": "8192",
            "--warmup-steps": "78", "--lr-scheduler": "cosine", "--weight-decay": "0.01", "--save-every": "91",
            "--chat-template": "on", "--data": "data/openr1-50k/train.parquet"}
    shapes = {"lora": {"--rank": "8", "--alpha": "16"}, "oft": {"--block-size": "16"}, "vera": {"--rank": "256"}}
    for m, shape in shapes.items():
        o = _opts(_one(lines, "finetune Qwen/Qwen2.5-7B", f"-o {d}/{m}/train"))
        assert o["--method"] == m
        for k, v in {**peft, **shape}.items():
            assert o[k] == v, (m, k, o)
        for k in ("--rank", "--alpha", "--block-size"):
            if k not in shape:
                assert k not in o, (m, k)
    # configs/train/sft_full_qwen_math.yaml: lr 5e-5, 1 epoch (195 steps), max_length 2048, micro-batch 4
    # (256 / 4 = 64 accumulation steps), save_freq 50; warm-up 10 % = 19 steps
    o = _opts(_one(lines, "finetune Qwen/Qwen2.5-7B", f"-o {d}/full/train"))
    assert (o["--lr"], o["--steps"], o["--max-length"], o["--batch-size"], o["--grad-accum"], o["--warmup-steps"],
            o["--save-every"]) == ("5e-05", "195", "2048", "4", "64", "19", "50")
    # targets: MATH-500, AIME24, AMC23 under the study protocol; general: IFEval, BBH, NQ-open; every item
    for who, model in (("base", "Qwen/Qwen2.5-7B"), ("lora", f"Qwen/Qwen2.5-7B --adapter {d}/lora/train/final"),
                       ("full", f"{d}/full/train/final")):
        t = _one(lines, "eval-target", f"-o {d}/{who}/eval_target.parquet")
        # eval_math.sh PROMPT_TYPE="cot" (configs/eval/math.yaml prompt_type: cot), in the chat template
        assert f"eval-target {model} --task math500,aime24,amc23 --protocol study --prompt-type cot " in t
        g = _one(lines, "eval-general", f"-o {d}/{who}/eval_general.parquet")
        assert f"eval-general {model} --suite ifeval,bbh,nq_open --protocol study" in g
        assert "--prompt-type" not in g  # a general suite has no math prompt type (eval-general has no option)
        for x in (t, g):  # the protocol's own sampling (avg@16, T = 0.6, 8192 tokens): nothing overridden
            assert not re.search(r"--limit|-n |--temperature|--max-new-tokens|--backend", x), x
    assert _one(lines, "peftarena report").endswith(f"report {d} -o {d}/report")


@needs_make
def test_medical_rlvr_plan_and_world_size():
    lines = _make_n("MODEL=meta-llama/Llama-3.2-3B-Instruct", "DOMAIN=medical", "REGIME=rlvr",
                    "STUDY_METHODS=lora full", "STUDY_WORLD=4")
    d = "/nonexistent-study"
    o = _opts(_one(lines, "finetune", f"-o {d}/lora/train"))
    # train_rl.sh: LR 1e-5 (PEFT), 10 epochs, 256 prompts per rollout x ROLLOUT_N 8 = 2048 completions,
    # PPO mini-batch 64 prompts = 512 completions per optimizer step, so 4 steps per rollout; medical
    # epochs have 91 rollout steps (SAVE_FREQ 91, global_step_364): 10 x 91 x 4 = 3640 optimizer steps.
    # Per process 16 completions a pass on 4 processes: 512 / 64 = 8 accumulation steps, 2048 / 64 = 32
    # passes per generation batch; rank 16, alpha 32; MAX_LENGTH 8192 new tokens; KL off; save every 50 rollouts
    want = {"--regime": "rlvr", "--lr": "1e-05", "--steps": "3640", "--batch-size": "16", "--grad-accum": "8",
            "--num-generations": "8", "--steps-per-generation": "32", "--max-completion-length": "8192",
            "--temperature": "1", "--beta": "0", "--rank": "16", "--alpha": "32", "--save-every": "200",
            "--data": "data/med-train.parquet"}
    for k, v in want.items():
        assert o[k] == v, (k, o)
    assert _opts(_one(lines, "finetune", f"-o {d}/full/train"))["--lr"] == "1e-06"  # train_rl.sh, full
    # configs/eval/med.yaml: tasks: medmcqa,medqa,pubmedqa,mmlu_medical (in that order); no math prompt type
    for who in ("base", "lora", "full"):
        t = _one(lines, "eval-target", f"-o {d}/{who}/eval_target.parquet")
        assert "--task medmcqa,medqa,pubmedqa,mmlu_medical --protocol study" in t
        assert "--prompt-type" not in t


def _served(line: str) -> tuple[str, str, str]:
    """(local model, base URL, served name) of a served eval stage."""
    toks = shlex.split(line)
    cmd = next(i for i, t in enumerate(toks) if t in ("eval-target", "eval-general"))
    o = _opts(line)
    return toks[cmd + 1], o["--base-url"], o["--served-model"]


@needs_make
def test_serve_asks_each_stage_for_its_own_served_model():
    d = "/nonexistent-study"
    lines = _make_n("MODEL=Qwen/Qwen2.5-7B", "STUDY_METHODS=lora full oft", "SERVE=http://node7:8000/v1",
                    "SERVE_oft=http://node7:8002/v1")
    evals = [x for x in lines if " eval-target " in x or " eval-general " in x]
    assert len(evals) == 8
    want = {"base": ("Qwen/Qwen2.5-7B", "http://node7:8000/v1", "Qwen/Qwen2.5-7B"),
            "lora": ("Qwen/Qwen2.5-7B", "http://node7:8000/v1", "lora"),
            "full": ("Qwen/Qwen2.5-7B", "http://node7:8000/v1", "full"),
            "oft": ("Qwen/Qwen2.5-7B", "http://node7:8002/v1", "oft")}
    for who, w in want.items():
        for kind in ("target", "general"):
            x = _one(evals, f"-o {d}/{who}/eval_{kind}.parquet")
            assert _served(x) == w, (who, x)
            # the served backend refuses --adapter (the served name is the fine-tune) and reads no weights
            assert "--adapter" not in x and "/train/final" not in x and "--backend openai" in x
    for x in lines:
        if " finetune " in x or x.endswith("/report"):
            assert "--backend" not in x and "--base-url" not in x and "--served-model" not in x
    # the base's served name can differ from MODEL (e.g. an alias locally, a hub id on the server)
    lines = _make_n("MODEL=smollm2-135m", "STUDY_METHODS=lora", "SERVE=http://n:8000",
                    "SERVE_BASE_NAME=HuggingFaceTB/SmolLM2-135M-Instruct")
    assert _served(_one(lines, f"-o {d}/base/eval_general.parquet")) == (
        "smollm2-135m", "http://n:8000", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert _served(_one(lines, f"-o {d}/lora/eval_target.parquet"))[2] == "lora"


@needs_make
def test_study_train_plans_the_training_runs_only():
    out = subprocess.run(["make", "-n", "--no-print-directory", "study-train", "MODEL=m", "STUDY_METHODS=lora oft",
                          "STUDY_RUNS=/nonexistent-study", "SERVE=http://n:8000"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    lines = [" ".join(x.split()) for x in out.replace("\\\n", " ").splitlines()]
    runs = [x for x in lines if re.search(r"peftarena (\S+)", x)]
    assert sorted(re.search(r"-o (\S+)", x).group(1) for x in runs) == ["/nonexistent-study/lora/train",
                                                                       "/nonexistent-study/oft/train"]
    assert all(" finetune m " in x for x in runs)


@needs_make
def test_serve_plan_serves_every_name_the_eval_stages_ask_for():
    """`make study-serve-plan`: the servers it prints answer exactly the (URL, name) pairs that the eval
    stages planned with its SERVE variables ask for, each name backed by that method's trained run."""
    d = "/nonexistent-study"
    methods = "full lora dora pissa milora adalora vera ia3 oft miss"
    out = subprocess.run(["make", "--no-print-directory", "study-serve-plan", "MODEL=Qwen/Qwen2.5-7B",
                          f"STUDY_RUNS={d}", f"STUDY_METHODS={methods}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    lines = [x for x in out.splitlines() if x and not x.startswith("#")]
    variables = lines[-1].split()
    served = {}   # (port, name) -> what is served
    exported = {}
    for x in lines[:-1]:
        for part in x.split(" && "):
            toks = shlex.split(part)
            if toks[:2] == ["peftarena", "export"]:
                # the study evaluates merged checkpoints in bfloat16 (eval_math.sh: merge_peft.py --torch_dtype)
                assert toks[2] == "Qwen/Qwen2.5-7B" and toks[4] == "-o" and _opts(part)["--dtype"] == "bfloat16"
                exported[toks[toks.index("-o") + 1]] = toks[3]
                continue
            assert toks[:2] == ["vllm", "serve"], part
            o = _opts(part)
            port, path = o["--port"], toks[2]
            served[(port, o["--served-model-name"])] = exported.get(path, path)
            if "--lora-modules" in toks:
                i = toks.index("--lora-modules") + 1
                while i < len(toks) and not toks[i].startswith("--"):
                    name, adapter = toks[i].split("=", 1)
                    served[(port, name)] = adapter
                    i += 1
    # vLLM serves LoRA, PiSSA and MiLoRA as adapters next to the base (one server); the full fine-tune as
    # its directory; DoRA, AdaLoRA, VeRA, IA3, OFT and MiSS merged by `peftarena export` first
    assert {n: p for (port, n), p in served.items() if port == "8000"} == {
        "Qwen/Qwen2.5-7B": "Qwen/Qwen2.5-7B", "lora": f"{d}/lora/train/final", "pissa": f"{d}/pissa/train/final",
        "milora": f"{d}/milora/train/final"}
    assert len(served) == 11 and len({port for port, _ in served}) == 8
    plan = _make_n("MODEL=Qwen/Qwen2.5-7B", f"STUDY_METHODS={methods}", *variables)
    asked = set()
    for who in ["base", *methods.split()]:
        train = f"{d}/{who}/train"
        if who != "base":   # the fine-tune's own run directory: finetune -o DIR writes DIR/final
            assert f"-o {train} " in _one(plan, " finetune ", f"-o {train} ")
        for kind in ("target", "general"):
            model, url, name = _served(_one(plan, f"-o {d}/{who}/eval_{kind}.parquet"))
            port = re.fullmatch(r"http://HOST:(\d+)/v1", url).group(1)
            assert served[(port, name)] == ("Qwen/Qwen2.5-7B" if who == "base" else f"{train}/final"), (who, kind)
            asked.add((port, name))
    assert asked == set(served)  # nothing served that no stage asks for


@needs_make
def test_study_set_overrides_and_keeps_the_warmup_ratio():
    lines = _make_n("MODEL=m", "STUDY_METHODS=lora", "STUDY_SET=steps=40 max_length=1024")
    o = _opts(_one(lines, "finetune m"))
    assert (o["--steps"], o["--max-length"], o["--warmup-steps"]) == ("40", "1024", "4")


@needs_make
@pytest.mark.parametrize("args, msg", [(("DOMAIN=law",), "unknown study domain 'law'"),
                                       (("STUDY_SET=epochz=3",), "'epochz' is not a setting"),
                                       (("PRESET=studdy",), "unknown PRESET 'studdy'")])
def test_bad_preset_values_stop_make_with_one_line(args, msg):
    # study-run: what `make arena PRESET=study` runs after its install check (which is not run here: it
    # would reinstall the package when pyproject.toml is newer than the venv's stamp)
    r = subprocess.run(["make", "--no-print-directory", "study-run", "PRESET=study", "MODEL=m",
                        "STUDY_RUNS=/nonexistent-study", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- the peft-arena record format
def _study_rows_sft(questions_answers):
    return [{"data_source": "openr1", "prompt": [{"role": "user", "content": q}], "ability": "math",
             "reward_model": {"ground_truth": "7", "style": "rule"},
             "extra_info": {"question": q, "answer": a, "index": i, "split": "train"}}
            for i, (q, a) in enumerate(questions_answers)]


def _write_parquet(rows, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_sft_reads_question_and_answer_and_drops_overlong_records(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from peftarena_cli.training.data import load_train_data

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # the tokenizer is byte-level (one token per byte, tests/helpers.py); the rendered prompt is
    # "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" = 3 special tokens + the bytes between
    q = "What is 3 + 4?"
    prompt_len = 3 + len("user\n" + q) + len("\n") + len("assistant\n")
    short, exact, over = "It is \\boxed{7}.", "x" * 20, "x" * 21
    max_length = prompt_len + 20 + 1   # + 1 for the EOS token after the response
    path = _write_parquet(_study_rows_sft([(q, short), (q, exact), (q, over), ("", "no question")]), tmp_path / "t.parquet")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    data = load_train_data(str(path), tok, "sft", max_length=max_length)
    want_prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    assert [r["prompt"] for r in data.records] == [want_prompt, want_prompt]
    assert [r["completion"] for r in data.records] == [short, exact]   # 21 + prompt tokens + EOS: dropped
    assert data.source["record_format"] == "peft-arena"
    assert data.source["overlong_dropped"] == 1 and data.source["skipped"] == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    # the columns format on the same file reads the top-level `prompt` column instead (no instruction
    # dropped, no filter): the format is what decides
    cols = load_train_data(str(path), tok, "sft", max_length=max_length, data_format="columns",
                           response_column="data_source")
    assert cols.source.get("record_format") is None and len(cols.records) == 4


def test_rlvr_reads_prompt_messages_and_ground_truth(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from peftarena_cli.training.data import STUDY_PROMPT_MAX_LENGTH, load_train_data

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    msgs = [{"role": "system", "content": "Think."}, {"role": "user", "content": "2+2? Put it in \\boxed{}."}]
    # byte-level: a turn is <|im_start|> role \n content <|im_end|> \n (2 special tokens + bytes), then
    # <|im_start|>assistant\n; so a system turn "Think." and a user turn of L bytes take L + fixed tokens
    fixed = (2 + len("system\n") + len("Think.") + 1) + (2 + len("user\n") + 1) + (1 + len("assistant\n"))
    long_user = "y" * (STUDY_PROMPT_MAX_LENGTH - fixed)
    rows = [{"data_source": "med_23k_think", "prompt": msgs, "reward_model": {"ground_truth": "C", "style": "rule"},
             "extra_info": {"question": "q", "answer": "a"}},
            {"data_source": "openr1", "prompt": [msgs[0], {"role": "user", "content": long_user}],
             "reward_model": {"ground_truth": "1"}, "extra_info": {}},
            {"data_source": "openr1", "prompt": [msgs[0], {"role": "user", "content": long_user + "y"}],
             "reward_model": {"ground_truth": "1"}, "extra_info": {}}]
    n1 = len(tok(tok.apply_chat_template(rows[1]["prompt"], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"])
    assert n1 == STUDY_PROMPT_MAX_LENGTH  # the boundary case: exactly at the study's limit, kept
    path = _write_parquet(rows, tmp_path / "rl.parquet")
    data = load_train_data(str(path), tok, "rlvr")
    assert [r["answer"] for r in data.records] == ["C", "1"]
    assert data.records[0]["prompt"] == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert data.records[0]["kind"] == "math" and data.source["overlong_dropped"] == 1


def test_forced_format_on_other_records_is_an_error(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from peftarena_cli.errors import DataError
    from peftarena_cli.training.data import load_train_data

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(DataError, match="not in the peft-arena layout"):
        load_train_data(str(path), tok, "sft", data_format="peft-arena")
    # auto on a plain file keeps the columns reading
    assert load_train_data(str(path), tok, "sft").records[0]["completion"] == "2"


# ---------------------------------------------------------------- the cluster recipe
def test_every_peftarena_call_of_the_make_stages_goes_through_the_variable():
    """A literal path to the CLI in a recipe would bypass PEFTARENA (and so the launcher)."""
    for mk in ("Makefile", "scripts/arena.mk", "scripts/sweep.mk", "scripts/study.mk"):
        for i, line in enumerate((ROOT / mk).read_text().splitlines(), 1):
            if not line.startswith("\t"):
                continue
            assert not re.search(r"(bin/peftarena|^\s*peftarena)\b", line), f"{mk}:{i}: {line.strip()}"


@needs_make
def test_arena_plan_sends_every_cli_stage_through_the_launcher():
    """`make -n arena` with PEFTARENA="launcher peftarena": every peftarena command line starts with it."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "arena-stages", "RUNS=/nonexistent-arena",
                          "METHODS=lora oft", "INTERP=lora", "PEFTARENA=/opt/launch.sh .venv/bin/peftarena"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = [" ".join(x.split()) for x in out.replace("\\\n", " ").splitlines()]
    cli = [x for x in lines if re.search(r"peftarena (finetune|eval-target|eval-general|spectrum|csd|act-geom|drift|"
                                         r"interpolate|rewind|report)\b", x)]
    kinds = {re.search(r"peftarena (\S+)", x).group(1) for x in cli}
    assert kinds == {"finetune", "eval-target", "eval-general", "spectrum", "csd", "act-geom", "drift",
                     "interpolate", "rewind", "report"}
    for x in cli:
        assert x.startswith("/opt/launch.sh .venv/bin/peftarena "), x


LAUNCHER = """#!/bin/sh
# a stand-in for srun: log the command line, then run it
printf '%s\\n' "$*" >> "{log}"
exec "$@"
"""


@pytest.mark.slow
@needs_make
def test_tiny_study_run_end_to_end_through_a_launcher(tiny_model_dir, shared_data, tmp_path):
    """The preset on local files in the hub datasets' layout (tiny model, small limits), two jobs at once,
    every stage through a launcher script: the runs and evals are made, the report reads them, and the
    launcher saw exactly the planned CLI stages."""
    qa = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.")
          for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1))]
    data = _write_parquet(_study_rows_sft(qa), tmp_path / "openr1-train.parquet")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    log = tmp_path / "launch.log"
    launcher = tmp_path / "launch.sh"
    launcher.write_text(LAUNCHER.format(log=log))
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    runs = tmp_path / "study"
    # study-run is what `make arena PRESET=study` runs after the install check (not repeated here)
    args = ["--no-print-directory", "-j2", "study-run", f"MODEL={tiny_model_dir}", "DOMAIN=math",
            f"STUDY_RUNS={runs}", "STUDY_METHODS=lora", f"STUDY_DATA={data}",
            "STUDY_SET=steps=2 max_length=256 grad_accum=1 save_every=2",
            f"STUDY_TASKS=math500={shared_data / 'math' / 'math500_test.jsonl'}",
            f"STUDY_SUITE=ifeval={shared_data / 'ifeval' / 'input_data.jsonl'},"
            f"nq_open={shared_data / 'nq_open' / 'NQ-open.dev.jsonl'}",
            "STUDY_TARGET_LIMIT=4", "STUDY_GENERAL_LIMIT=4", "STUDY_TARGET_ARGS=-n 2 --max-new-tokens 8",
            "STUDY_GENERAL_ARGS=--max-new-tokens 8", f"PEFTARENA={launcher} {PEFTARENA}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plan = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    r = subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == digest
    # the launcher ran every planned CLI stage, each once, and nothing else
    planned = sorted(" ".join(x.split()).split(f"{launcher} ", 1)[1]
                     for x in plan.replace("\\\n", " ").splitlines() if f"{launcher} " in x)
    seen = sorted(" ".join(x.split()) for x in log.read_text().splitlines())
    assert len(planned) == 6 and seen == planned  # finetune, 2 x eval-target, 2 x eval-general, report
    # the run used the study's format and settings (the ones STUDY_SET did not replace)
    man = json.loads((runs / "lora" / "train" / "manifest.json").read_text())
    flat = json.dumps(man)
    assert '"record_format": "peft-arena"' in flat and '"lr_scheduler": "cosine"' in flat
    assert (runs / "report" / "leaderboard.md").is_file()
    import pandas as pd

    s = pd.read_parquet(runs / "lora" / "eval_target_summary.parquet")
    assert set(s["protocol"].dropna()) == {"study@2"}


# ---------------------------------------------------------------- make gpu-check: the plan only (no GPU here)
def _stub_cli(tmp_path: Path, has_export: bool) -> Path:
    """A stand-in CLI: `export --help` succeeds or fails, anything else fails loudly."""
    p = tmp_path / ("cli-export" if has_export else "cli-plain")
    p.write_text("#!/bin/sh\n" + (f'[ "$1" = export ] && exit 0\n' if has_export else "")
                 + 'echo "unexpected call: $*" >&2\nexit 2\n')
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _gpu_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PY), "benchmarks/gpu_check.py", "--dry-run", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_gpu_check_dry_run_skips_what_is_missing(tmp_path):
    work = tmp_path / "work"
    r = _gpu_plan("--workdir", str(work), "--fsdp-config", str(tmp_path / "no-fsdp.yaml"),
                  "--peftarena", str(_stub_cli(tmp_path, has_export=False)))
    assert r.returncode == 0, r.stderr
    heads = re.findall(r"^\[(\d)\] (\S+)$", r.stdout, flags=re.M)
    assert heads == [("1", "cuda-vs-cpu"), ("2", "spectrum-bench"), ("3", "fsdp"), ("4", "export"), ("5", "served"),
                     ("6", "vllm"), ("7", "study")]
    assert f"SKIPPED: {tmp_path / 'no-fsdp.yaml'} is missing" in r.stdout
    assert "SKIPPED: this peftarena has no `export` command" in r.stdout
    assert "tests/test_cuda.py" in r.stdout and "benchmarks/vllm_check.py" in r.stdout
    # the study step: the preset on CUDA, then the same plan with the GPU hidden
    study = [x for x in r.stdout.splitlines() if "study-run" in x]
    assert len(study) == 2 and study[1].lstrip("$ ").startswith("CUDA_VISIBLE_DEVICES= make")
    assert not work.exists()  # a dry run writes nothing


def test_gpu_check_dry_run_plans_fsdp_and_export_when_present(tmp_path):
    cfg = tmp_path / "fsdp-lora.yaml"
    cfg.write_text("distributed_type: FSDP\n")
    cli = _stub_cli(tmp_path, has_export=True)
    r = _gpu_plan("--workdir", str(tmp_path / "w"), "--fsdp-config", str(cfg), "--peftarena", str(cli),
                  "--only", "fsdp,export")
    assert r.returncode == 0, r.stderr
    lines = [x.strip().lstrip("$ ") for x in r.stdout.splitlines() if x.strip().startswith("$")]
    fsdp = [x for x in lines if "accelerate.commands.launch" in x]
    assert len(fsdp) == 1 and f"--config_file {cfg} --num_processes 1 -m peftarena_cli finetune smollm2-135m" in fsdp[0]
    assert "--device cuda --mixed-precision no" in fsdp[0]
    assert sum(f"{cli} finetune smollm2-135m -o {tmp_path / 'w' / 'fsdp-cpu'}" in x and "--device cpu" in x
               for x in lines) == 1
    for m in ("lora", "oft"):
        for dev in ("cuda", "cpu"):
            assert sum(f"{cli} export smollm2-135m {tmp_path / 'w' / f'adapter-{m}' / 'final'} -o "
                       f"{tmp_path / 'w' / f'export-{m}-{dev}'} --device {dev}" in x for x in lines) == 1
    assert "[1] fsdp" in r.stdout and "cuda-vs-cpu" not in r.stdout


def test_gpu_check_bad_step_and_make_target():
    r = _gpu_plan("--only", "fsdp,warp")
    assert r.returncode == 2 and "unknown step(s) warp" in r.stderr
    if shutil.which("make"):
        out = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        assert "benchmarks/gpu_check.py" in out and "pytest" not in out


def test_docs_list_every_setting_of_the_preset_with_its_source():
    from peftarena_cli.presets import table

    doc = (ROOT / "docs" / "report.md").read_text()
    for k, v, src in table():
        assert f"| `{k}` | {v} | {src} |" in doc, k


def test_every_target_task_of_the_preset_runs_under_the_study_protocol():
    """Each domain's target task is a benchmark with study settings (configs/eval/med.yaml's four medical
    sets, eval_math.sh's three math sets), and a prompt type is passed exactly where the tasks take one."""
    from peftarena_cli import presets
    from peftarena_cli.tasks import benchmarks

    want = {"math": ["math500", "aime24", "amc23"], "medical": ["medmcqa", "medqa", "pubmedqa", "mmlu_medical"]}
    for domain, tasks in want.items():
        assert presets.DOMAIN[domain].tasks.value.split(",") == tasks
        takes = {benchmarks.get(t).protocols["study"].prompt_type for t in tasks}
        assert presets.target_args(domain) == ("--prompt-type cot" if takes == {"cot"} else ""), (domain, takes)
        assert takes in ({"cot"}, {None})


def test_preset_methods_are_the_registry_study_entries():
    # train/train_sft.sh's --adapter cases (lines 127-190 of the study's script): lora|dora|loraplus|rslora|
    # qalora|keeplora, adalora, miss, pissa|milora, oft, ia3, vera, full; qalora has no peftarena method
    from peftarena_cli import presets
    from peftarena_cli.errors import UsageError

    study_sft = {"lora", "dora", "loraplus", "rslora", "keeplora", "adalora", "miss", "pissa", "milora", "oft",
                 "ia3", "vera", "full"}
    assert set(presets.study_methods("sft")) == study_sft
    assert set(presets.study_methods("rlvr")) == study_sft - {"keeplora"}
    with pytest.raises(UsageError):
        presets.training("math", "rlvr", "keeplora")
    with pytest.raises(UsageError):
        presets.training("math", "sft", "boft")
    # VeRA's rank is the study's vera_rank, the LoRA family's the shared rank
    assert presets.training("math", "sft", "vera")["rank"] == presets.SHAPE["sft"]["vera_rank"].value
    assert presets.training("math", "sft", "rslora")["rank"] == presets.SHAPE["sft"]["rank"].value

"""The study preset: the PEFT-Arena study's setting, in one table that ``make arena PRESET=study`` reads.

Every value names the file of the study's code it comes from (github.com/Sphere-AI-Lab/PEFT-Arena, the
commit mirrored for docs/report.md, "The study preset"). ``scripts/study.mk`` asks this module for the
planned commands' arguments (``python -m peftarena_cli.presets finetune-args math sft lora``), so the
Makefile holds no number of its own; docs/report.md lists the same table (``python -m
peftarena_cli.presets table`` prints it).

Where the study's trainer (verl's FSDP SFT trainer, its GRPO trainer) has a knob peftarena's
``finetune`` lacks, the nearest equivalent is used and the docs say so: epochs become optimizer steps
(epochs × optimizer steps per epoch, the latter read from the study's checkpoint names), the global batch
becomes per-process batch × gradient accumulation × processes, the warm-up ratio becomes a step count.

Like :mod:`peftarena_cli.methods`, this module imports nothing heavy: ``make`` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftarena_cli.errors import UsageError

SFT_SH = "train/train_sft.sh"
RL_SH = "train/train_rl.sh"
RUN_PY = "run.py"
SFT_YAML = "train/peft_arena_verl/trainer/config/sft_trainer.yaml"
FULL_YAML = "configs/train/sft_full_qwen_math.yaml"
ROLLOUT_YAML = "train/peft_arena_verl/trainer/config/rollout/rollout.yaml"
README = "README.md"

DOMAINS = ("math", "medical")
REGIMES = ("sft", "rlvr")


def _registry_names(**want) -> str:
    """The benchmark registry's entries with these field values, comma-separated in registry order (the
    study's benchmarks are marked there: ``study_target`` with their domain, ``study_general``)."""
    from peftarena_cli.tasks.benchmarks import REGISTRY

    return ",".join(b.name for b in REGISTRY.values() if all(getattr(b, k) == v for k, v in want.items()))


GENERAL_SUITE = _registry_names(study_general=True)


def study_methods(regime: str = "sft") -> tuple[str, ...]:
    """The methods of the study's training scripts that peftarena implements, in registry order: the
    registry's ``study`` entries (train_sft.sh's --adapter list; its qalora has no peftarena method). Under
    RLVR, those that can train without reference completions (KeepLoRA starts from an SFT batch's gradient)."""
    from peftarena_cli.methods import METHODS as REGISTRY

    return tuple(m.name for m in REGISTRY.values() if m.study and (regime == "sft" or not m.init_from_batch))


@dataclass(frozen=True)
class Setting:
    value: object
    source: str  # the study's file (and the name in it) the value comes from


@dataclass(frozen=True)
class Domain:
    data: Setting            # where the study's scripts read the training file
    hub: Setting             # the hub dataset it is published in
    tasks: Setting           # the target benchmarks (peftarena task names)
    steps_per_epoch: Setting  # optimizer steps per epoch at the global batch of 256
    prompt_type: Setting | None = None  # eval-target --prompt-type of the target benchmarks (math only)


DOMAIN = {
    "math": Domain(
        data=Setting("data/openr1-50k/train.parquet", f"{README} (Quick Start --data_train), {RL_SH} DATA_TRAIN"),
        hub=Setting("SphereLab/PEFTArena-data", f"{README} (Resources: Training Data; 'filtered 50k samples from "
                                                "OpenR1-Math')"),
        tasks=Setting(_registry_names(study_target=True, domain="math"), f"eval/eval_math.sh DATA_NAMES; {README} (Target-domain evaluation)"),
        steps_per_epoch=Setting(195, f"{README} checkpoint global_step_780 after 4 epochs (50k // 256 = 195)"),
        prompt_type=Setting("cot", "eval/eval_math.sh PROMPT_TYPE='cot' with APPLY_CHAT_TEMPLATE='true'; "
                                   "configs/eval/math.yaml prompt_type: cot, apply_chat_template: true"),
    ),
    "medical": Domain(
        data=Setting("data/med-train.parquet", "configs/train/sft_lora_llama_r8_med.yaml data.train_file"),
        hub=Setting("SphereLab/PEFTArena-data", f"{README} (Resources: Training Data; '23k samples from MedThink')"),
        tasks=Setting(_registry_names(study_target=True, domain="medical"), "configs/eval/med.yaml tasks"),
        steps_per_epoch=Setting(91, f"{SFT_SH} SAVE_FREQ='91'; {README} checkpoint global_step_364 after 4 epochs"),
    ),
}

# Training settings shared by the SFT methods, then each method's own (full fine-tuning has its own recipe).
SFT = {
    "lr": Setting(2e-4, f"{SFT_SH} LR='2e-4'; {RUN_PY} resolve_train_lr (SFT)"),
    "epochs": Setting(4, f"{SFT_SH} EPOCHS='4'; {RUN_PY} resolve_train_epochs (SFT)"),
    "max_length": Setting(8192, f"{SFT_SH} MAX_LENGTH='8192' (data.max_length, filter_overlong_examples=True)"),
    "global_batch": Setting(256, f"{SFT_SH} BATCH_SIZE='256' (data.train_batch_size)"),
    "micro_batch": Setting(2, f"{SFT_SH} MICRO_BATCH_SIZE='2' (data.micro_batch_size_per_gpu)"),
    "warmup_ratio": Setting(0.1, f"{SFT_YAML} optim.lr_warmup_steps_ratio"),
    "lr_scheduler": Setting("cosine", f"{SFT_YAML} optim.lr_scheduler"),
    "weight_decay": Setting(0.01, f"{SFT_YAML} optim.weight_decay"),
    "save_every": Setting(91, f"{SFT_SH} SAVE_FREQ='91' (trainer.save_freq)"),
}
SFT_FULL = {
    "lr": Setting(5e-5, f"{FULL_YAML} training.lr"),
    "epochs": Setting(1, f"{FULL_YAML} training.epochs"),
    "max_length": Setting(2048, f"{FULL_YAML} training.max_length"),
    "micro_batch": Setting(4, f"{FULL_YAML} training.micro_batch_size_per_gpu"),
    "save_every": Setting(50, f"{FULL_YAML} training.save_freq"),
}
RLVR = {
    "lr": Setting(1e-5, f"{RL_SH} LR (PEFT); {RUN_PY} resolve_train_lr (rl)"),
    "epochs": Setting(10, f"{RL_SH} EPOCHS='10'; {RUN_PY} resolve_train_epochs (rl)"),
    "global_batch": Setting(256, f"{RL_SH} BATCH_SIZE='256' prompts per rollout (data.train_batch_size)"),
    "mini_batch": Setting(64, f"{RL_SH} PPO_MINI_BATCH_SIZE='64' prompts per optimizer step"),
    "num_generations": Setting(8, f"{RL_SH} ROLLOUT_N='8'"),
    "max_completion_length": Setting(8192, f"{RL_SH} MAX_LENGTH='8192' (data.max_response_length)"),
    "temperature": Setting(1.0, f"{ROLLOUT_YAML} temperature"),
    "beta": Setting(0.0, f"{RL_SH} actor.use_kl_loss=False"),
    "save_every": Setting(50, f"{RL_SH} SAVE_FREQ='50' rollout steps (x 4 optimizer steps here)"),
    "micro_batch": Setting(16, "peftarena's choice (completions per process and pass; the study's "
                               "ppo_micro_batch_size_per_gpu=64 uses dynamic batching)"),
}
RLVR_FULL = {
    "lr": Setting(1e-6, f"{RL_SH} LR (full); {RUN_PY} RL_FULL_ADAPTERS"),
}
# Adapter shapes: the study's defaults (run.py passes --lora_rank/--lora_alpha to lora, dora, adalora,
# pissa, milora and miss; --oft_block_size to oft; --vera_rank to vera).
SHAPE = {
    "sft": {
        "rank": Setting(8, f"{SFT_SH} LORA_RANK='8'; {RUN_PY} --lora_rank"),
        "alpha": Setting(16, f"{SFT_SH} LORA_ALPHA='16'; {RUN_PY} --lora_alpha"),
        "block_size": Setting(16, f"{SFT_SH} OFT_BLOCK_SIZE='16'; {RUN_PY} --oft_block_size"),
        "vera_rank": Setting(256, f"{SFT_SH} VERA_RANK='256'; {RUN_PY} --vera_rank"),
    },
    "rlvr": {
        "rank": Setting(16, f"{RL_SH} LORA_RANK='16'"),
        "alpha": Setting(32, f"{RL_SH} LORA_ALPHA='32'"),
        "block_size": Setting(16, f"{RL_SH} OFT_BLOCK_SIZE='16'"),
        "vera_rank": Setting(256, f"{RL_SH} VERA_RANK='256'"),
    },
}
# The target benchmarks' protocol (peftarena's study protocol carries these; the preset names it).
EVAL = {
    "protocol": Setting("study", "eval/eval_math.sh, eval/eval_med.sh, eval/eval_general.sh (docs/eval.md, study@2)"),
    "math_samples": Setting(16, "eval/eval_math.sh N_SAMPLING='16' (avg@16)"),
    "math_temperature": Setting(0.6, "eval/eval_math.sh TEMPERATURE='0.6'"),
    "math_max_tokens": Setting(8192, "eval/eval_math.sh MAX_TOKENS_PER_CALL='8192'"),
    "general_suite": Setting(GENERAL_SUITE, f"{RUN_PY} cmd_eval (its --benchmarks list)"),
}


def _check(domain: str, regime: str, method: str | None = None) -> None:
    if domain not in DOMAINS:
        raise UsageError(f"unknown study domain {domain!r}", hint=f"use one of: {', '.join(DOMAINS)}")
    if regime not in REGIMES:
        raise UsageError(f"unknown regime {regime!r}", hint=f"use one of: {', '.join(REGIMES)}")
    if method is not None and method not in study_methods(regime):
        raise UsageError(f"method {method!r} is not in the study preset ({regime})",
                         hint=f"use one of: {', '.join(study_methods(regime))}")


def training(domain: str, regime: str, method: str, world: int = 1) -> dict:
    """The ``peftarena finetune`` settings of one method of the study (option name -> value), for
    ``world`` processes (the global batch is split over them)."""
    _check(domain, regime, method)
    if world < 1:
        raise UsageError(f"world size must be >= 1 (got {world})")
    from peftarena_cli.methods import get_method

    entry = get_method(method)
    full = entry.is_full
    spe = DOMAIN[domain].steps_per_epoch.value
    out: dict = {}
    if regime == "sft":
        s = {k: v.value for k, v in SFT.items()} | ({k: v.value for k, v in SFT_FULL.items()} if full else {})
        micro = s["micro_batch"]
        accum = max(1, s["global_batch"] // (micro * world))
        steps = s["epochs"] * spe
        out.update({"lr": s["lr"], "steps": steps, "batch-size": micro, "grad-accum": accum,
                    "max-length": s["max_length"], "warmup-steps": int(steps * s["warmup_ratio"]),
                    "lr-scheduler": s["lr_scheduler"], "weight-decay": s["weight_decay"],
                    "save-every": s["save_every"]})
    else:
        s = {k: v.value for k, v in RLVR.items()} | ({k: v.value for k, v in RLVR_FULL.items()} if full else {})
        g = s["num_generations"]
        per_step = s["mini_batch"] * g          # completions per optimizer step
        per_rollout = s["global_batch"] * g     # completions per generation batch
        micro = s["micro_batch"]
        accum = max(1, per_step // (micro * world))
        updates = s["global_batch"] // s["mini_batch"]  # optimizer steps per rollout batch
        out.update({"regime": "rlvr", "lr": s["lr"], "steps": s["epochs"] * spe * updates, "batch-size": micro,
                    "grad-accum": accum, "num-generations": g, "max-completion-length": s["max_completion_length"],
                    "temperature": s["temperature"], "beta": s["beta"],
                    # TRL counts a generation batch in micro-steps: per_rollout completions in one generate call
                    "steps-per-generation": max(1, per_rollout // (micro * world)),
                    "save-every": s["save_every"] * updates})
    shape = {k: v.value for k, v in SHAPE[regime].items()}
    for option in ("rank", "alpha", "block_size"):
        if option in entry.takes:
            out[option.replace("_", "-")] = shape[entry.study_shape.get(option, option)]
    out["chat-template"] = "on"  # the study's datasets apply the tokenizer's chat template to every prompt
    return out


def finetune_args(domain: str, regime: str, method: str, world: int = 1, overrides: dict | None = None) -> str:
    """``training()`` as command-line options, ``overrides`` (option name -> value) replacing entries."""
    s = training(domain, regime, method, world)
    for k, v in (overrides or {}).items():
        k = k.replace("_", "-")
        if k not in s:
            raise UsageError(f"STUDY_SET: {k!r} is not a setting of {method} ({regime})",
                             hint=f"settings: {', '.join(s)}")
        s[k] = v
    # a changed step count keeps the study's warm-up ratio unless the warm-up is set too
    over = {k.replace("_", "-") for k in (overrides or {})}
    if "warmup-steps" in s and "steps" in over and "warmup-steps" not in over:
        s["warmup-steps"] = int(int(s["steps"]) * SFT["warmup_ratio"].value)
    return " ".join(f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}" for k, v in s.items())


def target_args(domain: str) -> str:
    """The domain's own ``eval-target`` options beyond the task list and the protocol (math: the study's
    prompt type; medical: none)."""
    _check(domain, "sft")
    pt = DOMAIN[domain].prompt_type
    return f"--prompt-type {pt.value}" if pt is not None else ""


# The study evaluates merged checkpoints in bfloat16 (eval/eval_math.sh: tools/merge_peft.py --torch_dtype
# bfloat16, math_eval.py --dtype bfloat16); exported fine-tunes are written in the same dtype.
SERVE_DTYPE = "bfloat16"


def serve_plan(model: str, runs: str, methods, base_name: str | None = None, port: int = 8000,
               host: str = "HOST") -> tuple[list[str], list[str]]:
    """The servers that answer ``scripts/study.mk``'s SERVE stages, and the make variables that point
    the stages at them: ``(commands, variables)``.

    Each fine-tune is served under its method's name (the name its eval stages ask for with
    ``--served-model``), the base under ``base_name`` (default: ``model``, vLLM's own default name).
    Methods that vLLM serves as adapters (the registry's ``backends`` has ``vllm``: LoRA, PiSSA,
    MiLoRA) go next to the base in one server; a full fine-tune is served as the model directory it
    is; every other method is merged by ``peftarena export`` first. Each server after the first gets
    the next port, and its method a ``SERVE_<method>`` variable."""
    from peftarena_cli.methods import get_method

    base_name = base_name or model
    methods = list(methods)
    for m in methods:
        _check("math", "sft", m)
    final = {m: f"{runs}/{m}/train/final" for m in methods}
    full = {m for m in methods if get_method(m).is_full}
    adapters = [m for m in methods if m not in full and "vllm" in get_method(m).backends]
    cmds = [f"vllm serve {model} --port {port} --served-model-name {base_name}"
            + (" --enable-lora --lora-modules " + " ".join(f"{m}={final[m]}" for m in adapters) if adapters else "")]
    variables = [f"SERVE=http://{host}:{port}/v1"]
    for m in methods:
        if m in adapters:
            continue
        port += 1
        if m in full:
            cmds.append(f"vllm serve {final[m]} --port {port} --served-model-name {m}")
        else:
            out = f"{runs}/{m}/export"
            cmds.append(f"peftarena export {model} {final[m]} -o {out} --dtype {SERVE_DTYPE} && "
                        f"vllm serve {out} --port {port} --served-model-name {m}")
        variables.append(f"SERVE_{m}=http://{host}:{port}/v1")
    return cmds, variables


def table() -> list[tuple[str, str, str]]:
    """(setting, value, source) rows of the whole preset, for docs/report.md."""
    rows = []
    for d, dom in DOMAIN.items():
        for k in ("data", "hub", "tasks", "steps_per_epoch", "prompt_type"):
            st = getattr(dom, k)
            if st is not None:
                rows.append((f"{d}.{k}", str(st.value), st.source))
    for prefix, group in (("sft", SFT), ("sft.full", SFT_FULL), ("rlvr", RLVR), ("rlvr.full", RLVR_FULL),
                          ("sft.shape", SHAPE["sft"]), ("rlvr.shape", SHAPE["rlvr"]), ("eval", EVAL)):
        for k, st in group.items():
            rows.append((f"{prefix}.{k}", f"{st.value:g}" if isinstance(st.value, float) else str(st.value), st.source))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m peftarena_cli.presets``: ``finetune-args DOMAIN REGIME METHOD [--world N] [KEY=VALUE ...]``,
    ``data DOMAIN``, ``tasks DOMAIN``, ``target-args DOMAIN``, ``methods``, ``suite``, ``table``,
    ``serve-plan MODEL RUNS BASE_NAME [METHOD ...]`` (scripts/study.mk reads them)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m peftarena_cli.presets finetune-args DOMAIN REGIME METHOD [--world N] [KEY=VALUE ...]"
             " | data DOMAIN | tasks DOMAIN | target-args DOMAIN | methods | suite | table"
             " | serve-plan MODEL RUNS BASE_NAME [METHOD ...]")
    try:
        if len(args) >= 4 and args[0] == "finetune-args":
            rest, world, over = args[4:], 1, {}
            while rest:
                a = rest.pop(0)
                if a == "--world" and rest:
                    world = int(rest.pop(0))
                elif "=" in a:
                    k, v = a.split("=", 1)
                    over[k] = v
                else:
                    raise UsageError(f"unexpected argument {a!r}", hint=usage)
            print(finetune_args(args[1], args[2], args[3], world, over))
            return 0
        if len(args) == 2 and args[0] in ("data", "tasks"):
            _check(args[1], "sft")
            print(getattr(DOMAIN[args[1]], args[0]).value)
            return 0
        if len(args) == 2 and args[0] == "target-args":
            print(target_args(args[1]))
            return 0
        if len(args) >= 4 and args[0] == "serve-plan":
            cmds, variables = serve_plan(args[1], args[2], args[4:], base_name=args[3])
            print("# 1. on the GPU node(s), once training is done: one server per line")
            print("\n".join(cmds))
            print("# 2. then the evaluations, from anywhere that reaches the servers (HOST: the node), with")
            print(" ".join(variables))
            return 0
        if args and args[0] == "methods" and len(args) <= 2:
            print(" ".join(study_methods(*args[1:])))
            return 0
        if args == ["suite"]:
            print(GENERAL_SUITE)
            return 0
        if args == ["table"]:
            print("| setting | value | source (PEFT-Arena repository) |\n|---|---|---|")
            for k, v, src in table():
                print(f"| `{k}` | {v} | {src} |")
            return 0
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""`peftarena finetune`: SFT or RLVR (GRPO) with any supported method -> a run directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, Progress, SeedOpt, deprecated_short, info
from peftarena_cli.methods import DEFAULT_METHOD, METHODS  # the registry imports nothing heavy
from peftarena_cli.tasks import benchmarks  # the built-in training task and the help's examples (light)

_TRAIN = benchmarks.get(benchmarks.DEFAULT_TRAIN)
_CONFIG_EXAMPLE = benchmarks.config_example()

METHOD_NAMES = ", ".join(METHODS)

HELP = f"""Fine-tune BASE with a method, by SFT or RLVR (GRPO), writing a run directory OUT.

OUT gets checkpoint-<step>/ every --save-every steps and at the end (PEFT adapter dirs whose
safetensors also embed the config; full model dirs for `full`), final/, train_log.parquet,
manifest.json and resume/ (trainer state for --resume). Methods: {METHOD_NAMES}.
Tokens/s and peak memory are printed on stderr at the end. See docs/finetune.md.

Example:

    peftarena finetune smollm2-135m -o runs/lora --method lora --steps 100

    peftarena finetune smollm2-135m -o runs/grpo --regime rlvr --steps 20 --num-generations 4
"""


def _chat_template_mode(chat_template: str, no_chat_template: bool) -> str:
    """--chat-template's mode; the old --no-chat-template still means off, with a deprecation warning
    (both at once: a usage error)."""
    from peftarena_cli.cli.common import warn
    from peftarena_cli.tasks.prompting import check_chat_template_mode

    mode = check_chat_template_mode(chat_template)
    if not no_chat_template:
        return mode
    if mode != "auto":
        from peftarena_cli.errors import UsageError

        raise UsageError("--no-chat-template and --chat-template both given", hint="use --chat-template off only")
    warn("--no-chat-template is deprecated: use --chat-template off")
    return "off"


def finetune_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: HF dir, .safetensors with config, alias (smollm2-135m) or hub id."),
    output: Path = typer.Option(..., "--output", "-o", help="Run directory to create (refused if it holds another run)."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=f"One of: {METHOD_NAMES}."),
    method_short: Optional[str] = typer.Option(None, "-m", hidden=True, help="Deprecated spelling of --method."),
    regime: str = typer.Option("sft", "--regime", help="sft (completion-only loss) or rlvr (GRPO, verifiable reward)."),
    data: str = typer.Option(_TRAIN.name, "--data", help=f"{_TRAIN.name} (built-in, train split; {', '.join(_TRAIN.variants)}: easier levels), a .jsonl/.json/.parquet file, a dataset dir, or a hub dataset name."),
    data_config: Optional[str] = typer.Option(None, "--data-config", help=f"Dataset config name (hub/dir datasets), e.g. {_CONFIG_EXAMPLE[1]} for {_CONFIG_EXAMPLE[0]}."),
    split: str = typer.Option("train", "--split", help="Dataset split (hub/dir datasets)."),
    prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="Prompt column (default: prompt, question, problem, ...)."),
    response_column: Optional[str] = typer.Option(None, "--response-column", help="SFT response column (default: response, completion, solution, ...)."),
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="RLVR reference answer column (default: answer, final_answer, ...)."),
    num_examples: Optional[int] = typer.Option(None, "--num-examples", help=f"Examples to use ({_TRAIN.name}: generated; files: the first N). Default: enough for the run."),
    chat_template: str = typer.Option("auto", "--chat-template", metavar="auto|on|off", help="Chat template around the training prompts: auto (when the tokenizer has one), on (required: a tokenizer without one is an error), off (plain 'Question: ... Answer:' prompts)."),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", hidden=True, help="Deprecated spelling of --chat-template off."),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="Rank (default per method: LoRA family 8, VeRA 256, MiSS 8; docs/methods.md, Defaults)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha (16 for the LoRA family; with --rank alone alpha/r is kept, rsLoRA keeps alpha)."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="OFT/BOFT block size (OFT 16, BOFT 32); must divide every targeted input width."),
    target_modules: Optional[str] = typer.Option(None, "--target-modules", help="all-linear (default) or comma-separated module names, e.g. q_proj,v_proj."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default per method; docs/finetune.md)."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Per-device batch (SFT: sequences; RLVR: completions, a multiple of --num-generations)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Gradient accumulation steps."),
    max_length: int = typer.Option(256, "--max-length", help="SFT: max tokens per example (prompt + response; at most the model's context length)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warm-up steps."),
    lr_scheduler: str = typer.Option("linear", "--lr-scheduler", help="linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup or inverse_sqrt."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    save_every: int = typer.Option(25, "--save-every", help="Save a trajectory checkpoint every N steps (and at the end)."),
    num_generations: int = typer.Option(4, "--num-generations", help="RLVR: completions per prompt (GRPO group size, >= 2)."),
    max_completion_length: int = typer.Option(64, "--max-completion-length", help="RLVR: max new tokens per completion (at most the model's context length)."),
    temperature: float = typer.Option(1.0, "--temperature", help="RLVR: sampling temperature, 0.01 to 100."),
    beta: float = typer.Option(0.0, "--beta", help="RLVR: KL coefficient (0 = no reference model)."),
    steps_per_generation: Optional[int] = typer.Option(None, "--steps-per-generation", help="RLVR: optimizer steps per generation batch: k samples k steps' completions in one generate call (faster on CPU, slightly off-policy). Default: TRL's (= --grad-accum, on-policy)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (bf16 on CUDA, none on CPU), no, bf16, fp16."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in the backward pass (less memory, more compute). Default: on for rlvr, off for sft."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever OUT holds."),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    from peftarena_cli.training.runner import FinetuneConfig, finetune

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)  # our DataError says it in one line
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", module="trl")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, message=".*CUDA extension.*")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*butterfly_factor.*")

    method = deprecated_short(method_short, "-m", "--method", method, DEFAULT_METHOD, "--modules")
    mode = _chat_template_mode(chat_template, no_chat_template)
    cfg = FinetuneConfig(
        base=base, output=str(output), method=method, regime=regime, data=data, data_config=data_config, split=split,
        prompt_column=prompt_column, response_column=response_column, answer_column=answer_column,
        num_examples=num_examples, chat_template=mode != "off", chat_template_required=mode == "on", rank=rank, alpha=alpha, block_size=block_size,
        target_modules=target_modules, lr=lr, steps=steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, warmup_steps=warmup_steps, lr_scheduler=lr_scheduler, weight_decay=weight_decay,
        save_every=save_every, seed=seed, device=device, dtype=dtype, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, num_generations=num_generations,
        max_completion_length=max_completion_length, temperature=temperature, beta=beta,
        steps_per_generation=steps_per_generation, resume=resume,
        overwrite=overwrite, argv=["peftarena", *sys.argv[1:]],
    )
    with Progress(f"finetune {method} ({regime})") as prog:
        res = finetune(cfg, callback=prog.callback, log=info)
    if not res.is_main:
        return
    last = res.log.iloc[-1] if len(res.log) else None
    msg = (f"trained {res.steps} steps in {res.elapsed_s:.1f} s: {res.tokens_per_s:.0f} tokens/s, "
           f"peak RSS {res.peak_rss_mb:.0f} MiB")
    if res.peak_gpu_mb is not None:
        msg += f", peak GPU {res.peak_gpu_mb:.0f} MiB"
    if last is not None and last["loss"] == last["loss"]:
        msg += f", last loss {last['loss']:.4g}"
    if last is not None and last["reward_mean"] == last["reward_mean"]:
        msg += f", last reward {last['reward_mean']:.3g}"
    info(msg)
    info(f"final weights: {res.final}")


def register(app: typer.Typer) -> None:
    app.command("finetune", help=HELP, no_args_is_help=True)(finetune_cmd)

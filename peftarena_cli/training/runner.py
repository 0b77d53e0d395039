"""The fine-tuning run: base + data + method -> a run directory (checkpoints, train log, manifest).

:func:`finetune` validates everything first (method and overrides, data, model shapes, GRPO group
sizes, the output directory) and writes nothing until all of it passes. It then trains with TRL:
``SFTTrainer`` (loss on the completion only) for ``regime="sft"`` and ``GRPOTrainer`` with the
verifiable reward of :mod:`peftarena_cli.training.rewards` for ``regime="rlvr"``. The same code
runs unchanged under ``torchrun`` / ``accelerate launch`` (data parallel; only the main process
writes files).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peftarena_cli.errors import DataError, IncompatibleInputs, NumericalError, OutputError, PeftArenaError, UsageError
from peftarena_cli.memory import peak_rss_mib
from peftarena_cli.methods import DEFAULT_METHOD, resolve
from peftarena_cli.tasks import benchmarks
from peftarena_cli.training import checkpoints as ck
from peftarena_cli.training import sharding


@dataclass
class FinetuneConfig:
    base: str = "smollm2-135m"
    output: str = "run"
    method: str = DEFAULT_METHOD
    regime: str = "sft"
    data: str = benchmarks.DEFAULT_TRAIN
    data_config: str | None = None
    split: str = "train"
    prompt_column: str | None = None
    response_column: str | None = None
    answer_column: str | None = None
    num_examples: int | None = None
    chat_template: bool = True               # prompts through the tokenizer's chat template when it has one
    chat_template_required: bool = False     # --chat-template on: a tokenizer without one is refused
    rank: int | None = None
    alpha: float | None = None
    block_size: int | None = None
    target_modules: str | None = None
    lr: float | None = None
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    save_every: int = 25
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    mixed_precision: str = "auto"
    gradient_checkpointing: bool | None = None  # None: on for rlvr (docs/finetune.md, "Memory"), off for sft
    num_generations: int = 4
    max_completion_length: int = 64
    temperature: float = 1.0
    beta: float = 0.0
    # RLVR: optimizer steps per generation batch (TRL's steps_per_generation). None: TRL's default (= grad_accum,
    # on-policy); k > 1 samples k steps' completions in one generate call and reuses them for k steps
    # (docs/finetune.md, "GRPO speed")
    steps_per_generation: int | None = None
    resume: bool = False
    overwrite: bool = False
    argv: list = field(default_factory=lambda: list(sys.argv))

    # fields that define "the same run" (a resumed run must match them)
    RUN_KEYS = ("base", "method", "regime", "data", "data_config", "split", "prompt_column", "response_column",
                "answer_column", "num_examples", "chat_template", "rank", "alpha", "block_size", "target_modules",
                "lr", "steps", "batch_size", "grad_accum", "max_length", "warmup_steps", "lr_scheduler",
                "weight_decay", "save_every", "seed", "dtype", "mixed_precision", "num_generations",
                "max_completion_length", "temperature", "beta", "steps_per_generation")


@dataclass
class FinetuneResult:
    output: Path
    final: Path
    steps: int
    elapsed_s: float
    tokens_per_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    trainable_params: int
    log: object  # DataFrame
    resumed_from: int | None = None
    is_main: bool = True  # False on the non-main processes of a distributed run
    model: object = None  # the trained model in memory (for callers in Python and tests)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# the transformers schedulers that need nothing but the run's steps (the others want an evaluation
# strategy or extra scheduler arguments that `finetune` does not take)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
# sampling temperature range: below 0.01 sampling is greedy in all but name and logits / T overflow
# float16 (|logit| > 655); above 100 it draws nearly uniformly from the vocabulary
TEMPERATURE_RANGE = (0.01, 100.0)


def _number(flag: str, value, low: float, *, low_open: bool = False, high: float | None = None,
            hint: str | None = None) -> None:
    """UsageError unless ``value`` is a finite number >= ``low`` (> with ``low_open``), <= ``high``."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise UsageError(f"{flag} must be a finite number {rng} (got {value})", hint=hint)


def validate_config(cfg: FinetuneConfig) -> None:
    """Every setting that can be judged without the model: refused with a UsageError (exit 2)."""
    if cfg.regime not in ("sft", "rlvr"):
        raise UsageError(f"unknown regime {cfg.regime!r}", hint="use --regime sft or --regime rlvr")
    for name in ("steps", "batch_size", "grad_accum", "max_length", "save_every"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
    for flag, v in (("--rank", cfg.rank), ("--block-size", cfg.block_size), ("--num-examples", cfg.num_examples)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be >= 1 (got {v})", hint="pass a positive integer, or leave it out")
    if cfg.lr is not None:
        _number("--lr", cfg.lr, 0, low_open=True, hint="pass a positive learning rate such as 2e-4")
    if cfg.alpha is not None:
        _number("--alpha", cfg.alpha, 0, low_open=True, hint="pass a positive LoRA alpha such as 16")
    _number("--weight-decay", cfg.weight_decay, 0, hint="pass 0 (none) or a small positive value such as 0.01")
    if cfg.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be >= 0 (got {cfg.warmup_steps})")
    if cfg.lr_scheduler not in SCHEDULERS:
        raise UsageError(f"unknown --lr-scheduler {cfg.lr_scheduler!r}", hint=f"use one of: {', '.join(SCHEDULERS)}")
    lo, hi = TEMPERATURE_RANGE
    _number("--temperature", cfg.temperature, lo, high=hi,
            hint="GRPO samples its completions, so the temperature must be positive (1.0 is TRL's default)")
    _number("--beta", cfg.beta, 0, hint="pass 0 (no KL term, no reference model) or a positive KL coefficient")
    if not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be in 0 .. 2^32 - 1 (got {cfg.seed})")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume and --overwrite exclude each other",
                         hint="--resume continues the run in OUT; --overwrite starts it again")
    if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise UsageError(f"unknown --mixed-precision {cfg.mixed_precision!r}", hint="use auto, no, bf16 or fp16")
    if cfg.regime == "rlvr":
        g = cfg.num_generations
        if g < 2:
            raise IncompatibleInputs(f"--num-generations {g} cannot work: GRPO needs at least 2 completions per prompt "
                                     "to compute group-relative advantages", hint="pass --num-generations 2 or more")
        global_batch = cfg.batch_size * _world_size() * cfg.grad_accum
        if global_batch % g:
            raise IncompatibleInputs(
                f"--num-generations {g} does not divide the generation batch "
                f"(batch size {cfg.batch_size} x processes {_world_size()} x grad accum {cfg.grad_accum} = {global_batch})",
                hint="GRPO generates whole groups: make batch-size x processes x grad-accum a multiple of --num-generations")
        if cfg.max_completion_length < 1:
            raise UsageError("--max-completion-length must be >= 1")
        if cfg.steps_per_generation is not None and cfg.steps_per_generation < 1:
            raise UsageError(f"--steps-per-generation must be >= 1 (got {cfg.steps_per_generation})")
    elif cfg.steps_per_generation is not None:
        raise UsageError("--steps-per-generation applies to --regime rlvr only",
                         hint="drop it, or pass --regime rlvr")


def run_key(cfg: FinetuneConfig, base_identity: str, data_source: dict) -> str:
    d = {k: getattr(cfg, k) for k in FinetuneConfig.RUN_KEYS}
    if d["steps_per_generation"] is None:
        del d["steps_per_generation"]  # keys of runs made before the option existed stay valid for --resume
    d["base_identity"] = base_identity
    d["data_identity"] = data_source.get("identity")
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_output_dir(out: Path, key: str, cfg: FinetuneConfig) -> str:
    """'fresh' | 'resume' | 'overwrite'; raise when OUT holds something else and no flag allows it."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} exists and is not a directory", hint="choose a directory path")
    if not out.exists() or not any(e.name != ck.LOCK_NAME for e in out.iterdir()):
        return "fresh"
    man = ck.read_manifest(out)
    if cfg.overwrite:
        return "overwrite"
    if cfg.resume:
        if man is None:
            raise OutputError(f"{str(out)!r} is not empty and holds no peftarena run to resume",
                              hint="choose an empty or new output directory, or pass --overwrite")
        if man.get("status") == "diverged":
            raise NumericalError(
                f"the run in {str(out)!r} diverged at step {man.get('stopped_at_step')} ({man.get('stop_reason')}); "
                "resuming it with the same settings would diverge again",
                hint=f"its checkpoints up to {man.get('last_finite_checkpoint')} are usable as they are; "
                     "start again with a smaller --lr and --overwrite")
        if man.get("run_key") != key:
            diff = [k for k in FinetuneConfig.RUN_KEYS if man.get("config", {}).get(k) != getattr(cfg, k)]
            what = f" (differs in: {', '.join(diff)})" if diff else " (different base model or data)"
            raise OutputError(f"{str(out)!r} holds a different run{what}",
                              hint="resume with the original settings, or pass --overwrite to replace it")
        return "resume"
    kind = "a peftarena run" if man is not None else "other files"
    raise OutputError(f"output directory {str(out)!r} already holds {kind}",
                      hint="pass --resume to continue that run, --overwrite to replace it, or choose a new directory")


def _make_run_dir(out: Path) -> list[Path]:
    """Create OUT and any missing parents; return the directories created (outermost first)."""
    made = []
    for d in [*reversed(out.parents), out]:
        if not d.exists():
            try:
                d.mkdir()
            except FileExistsError:
                continue
            made.append(d)
    return made


def _undo_run_dir(out: Path, made: list[Path]) -> None:
    """Remove what a run that failed before its first checkpoint wrote: OUT itself when this run
    created it (and the parents it created), else OUT's contents."""
    if out in made:
        shutil.rmtree(out, ignore_errors=True)
        for d in reversed(made[:-1]):
            try:
                d.rmdir()
            except OSError:
                break
        return
    for child in out.iterdir():
        if child.name == ck.LOCK_NAME:
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink()


def gradient_checkpointing(cfg: FinetuneConfig) -> bool:
    """Whether activations are recomputed in the backward pass: as asked, else on for RLVR (GRPO's
    backward over batch x (prompt + completion) tokens holds most of its peak memory) and off for SFT."""
    return cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cfg.regime == "rlvr"


def trainer_gradient_checkpointing(cfg: FinetuneConfig) -> bool:
    """The trainer's own gradient checkpointing: off when the FSDP config recomputes the layers itself
    (``fsdp_activation_checkpointing``; the trainer refuses both at once)."""
    return gradient_checkpointing(cfg) and not sharding.fsdp_activation_checkpointing()


def context_length(model) -> int | None:
    """The number of positions the model was built for (None when its config does not say)."""
    c = getattr(model, "config", None)
    for k in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = getattr(c, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_against_context(cfg: FinetuneConfig, model) -> None:
    """--max-length (SFT) and --max-completion-length (RLVR) may not exceed the model's context length."""
    n = context_length(model)
    if n is None:
        return
    flag, v = ("--max-length", cfg.max_length) if cfg.regime == "sft" else ("--max-completion-length",
                                                                             cfg.max_completion_length)
    if v > n:
        raise UsageError(f"{flag} {v} exceeds the model's context length of {n} positions "
                         f"(max_position_embeddings)", hint=f"pass {flag} {n} or less")


def ensure_eos(tok, model, base: str) -> str | None:
    """Make sure the tokenizer has an EOS token: SFT ends every completion with it and GRPO stops its
    completions there. A tokenizer without one takes the model config's ``eos_token_id`` (returns a
    note saying so); with neither, InvalidArtifact."""
    if tok.eos_token is not None:
        return None
    from peftarena_cli.errors import InvalidArtifact

    ids = []
    for c in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        v = getattr(c, "eos_token_id", None)
        ids += [v] if isinstance(v, int) else [i for i in (v or []) if isinstance(i, int)]
    for i in ids:
        if 0 <= i < len(tok):
            tok.eos_token = tok.convert_ids_to_tokens(i)
            return f"the tokenizer has no EOS token: using {tok.eos_token!r} (id {i}), the model config's eos_token_id"
    raise InvalidArtifact(f"the tokenizer of {base!r} has no EOS token, and the model config names none "
                          "(SFT ends each completion with it; GRPO stops sampling there)",
                          hint="set eos_token in the tokenizer's tokenizer_config.json (or eos_token_id in config.json)")


def _mixed_precision(cfg: FinetuneConfig, device: str) -> tuple[bool, bool]:
    if cfg.mixed_precision == "auto":
        if device.startswith("cuda"):
            import torch

            return (torch.cuda.is_bf16_supported(), False)
        return (False, False)
    return (cfg.mixed_precision == "bf16", cfg.mixed_precision == "fp16")


def _unwrap_error(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:300]


def check_regime(choice, regime: str) -> None:
    """A method initialised from a training batch (``init_from_batch``: KeepLoRA) needs the SFT loss, so
    reference completions: it is refused under RLVR, which has none."""
    if choice.method.init_from_batch and regime != "sft":
        raise IncompatibleInputs(
            f"{choice.method.name} starts from the gradient of the SFT loss on the first training batch; "
            f"--regime {regime} has no reference completions to take it from",
            hint=f"train {choice.method.name} with --regime sft")


def init_from_first_batch(choice, model, trainer, batch_size: int) -> int:
    """Run the method's ``init_from_batch`` hook on the first ``batch_size`` training examples in data
    order, collated as training collates them (completion-only labels); returns what the hook returns."""
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(min(batch_size, len(ds)))])
    return resolve(choice.method.init_from_batch)(getattr(model, "module", model), dict(batch))


def prepare_model(cfg: FinetuneConfig, choice, model):
    """Wrap ``model`` for ``choice``; return (model, init tensors for PiSSA/MiLoRA conversion or None)."""
    from peftarena_cli.training import methods

    if choice.method.is_full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model, None
    from peft import get_peft_model, get_peft_model_state_dict

    pcfg = methods.peft_config(choice, cfg.steps, model)
    try:
        pm = get_peft_model(model, pcfg)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise IncompatibleInputs(f"cannot apply {choice.method.name} to this model: {_unwrap_error(e)}",
                                 hint="change --target-modules/--rank/--block-size (docs/finetune.md)") from None
    init = None
    methods.post_wrap(choice, pm)  # work done once PEFT has wrapped the model (MiLoRA's initialisation)
    if choice.method.mutates_base:
        init = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(pm).items()}
    return pm, init


def finetune(cfg: FinetuneConfig, callback=None, log=None, _interrupt_after: int | None = None,
             reward_fn=None) -> FinetuneResult:
    """Run a fine-tune as configured. ``callback(done, total, label)`` reports steps; ``log(msg)`` notes.

    ``reward_fn`` (RLVR, from Python): a reward function with TRL's signature instead of the built-in
    :func:`~peftarena_cli.training.rewards.verifiable_reward`. Either way a completion on which it
    raises scores 0; the count goes to the log and to the manifest (``reward_errors``).

    ``_interrupt_after`` (tests only) raises KeyboardInterrupt after that step's checkpoint is saved.
    """
    import torch

    from peftarena_cli.artifacts.loading import load_model, pick_device
    from peftarena_cli.artifacts.tables import Provenance
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.training import methods
    from peftarena_cli.training.data import load_train_data

    say = log or (lambda m: None)
    t_start = time.perf_counter()
    validate_config(cfg)
    choice = methods.resolve_method(cfg.method, cfg.rank, cfg.alpha, cfg.block_size, cfg.target_modules, cfg.lr)
    check_regime(choice, cfg.regime)
    out = Path(cfg.output).expanduser()
    from peftarena_cli.artifacts.guard import check_outputs_vs_inputs, check_writable

    check_outputs_vs_inputs({"-o": out}, [cfg.base, cfg.data])
    check_writable(out)
    ref = resolve_model(cfg.base)
    base_identity = ref.identity() if hasattr(ref, "identity") else ""
    device = pick_device(cfg.device)
    world = _world_size()

    # data first (cheap, and the usual source of mistakes); the tokenizer renders the prompts
    from peftarena_cli.artifacts.loading import load_tokenizer

    tok = load_tokenizer(ref)
    if cfg.chat_template_required:  # before the model is loaded
        from peftarena_cli.tasks.prompting import require_chat_template

        require_chat_template(tok, "on", cfg.base)
    n_needed = cfg.steps * cfg.batch_size * cfg.grad_accum * world
    if cfg.regime == "rlvr":
        n_needed = max(1, n_needed // cfg.num_generations)
    from peftarena_cli.training.data import is_builtin

    data = load_train_data(cfg.data, tok, cfg.regime, n=cfg.num_examples or (n_needed if is_builtin(cfg.data) else None),
                           seed=cfg.seed, config=cfg.data_config, split=cfg.split, prompt_column=cfg.prompt_column,
                           response_column=cfg.response_column, answer_column=cfg.answer_column,
                           use_chat=cfg.chat_template, max_length=cfg.max_length)
    key = run_key(cfg, base_identity, data.source)
    mode = check_output_dir(out, key, cfg)
    if mode == "resume":  # the run goes on with its own hyper-parameters, even if the defaults changed since
        choice, kept = methods.as_started(choice, (ck.read_manifest(out) or {}).get("method"),
                                          {"rank": cfg.rank, "alpha": cfg.alpha, "block_size": cfg.block_size,
                                           "lr": cfg.lr})
        if kept:
            say("resuming with the run's own " + ", ".join(f"{k} {getattr(choice, k):g}" for k in kept)
                + " (the method's defaults changed since it started)")

    torch.manual_seed(cfg.seed)
    model, tok, ref = load_model(ref, dtype=cfg.dtype, device="cpu")
    check_against_context(cfg, model)
    note = ensure_eos(tok, model, cfg.base)
    if note:
        say(note)
    methods.check_against_model(choice, model)
    model, init_tensors = prepare_model(cfg, choice, model)
    model.train()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    from accelerate import PartialState

    lock, made, diverged_dir = None, [], False
    try:
        # one process owns the run directory: the launcher's RANK 0 (under torchrun on CPU, a second rank
        # also passed the is_main_process check here, took the lock and refused rank 0)
        if int(os.environ.get("RANK", "0")) == 0 and PartialState().is_main_process:
            made = _make_run_dir(out)
            lock = ck.RunLock(out).acquire()
            mode = check_output_dir(out, key, cfg)  # again under the lock: another writer may have finished meanwhile
        existed = out.exists()
        _no_telemetry()
        trainer = _build_trainer(cfg, choice, model, tok, data, out, device, reward_fn=reward_fn)
        sharding.check_fsdp(trainer, choice)
        par = sharding.parallelism(trainer, world)
        if mode == "resume":
            sharding.check_resume_parallelism(ck.read_manifest(out), par)
        if len(trainer.train_dataset) == 0:
            raise DataError(f"no training example fits in --max-length {cfg.max_length} tokens "
                            f"({len(data)} records, all dropped by truncation)",
                            hint="raise --max-length or use shorter prompts")

        if choice.method.init_from_batch and (mode != "resume" or ck.latest_resume_state(out) is None):
            # a resumed run's checkpoint holds the initialised factors already
            n_init = init_from_first_batch(choice, model, trainer, cfg.batch_size)
            say(f"{choice.method.name}: initialised {n_init} modules from the first training batch")

        # --- everything validated: from here on we write -------------------------------------------
        from accelerate import PartialState

        state = PartialState()
        if not state.is_main_process:
            say = lambda m: None  # noqa: E731  (one voice per distributed run)
        resume_ckpt = None
        resumed_from = None
        if state.is_main_process:
            if mode == "overwrite":
                for child in out.iterdir():
                    if child.name == ck.LOCK_NAME:
                        continue
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            out.mkdir(exist_ok=True)
        state.wait_for_everyone()
        if mode == "resume":
            resume_ckpt = ck.latest_resume_state(out)
            if resume_ckpt is not None:
                resumed_from = int(resume_ckpt.name.split("-")[1])
                say(f"resuming from step {resumed_from}")
            else:
                say("nothing to resume yet: starting from step 0")
        import importlib.metadata as md

        versions = {p: _version(md, p) for p in ("peftarena", "torch", "transformers", "peft", "trl", "accelerate", "datasets")}
        peft_cfg = None
        if hasattr(model, "peft_config"):
            peft_cfg = model.peft_config["default"].to_dict()
        manifest = {
            "format": "peftarena-run/1",
            "status": "running",
            "run_key": key,
            "command": cfg.argv,
            "config": {k: getattr(cfg, k) for k in FinetuneConfig.RUN_KEYS},
            "base": {"spec": cfg.base, "path": str(ref.path), "identity": base_identity},
            "method": {**choice.to_dict(), "summary": choice.method.summary,
                       "peft_config": json.loads(json.dumps(peft_cfg, default=lambda o: sorted(o) if isinstance(o, set) else str(o))),
                       "saved_as": "lora (converted from the residual-base form, rank 2r)" if choice.method.mutates_base else None},
            "data": {**data.source, "records": len(data)},
            "trainable_params": n_trainable,
            "gradient_checkpointing": gradient_checkpointing(cfg) or sharding.fsdp_activation_checkpointing(),
            "seed": cfg.seed,
            "device": device,
            "world_size": world,
            "parallelism": par,
            "versions": versions,
            "python": sys.version.split()[0],
            "checkpoints": [],
        }
        old = ck.read_manifest(out) if mode == "resume" else None
        if old and resumed_from is not None:
            manifest["checkpoints"] = [c for c in old.get("checkpoints", []) if c["step"] <= resumed_from]
            manifest["resumed"] = old.get("resumed", []) + [resumed_from]
        if state.is_main_process:
            ck.write_manifest(out, manifest)

        prov = Provenance(command="finetune", argv=cfg.argv, seed=cfg.seed, dtype=cfg.dtype, device=device,
                          extra={"run_key": key, "method": choice.method.name, "regime": cfg.regime})
        prov.add_input("base", cfg.base, base_identity)
        tlog = ck.TrainLog.resume_from(out, resumed_from) if resumed_from is not None else ck.TrainLog()

        from transformers import TrainerCallback

        full = choice.method.is_full
        extra_meta = {"method": choice.method.name, "run_key": key}

        class _Trajectory(TrainerCallback):
            def __init__(self):
                self.saved = {c["step"] for c in manifest["checkpoints"]}

            def on_train_begin(self, args, st, control, **kw):
                tlog.restart_clock()

            def on_step_end(self, args, st, control, model=None, **kw):
                # the weights are checked before every save (trainer state and adapter alike), so no
                # checkpoint ever holds a NaN or an Inf
                if control.should_save:
                    ck.check_finite(st.global_step, model=model if model is not None else trainer.model)

            def on_log(self, args, st, control, logs=None, model=None, **kw):
                row = tlog.add(st.global_step, logs or {}, st.num_input_tokens_seen)
                if row is not None and state.is_main_process:
                    tlog.write(out, prov)  # every step (a few KB, atomic): a long run's curve can be read while it runs
                if row is not None and callback is not None and state.is_main_process:
                    lab = f"loss {row['loss']:.4g}" if row["loss"] == row["loss"] else ""
                    if row["reward_mean"] == row["reward_mean"]:
                        lab += f" reward {row['reward_mean']:.3g}"
                    callback(st.global_step, cfg.steps, lab)
                if row is not None:
                    # a non-finite gradient norm is not fatal by itself (fp16 loss scaling skips such
                    # steps), a non-finite weight after it is
                    gn = row["grad_norm"]
                    bad_grad = gn == gn and not math.isfinite(gn)
                    ck.check_finite(st.global_step, logs,
                                    model=(model if model is not None else trainer.model) if bad_grad else None)

            def on_save(self, args, st, control, model=None, **kw):
                step = st.global_step
                if step not in self.saved:  # the same set on every process (from the manifest, then each save)
                    # under FSDP every process takes part in gathering the full weights to rank 0
                    gathered = sharding.gathered_state_dict(trainer, model)
                    self.saved.add(step)
                    if state.is_main_process:
                        ck.save_checkpoint(out, step, model, tok, full, init_tensors, cfg.base, extra_meta,
                                           state_dict=gathered)
                        manifest["checkpoints"].append({"step": step, "path": f"checkpoint-{step}"})
                        manifest["last_step"] = step
                        tlog.write(out, prov)
                        ck.write_manifest(out, manifest)
                        r = tlog.rows[-1] if tlog.rows else {}
                        rw = r.get("reward_mean", float("nan"))
                        rw = f", reward {rw:.3g}" if rw == rw else ""
                        say(f"step {step}/{cfg.steps}: saved checkpoint-{step} (loss {r.get('loss', float('nan')):.4g}{rw}, "
                            f"{tlog.elapsed():.0f} s)")
                if _interrupt_after is not None and step >= _interrupt_after:
                    raise KeyboardInterrupt(f"test interruption after step {step}")

        class _StepHook(TrainerCallback):
            """The method's ``on_optimizer_step`` hook (AdaLoRA's rank allocation) after every optimizer step."""

            def __init__(self, hook):
                self.hook = hook

            def on_optimizer_step(self, args, st, control, **kw):
                self.hook(getattr(model, "module", model), st.global_step)

        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints log dicts to stdout, which carries data only
        trajectory = _Trajectory()
        trainer.add_callback(trajectory)
        if choice.method.on_optimizer_step:
            trainer.add_callback(_StepHook(resolve(choice.method.on_optimizer_step)))
        if torch.cuda.is_available() and device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t_train, c_train = time.perf_counter(), time.process_time()
        try:
            trainer.train(resume_from_checkpoint=str(resume_ckpt) if resume_ckpt is not None else None)
        except ck.TrainingDiverged as e:
            kept = manifest["checkpoints"][-1]["step"] if manifest["checkpoints"] else None
            # the manifest records the divergence even before the first checkpoint (then with no
            # finite checkpoint): a sweep reads it to tell a divergence from any other failure
            diverged_dir = True
            if state.is_main_process:
                manifest.update({"status": "diverged", "stopped_at_step": e.step, "stop_reason": e.reason,
                                 "last_step": kept,
                                 "last_finite_checkpoint": f"checkpoint-{kept}" if kept is not None else None})
                ck.write_manifest(out, manifest)
            where = (f"checkpoints up to checkpoint-{kept} are kept (all finite, no final/)" if kept is not None
                     else f"no checkpoint had been saved: {str(out)!r} keeps only the manifest (status diverged) "
                          "and the train log")
            raise ck.TrainingDiverged(e.step, e.reason, hint=f"{where}; start again with a smaller --lr "
                                      "(or --mixed-precision no) and --overwrite") from None
        train_s = time.perf_counter() - t_train
        train_cpu_s = time.process_time() - c_train  # CPU seconds of all threads: robust to other load

        final_step = trainer.state.global_step
        rw = getattr(trainer, "_peftarena_reward", None)
        if rw is not None:
            manifest["reward_errors"] = rw.errors
            if rw.errors:
                say(f"the reward function raised on {rw.errors} completion(s), each scored 0 (last: {rw.last_error})")
        df = tlog.frame()
        new = df[df["step"] > (resumed_from or 0)]
        tokens = float(new["tokens"].iloc[-1] - (df[df["step"] <= (resumed_from or 0)]["tokens"].iloc[-1]
                                                if resumed_from and (df["step"] <= resumed_from).any() else 0.0)) if len(new) else 0.0
        tps = tokens / train_s if train_s > 0 else float("nan")
        peak_gpu = (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None
        final = out / "final"
        need_final = final_step not in trajectory.saved  # decided alike on every process
        if need_final:
            ck.check_finite(final_step, model=getattr(trainer, "model", model))
            gathered = sharding.gathered_state_dict(trainer, getattr(trainer, "model", model))
        if state.is_main_process:
            if need_final:
                ck.save_checkpoint(out, final_step, getattr(trainer, "model", model), tok, full, init_tensors, cfg.base,
                                   extra_meta, state_dict=gathered)
                manifest["checkpoints"].append({"step": final_step, "path": f"checkpoint-{final_step}"})
            ck.link_final(out, final_step)
            tlog.write(out, prov)
            manifest.update({"status": "complete", "last_step": final_step, "final": "final",
                             "train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "total_seconds": time.perf_counter() - t_start,
                             "tokens_per_s": tps, "peak_rss_mb": peak_rss_mib(), "peak_gpu_mb": peak_gpu})
            ck.write_manifest(out, manifest)
        state.wait_for_everyone()
        return FinetuneResult(out, final, final_step, train_s, tps, peak_rss_mib(), peak_gpu, n_trainable, df, resumed_from,
                              state.is_main_process, getattr(trainer, "model", model))
    except BaseException:
        if lock is not None and mode != "resume" and not diverged_dir and not any(out.glob("checkpoint-*")):
            _undo_run_dir(out, made)  # failed before its first checkpoint: leave nothing behind
        raise
    finally:
        if lock is not None:
            lock.release()


def _no_telemetry() -> None:
    """Turn off the usage report TRL's trainers send to the hub from a background thread at start-up
    (``huggingface_hub.send_telemetry``): a run on local data and a local model touches no network."""
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True


def _version(md, pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _build_trainer(cfg: FinetuneConfig, choice, model, tok, data, out: Path, device: str, reward_fn=None):
    bf16, fp16 = _mixed_precision(cfg, device)
    common = dict(
        output_dir=str(out / "resume"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=choice.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=fp16,
        gradient_checkpointing=trainer_gradient_checkpointing(cfg),
        report_to="none",
        logging_nan_inf_filter=False,  # log a NaN/Inf loss as it is (the default hides it): it stops the run
        disable_tqdm=True,
        use_cpu=not device.startswith("cuda"),
        dataloader_num_workers=0,
        save_only_model=False,
        ddp_find_unused_parameters=False,
    )
    ds = data.to_dataset()
    if cfg.regime == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = ds.remove_columns([c for c in ds.column_names if c not in ("prompt", "completion")])
        args = SFTConfig(max_length=cfg.max_length, completion_only_loss=True, packing=False,
                         dataset_num_proc=None, **common)
        return _method_optimizer(SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok), choice)
    from trl import GRPOConfig, GRPOTrainer

    from peftarena_cli.training.rewards import SafeReward, verifiable_reward

    extra = {} if cfg.steps_per_generation is None else {"steps_per_generation": cfg.steps_per_generation}
    args = GRPOConfig(num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                      temperature=cfg.temperature, beta=cfg.beta, log_completions=False, **extra, **common)
    reward = SafeReward(reward_fn or verifiable_reward)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok)
    trainer._peftarena_reward = reward  # read after training: completions a failing reward scored 0
    return _method_optimizer(trainer, choice)


def _method_optimizer(trainer, choice):
    """Give ``trainer`` the method's own optimizer when its registry entry names one (``Method.optimizer``,
    LoRA+'s per-factor learning rates): built when the trainer builds its own, from the trainer's optimizer
    class and settings, so the scheduler, resuming and device placement work as usual."""
    if not choice.method.optimizer:
        return trainer
    import types

    build = resolve(choice.method.optimizer)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = build(choice, opt_model, cls, kwargs, self.args.weight_decay)
        return self.optimizer

    trainer.create_optimizer = types.MethodType(create_optimizer, trainer)
    return trainer

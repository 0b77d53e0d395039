"""Sharded training (FSDP) around the TRL trainer: what the launcher asked for, what the trainer got,
and the full weights gathered for a checkpoint.

``accelerate launch --config_file configs/fsdp-*.yaml`` tells every process through the environment
(``ACCELERATE_USE_FSDP``, ``FSDP_*``); the trainer's ``Accelerator`` then wraps the model with FSDP
(``fully_shard`` for FSDP2) and each process holds 1/N of the parameters, gradients and AdamW states.
peftarena's artifacts stay the ones a single process writes: before a checkpoint every process takes
part in gathering the full state dict to rank 0 (``Accelerator.get_state_dict``: FSDP2
``get_model_state_dict(full_state_dict=True, cpu_offload=True)``, FSDP1 ``FULL_STATE_DICT`` with
``rank0_only``), and rank 0 alone writes it atomically. See docs/large-models.md, "Sharded training".
"""

from __future__ import annotations

import os

from peftarena_cli.errors import IncompatibleInputs


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def launcher_wants_fsdp() -> bool:
    """Whether the launcher (``accelerate launch`` with an FSDP config) asked for FSDP."""
    return _flag("ACCELERATE_USE_FSDP")


def fsdp_activation_checkpointing() -> bool:
    """Whether the FSDP config turns on FSDP's own activation checkpointing (``fsdp_activation_checkpointing``).
    The trainer refuses it together with its own gradient checkpointing, so the runner then leaves
    the trainer's off: the layers are recomputed once, by FSDP."""
    return launcher_wants_fsdp() and _flag("FSDP_ACTIVATION_CHECKPOINTING")


def is_fsdp(trainer) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def check_fsdp(trainer, choice) -> None:
    """Refuse a run that asked for FSDP and did not get it, or a method FSDP cannot train here.

    On a machine without GPUs accelerate 1.16 sets up data-parallel CPU training (``MULTI_CPU``) even
    under an FSDP config: every process would hold the whole model, which is what the user meant to
    avoid, so the run stops instead of silently replicating."""
    if launcher_wants_fsdp() and not is_fsdp(trainer):
        got = getattr(getattr(trainer, "accelerator", None), "distributed_type", "NO")
        raise IncompatibleInputs(
            "the launcher asked for FSDP (ACCELERATE_USE_FSDP), but accelerate set up "
            f"{getattr(got, 'value', got)} instead: "
            "it shards on GPUs only, so every process would hold the whole model",
            hint="run the FSDP configs on GPUs; on CPU use torchrun (data parallel, docs/finetune.md)")
    if is_fsdp(trainer) and choice.method.on_optimizer_step:
        raise IncompatibleInputs(
            f"{choice.method.name} reallocates its ranks after every optimizer step on the whole weights; "
            "under FSDP each process holds a shard of them",
            hint="train it without FSDP (one process or data parallel), or use lora under FSDP")


def parallelism(trainer, world: int) -> dict:
    """The manifest's ``parallelism``: kind (single, ddp, fsdp), world size and, under FSDP, the
    sharding settings the trainer actually uses."""
    if not is_fsdp(trainer):
        return {"kind": "ddp" if world > 1 else "single", "world_size": world}
    acc = trainer.accelerator
    p = acc.state.fsdp_plugin
    version = int(getattr(p, "fsdp_version", 1) or 1)
    if version == 2:
        # FSDP2 has no strategy enum: resharding after forward is FULL_SHARD, keeping the gathered
        # parameters until backward is SHARD_GRAD_OP
        strategy = "FULL_SHARD" if p.reshard_after_forward else "SHARD_GRAD_OP"
    else:
        strategy = getattr(p.sharding_strategy, "name", str(p.sharding_strategy))
    sdt = getattr(p, "state_dict_type", None)
    return {
        "kind": "fsdp",
        "world_size": world,
        "fsdp_version": version,
        "sharding_strategy": strategy,
        "state_dict_type": getattr(sdt, "name", str(sdt)),
        "cpu_offload": bool(getattr(getattr(p, "cpu_offload", None), "offload_params", False)
                            or type(getattr(p, "cpu_offload", None)).__name__ == "CPUOffloadPolicy"),
        "activation_checkpointing": bool(p.activation_checkpointing),
        "mixed_precision": str(acc.mixed_precision),
    }


def check_resume_parallelism(old: dict | None, now: dict) -> None:
    """A run's ``resume/`` trainer state is written in the format of its parallelism (FSDP's
    sharded model and optimizer files, or plain ones): a resume must keep FSDP on or off as it was."""
    if not old or "parallelism" not in old:
        was_fsdp = False
    else:
        was_fsdp = old["parallelism"].get("kind") == "fsdp"
    if was_fsdp != (now["kind"] == "fsdp"):
        from peftarena_cli.errors import OutputError

        how = "under FSDP" if was_fsdp else "without FSDP"
        raise OutputError(f"the run in OUT was trained {how}; its resume state cannot be loaded "
                          f"{'without' if was_fsdp else 'under'} FSDP",
                          hint="resume it with the launcher and config it started with")


def gathered_state_dict(trainer, model):
    """The full state dict of a sharded model, on rank 0 (CPU tensors; the other ranks get an empty
    dict); None when the model is not sharded. A collective: every process must call it."""
    if not is_fsdp(trainer):
        return None
    return trainer.accelerator.get_state_dict(model)

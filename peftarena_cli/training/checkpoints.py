"""Trajectory checkpoints and the training log, written while TRL trains.

Run directory layout (``OUT``):

* ``checkpoint-<step>/``: the adapter at that step, in PEFT format (``adapter_config.json`` +
  ``adapter_model.safetensors`` with the config also in the safetensors ``__metadata__``), or, for
  ``full``, an HF model directory (``config.json`` + ``model.safetensors`` + tokenizer);
* ``final/``: the last checkpoint (hard links to the same files, no extra disk);
* ``train_log.parquet``: one row per optimizer step;
* ``manifest.json``: everything needed to reproduce the run, and its status;
* ``resume/``: the trainer state of the latest checkpoint (optimizer, scheduler, RNG) for ``--resume``.

Every file is written atomically (temp + rename), so an interrupted run leaves either the previous
or the new version, never a truncated one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from peftarena_cli.artifacts.atomic import atomic_dir, atomic_write_text
from peftarena_cli.errors import NumericalError

LOG_COLUMNS = ["step", "loss", "lr", "grad_norm", "reward_mean", "reward_std", "frac_reward_zero_std",
               "tokens", "tokens_per_s", "elapsed_s"]


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / f"checkpoint-{step}"


def convert_mutated_lora(tensors: dict, init_tensors: dict, config: dict) -> tuple[dict, dict]:
    """PiSSA/MiLoRA -> a plain LoRA on the *original* base.

    W = W_res + s B0 A0 and W + ΔW = W_res + s B A, so ΔW = s (B A - B0 A0) = s [B | -B0] [A ; A0]:
    a rank-2r LoRA with alpha doubled (same scaling s = alpha/r).
    """
    import torch

    out = {}
    for k, v in tensors.items():
        if "lora_A" in k:
            out[k] = torch.cat([v, init_tensors[k]], dim=0)
        elif "lora_B" in k:
            out[k] = torch.cat([v, -init_tensors[k]], dim=1)
        else:
            out[k] = v
    cfg = dict(config)
    cfg["r"] = 2 * int(config["r"])
    cfg["lora_alpha"] = 2 * config["lora_alpha"]
    cfg["init_lora_weights"] = True
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            cfg[k] = {n: 2 * v for n, v in cfg[k].items()}
    return out, cfg


def current_adapter(model, init_tensors: dict | None = None, base_spec: str | None = None, state_dict=None):
    """The live model's adapter as an :class:`~peftarena_cli.artifacts.adapters.Adapter` (converted if mutated).

    ``state_dict``: the model's full state dict gathered from its shards (FSDP); the adapter is read
    from it instead of from the model's own (sharded) parameters."""
    from peftarena_cli.artifacts.adapters import Adapter, adapter_from_peft_model

    ad = adapter_from_peft_model(model, state_dict=state_dict)
    tensors = {k: v.detach().to("cpu", copy=True) for k, v in ad.tensors.items()}
    config = dict(ad.config)
    if init_tensors is not None:
        tensors, config = convert_mutated_lora(tensors, init_tensors, config)
    if base_spec:
        config["base_model_name_or_path"] = base_spec
    return Adapter(config=config, tensors=tensors)


class TrainingDiverged(NumericalError):
    """The loss or the trainable weights became NaN or Inf at ``step`` (raised from a trainer callback,
    before anything of that step is saved)."""

    def __init__(self, step: int, reason: str, hint: str | None = None):
        super().__init__(f"training diverged at step {step}: {reason}", hint=hint)
        self.step, self.reason = step, reason


def nonfinite_weights(model) -> list[str]:
    """Names of the trainable parameters holding a NaN or an Inf (empty when all are finite)."""
    import torch

    bad, sharded, dev = [], False, None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if hasattr(p, "to_local"):  # an FSDP2 shard (DTensor): each process checks its own part
                sharded, p = True, p.to_local()
            dev = p.device
            if not bool(torch.isfinite(p).all()):
                bad.append(name)
    import torch.distributed as dist

    if sharded and dist.is_available() and dist.is_initialized():
        # every process must reach the same verdict (one raising alone would leave the others waiting
        # in the next collective), so the counts are summed over the shards
        n = torch.tensor([len(bad)], dtype=torch.int64, device=dev)
        dist.all_reduce(n)
        if int(n.item()) and not bad:
            bad = ["(a shard held by another process)"]
    return bad


def check_finite(step: int, logs: dict | None = None, model=None) -> None:
    """Raise :class:`TrainingDiverged` when the logged loss is not finite, or the model's trainable
    weights are not (the weights are read only when ``model`` is given)."""
    import math

    loss = (logs or {}).get("loss")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):
        raise TrainingDiverged(step, f"the loss is {loss}")
    if model is not None:
        bad = nonfinite_weights(model)
        if bad:
            raise TrainingDiverged(step, f"{len(bad)} trainable weight tensor(s) hold NaN/Inf (first: {bad[0]})")


def untied(model, state_dict: dict) -> dict:
    """``state_dict`` without the second name of each tied weight (``lm_head.weight`` when it is the
    embedding): a gathered state dict holds a separate copy under each name, which ``save_pretrained``
    cannot recognise as shared, while a model's own save keeps one."""
    once = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - once
    return {k: v for k, v in state_dict.items() if k not in aliases}


def save_checkpoint(out: Path, step: int, model, tokenizer, full: bool, init_tensors: dict | None,
                    base_spec: str | None, extra: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write ``checkpoint-<step>/`` atomically (adapter, or a full model for ``full``).

    ``state_dict``: the full weights gathered from a sharded (FSDP) model, written instead of the
    model's own parameters, so a sharded run's checkpoint is the same artifact as one process's."""
    from peftarena_cli.artifacts.adapters import save_adapter

    path = checkpoint_dir(out, step)
    if full:
        with atomic_dir(path, overwrite=True) as tmp:
            unwrapped = getattr(model, "module", model)
            kw = {} if state_dict is None else {"state_dict": untied(unwrapped, state_dict)}
            unwrapped.save_pretrained(str(tmp), safe_serialization=True, **kw)
            tokenizer.save_pretrained(str(tmp))
        return path
    ad = current_adapter(model, init_tensors, base_spec, state_dict=state_dict)
    save_adapter(ad, path, extra_metadata={"step": str(step), **(extra or {})}, overwrite=True)
    return path


def link_final(out: Path, step: int) -> Path:
    """``final/`` = the files of ``checkpoint-<step>/`` (hard links; copies where links fail)."""
    import shutil

    src = checkpoint_dir(out, step)
    with atomic_dir(Path(out) / "final", overwrite=True) as tmp:
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
    return Path(out) / "final"


class TrainLog:
    """Rows of ``train_log.parquet``, built from the trainer's per-step logs."""

    def __init__(self, rows: list[dict] | None = None, elapsed_offset: float = 0.0):
        self.rows = list(rows or [])
        self.t0 = time.perf_counter()
        self.offset = elapsed_offset
        self._last_tokens = self.rows[-1]["tokens"] if self.rows else 0.0
        self._last_elapsed = self.rows[-1]["elapsed_s"] if self.rows else elapsed_offset

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.t0

    def add(self, step: int, logs: dict, tokens_seen: float | None) -> dict | None:
        if "train_runtime" in logs or ("loss" not in logs and "reward" not in logs):
            return None
        if self.rows and self.rows[-1]["step"] == step:
            return None
        el = self.elapsed()
        tokens = float(logs.get("num_tokens", tokens_seen or 0.0))
        dt = el - self._last_elapsed
        row = {
            "step": int(step),
            "loss": _f(logs.get("loss")),
            "lr": _f(logs.get("learning_rate")),
            "grad_norm": _f(logs.get("grad_norm")),
            "reward_mean": _f(logs.get("reward")),
            "reward_std": _f(logs.get("reward_std")),
            "frac_reward_zero_std": _f(logs.get("frac_reward_zero_std")),
            "tokens": tokens,
            "tokens_per_s": (tokens - self._last_tokens) / dt if dt > 0 else float("nan"),
            "elapsed_s": el,
        }
        self._last_tokens, self._last_elapsed = tokens, el
        self.rows.append(row)
        return row

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=LOG_COLUMNS)

    def write(self, out: Path, provenance=None) -> Path:
        from peftarena_cli.artifacts.tables import write_table

        return write_table(self.frame(), Path(out) / "train_log.parquet", provenance)

    @classmethod
    def resume_from(cls, out: Path, step: int) -> "TrainLog":
        p = Path(out) / "train_log.parquet"
        if not p.is_file():
            return cls()
        from peftarena_cli.artifacts.tables import read_table

        df, _ = read_table(p)
        df = df[df["step"] <= step]
        rows = df.to_dict("records")
        return cls(rows, elapsed_offset=float(rows[-1]["elapsed_s"]) if rows else 0.0)


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def write_manifest(out: Path, manifest: dict) -> Path:
    return atomic_write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(out: Path) -> dict | None:
    p = Path(out) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def latest_resume_state(out: Path) -> Path | None:
    """The newest complete trainer checkpoint under ``OUT/resume`` (None when there is none)."""
    d = Path(out) / "resume"
    if not d.is_dir():
        return None
    best, best_step = None, -1
    for c in d.glob("checkpoint-*"):
        try:
            s = int(c.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if (c / "trainer_state.json").is_file() and s > best_step:
            best, best_step = c, s
    return best


LOCK_NAME = ".peftarena.lock"


class RunLock:
    """An exclusive lock on a run directory (``OUT/.peftarena.lock``, ``flock``): a second writer to
    the same directory is refused, naming the first. The kernel releases the lock when its holder
    dies, so a killed run never blocks the next one; the file itself is left in place (it is ignored
    when OUT is checked for other files)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        from peftarena_cli.errors import OutputError

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise OutputError(f"another peftarena finetune ({holder}) is writing to {str(self.path.parent)!r}",
                              hint="wait for it to finish, or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

"""PEFT adapters on disk: a PEFT directory or one self-contained safetensors file.

Layouts read:

* a PEFT adapter directory: ``adapter_config.json`` + ``adapter_model.safetensors``;
* a single ``.safetensors`` / ``.st`` file whose ``__metadata__`` holds the PEFT config as JSON
  under the key ``peft_config`` (what peftarena writes), or with an ``adapter_config.json`` beside it.

:func:`save_adapter` writes either layout (a directory always also embeds the config in the
safetensors metadata, so ``adapter_model.safetensors`` alone stands alone too).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli import __version__
from peftarena_cli.artifacts.atomic import atomic_dir, atomic_path
from peftarena_cli.artifacts.identity import path_identity
from peftarena_cli.artifacts.keys import ModelWeights, unmatched_keys
from peftarena_cli.artifacts.safetensors_io import WEIGHT_SUFFIXES, check_float_dtypes, check_safetensors, weight_files_in
from peftarena_cli.errors import (AdapterError, IncompatibleInputs, InputNotFound, InvalidArtifact, NumericalError, OutputError,
                                  UnsupportedMethod)
from peftarena_cli.methods import all_markers

CONFIG_KEY = "peft_config"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Adapter:
    """An adapter in memory: its PEFT config (a dict) and its tensors (PEFT's saved key names)."""

    config: dict
    tensors: dict = field(default_factory=dict)
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def identity(self) -> str:
        return path_identity(self.path) if self.path is not None else "in-memory"

    def peft_config(self):
        """The config as a ``peft.PeftConfig`` object."""
        return peft_config_from_dict(self.config)


def peft_config_from_dict(config: dict):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    ptype = str(config.get("peft_type", "")).upper()
    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(ptype)
    if cls is None:
        raise UnsupportedMethod(f"unsupported PEFT type {ptype or '(missing)'!r}")
    known = set(cls.__dataclass_fields__) if hasattr(cls, "__dataclass_fields__") else None
    kwargs = {k: v for k, v in config.items() if known is None or k in known}
    try:
        return cls(**kwargs)
    except Exception as e:  # PEFT validates its fields
        raise AdapterError(f"invalid {ptype} config: {e}") from None


def is_adapter_path(spec: str | os.PathLike) -> bool:
    """True if ``spec`` points at an adapter (dir with config, or file with an embedded config)."""
    p = Path(spec)
    if p.is_dir():
        return (p / ADAPTER_CONFIG).is_file()
    if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
        try:
            header = check_safetensors(p)
        except InvalidArtifact:
            return False
        meta = header.get("__metadata__") or {}
        if CONFIG_KEY in meta or (p.parent / ADAPTER_CONFIG).is_file() and p.name == ADAPTER_WEIGHTS:
            return True
        return any(any(m in k for m in all_markers()) for k in header)
    return False


def load_adapter(spec: str | os.PathLike, device: str = "cpu", allow_nonfinite: bool = False) -> Adapter:
    """Load an adapter from a PEFT directory or a single safetensors file.

    Tensors holding NaN or Inf are refused (:class:`~peftarena_cli.errors.NumericalError`) unless
    ``allow_nonfinite``."""
    from safetensors.torch import load_file

    p = Path(spec).expanduser()
    if not p.exists():
        raise InputNotFound(f"no such adapter: {str(spec)!r}")
    if p.is_dir():
        weights = p / ADAPTER_WEIGHTS
        if not weights.is_file():
            if (p / "adapter_model.bin").is_file():
                raise AdapterError(
                    f"{str(p)!r} holds a pickled adapter_model.bin; peftarena reads safetensors only",
                    hint="re-save it with save_pretrained(safe_serialization=True)",
                )
            if _is_model_dir(p):
                # a full fine-tune (what `finetune --method full` writes) passed where an adapter goes
                raise AdapterError(
                    f"{str(p)!r} is a full model (model weights, no {ADAPTER_WEIGHTS}), not a PEFT adapter",
                    hint=f"evaluate it as the model itself, in place of the base: e.g. `peftarena eval-target {p} ...` "
                         "(without --adapter)")
            raise AdapterError(f"{str(p)!r} has no {ADAPTER_WEIGHTS}")
        cfg_file = p / ADAPTER_CONFIG
    else:
        if p.suffix not in WEIGHT_SUFFIXES:
            raise InvalidArtifact(f"{str(p)!r} is not a safetensors adapter")
        weights = p
        cfg_file = p.parent / ADAPTER_CONFIG
    header = check_safetensors(weights)
    check_float_dtypes(header, f"adapter {str(spec)!r}")
    meta = dict(header.get("__metadata__") or {})
    config = None
    if CONFIG_KEY in meta:
        try:
            config = json.loads(meta[CONFIG_KEY])
        except ValueError:
            raise AdapterError(f"{str(weights)!r}: the embedded peft_config is not valid JSON") from None
    elif cfg_file.is_file():
        try:
            config = json.loads(cfg_file.read_text())
        except ValueError:
            raise AdapterError(f"{str(cfg_file)!r} is not valid JSON") from None
    if config is None:
        raise AdapterError(
            f"{str(spec)!r} carries no PEFT config (no adapter_config.json, no embedded peft_config)",
            hint="put adapter_config.json beside it, or re-save it with `peftarena` tools",
        )
    if "peft_type" not in config:
        raise AdapterError(f"{str(spec)!r}: the PEFT config has no peft_type")
    try:
        tensors = load_file(str(weights), device=device)
    except Exception as e:
        raise InvalidArtifact(f"cannot read {str(weights)!r}: {e}") from None
    if not tensors:
        raise AdapterError(f"{str(spec)!r} holds no tensors")
    if not allow_nonfinite:
        check_finite(tensors, f"adapter {str(spec)!r}")
    return Adapter(config=config, tensors=tensors, path=p, metadata=meta)


def _is_model_dir(p: Path) -> bool:
    """True for an HF model directory (``config.json`` and model weights)."""
    if not (p / "config.json").is_file():
        return False
    try:
        return bool(weight_files_in(p))
    except InvalidArtifact:
        return True  # a model directory with a broken index is still a model directory


def check_adapter_fits(adapter: Adapter, base, base_spec, adapter_spec=None) -> None:
    """Refuse an adapter whose tensors name modules the base lacks (one check for every command).

    ``base`` is the base's :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource` or a live
    model. PEFT itself would load such an adapter with those tensors dropped (a warning at most),
    and every number computed afterwards would describe a different, partial fine-tune."""
    names = base if hasattr(base, "find") else ModelWeights(base)
    bad = unmatched_keys(adapter.tensors, names)
    if bad:
        who = adapter_spec if adapter_spec is not None else (adapter.path if adapter.path is not None else "in-memory")
        raise IncompatibleInputs(
            f"adapter {str(who)!r} does not fit the base "
            f"{'model' if base_spec is None else repr(str(base_spec))}: {len(bad)} of its {len(adapter.tensors)} "
            f"tensor(s) name modules missing from the base ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
            hint="pass the base model the adapter was trained on")


def check_finite(tensors, what: str) -> None:
    """The one NaN/Inf policy: weights holding NaN or Inf are refused (every command), naming the
    first tensors affected. ``tensors``: a dict or (name, tensor) pairs."""
    import torch

    bad = []
    for name, t in (tensors.items() if hasattr(tensors, "items") else tensors):
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            bad.append(name)
    if bad:
        raise NumericalError(f"{what} holds NaN or Inf in {len(bad)} tensor(s): {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}",
                             hint="the fine-tune diverged or the file is damaged; use an earlier checkpoint")


def _metadata(adapter: Adapter, extra: dict | None) -> dict[str, str]:
    meta = {k: str(v) for k, v in (adapter.metadata or {}).items()}
    meta.update({"format": "pt", CONFIG_KEY: json.dumps(adapter.config), "peftarena_version": __version__})
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_adapter(
    adapter: Adapter, path: str | os.PathLike, extra_metadata: dict | None = None, overwrite: bool = False
) -> Path:
    """Write an adapter atomically: a PEFT directory, or one file if ``path`` ends in .safetensors/.st."""
    from peftarena_cli.artifacts.atomic import write_safetensors

    p = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.tensors.items()}
    meta = _metadata(adapter, extra_metadata)
    if p.suffix in WEIGHT_SUFFIXES:
        if p.exists() and not overwrite:
            raise OutputError(f"{str(p)!r} already exists", hint="choose another path or pass --overwrite")
        with atomic_path(p) as tmp:
            write_safetensors(tensors, tmp, metadata=meta)
        return p
    with atomic_dir(p, overwrite=overwrite) as tmp:
        write_safetensors(tensors, tmp / ADAPTER_WEIGHTS, metadata=meta)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter.config, indent=2, default=str))
    return p


def peft_dir_for(adapter: Adapter) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A directory that ``PeftModel.from_pretrained`` can read for this adapter.

    Returns the adapter's own directory when it is one; otherwise writes a temporary PEFT
    directory (the caller keeps the returned TemporaryDirectory alive while it is needed).
    """
    if adapter.path is not None and Path(adapter.path).is_dir() and (Path(adapter.path) / ADAPTER_CONFIG).is_file():
        return Path(adapter.path), None
    from safetensors.torch import save_file

    td = tempfile.TemporaryDirectory(prefix="peftarena-adapter-")
    d = Path(td.name)
    save_file({k: v.contiguous().cpu() for k, v in adapter.tensors.items()}, str(d / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (d / ADAPTER_CONFIG).write_text(json.dumps(adapter.config, default=str))
    return d, td


def adapter_from_peft_model(model, adapter_name: str = "default", state_dict: dict | None = None) -> Adapter:
    """Extract an :class:`Adapter` (config + PEFT-format tensors) from a live ``PeftModel``; from
    ``state_dict`` (the model's full state dict, e.g. gathered from FSDP shards) when given."""
    from peft import get_peft_model_state_dict

    cfg = model.peft_config[adapter_name]
    config = cfg.to_dict()
    for k, v in list(config.items()):
        if isinstance(v, set):
            config[k] = sorted(v)
    tensors = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=adapter_name)
    return Adapter(config=json.loads(json.dumps(config, default=str)), tensors=dict(tensors))

"""Merged export: a fine-tune (or the point α of its path) written as a plain Hugging Face model.

:func:`export` is what ``peftarena export`` runs (with an :class:`ExportConfig`). The output
directory holds safetensors weights (one ``model.safetensors``, or shards with
``model.safetensors.index.json``), ``config.json``, ``generation_config.json`` and the tokenizer
files, so ``AutoModelForCausalLM.from_pretrained(OUT)`` and ``vllm serve OUT`` load it without PEFT.
``peftarena_export.json`` records what it was made from (docs/export.md).

The weights are streamed: one module's merged weight is formed at a time and the current shard is
the only part of the output held in memory, so a model is exported with about one shard plus the
adapter in RAM, however large it is. Where the merged weights come from:

* α = 1: W1 of each adapted module from the method's former (``weights/``, the same code
  ``spectrum`` and the dense path use; tested against PEFT's merge);
* α ≠ 1 on the native path: the adapter rescaled to α the way ``rewind`` does it
  (:func:`~peftarena_cli.interpolation.rewind.rewind_adapter`: LoRA's factor, DoRA's direction and
  magnitude, OFT's generator), then its W1 from the former;
* α ≠ 1 on the dense path: W0 + α·ΔW;
* a full fine-tune: W0 + α(W1 − W0) for every tensor (α = 1: W1 itself, re-sharded and cast).

Every other tensor of the base (embeddings, norms) is copied. The output is written into a
temporary sibling directory that is renamed into place only when complete
(:func:`~peftarena_cli.artifacts.atomic.atomic_dir`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli import __version__
from peftarena_cli.artifacts.atomic import atomic_dir, is_stream, special_kind
from peftarena_cli.artifacts.guard import check_outputs
from peftarena_cli.artifacts.identity import weights_fingerprint
from peftarena_cli.artifacts.keys import base_key
from peftarena_cli.artifacts.loading import DTYPES, pick_device
from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact, NumericalError, OutputError, UnsupportedMethod, UsageError
from peftarena_cli.interpolation.alphas import check_alphas
from peftarena_cli.interpolation.native import check_generator_scale, check_relative_to_base
from peftarena_cli.interpolation.rewind import rewind_adapter
from peftarena_cli.interpolation.sweep import choose_path
from peftarena_cli.methods import frozen_keys, get_method
from peftarena_cli.weights.deltas import iter_module_deltas
from peftarena_cli.weights.finetuned import finetuned_from_adapter, open_finetuned
from peftarena_cli.weights.full import check_full_finetune

PROVENANCE = "peftarena_export.json"
FORMAT = "peftarena-export/1"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = "5G"

# the files of a model directory that travel with the weights: the config (rewritten for the dtype),
# the generation settings and everything a tokenizer is read from
_CONFIG_FILES = ("config.json", "generation_config.json", "special_tokens_map.json", "added_tokens.json",
                 "merges.txt", "preprocessor_config.json", "processor_config.json")
_CONFIG_PREFIXES = ("tokenizer", "chat_template", "vocab")
_CONFIG_SUFFIXES = (".model", ".tiktoken")

_SAFETENSORS_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


@dataclass
class ExportConfig:
    """What ``peftarena export`` asks for (docs/export.md)."""

    base: str
    finetuned: str
    output: str
    alpha: float = 1.0
    path: str | None = None            # native, dense, or None: native when the method has one
    generator_scale: str = "linear"    # OFT's native path: generator × α (linear) or × √α (sqrt)
    dtype: str | None = None           # float32, bfloat16, float16; None: each tensor keeps the base's dtype
    max_shard_size: str = DEFAULT_SHARD_SIZE
    device: str = "cpu"                # where the merged weights are formed
    allow_extrapolate: bool = False
    overwrite: bool = False
    argv: list = field(default_factory=list)


@dataclass
class ExportResult:
    output: Path
    alpha: float
    method: str
    kind: str                 # the fine-tune's kind: adapter or full
    path: str                 # native, dense, or "" at α = 1 (no path taken)
    dtype: str
    shards: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    tensors: int = 0
    merged_modules: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    record: dict = field(default_factory=dict)  # what peftarena_export.json holds


def parse_shard_size(text) -> int:
    """``5G``, ``500M``, ``2GiB``, ``1.5GB``, ``100000`` (bytes) -> bytes; binary units (1G = 1024³ bytes),
    as ``--max-memory``. A size below 1 KiB or a malformed one is a usage error."""
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"--max-shard-size {text!r}: expected a size like 5G, 500M or 2GiB",
                         hint="units K, M, G, T (binary, 1G = 1024³ bytes), optionally followed by B or iB; "
                              "a bare number is bytes")
    value = float(m.group(1)) * _UNIT[m.group(2).upper()]
    if not math.isfinite(value) or value < 1024:
        raise UsageError(f"--max-shard-size {text!r} is below 1 KiB", hint="e.g. --max-shard-size 5G")
    return int(value)


def check_dtype(name: str | None) -> str | None:
    """The canonical dtype name of ``--dtype`` (None or ``auto``: the base's own)."""
    if name is None or str(name).lower() == "auto":
        return None
    key = DTYPES.get(str(name).lower())
    if key is None:
        raise UsageError(f"unknown --dtype {name!r}", hint="use auto (the base's), float32, bfloat16 or float16")
    return key


def check_export_dir(output: Path, overwrite: bool) -> bool:
    """Refuse an output directory export may not write (before any work); return whether one exists
    that the finished export replaces. An empty directory is used; an existing non-empty one only with
    ``overwrite``, and only when it holds a previous export and nothing else (the files its
    ``peftarena_export.json`` lists): a folder with other files is never deleted."""
    kind = special_kind(output) or ("open file" if is_stream(output) else None)
    if kind is not None:
        raise OutputError(f"-o {str(output)!r} is a {kind}; an export is written as a new directory",
                          hint="give a directory path that does not exist yet")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} does not exist (for {str(output)!r})")
    if not output.exists() and not output.is_symlink():
        return False
    if not output.is_dir() or output.is_symlink():
        raise OutputError(f"-o {str(output)!r} exists and is not a directory; refusing to replace it",
                          hint="give a directory path that does not exist yet")
    entries = sorted(e.name for e in output.iterdir())
    if not entries:
        return True
    if not overwrite:
        raise OutputError(f"-o {str(output)!r} already exists and is not empty",
                          hint="choose another path, or pass --overwrite to replace a previous export")
    listed: set[str] = set()
    try:
        rec = json.loads((output / PROVENANCE).read_text())
        if isinstance(rec, dict) and rec.get("format") == FORMAT:
            listed = set(rec.get("files") or ()) | {PROVENANCE}
    except (OSError, ValueError):
        pass
    if not listed:
        raise OutputError(f"-o {str(output)!r} holds files that are not a peftarena export; refusing to replace it",
                          hint="choose another path (--overwrite replaces only a previous export)")
    foreign = [e for e in entries if e not in listed]
    if foreign:
        raise OutputError(f"-o {str(output)!r} holds files besides a previous export ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); refusing to replace it",
                          hint="move them away or choose another path")
    return True


def check_mergeable(ft) -> None:
    """Refuse adapter tensors that export would leave out: trained biases and whole saved modules
    (PEFT's ``bias="all"``/``lora_bias``, ``modules_to_save``). The formers merge the linear weights only."""
    frozen = frozen_keys()
    extra = [k for k in ft.shared if not any(f in k for f in frozen)]
    extra += [f"{m}.{s}" for m, params in ft.modules.items() for s in params if s.split(".")[-1] == "bias"]
    if extra:
        raise UnsupportedMethod(
            f"the adapter {ft.spec!r} carries {len(extra)} tensor(s) besides its method's weights "
            f"({', '.join(sorted(extra)[:3])}{', ...' if len(extra) > 3 else ''}): trained biases or saved whole modules",
            hint="export merges the adapted linear weights only; merge this adapter with PEFT's merge_and_unload")


def _copy_config_files(sources: list[Path], dest: Path, dtype_name: str | None) -> list[str]:
    """Copy the config, generation and tokenizer files of the first source that has each one; rewrite
    ``config.json``'s dtype. Returns the names written."""
    written = []
    for src in sources:
        if src is None or not Path(src).is_dir():
            continue
        for f in sorted(Path(src).iterdir()):
            n = f.name
            if not f.is_file() or n in written:
                continue
            if not (n in _CONFIG_FILES or n.startswith(_CONFIG_PREFIXES) or n.endswith(_CONFIG_SUFFIXES)):
                continue
            if n == "config.json":
                try:
                    cfg = json.loads(f.read_text())
                except ValueError:
                    raise InvalidArtifact(f"{str(f)!r} is not valid JSON") from None
                if dtype_name is not None:
                    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
                    for k in keys:
                        cfg[k] = dtype_name
                (dest / n).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            else:
                shutil.copyfile(f, dest / n)
            written.append(n)
    return written


def _generation_config(dest: Path) -> None:
    """A ``generation_config.json`` from the model config's token ids, for a base that has none."""
    from transformers import GenerationConfig

    cfg = json.loads((dest / "config.json").read_text())
    ids = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    GenerationConfig(**ids).save_pretrained(str(dest))


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_CODE = {v: k for k, v in _SAFETENSORS_DTYPE.items()}


def _write_at(path: Path, offset: int, data) -> None:
    """Write ``data`` (a buffer) into the existing file ``path`` at ``offset``."""
    with open(path, "r+b", buffering=0) as f:
        f.seek(offset)
        view, done = memoryview(data), 0
        while done < len(view):
            done += f.write(view[done:])


class _ShardPlan:
    """The output files planned from the tensors' names, dtypes and shapes before any is formed.

    ``entries`` are ``(name, safetensors dtype, shape)`` in file order; they are packed into shards of
    at most ``max_bytes`` (a larger tensor gets a shard of its own). Each shard file is created at once
    with its safetensors header and its full size, and each tensor is written into its place as soon as
    it is formed, in any order: the export holds one tensor at a time, never a shard."""

    def __init__(self, directory: Path, entries: list, max_bytes: int):
        self.dir = directory
        groups: list[list] = []
        size = 0
        for name, code, shape in entries:
            n = math.prod(shape) * _ITEMSIZE[code]
            if not groups or (groups[-1] and size + n > max_bytes):
                groups.append([])
                size = 0
            groups[-1].append((name, code, tuple(shape), n))
            size += n
        count = len(groups)
        self.files = (["model.safetensors"] if count == 1
                      else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        self.where: dict[str, tuple] = {}  # name -> (file, absolute offset, dtype code, shape, bytes)
        self.total = 0
        for fname, group in zip(self.files, groups):
            header, off = {"__metadata__": {"format": "pt"}}, 0
            for name, code, shape, n in group:
                header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
                off += n
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
            start = 8 + len(raw)
            with open(self.dir / fname, "wb") as f:
                f.write(len(raw).to_bytes(8, "little"))
                f.write(raw)
                f.truncate(start + off)
            for name, code, shape, n in group:
                self.where[name] = (self.dir / fname, start + header[name]["data_offsets"][0], code, shape, n)
            self.total += off
        self.written: set[str] = set()

    def write(self, name: str, tensor) -> None:
        import torch

        path, offset, code, shape, n = self.where[name]
        got = _CODE.get(str(tensor.dtype).replace("torch.", ""), None)
        if tuple(tensor.shape) != shape or (got is not None and got != code):
            raise IncompatibleInputs(f"{name}: the merged tensor is {got or tensor.dtype} {tuple(tensor.shape)}, "
                                     f"the base's {code} {shape}", hint="pass the base model the fine-tune was made from")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if data.numel() != n:
            raise IncompatibleInputs(f"{name}: {data.numel()} bytes where the plan has {n}")
        _write_at(path, offset, data.numpy())
        self.written.add(name)

    def finish(self) -> list[str]:
        """Check every planned tensor was written; write the index when sharded; return the file names."""
        missing = [k for k in self.where if k not in self.written]
        if missing:
            raise InvalidArtifact(f"the export formed no tensor for {len(missing)} name(s) ({', '.join(missing[:3])})")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {k: v[0].name for k, v in sorted(self.where.items())}}
            (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return list(self.files)


def _no_log(msg: str) -> None:
    pass


def _versions() -> dict:
    import importlib.metadata as md

    out = {"peftarena": __version__}
    for pkg in ("torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def export(cfg: ExportConfig, callback: Callable | None = None, log: Callable[[str], None] = _no_log,
           warn: Callable[[str], None] = _no_log) -> ExportResult:
    """Write the fine-tune of ``cfg`` (at α) merged into a full model directory, atomically.
    ``callback(done, total, what)`` reports the tensors written; ``log``/``warn`` take one-line messages."""
    import torch

    t0 = time.perf_counter()
    alpha = float(cfg.alpha)
    check_alphas([alpha], cfg.allow_extrapolate)
    check_generator_scale(cfg.generator_scale, (alpha,))
    dtype_name = check_dtype(cfg.dtype)
    max_bytes = parse_shard_size(cfg.max_shard_size)
    output = Path(cfg.output)
    replaces = check_export_dir(output, cfg.overwrite)
    check_outputs({"-o": output}, [cfg.base, cfg.finetuned])
    device = pick_device(cfg.device)

    ft = open_finetuned(cfg.finetuned)
    bref = resolve_model(cfg.base)
    base = WeightSource.from_ref(bref)
    method = ft.method
    entry = get_method(method)
    if ft.is_full:
        choose_path(method, cfg.path, True)  # --path native is refused: a full fine-tune has no native path
        check_full_finetune(base.keys(), ft.source, cfg.finetuned, ft.ref.directory)
        bad = [k for k in ft.source.keys() if k in base and tuple(base.shape(k)) != tuple(ft.source.shape(k))]
        if bad:
            raise IncompatibleInputs(f"the full fine-tune {cfg.finetuned!r} does not fit the base {cfg.base!r}: "
                                     f"{len(bad)} tensor(s) of another shape ({', '.join(bad[:3])})",
                                     hint="pass the base model it was fine-tuned from")
        path = "" if alpha == 1.0 else "dense"
    else:
        check_mergeable(ft)
        from peftarena_cli.artifacts.adapters import check_adapter_fits

        check_adapter_fits(ft.adapter, base, cfg.base, cfg.finetuned)
        path = ""
        if alpha != 1.0 or cfg.path is not None:
            path, note = choose_path(method, cfg.path, False)
            if note and alpha != 1.0:
                warn(note)
        if alpha != 1.0:
            check_relative_to_base(ft.config)
    if cfg.generator_scale != "linear":
        if not entry.rotates:
            raise UsageError(f"--generator-scale {cfg.generator_scale} applies to OFT adapters only, not {method}")
        if path == "dense":
            warn("--generator-scale applies to the native OFT path only; ignored on the dense path")
    if not bref.is_single_file and not (bref.directory / "config.json").is_file() and not ft.is_full:
        raise InvalidArtifact(f"the base {cfg.base!r} has no config.json", hint="pass the base's HF model directory")

    def out_dtype(t, src_dtype: str):
        if not t.is_floating_point():
            return t
        want = dtype_name or _SAFETENSORS_DTYPE.get(src_dtype, "float32")
        return t.to(getattr(torch, want))

    def checked(name: str, t):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NumericalError(f"the exported tensor {name!r} holds NaN or Inf"
                                 + (f" in {dtype_name}" if dtype_name else ""),
                                 hint="export in float32 or bfloat16 (--dtype), or check the fine-tune")
        return t.cpu()

    # the dtype recorded in config.json: the one asked for, else the base's floating tensors' (the most common)
    src = ft.source if ft.is_full else base
    float_dtypes = [_SAFETENSORS_DTYPE[src.dtype(k)] for k in src.keys() if src.dtype(k) in _SAFETENSORS_DTYPE]
    config_dtype = dtype_name or (max(set(float_dtypes), key=float_dtypes.count) if float_dtypes else None)

    record = {
        "format": FORMAT, "peftarena_version": __version__, "argv": list(cfg.argv),
        "base": {"spec": cfg.base, "identity": bref.identity(), "fingerprint": weights_fingerprint(bref)},
        "finetuned": {"spec": cfg.finetuned, "identity": ft.identity(), "kind": ft.kind, "method": method,
                      "peft_type": None if ft.is_full else ft.peft_type},
        "alpha": alpha, "path": path, "generator_scale": cfg.generator_scale if (entry.rotates and path == "native") else "",
        "dtype": dtype_name or "base", "config_dtype": config_dtype, "max_shard_size": max_bytes,
        "versions": _versions(),
    }
    def out_code(code: str) -> str:
        return _CODE[dtype_name] if dtype_name and code in _SAFETENSORS_DTYPE else code

    merged = 0
    with atomic_dir(output, overwrite=replaces) as tmp:
        writer = _ShardPlan(tmp, [(k, out_code(src.dtype(k)), src.shape(k)) for k in src.keys()], max_bytes)
        if ft.is_full:
            keys = ft.source.keys()
            for i, k in enumerate(keys):
                w1 = ft.source.get(k)
                if alpha != 1.0 and k in base and w1.is_floating_point():
                    w0 = base.get(k)
                    if tuple(w0.shape) != tuple(w1.shape):
                        raise IncompatibleInputs(f"{k}: fine-tuned shape {tuple(w1.shape)} != base shape {tuple(w0.shape)}")
                    w = torch.add(w0.float(), w1.float() - w0.float(), alpha=alpha)
                else:
                    w = w1
                writer.write(k, checked(k, out_dtype(w, ft.source.dtype(k))))
                if callback:
                    callback(i + 1, len(keys), k)
            n_tensors = len(keys)
        else:
            if path == "native":
                new, _ = rewind_adapter(ft.adapter, alpha, scale_mode=cfg.generator_scale, base_source=base)
                at = finetuned_from_adapter(new, cfg.finetuned)
            else:
                at = ft
            keys = base.keys()
            done: set[str] = set()
            total = len(keys)
            for md in iter_module_deltas(base, at, device=device):
                k = base_key(base, md.name)
                w = md.w1() if path != "dense" else md.w0 + alpha * md.dense()
                writer.write(k, checked(k, out_dtype(w, base.dtype(k))))
                done.add(k)
                merged += 1
                if callback:
                    callback(len(done), total, md.name)
            for k in keys:
                if k in done:
                    continue
                writer.write(k, checked(k, out_dtype(base.get(k), base.dtype(k))))
                done.add(k)
                if callback:
                    callback(len(done), total, k)
            n_tensors = len(keys)
        shards = writer.finish()
        sources = [ft.ref.directory, bref.directory] if ft.is_full else [bref.directory]
        written = _copy_config_files(sources, tmp, config_dtype)
        if "config.json" not in written:
            raise InvalidArtifact(f"no config.json beside the weights of {cfg.base!r}",
                                  hint="pass the base's HF model directory (config.json, tokenizer files, weights)")
        if "generation_config.json" not in written:
            _generation_config(tmp)
            written.append("generation_config.json")
            log("the base has no generation_config.json: one was made from config.json's token ids")
        if not any(n.startswith("tokenizer") for n in written):
            warn(f"no tokenizer files beside {cfg.base!r}: the export has none (vllm serve needs them)")
        files = sorted(set(shards + written + ([INDEX] if len(shards) > 1 else [])))
        record.update(shards=shards, files=files, tensors=n_tensors, merged_modules=merged, total_bytes=writer.total)
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    return ExportResult(output=output, alpha=alpha, method=method, kind=ft.kind, path=path,
                        dtype=dtype_name or config_dtype or "", shards=shards, files=files + [PROVENANCE],
                        tensors=n_tensors, merged_modules=merged, total_bytes=writer.total,
                        seconds=time.perf_counter() - t0, record=record)

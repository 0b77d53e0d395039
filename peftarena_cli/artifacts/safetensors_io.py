"""Model references and lazy weight access.

A *model reference* is what a user types where a model is expected:

* an HF model directory (``model.safetensors`` or sharded with ``model.safetensors.index.json``);
* a single ``.safetensors`` / ``.st`` file;
* a registry alias such as ``smollm2-135m`` (see :mod:`peftarena_cli.registry`);
* a hub id (``org/name``), downloaded through ``huggingface_hub`` where the network allows.

:func:`resolve_model` turns it into a :class:`ModelRef`; :class:`WeightSource` reads its tensors one
at a time so a full model is never loaded just to look at one matrix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli import registry
from peftarena_cli.artifacts.convert import ensure_model
from peftarena_cli.artifacts.identity import file_identity, path_identity, read_header_bytes, tensor_identity
from peftarena_cli.errors import InputNotFound, InvalidArtifact, ModelNotAvailable

WEIGHT_SUFFIXES = (".safetensors", ".st")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ModelRef:
    """A resolved model reference."""

    spec: str  # what the user typed
    kind: str  # "dir" | "file" | "alias" | "hub"
    path: Path  # directory or single weights file on disk
    weight_files: list[Path] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def is_single_file(self) -> bool:
        return self.path.is_file()

    def identity(self) -> str:
        return path_identity(self.path)


def looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or os.sep in spec and not _HUB_ID.match(spec)
        or spec.endswith(WEIGHT_SUFFIXES)
        or spec.endswith((".json", ".bin", ".gguf", ".pt"))
    )


def weight_files_in(directory: Path) -> list[Path]:
    """The safetensors weight files of an HF model directory (index first, then single file)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise InvalidArtifact(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({directory / f for f in wm.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise InvalidArtifact(
                f"{index} lists shards that are missing: {', '.join(missing[:3])}",
                hint="download or copy the complete checkpoint",
            )
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    files = [p for p in files if p.name != "adapter_model.safetensors"]
    return files


def resolve_model(spec: str | os.PathLike, allow_download: bool = True) -> ModelRef:
    """Resolve a model reference; raise a one-line error when it cannot be found."""
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix not in WEIGHT_SUFFIXES:
                raise InvalidArtifact(
                    f"{s!r} is not a safetensors file",
                    hint="pass a .safetensors/.st file or an HF model directory",
                )
            check_safetensors(p)
            return ModelRef(s, "file", p, [p])
        files = weight_files_in(p)
        if not files:
            if (p / "adapter_config.json").is_file():
                raise InvalidArtifact(
                    f"{s!r} is a PEFT adapter, not a model",
                    hint="pass the base model first and the adapter second",
                )
            raise InvalidArtifact(
                f"directory {s!r} holds no safetensors weights",
                hint="pass an HF model directory with model.safetensors (or a sharded index)",
            )
        for f in files:
            check_safetensors(f)
        return ModelRef(s, "dir", p, files)

    if registry.is_alias(s):
        d = ensure_model(s)
        return ModelRef(s, "alias", d, weight_files_in(d))
    if looks_like_path(s) or not _HUB_ID.match(s):
        if not looks_like_path(s):
            raise ModelNotAvailable(
                f"unknown model alias {s!r}",
                hint=f"known aliases: {', '.join(registry.aliases())}; or pass a path or a hub id",
            )
        raise InputNotFound(f"no such file or directory: {s!r}")
    if not allow_download:
        raise InputNotFound(f"{s!r} is not a local path or alias")
    org = s.split("/", 1)[0]
    if Path(org).expanduser().is_dir():
        # `runs/lora` where runs/ exists: a mistyped local path, not a hub id; no network
        raise InputNotFound(f"no such file or directory: {s!r} (and {org + '/'!r} is a local directory, so it is not "
                            "tried as a hub id)", hint="check the path; use ./ORG/NAME for local paths")
    d = download_hub_model(s)
    return ModelRef(s, "hub", d, weight_files_in(d))


def download_hub_model(repo_id: str) -> Path:
    """Download a hub model (only ever for a spec that cannot be a local path: see resolve_model)."""
    try:
        from huggingface_hub import snapshot_download

        d = snapshot_download(
            repo_id,
            allow_patterns=["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "tokenizer*"],
        )
    except Exception as e:  # network errors, missing repos, gated repos
        raise ModelNotAvailable(
            f"no such local path {repo_id!r}; tried the Hugging Face hub as well and could not fetch it "
            f"({type(e).__name__})",
            hint="check the path (or the hub id and your network), or pass a local directory / `smollm2-135m`",
        ) from e
    return Path(d)


def check_safetensors(path: Path) -> dict:
    """Validate a safetensors file's header and size; return the parsed header.

    Catches files that are not safetensors, truncated files and corrupt headers before any
    expensive work starts.
    """
    return _parse_safetensors(path)[0]


def _parse_safetensors(path: Path) -> tuple[dict, int]:
    """(header, offset of the tensor data) of a checked safetensors file (see check_safetensors)."""
    size = path.stat().st_size
    try:
        raw = read_header_bytes(path)
    except ValueError as e:
        raise InvalidArtifact(f"{str(path)!r} is not a safetensors file ({e})") from None
    n = len(raw)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArtifact(f"{str(path)!r} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise InvalidArtifact(f"{str(path)!r} is not a safetensors file (header is not a table)")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in v["data_offsets"])
            shape = [int(x) for x in v["shape"]]
            dtype = v["dtype"]
        except (KeyError, TypeError, IndexError, ValueError):
            raise InvalidArtifact(f"{str(path)!r}: corrupt safetensors entry {k!r}") from None
        if dtype not in _ITEMSIZE:
            raise InvalidArtifact(f"{str(path)!r}: tensor {k!r} has an unknown dtype {dtype!r}")
        n_items = 1
        for x in shape:
            n_items *= x
        if begin < 0 or stop < begin or any(x < 0 for x in shape) or stop - begin != n_items * _ITEMSIZE[dtype]:
            raise InvalidArtifact(
                f"{str(path)!r}: tensor {k!r} is declared {dtype} {shape} ({n_items * _ITEMSIZE[dtype]} bytes) "
                f"but holds {stop - begin} bytes",
                hint="the header does not describe the data; the file is corrupt or was edited")
        end = max(end, stop)
    if 8 + n + end > size:
        raise InvalidArtifact(
            f"{str(path)!r} is truncated ({size} bytes, header needs {8 + n + end})",
            hint="the file is incomplete; copy or download it again",
        )
    return header, 8 + n


FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def check_float_dtypes(header: dict, what: str, names=None) -> None:
    """Refuse weights stored as integers or booleans: ``header`` is a parsed safetensors header,
    ``names`` the entries that must be floating point (default: all). Integer bytes read as weights
    (e.g. an F32 tensor relabelled I32, which has the same size) would give numbers without meaning."""
    bad = [(k, v.get("dtype")) for k, v in header.items()
           if k != "__metadata__" and (names is None or k in names) and isinstance(v, dict)
           and v.get("dtype") not in FLOAT_DTYPES]
    if bad:
        raise InvalidArtifact(
            f"{what} stores {len(bad)} weight tensor(s) as integers or booleans, not floating point: "
            + ", ".join(f"{k} ({d})" for k, d in bad[:3]) + (", ..." if len(bad) > 3 else ""),
            hint="weights must be F32, F16, BF16 or F64; the file was damaged or its header edited")


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def read_tensor(path: Path, data_start: int, entry: dict):
    """Read one tensor of a checked safetensors file: ``entry`` is its header entry, ``data_start``
    where the file's tensor data begins.

    The bytes are read straight into a buffer the tensor owns (an unbuffered ``readinto``), not
    memory-mapped: a mapped file's pages count towards the process's resident memory until it
    exits (reading all of smollm2-135m through mmap adds its 0.5 GB to the peak), and each 4 KiB
    page costs a fault. Each call opens the file itself, so threads can read at once.
    """
    import sys

    import torch

    dtype = getattr(torch, _DTYPES.get(entry["dtype"], ""), None)
    if dtype is None or sys.byteorder != "little":
        raise ValueError(f"unsupported safetensors dtype {entry['dtype']}")
    begin, end = (int(x) for x in entry["data_offsets"])
    shape = [int(x) for x in entry["shape"]]
    if end == begin:
        return torch.empty(shape, dtype=dtype)
    raw = torch.empty(end - begin, dtype=torch.uint8)  # not zero-filled, unlike a bytearray
    view, done = memoryview(raw.numpy()), 0
    with open(path, "rb", buffering=0) as fh:
        fh.seek(data_start + begin)
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise ValueError("the file ends early")
            done += got
    return raw.view(dtype).reshape(shape)


class WeightSource:
    """Lazy, read-only access to the tensors of one or more safetensors files."""

    def __init__(self, files: list[Path] | Path | str, device: str = "cpu"):
        if isinstance(files, (str, Path)):
            files = [Path(files)]
        self.files = [Path(f) for f in files]
        self.device = device
        self._where: dict[str, Path] = {}
        self._headers: dict[Path, dict] = {}
        self._data_start: dict[Path, int] = {}
        for f in self.files:
            h, self._data_start[f] = _parse_safetensors(f)
            self._headers[f] = h
            for k in h:
                if k != "__metadata__":
                    self._where[k] = f

    @classmethod
    def from_ref(cls, ref: ModelRef, device: str = "cpu") -> WeightSource:
        return cls(ref.weight_files, device=device)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for h in self._headers.values():
            out.update(h.get("__metadata__") or {})
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._headers[self._where[name]][name]["shape"])

    def dtype(self, name: str) -> str:
        return self._headers[self._where[name]][name]["dtype"]

    def tensor_id(self, name: str) -> str:
        f = self._where[name]
        return tensor_identity(self._headers[f][name], file_identity(f), name)

    def get(self, name: str):
        """Load one tensor (as stored) into memory of its own, on this source's device."""
        if name not in self._where:
            raise KeyError(name)
        f = self._where[name]
        try:
            t = read_tensor(f, self._data_start[f], self._headers[f][name])
        except Exception as e:
            raise InvalidArtifact(f"cannot read tensor {name!r} from {f}: {e}") from None
        return t if self.device == "cpu" else t.to(self.device)

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, object]]:
        for n in names if names is not None else self.keys():
            yield n, self.get(n)

    def find(self, suffix: str) -> str | None:
        """The key ending in ``suffix`` (handles ``model.`` prefixes), or None."""
        if suffix in self._where:
            return suffix
        hits = [k for k in self._where if k.endswith("." + suffix) or k == suffix]
        return hits[0] if len(hits) == 1 else None


def linear_weight_names(src: WeightSource) -> list[str]:
    """Names of the 2-D ``*.weight`` tensors of linear modules inside decoder layers."""
    out = []
    for k in src.keys():
        if k.endswith(".weight") and ".layers." in k and len(src.shape(k)) == 2:
            out.append(k)
    return out


def module_name(weight_name: str) -> str:
    """``model.layers.3.mlp.down_proj.weight`` -> ``model.layers.3.mlp.down_proj``."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name

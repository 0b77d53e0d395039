"""Cheap, stable identities of input artifacts, recorded in every output's provenance.

For a safetensors file the identity is a hash of its header plus its size (no full read); for
other files a hash of size plus the first and last 64 KiB; for a directory the hash of its
weight/config files' identities.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

_CHUNK = 65536


HEADER_MAX = 100 * 1024 * 1024  # a safetensors JSON header larger than this is refused


def read_header_bytes(path: str | os.PathLike) -> bytes:
    """The JSON header bytes of a safetensors file: the one reader of its 8-byte length prefix.
    Raises ValueError ("too short" / "bad header length") when the file cannot hold a header."""
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("too short")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > min(size - 8, HEADER_MAX):
            raise ValueError("bad header length")
        return f.read(n)


def safetensors_header(path: str | os.PathLike) -> bytes:
    """The header bytes, or b"" for a file that has none (an identity never fails)."""
    try:
        return read_header_bytes(path)
    except ValueError:
        return b""


def file_identity(path: str | os.PathLike) -> str:
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    h.update(str(size).encode())
    if p.suffix in (".safetensors", ".st"):
        h.update(safetensors_header(p))
    else:
        with open(p, "rb") as f:
            h.update(f.read(_CHUNK))
            if size > 2 * _CHUNK:
                f.seek(size - _CHUNK)
                h.update(f.read(_CHUNK))
    return h.hexdigest()[:16]


def path_identity(path: str | os.PathLike) -> str:
    """Identity of a file or a directory (model or adapter dir)."""
    p = Path(path)
    if p.is_file():
        return file_identity(p)
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".st", ".json", ".parquet", ".bin"):
            h.update(f.name.encode())
            h.update(file_identity(f).encode())
    return h.hexdigest()[:16]


def tensor_identity(header_entry: dict, file_id: str, name: str) -> str:
    """Identity of one tensor inside a safetensors file: file identity + name + dtype/shape/offsets."""
    h = hashlib.sha256()
    h.update(file_id.encode())
    h.update(name.encode())
    h.update(repr(sorted(header_entry.items())).encode())
    return h.hexdigest()[:24]


def weights_fingerprint(ref) -> str:
    """Identity of a model's weights (a :class:`~peftarena_cli.artifacts.safetensors_io.ModelRef`),
    for stats files and evaluation provenance: the cheap header identity plus the first and last
    64 KiB of tensor data of every weight file (two checkpoints of one architecture share headers,
    so the header alone cannot tell them apart)."""
    h = hashlib.sha256(ref.identity().encode())
    for f in ref.weight_files:
        start = 8 + len(safetensors_header(f))
        size = f.stat().st_size
        with open(f, "rb") as fh:
            fh.seek(start)
            h.update(fh.read(65536))
            fh.seek(max(start, size - 65536))
            h.update(fh.read(65536))
    return h.hexdigest()[:16]

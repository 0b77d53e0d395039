"""Atomic writes: temp file (or directory) in the target directory, then rename.

An interrupted run (exception, Ctrl-C, kill between write and rename) never leaves a truncated
artifact at the final path; at worst a ``.tmp-*`` sibling remains, which the next run ignores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from peftarena_cli.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_parent(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path; raise :class:`OutputError` if its directory does not exist."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output directory {str(parent)!r} does not exist (for {str(p)!r})")
    if not parent.is_dir():
        raise OutputError(f"{str(parent)!r} is not a directory (for output {str(p)!r})")
    if p.is_dir():
        raise OutputError(f"output path {str(p)!r} is a directory; give a file name")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds."""
    final = check_output_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; rename it to ``path`` on success.

    With ``overwrite`` an existing directory at ``path`` is replaced only after the new one is
    complete.
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} does not exist (for {str(final)!r})")
    if final.exists() and not overwrite:
        raise OutputError(
            f"{str(final)!r} already exists", hint="choose another path or pass --overwrite"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}.", dir=parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

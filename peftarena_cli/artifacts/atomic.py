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


def _output_oserror(e: OSError, path) -> OutputError:
    """An OSError while writing ``path`` as the user error it is (read-only, full disk, no permission)."""
    why = e.strerror or type(e).__name__
    return OutputError(f"cannot write {str(path)!r}: {why}", hint="choose a writable location with enough free space")


def check_output_parent(path: str | os.PathLike, opt: str | None = None) -> Path:
    """Return ``path`` as a Path; raise :class:`OutputError` if its directory does not exist (the
    writers here do not create one). ``opt``: the option that named it, for the message."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    pre = f"{opt}: " if opt else ""
    if not parent.exists():
        raise OutputError(f"{pre}output directory {str(parent)!r} does not exist (for {str(p)!r})")
    if not parent.is_dir():
        raise OutputError(f"{pre}{str(parent)!r} is not a directory (for output {str(p)!r})")
    if p.is_dir():
        raise OutputError(f"{pre}output path {str(p)!r} is a directory; give a file name")
    return p


STALE_UNKNOWN_S = 24 * 3600  # a temporary entry without a writer's pid is stale after a day


def _tmp_prefix(name: str) -> str:
    """``.tmp-<name>.<pid>.``: the writer's pid lets a later run tell a dead writer's leftovers
    from a live writer's work in progress."""
    return f".tmp-{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove ``.tmp-*`` / ``.old-*`` entries in ``directory`` (for final name ``name``, or all)
    left behind by a writer that was killed: its pid no longer runs (or, for entries without a
    pid, they are older than a day). Returns what was removed."""
    import re
    import time

    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    pat = re.compile(r"^\.(?:tmp|old)-(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[^.]+$")
    for e in d.iterdir():
        m = pat.match(e.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        pid = m.group("pid")
        try:
            if pid is not None:
                if int(pid) == os.getpid() or _pid_alive(int(pid)):
                    continue
            elif time.time() - e.lstat().st_mtime < STALE_UNKNOWN_S:
                continue
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                e.unlink(missing_ok=True)
            removed.append(e)
        except OSError:
            continue
    return removed


_DISCARD = False


def discard_writes(on: bool = True) -> None:
    """Make this process's artifact writes go nowhere: a data-parallel rank other than 0
    (``evaluation/distributed.py``), whose rank 0 writes the one copy. Each write still happens to
    its temporary path, which is then removed instead of renamed."""
    global _DISCARD
    _DISCARD = bool(on)


def writes_discarded() -> bool:
    return _DISCARD


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds
    (removed instead under :func:`discard_writes`)."""
    final = check_output_parent(path)
    clean_stale_tmp(final.parent, final.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(final.name), dir=final.parent)
    except OSError as e:
        raise _output_oserror(e, final) from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
    try:
        yield tmp_path
        if _DISCARD:
            tmp_path.unlink()
        else:
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
    clean_stale_tmp(parent, final.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final.name), dir=parent))
    except OSError as e:
        raise _output_oserror(e, final) from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if _DISCARD:
            shutil.rmtree(tmp, ignore_errors=True)
        elif final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}.{os.getpid()}.", dir=parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

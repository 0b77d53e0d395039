"""Atomic writes: temp file (or directory) in the target directory, then rename.

An interrupted run (exception, Ctrl-C, kill between write and rename) never leaves a truncated
artifact at the final path; at worst a ``.tmp-*`` sibling remains, which the next run ignores.

Special files are never replaced: an output that is a character device or a FIFO (``/dev/null``, a
named pipe, ``/dev/stdout`` or a process substitution ``>(...)``) is written into directly, like a
shell redirection; a block device or a socket is refused (:func:`check_output_parent`), and so is
every special file where a directory is to be written (:func:`atomic_dir`).

A write that fails for a reason of the disk or the path (full disk, quota, file size limit,
read-only file system, no permission, a name the writing library cannot encode) is raised as a
one-line :class:`~peftarena_cli.errors.OutputError`, whichever library did the writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
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
    why = os.strerror(e.errno) if e.errno else (e.strerror or type(e).__name__)
    return OutputError(f"cannot write {str(path)!r}: {why}", hint=_hint(e.errno))


def _hint(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free disk space (or raise the quota / file size limit), or choose another location"
    return "choose a writable location with enough free space"


# errno values that say the output could not be written, whichever file the failing call named
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
# the errno in the text of errors that carry none as an attribute: safetensors' SafetensorError
# ("... No space left on device (os error 28)"), pyarrow's ("... Detail: [errno 28] ...")
_ERRNO_TEXT = re.compile(r"(?:os error|errno) (\d+)")


def _names(e: BaseException, paths) -> bool:
    """Whether ``e`` (an OSError) names one of ``paths`` or a file inside one of them."""
    names = [f for f in (getattr(e, "filename", None), getattr(e, "filename2", None)) if f is not None]
    for f in names:
        try:
            f = os.path.abspath(os.fsdecode(f))
        except (TypeError, ValueError):
            continue
        for p in paths:
            p = os.path.abspath(os.fsdecode(p))
            if f == p or f.startswith(p.rstrip(os.sep) + os.sep):
                return True
    return False


def write_error(e: BaseException, path, written=()) -> OutputError | None:
    """The :class:`OutputError` for ``e``, raised while writing ``path`` (through the temporary
    paths ``written``), or None when ``e`` is not a write failure (then it is raised unchanged).

    A write failure is an OSError with a disk errno (full disk, quota, file size limit, read-only
    file system) or one that names the output itself; safetensors' ``SafetensorError`` with an
    OS error in its text; a UnicodeEncodeError of a name that is not valid UTF-8 (a library that
    takes paths as UTF-8 text cannot open it)."""
    if isinstance(e, OutputError):
        return e
    if isinstance(e, UnicodeEncodeError) and "surrogates" in str(e):
        if any(_has_surrogates(str(p)) for p in (path, *written)):
            return OutputError(f"cannot write {str(path)!r}: the name is not valid UTF-8",
                               hint="use a UTF-8 file or directory name")
        return None
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None and (isinstance(e, OSError) or type(e).__name__ == "SafetensorError"):
        m = _ERRNO_TEXT.search(str(e))
        code = int(m.group(1)) if m else None
    if code is None:
        return None
    if code in _WRITE_ERRNOS or (isinstance(e, OSError) and _names(e, (path, *written))):
        return OutputError(f"cannot write {str(path)!r}: {os.strerror(code)}", hint=_hint(code))
    return None


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in s)


def special_kind(path) -> str | None:
    """What ``path`` is when it is a special file (symlinks followed): "character device", "FIFO",
    "block device" or "socket"; None for a regular file, a directory or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


# names of a process's open files: /dev/stdout and friends are symlinks into /proc, and renaming a
# temporary file onto one would replace the symlink itself
_FD_NAME = re.compile(r"^/(?:dev/(?:stdout|stderr|fd/\d+)|proc/(?:self|thread-self|\d+)/fd/\d+)$")


def is_stream(path) -> bool:
    """Whether an output at ``path`` is written into rather than replaced: an existing character
    device or FIFO (/dev/null, a named pipe, a terminal), or an open file named through
    /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N."""
    if path is None or str(path) == "-":
        return False
    if special_kind(path) in ("character device", "FIFO"):
        return True
    return bool(_FD_NAME.match(os.path.abspath(os.path.expanduser(str(path))))) and os.path.exists(path)


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
    kind = special_kind(p)
    if kind in ("block device", "socket"):
        raise OutputError(f"{pre}output path {str(p)!r} is a {kind}; refusing to write over it",
                          hint="give a regular file name (a character device such as /dev/null, or a FIFO, is written into)")
    return p


STALE_UNKNOWN_S = 24 * 3600  # a temporary entry without a writer's pid is stale after a day


def _tmp_name(name: str) -> str:
    """``name`` as it appears in a temporary sibling's name: bytes that are not UTF-8 become '?'
    (libraries that take a path as UTF-8 text, safetensors and pyarrow among them, cannot open a
    name that holds them; the final rename can)."""
    return os.fsencode(name).decode("utf-8", "replace").replace("\ufffd", "?") if _has_surrogates(name) else name


def _tmp_prefix(name: str) -> str:
    """``.tmp-<name>.<pid>.``: the writer's pid lets a later run tell a dead writer's leftovers
    from a live writer's work in progress."""
    return f".tmp-{_tmp_name(name)}.{os.getpid()}."


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
        if not m or (name is not None and m.group("name") != _tmp_name(name)):
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
    (removed instead under :func:`discard_writes`).

    A character device or FIFO at ``path`` (see :func:`is_stream`) is yielded itself: the block
    writes into it, nothing is renamed. Whatever the block writes must then be opened for writing
    in place (``open(p, "wb")``); :func:`write_safetensors` does so for safetensors files."""
    final = check_output_parent(path)
    if is_stream(final):
        if _DISCARD:  # a rank other than 0 writes nowhere: a private temporary file, then removed
            with tempfile.TemporaryDirectory(prefix="peftarena-discard-") as d:
                yield Path(d) / "discarded"
            return
        try:
            yield final
        except Exception as e:  # noqa: BLE001 (re-raised unchanged unless it is a write failure)
            err = write_error(e, final)
            if err is None or err is e:
                raise
            raise err from None
        return
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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        err = write_error(e, final, (tmp_path,)) if isinstance(e, Exception) else None
        if err is None or err is e:
            raise
        raise err from None


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, except where that would go wrong: into a character device
    or FIFO (save_file renames a temporary file of its own over its target, which would replace
    the device node) and under a name that is not UTF-8 (it takes the name as text); there the
    file is serialised in memory and written into ``path``."""
    from safetensors.torch import save, save_file

    if is_stream(path) or _has_surrogates(str(path)):
        data = save(tensors, metadata=metadata)
        with open(path, "wb") as f:
            f.write(data)
    else:
        save_file(tensors, str(path), metadata=metadata)


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
    kind = special_kind(final) or ("open file" if is_stream(final) else None)
    if kind is not None:
        raise OutputError(f"output {str(final)!r} is a {kind}, not a directory; refusing to replace it",
                          hint="give a directory path for this output")
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
            old = Path(tempfile.mkdtemp(prefix=f".old-{_tmp_name(final.name)}.{os.getpid()}.", dir=parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(e, final, (tmp,)) if isinstance(e, Exception) else None
        if err is None or err is e:
            raise
        raise err from None

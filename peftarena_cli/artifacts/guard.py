"""Checks on output paths before any work starts: never write over an input, never write a table
under a weights file's name, never start work whose result cannot be written.

* :func:`check_outputs_vs_inputs`: an output that is the same file as an input, lies inside an
  input directory, or contains an input is refused (:class:`~peftarena_cli.errors.OutputError`).
* :func:`check_table_output`: a table output (Parquet or CSV) must not carry a weights/config
  suffix, and an existing file there must be a table peftarena may replace.
* :func:`check_writable`: the directory an output goes to accepts new files (a character device or
  FIFO, written into rather than replaced, must itself be writable).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from peftarena_cli import registry
from peftarena_cli.artifacts.atomic import is_stream, special_kind
from peftarena_cli.errors import OutputError

# suffixes a table (Parquet/CSV) is never written under: they name inputs of other kinds
NON_TABLE_SUFFIXES = (".safetensors", ".st", ".json", ".jsonl", ".bin", ".pt", ".pth", ".gguf", ".txt",
                      ".md", ".png", ".svg", ".py", ".model", ".ckpt", ".npz", ".npy", ".yaml", ".yml")


def _real(p) -> Path | None:
    """The absolute, symlink-resolved path of ``p`` (None for '-' or None)."""
    if p is None or str(p) == "-":
        return None
    try:
        return Path(os.path.expanduser(str(p))).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(os.path.expanduser(str(p))))


def local_input_paths(specs: Iterable) -> list[Path]:
    """Resolved paths of the inputs that exist on disk (aliases resolve to their cache directory;
    hub ids and built-in names have no local path and are skipped)."""
    out = []
    for s in specs:
        if s is None:
            continue
        s = str(s)
        # NAME=PATH task/suite specs: the path part
        for part in s.split(","):
            part = part.split("=", 1)[1] if "=" in part and not os.path.exists(part) else part
            p = Path(os.path.expanduser(part))
            if part and p.exists():
                out.append(p.resolve())
                continue
            try:
                if registry.is_alias(part) and registry.is_cached(part):
                    out.append(registry.cache_dir(part).resolve())
            except Exception:  # noqa: BLE001 (a check must never be the failure)
                pass
    return out


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_outputs_vs_inputs(outputs: Mapping[str, object], inputs: Iterable, inside_ok: bool = False) -> None:
    """Refuse before any work when an output would overwrite, land inside, or contain an input.

    ``outputs``: option name -> path (None entries are skipped); ``inputs``: input specs as typed.
    Also refuses two outputs that name the same path. ``inside_ok``: an output inside an input
    directory is allowed (``report`` writes RUNS/report beside the runs it reads, and skips it
    when it reads RUNS again); the same path and an output containing an input are still refused.
    """
    ins = local_input_paths(inputs)
    seen: dict[Path, str] = {}
    for opt, out in outputs.items():
        o = _real(out)
        if o is None:
            continue
        if o in seen and special_kind(o) != "character device":  # /dev/null may take several outputs
            raise OutputError(f"{opt} and {seen[o]} name the same path {str(out)!r}",
                              hint="give each output its own path")
        seen[o] = opt
        for i in ins:
            same = o == i or (o.exists() and i.exists() and _samefile(o, i))
            if same:
                raise OutputError(f"{opt} {str(out)!r} is also an input; refusing to overwrite it",
                                  hint="write the output to another path")
            if i.is_dir() and _inside(o, i) and not inside_ok:
                raise OutputError(f"{opt} {str(out)!r} lies inside the input directory {str(i)!r}",
                                  hint="write outputs outside the input's directory")
            if _inside(i, o):
                raise OutputError(f"{opt} {str(out)!r} contains the input {str(i)!r}",
                                  hint="write the output to another path")


def _samefile(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_table_output(path, opt: str = "-o") -> None:
    """A table (Parquet, or CSV for ``.csv``) goes to ``path``: refuse a missing directory (the atomic
    writer does not create one, so the run would fail only at its very end), a weights/config suffix
    and an existing file that is not a Parquet table (it would be silently replaced)."""
    if path is None or str(path) == "-":
        return
    from peftarena_cli.artifacts.atomic import check_output_parent

    p = check_output_parent(path, opt)
    if p.suffix.lower() in NON_TABLE_SUFFIXES:
        raise OutputError(f"{opt} {str(p)!r}: a table is written as Parquet, not under a {p.suffix} name",
                          hint="use a .parquet (or .csv) file name")
    if p.is_file() and p.suffix.lower() != ".csv":
        try:
            with open(p, "rb") as f:
                magic = f.read(4)
        except OSError:
            magic = b""
        if magic != b"PAR1":
            raise OutputError(f"{opt} {str(p)!r} exists and is not a Parquet table; refusing to replace it",
                              hint="remove it first or choose another path")


def check_writable(path, opt: str = "-o") -> None:
    """Refuse when the directory ``path`` goes into does not accept new files (read-only, no permission)."""
    if path is None or str(path) == "-":
        return
    p = Path(os.path.expanduser(str(path)))
    if is_stream(p):  # written into, not replaced: the file itself must take writes
        if not os.access(p, os.W_OK):
            raise OutputError(f"cannot write {opt} {str(path)!r}: permission denied", hint="choose a writable location")
        return
    parent = p.parent if str(p.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {opt} {str(path)!r}: directory {str(parent)!r} is not writable",
                          hint="choose a writable location")
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".peftarena-probe-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {opt} {str(path)!r}: {e.strerror or e}",
                          hint="choose a writable location") from None
    os.close(fd)
    os.unlink(tmp)


def check_outputs(outputs: Mapping[str, object], inputs: Iterable = (), tables: Iterable[str] = ()) -> None:
    """All output checks at once: identity against ``inputs``, table suffixes for the options named
    in ``tables``, and writability."""
    check_outputs_vs_inputs(outputs, inputs)
    for opt in tables:
        check_table_output(outputs.get(opt), opt)
    for opt, out in outputs.items():
        check_writable(out, opt)


def check_weights_output(path, opt: str) -> None:
    """A safetensors output (statistics, sums) must not carry a table's or a text file's suffix."""
    if path is None:
        return
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".csv", ".json", ".jsonl", ".txt", ".md", ".png", ".svg", ".gguf"):
        raise OutputError(f"{opt} {str(p)!r}: this output is a safetensors file, not {p.suffix}",
                          hint="use a .safetensors (or .st) file name")

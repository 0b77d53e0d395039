"""Reading task records from local files (JSONL, JSON, Parquet, CSV) or, only when the user names
one, from a hub dataset through ``datasets``."""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.errors import DataError, InputNotFound, MissingDependency


def read_records(path) -> list[dict]:
    """Records of a local file: ``.jsonl``, ``.json`` (a list, ``{"examples": [...]}``, or a dict
    of id -> record, where the id is added as ``id``), ``.parquet`` or ``.csv``."""
    p = Path(path)
    if not p.exists():
        raise InputNotFound(f"no such file: {str(p)!r}", hint="pass an existing JSONL/JSON/Parquet file")
    from peftarena_cli.artifacts.textfiles import loads_bounded, read_utf8

    try:
        if p.suffix == ".jsonl":
            return [loads_bounded(line, str(p), "task file", first_line=i)
                    for i, line in enumerate(read_utf8(p, "task file").splitlines(), 1) if line.strip()]
        if p.suffix == ".json":
            data = loads_bounded(read_utf8(p, "task file"), str(p), "task file")
            if isinstance(data, dict) and "examples" in data:
                data = data["examples"]
            if isinstance(data, dict):
                return [{"id": k, **v} if isinstance(v, dict) else {"id": k, "value": v} for k, v in data.items()]
            if not isinstance(data, list):
                raise DataError(f"{str(p)!r} holds neither a list of records nor a dict of records")
            return data
        if p.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(p).to_dict("records")
        if p.suffix == ".csv":
            import pandas as pd

            return pd.read_csv(p).to_dict("records")
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(p)!r}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    raise DataError(f"unsupported file type {p.suffix!r} for {str(p)!r}", hint="use .jsonl, .json, .parquet or .csv")


def load_hub(repo: str, config: str | None = None, split: str = "test") -> list[dict]:
    """Records of a hub dataset (downloads; called only for a benchmark the user named)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise MissingDependency("the `datasets` package is needed to load hub datasets") from None
    try:
        ds = datasets.load_dataset(repo, config, split=split) if config else datasets.load_dataset(repo, split=split)
    except Exception as e:
        raise DataError(f"cannot load hub dataset {repo}{'/' + config if config else ''} ({split}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                        hint="without network, pass a local file in the same format: NAME=PATH (docs/tasks.md)") from None
    return [dict(r) for r in ds]


def require_fields(records: list[dict], fields, what: str, path=None) -> None:
    if not records:
        raise DataError(f"{what}{' ' + repr(str(path)) if path else ''} has no records",
                        hint="pass a non-empty file (docs/tasks.md lists the formats)")
    for f in fields:
        alts = f if isinstance(f, tuple) else (f,)
        if not any(a in records[0] for a in alts):
            raise DataError(f"{what}{' ' + repr(str(path)) if path else ''} lacks the field {' or '.join(alts)!r}"
                            f" (has: {', '.join(map(str, list(records[0])[:8]))})",
                            hint="see docs/tasks.md for each task's fields")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME=PATH`` -> (NAME, PATH); ``NAME`` -> (NAME, None); a bare existing path -> ("", PATH)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name.strip(), path.strip()
    if Path(spec).exists() or any(spec.endswith(s) for s in (".jsonl", ".json", ".parquet", ".csv")) or "/" in spec:
        return "", spec
    return spec, None

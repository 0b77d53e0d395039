"""Parquet tables with provenance.

Every table peftarena writes carries, under the Parquet key-value metadata key ``peftarena``, a
JSON object: the peftarena version, the command line, the identities of the inputs, the seed,
dtype and device, plus any command-specific entries. :func:`read_table` returns it back.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peftarena_cli import __version__
from peftarena_cli.artifacts.atomic import atomic_path
from peftarena_cli.errors import InputNotFound, InvalidArtifact

META_KEY = b"peftarena"


@dataclass
class Provenance:
    command: str = ""
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    inputs: dict[str, str] = field(default_factory=dict)  # role -> "spec@identity"
    seed: int | None = None
    dtype: str | None = None
    device: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["version"] = __version__
        return json.dumps(d, default=str)

    def add_input(self, role: str, spec, identity: str) -> None:
        self.inputs[role] = f"{spec}@{identity}"


def arrow_table(columns: dict):
    """A pyarrow Table from numeric numpy arrays and sequences of str (``large_string``, as pandas
    writes them), assembled from buffers.

    pyarrow's own constructors (``pa.array``, ``pa.table``, ``from_pylist``) import pandas to check
    their input, a noticeable part of a command that otherwise never needs pandas (docs/spectrum.md).
    Numeric arrays are shared, not copied.
    """
    import numpy as np
    import pyarrow as pa

    arrays = []
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            v = np.ascontiguousarray(values)
            arrays.append(pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)]))
            continue
        if isinstance(values, np.ndarray) and values.dtype != object:
            raise TypeError(f"arrow_table: column {name!r} has dtype {values.dtype}; expected numbers or str")
        known: dict = {}  # columns such as `module` repeat a few values many times
        encoded = [known[x] if x in known else known.setdefault(x, str(x).encode()) for x in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        arrays.append(pa.Array.from_buffers(pa.large_string(), len(encoded),
                                            [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]))
    return pa.Table.from_arrays(arrays, names=list(columns))


def _to_arrow(df, provenance: Provenance | None):
    """A pandas DataFrame or a pyarrow Table, with the provenance in its schema metadata."""
    import pyarrow as pa

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if provenance is not None:
        meta[META_KEY] = provenance.to_json().encode()
    return table.replace_schema_metadata(meta)


def table_bytes(df, provenance: Provenance | None = None) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_to_arrow(df, provenance), buf, compression="zstd")
    return buf.getvalue()


def write_table(df, path: str | os.PathLike, provenance: Provenance | None = None) -> Path:
    """Write ``df`` (a DataFrame or pyarrow Table) as Parquet to ``path`` atomically (``.csv``
    writes CSV without provenance)."""
    import pyarrow.parquet as pq

    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        # an open file, not the name: pyarrow removes a path it failed to write, which for an
        # output written into (/dev/null, a FIFO: atomic_path) would be the device node itself
        if p.suffix == ".csv":
            (df.to_pandas() if hasattr(df, "to_pandas") else df).to_csv(f, index=False)
        else:
            pq.write_table(_to_arrow(df, provenance), f, compression="zstd")
    return p


def read_table(path: str | os.PathLike | io.BytesIO):
    """Read a Parquet table; return ``(DataFrame, provenance dict)``."""
    import pyarrow.parquet as pq

    if not isinstance(path, io.BytesIO):
        p = Path(path)
        if not p.exists():
            raise InputNotFound(f"no such file: {str(path)!r}")
        if p.is_dir():
            raise InvalidArtifact(f"{str(path)!r} is a directory, not a Parquet file")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise InvalidArtifact(f"{str(path)!r} is not a readable Parquet file ({type(e).__name__})") from None
    meta = table.schema.metadata or {}
    prov = {}
    if META_KEY in meta:
        try:
            prov = json.loads(meta[META_KEY])
        except ValueError:
            prov = {}
    return table.to_pandas(), prov


def require_columns(df, columns, what: str, path=None) -> None:
    """Raise :class:`InvalidArtifact` naming the missing columns of a table."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        where = f" {str(path)!r}" if path is not None else ""
        raise InvalidArtifact(
            f"{what}{where} lacks column(s) {', '.join(missing)}",
            hint=f"expected a {what} as documented in docs/artifacts.md",
        )


CURVE_SAMPLE_KINDS = ("target", "general")  # the per-sample tables `interpolate -o CURVE` writes beside CURVE
CURVE_SAMPLES_SUFFIX = "-samples.parquet"


def curve_samples_path(curve: str | os.PathLike, kind: str) -> Path:
    """Where ``interpolate -o CURVE`` writes the per-sample rows of one kind of evaluation:
    ``<stem>.<kind>-samples.parquet`` beside ``curve``."""
    p = Path(curve)
    return p.with_name(f"{p.stem}.{kind}{CURVE_SAMPLES_SUFFIX}")


def curve_samples_beside(curve: str | os.PathLike) -> dict:
    """{kind: path} of the per-sample tables that exist beside ``curve``."""
    found = {}
    for kind in CURVE_SAMPLE_KINDS:
        q = curve_samples_path(curve, kind)
        if q.is_file():
            found[kind] = q
    return found


"""Where result files are found and which method they belong to (the input side of `report`).

Convention (docs/report.md):

* ``RUNS/<method>/*.parquet``: pass ``RUNS``; every sub-directory holding result tables is one
  method, named after the sub-directory. The base model's results live in ``RUNS/base/``.
* ``DIR`` whose own files are result tables: one method named after ``DIR``.
* ``FILE.parquet``: belongs to the method named after the directory that holds it.
* ``NAME=PATH`` (a directory or a file): everything at PATH belongs to method ``NAME``.

The *kind* of each table is recognised from its columns, never from its file name, so files may be
called anything; tables of unknown kinds (per-sample evals, training logs, ...) are skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.errors import IncompatibleInputs, InputNotFound, InvalidArtifact, UsageError

# kind -> columns that identify it (all must be present); checked in this order.
KIND_COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("drift", ("prompt_set", "id", "source", "kl")),
    ("curve", ("alpha", "target", "general")),
    ("eval_summary", ("task", "metric", "value", "n")),
    ("spectrum_index", ("module", "index", "p_diag", "energy")),
    ("spectrum_summary", ("module", "effective_rank")),
    ("act_geom", ("module", "cka")),
    ("csd", ("module",)),  # plus at least one csd_* column (checked below)
]
EVAL_SUMMARY_KINDS = ("eval_summary",)
# per-sample eval rows (kind "samples"; with an ``alpha`` column, from interpolate: "curve_samples") are
# read for the intervals and paired comparisons (docs/report.md); only these columns are kept.
SAMPLE_COLUMNS = ("model", "task", "subtask", "id", "sample", "correct", "inst_strict", "extracted", "reference",
                  "meta", "alpha", "path")
# a method directory's sub-directory whose interpolate per-sample files are read too (scripts/arena.mk)
CURVE_SAMPLES_DIR = "interp"
# per-item rows that scripts/join_curves.py writes beside a joined curve (for rewind's split) re-assemble
# rows read elsewhere (the interp/ parts' and the ends' own evals), so the report skips them
JOINED_SAMPLES_COMMAND = "join_curves"
KNOWN_KINDS = tuple(k for k, _ in KIND_COLUMNS)


def table_kind(columns) -> str | None:
    """The kind of a result table from its column names, or None when it is not one we use."""
    cols = set(columns)
    if {"completion", "correct"} <= cols:  # per-sample eval rows: the summary carries the scores
        return None
    for kind, need in KIND_COLUMNS:
        if set(need) <= cols:
            if kind == "csd" and not any(c.startswith("csd_") for c in cols):
                continue
            return kind
    return None


@dataclass
class MethodResults:
    """Every result table found for one method, by kind (several files of a kind are concatenated)."""

    name: str
    tables: dict = field(default_factory=dict)  # kind -> DataFrame
    files: dict = field(default_factory=dict)  # kind -> [Path]
    provenance: dict = field(default_factory=dict)  # kind -> [provenance dict]
    adapter: Path | None = None  # where the adapter (or full checkpoint) is, when known
    directory: Path | None = None

    def add(self, kind: str, df, path: Path, prov: dict) -> None:
        import pandas as pd

        if kind in self.tables:
            self.tables[kind] = pd.concat([self.tables[kind], df], ignore_index=True)
        else:
            self.tables[kind] = df
        self.files.setdefault(kind, []).append(path)
        self.provenance.setdefault(kind, []).append(prov)


def _written_by_report(p: Path) -> bool:
    """A table that ``peftarena report`` wrote (points, leaderboard, correlations...): never an input,
    so a report written inside RUNS/ (``make arena``'s RUNS/report) is not read back as a method."""
    import json

    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(p).metadata or {}
        return json.loads(meta.get(b"peftarena", b"{}")).get("command") == "report"
    except Exception:
        return False


def _parquet_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix == ".parquet" and not p.name.startswith(".")
                  and not _written_by_report(p))


def samples_kind(columns) -> str | None:
    """``samples`` for per-sample eval rows, ``curve_samples`` for interpolate's (with ``alpha``), else None."""
    cols = set(columns)
    if {"task", "id", "sample", "completion", "correct"} <= cols:
        return "curve_samples" if "alpha" in cols else "samples"
    return None


def _classify(path: Path):
    from peftarena_cli.artifacts.tables import read_table

    df, prov = read_table(path)
    kind = table_kind(df.columns)
    if kind is None:
        kind = samples_kind(df.columns)
        if kind is not None:
            df = df[[c for c in SAMPLE_COLUMNS if c in df.columns]]
    return kind, df, prov


def _dir_has_results(d: Path) -> bool:
    for p in _parquet_files(d):
        try:
            import pyarrow.parquet as pq

            names = pq.read_schema(p).names
        except Exception:
            continue
        if table_kind(names) is not None:
            return True
    return False


def find_adapter(d: Path) -> Path | None:
    """The adapter of a method directory: ``adapter/`` (PEFT dir), ``adapter.safetensors``/``.st``,
    a finetune run's ``final/`` (also as ``train/final/``), ``model/`` (a full checkpoint), or the
    directory itself when it is a PEFT dir."""
    from peftarena_cli.artifacts.adapters import ADAPTER_CONFIG

    for cand in ("adapter", "adapter.safetensors", "adapter.st", "final", "model", "train/final"):
        p = d / cand
        if p.is_dir() and ((p / ADAPTER_CONFIG).is_file() or any(p.glob("*.safetensors"))):
            return p
        if p.is_file():
            return p
    if (d / ADAPTER_CONFIG).is_file():
        return d
    return None


def collect_results(specs: list[str], base_name: str = "base") -> dict[str, MethodResults]:
    """Find and read every result table named by ``specs``; return ``{method: MethodResults}``.

    Methods keep the order in which they were found, with ``base_name`` first when present.
    """
    # (method, directory, files, owned): owned = the method name comes from NAME= or a directory, so a
    # model evaluated on its own there (a full fine-tune: no adapter, eval labels it "base") is that method
    groups: list[tuple[str, Path, list[Path], bool]] = []
    for spec in specs:
        name = None
        raw = str(spec)
        if "=" in raw and not Path(raw).exists():
            name, raw = raw.split("=", 1)
            if not name:
                raise UsageError(f"empty method name in {spec!r}", hint="write NAME=PATH, e.g. lora=runs/lora")
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputNotFound(f"no such result file or directory: {raw!r}")
        if p.is_file():
            if p.suffix != ".parquet":
                raise InvalidArtifact(f"{raw!r} is not a Parquet result table",
                                      hint="pass result .parquet files or directories that hold them")
            groups.append((name or p.resolve().parent.name, p.parent, [p], name is not None))
        elif name is not None or _dir_has_results(p):
            groups.append((name or p.resolve().name, p, _parquet_files(p), True))
        else:
            subs = [s for s in sorted(p.iterdir()) if s.is_dir() and not s.name.startswith(".") and _dir_has_results(s)]
            if not subs:
                raise InvalidArtifact(
                    f"{raw!r} holds no result tables (eval summaries, spectrum, csd, act-geom or curve Parquet files)",
                    hint="pass RUNS/ with one sub-directory per method, or NAME=PATH",
                )
            for s in subs:
                groups.append((s.name, s, _parquet_files(s), True))
    check_unique_labels(groups)

    methods: dict[str, MethodResults] = {}
    for name, d, files, owned in groups:
        m = methods.setdefault(name, MethodResults(name=name, directory=d))
        for f in files:
            kind, df, prov = _classify(f)
            if kind is None or (kind == "curve_samples" and prov.get("command") == JOINED_SAMPLES_COMMAND):
                continue
            if kind == "eval_summary":
                check_summary_scores(df, f)
            if kind in ("eval_summary", "samples") and "model" in df.columns:
                for label, part in split_by_model(df, name, base_name, owned=owned).items():
                    target = m if label == name else methods.setdefault(label, MethodResults(name=label))
                    target.add(kind, part, f, prov)
                continue
            m.add(kind, df, f, prov)
        sub = d / CURVE_SAMPLES_DIR if d.is_dir() else None
        if sub is not None and sub.is_dir():
            for f in _parquet_files(sub):
                try:
                    import pyarrow.parquet as pq

                    if samples_kind(pq.read_schema(f).names) != "curve_samples":
                        continue
                except Exception:
                    continue
                kind, df, prov = _classify(f)
                m.add(kind, df, f, prov)
        if m.adapter is None:
            m.adapter = find_adapter(d) if d.is_dir() else None
    methods = {k: v for k, v in methods.items() if set(v.tables) - {"samples", "curve_samples"}}
    if not methods:
        raise InvalidArtifact("none of the given paths holds a result table",
                              hint="see docs/report.md for the files report reads")
    if base_name in methods:
        methods = {base_name: methods[base_name], **{k: v for k, v in methods.items() if k != base_name}}
    check_same_base(methods, base_name)
    return methods


def check_unique_labels(groups: list) -> None:
    """Each method label names one source. Two sources under one label (``base=A base=B``, two
    ``RUNS/`` that both hold ``base/``, a directory and a file inside it) would be merged, or one of
    them dropped, without a word: a usage error. Bare files of one directory share its label (that
    is how several files of one method are passed); the same file given twice is refused too."""
    by_label: dict[str, list[tuple[bool, Path]]] = {}
    seen_files: dict[Path, str] = {}
    for name, d, files, owned in groups:
        single = len(files) == 1 and not owned  # a bare file: its label is its directory's name
        by_label.setdefault(name, []).append((single, Path(d).resolve()))
        for f in files:
            key = Path(f).resolve()
            if key in seen_files:
                raise UsageError(f"{str(f)!r} is given twice (as part of {seen_files[key]!r} and {name!r})",
                                 hint="pass each result file or directory once")
            seen_files[key] = name
    for name, srcs in by_label.items():
        if len(srcs) < 2:
            continue
        if all(single for single, _ in srcs) and len({where for _, where in srcs}) == 1:
            continue  # files of one directory: one method
        raise UsageError(f"method label {name!r} is given twice ({str(srcs[0][1])!r} and {str(srcs[1][1])!r})",
                         hint="give each method its own label, e.g. NAME=PATH with distinct names")


# The commands whose provenance names the base model (``inputs['base']`` = "spec@identity"), by how
# they identify it: eval, spectrum, interpolate and drift record the model path's identity
# (``ModelRef.identity``: safetensors headers and configs, the same for two checkpoints of one
# architecture), csd and act-geom a fingerprint of its weights (``activations.moments.weights_fingerprint``),
# which the evals record too (``inputs['base_weights']``). Identities are compared within one scheme.
BASE_IDENTITY_SCHEME = {"eval-target": "path", "eval-general": "path", "spectrum": "path", "interpolate": "path",
                        "drift": "path", "csd": "weights", "act-geom": "weights"}
EVAL_COMMANDS = ("eval-target", "eval-general")


def base_identities(prov: dict, method: str, base_name: str = "base") -> list[tuple[str, str, str]]:
    """``(scheme, identity, spec)`` of the base model a table was computed on, from its provenance;
    empty when the table does not say. An eval of a model on its own (no adapter) names that model as
    its ``base`` input: it is the base model only in the base's own results (elsewhere it is a full
    fine-tune, evaluated as a model of its own)."""
    prov = prov or {}
    command = str(prov.get("command"))
    inputs = prov.get("inputs") or {}
    if command not in BASE_IDENTITY_SCHEME or not isinstance(inputs, dict):
        return []
    if command in EVAL_COMMANDS and method != base_name and not any(str(r).startswith("adapter") for r in inputs):
        return []
    out = []
    for role, scheme in (("base", BASE_IDENTITY_SCHEME[command]), ("base_weights", "weights")):
        spec, _, ident = str(inputs.get(role, "")).rpartition("@")
        if ident:
            out.append((scheme, ident, spec))
    return out


def check_same_base(methods: dict, base_name: str = "base") -> None:
    """Every result table whose provenance names a base model names the same one: gains, forgetting
    and the plane compare methods on one base, so results measured on different bases are refused."""
    first: dict[str, tuple[str, str, Path]] = {}  # scheme -> (identity, spec, file)
    for name, m in methods.items():
        for kind, provs in m.provenance.items():
            for prov, f in zip(provs, m.files.get(kind, [])):
                for scheme, ident, spec in base_identities(prov, name, base_name):
                    ref = first.setdefault(scheme, (ident, spec, f))
                    if ref[0] != ident:
                        raise IncompatibleInputs(
                            f"{str(ref[2])!r} and {str(f)!r} were computed on different base models "
                            f"({ref[1]} with identity {ref[0]}, {spec} with identity {ident})",
                            hint="a report compares methods on one base model: re-run the results on the same base "
                                 "(the same directory or file: a directory and its .safetensors file differ), "
                                 "or report each base on its own")


def check_summary_scores(df, path: Path) -> None:
    """The headline scores of an eval summary (``target_score`` and the general aggregates) are
    percentages: each ``value`` must be a finite number in [0, 100] and its interval bounds
    (``ci_low``, ``ci_high``) finite where given (NaN: no interval). A hand-edited or corrupt summary
    is refused with the file and the column, before it reaches the leaderboard."""
    import math

    import pandas as pd

    from peftarena_cli.evaluation.api import GENERAL_AGGREGATES

    if df.empty:
        raise InvalidArtifact(f"eval summary {str(path)!r} has no rows",
                              hint="re-run eval-target / eval-general, or remove the file")
    rows = df[df["metric"].astype(str).isin(("target_score", *GENERAL_AGGREGATES))]
    for col in ("value", "ci_low", "ci_high"):
        if col not in rows.columns:
            continue
        vals = pd.to_numeric(rows[col], errors="coerce")
        for metric, raw, v in zip(rows["metric"], rows[col], vals):
            v = float(v)
            if col == "value" and not (math.isfinite(v) and 0.0 <= v <= 100.0):
                raise InvalidArtifact(
                    f"eval summary {str(path)!r}: column 'value' of {metric!r} is {raw!r}, not a percentage in [0, 100]",
                    hint="the file is hand-edited or corrupt: re-run the evaluation that wrote it")
            if col != "value" and math.isinf(v):
                raise InvalidArtifact(f"eval summary {str(path)!r}: column {col!r} of {metric!r} is {raw!r}",
                                      hint="the file is hand-edited or corrupt: re-run the evaluation that wrote it")


_GENERIC_PARTS = {"final", "adapter", "adapters", "train", "model", "adapter_model.safetensors", "."}


def method_from_label(label: str) -> str:
    """A method name from an adapter path as eval writes it in its ``model`` column:
    the last path component that is not a generic name (final, adapter, train, checkpoint-N, ...)."""
    parts = [p for p in Path(str(label)).parts if p not in ("/", "")]
    for part in reversed(parts):
        stem = Path(part).stem if part.endswith((".safetensors", ".st")) else part
        if stem.lower() in _GENERIC_PARTS or re.fullmatch(r"checkpoint-\d+", stem):
            continue
        return stem
    return str(label)


def split_by_model(df, group_name: str, base_name: str = "base", owned: bool = False) -> dict:
    """Split an eval summary with a ``model`` column (eval's ``--adapter A --adapter B --include-base``)
    into methods: ``base`` rows go to the base; a single adapter belongs to the file's own method;
    several adapters are named by :func:`method_from_label`. A file that holds only ``base`` rows
    (a model evaluated without adapters, e.g. a full fine-tune) belongs to its own method when
    ``owned`` (its name came from NAME= or its directory), else to the base."""
    labels = [lab for lab in df["model"].astype(str).unique()]
    adapters = [lab for lab in labels if lab != "base"]
    out = {}
    for lab in labels:
        if lab == "base" and owned and not adapters:
            name = group_name
        elif lab == "base":
            name = base_name
        elif len(adapters) == 1:
            name = group_name
        else:
            name = method_from_label(lab)
        part = df[df["model"].astype(str) == lab]
        out[name] = part if name not in out else __import__("pandas").concat([out[name], part], ignore_index=True)
    return out


def adapter_from_provenance(m: MethodResults) -> Path | None:
    """The adapter an eval summary was computed for, from its provenance (``inputs['adapter']``)."""
    for provs in (m.provenance.get("eval_summary", []), *(m.provenance.get(k, []) for k in ("spectrum_summary", "csd", "act_geom"))):
        for prov in provs:
            inputs = (prov or {}).get("inputs") or {}
            for role, val in inputs.items():
                if "adapter" in role.lower() or role.lower() in ("finetuned", "fine_tuned"):
                    spec = str(val).rsplit("@", 1)[0]
                    if spec and os.path.exists(spec):
                        return Path(spec)
    return None


def read_manifest(directory: Path | None, adapter: Path | None = None) -> dict | None:
    """A finetune run's ``manifest.json`` for a method directory or adapter: beside the adapter's
    ``final/``, in the adapter directory, in the method directory or in its ``train/`` (the first
    readable one); None when there is none."""
    import json

    cands = []
    if adapter is not None:
        a = Path(adapter)
        cands += [a.parent / "manifest.json", a / "manifest.json"]
    if directory is not None:
        cands += [Path(directory) / "manifest.json", Path(directory) / "train" / "manifest.json"]
    for c in cands:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except (OSError, ValueError):
                continue
    return None

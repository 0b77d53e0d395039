"""Prompt sets for activation statistics.

A prompt set is given as:

* a built-in suite name: ``arith`` (the arithmetic word-problem generator's question text) and,
  when the evaluation package provides them, ``general``, ``ifeval``, ``bbh``, ``facts``;
  ``NAME:N`` picks N prompts (default :data:`DEFAULT_N`);
* a ``.txt`` file (one prompt per line, each line stripped of leading and trailing white space, as
  the study's scripts do; blank lines are skipped);
* a ``.jsonl`` / ``.json`` file (a list of records, or ``{"examples": [...]}`` /  ``{"data": [...]}``)
  with a text key auto-detected among :data:`TEXT_KEYS` (first match in that order), or ``text_key``;
* a ``.parquet`` file with such a column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftarena_cli.errors import DataError, InputNotFound, UsageError
from peftarena_cli.tasks import benchmarks

TEXT_KEYS = ("prompt", "input", "question", "query", "problem", "instruction", "text")
DEFAULT_N = 256
BUILTIN_LOCAL = benchmarks.names("target", builtin=True)  # generated here: the built-in target tasks' questions
BUILTIN_EVAL = (benchmarks.GENERAL_PROMPT_SET,) + benchmarks.builtin_parts()  # from the evaluation package


@dataclass
class PromptSet:
    name: str  # what the user typed (or a short label)
    prompts: list[str]
    source: str  # "builtin:arith", "file:/path"


def _builtin(name: str, n: int, seed: int) -> list[str]:
    if name in BUILTIN_LOCAL:
        from peftarena_cli.tasks.arith import generate

        return [r["question"] for r in generate("test", n, seed)]
    try:
        from peftarena_cli.evaluation import builtin_prompts  # planned by the evaluation engineer
    except ImportError:
        try:
            from peftarena_cli.evaluation.builtin import builtin_prompts  # type: ignore
        except ImportError:
            raise UsageError(
                f"built-in prompt set {name!r} is not available in this version",
                hint=f"use {' or '.join(f'`{b}`' for b in BUILTIN_LOCAL)} or pass a .txt/.jsonl/.json/.parquet prompt file",
            ) from None
    out = builtin_prompts(name, n, seed)
    return [p if isinstance(p, str) else str(p.get("prompt") or p.get("question") or p) for p in out]


def _pick_key(records: list, text_key: str | None, path: str) -> str:
    if not records:
        raise DataError(f"prompt file {path!r} holds no records", hint="give a file with at least one prompt")
    first = records[0]
    if not isinstance(first, dict):
        raise DataError(f"prompt file {path!r}: records are not JSON objects",
                        hint=f"each record needs a text field ({', '.join(TEXT_KEYS)})")
    if text_key is not None:
        if text_key not in first:
            raise DataError(f"prompt file {path!r} has no key {text_key!r} (keys: {', '.join(map(str, first))})",
                            hint="pass --text-key with one of the record's keys")
        return text_key
    for k in TEXT_KEYS:
        if k in first:
            return k
    raise DataError(f"prompt file {path!r}: no text key found among {', '.join(TEXT_KEYS)} "
                    f"(keys: {', '.join(map(str, first))})", hint="pass --text-key NAME")


def _texts(records, key: str, path: str) -> list[str]:
    out = []
    for i, r in enumerate(records):
        v = r.get(key) if isinstance(r, dict) else None
        if v is None:
            raise DataError(f"prompt file {path!r}: record {i} lacks {key!r}")
        out.append(str(v))
    return out


def read_prompt_file(path: Path, text_key: str | None = None) -> list[str]:
    from peftarena_cli.artifacts.textfiles import loads_bounded, read_utf8

    s = str(path)
    suf = path.suffix.lower()
    if suf == ".txt":
        # stripped per line (the study's scripts do the same: padded lines tokenise as the text)
        prompts = [ln.strip() for ln in read_utf8(path, "prompt file").splitlines()]
        prompts = [p for p in prompts if p]
    elif suf == ".jsonl":
        recs = []
        for i, ln in enumerate(read_utf8(path, "prompt file").splitlines()):
            if ln.strip():
                try:
                    recs.append(loads_bounded(ln, s, "prompt file", first_line=i + 1))
                except ValueError:
                    raise DataError(f"prompt file {s!r}: line {i + 1} is not JSON") from None
        prompts = _texts(recs, _pick_key(recs, text_key, s), s) if recs else []
    elif suf == ".json":
        try:
            data = loads_bounded(read_utf8(path, "prompt file"), s, "prompt file")
        except ValueError:
            raise DataError(f"prompt file {s!r} is not valid JSON") from None
        if isinstance(data, dict):
            for k in ("examples", "data", "prompts", "records"):
                if isinstance(data.get(k), list):
                    data = data[k]
                    break
        if not isinstance(data, list):
            raise DataError(f"prompt file {s!r}: expected a list of records (or {{\"examples\": [...]}})")
        if data and all(isinstance(x, str) for x in data):
            prompts = list(data)
        else:
            prompts = _texts(data, _pick_key(data, text_key, s), s) if data else []
    elif suf in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise DataError(f"prompt file {s!r} is not readable Parquet ({type(e).__name__})") from None
        cols = table.column_names
        key = text_key if text_key is not None else next((k for k in TEXT_KEYS if k in cols), None)
        if key is None or key not in cols:
            raise DataError(f"prompt file {s!r}: no text column {'(' + key + ')' if key else ''} among {', '.join(cols)}",
                            hint="pass --text-key NAME")
        prompts = [str(v) for v in table.column(key).to_pylist() if v is not None]
    else:
        raise DataError(f"unsupported prompt file type {suf!r} for {s!r}",
                        hint="use .txt (one prompt per line), .jsonl, .json or .parquet")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise DataError(f"prompt file {s!r} is empty", hint="give at least one non-empty prompt")
    return prompts


def load_prompts(spec: str, n: int | None = None, seed: int = 0, text_key: str | None = None) -> PromptSet:
    """Resolve a prompt-set spec (file or built-in name, optionally ``NAME:N``) to its prompts.

    ``n`` caps the number of prompts taken from a file (the first ``n``) and sets the count of a
    built-in suite (default :data:`DEFAULT_N`).
    """
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            raise DataError(f"prompt set {spec!r} is a directory", hint="pass a prompt file or a built-in name")
        prompts = read_prompt_file(p, text_key)
        if n is not None:
            prompts = prompts[:n]
        return PromptSet(p.stem, prompts, f"file:{p}")
    name, _, count = spec.partition(":")
    if name in BUILTIN_LOCAL + BUILTIN_EVAL:
        k = n if n is not None else DEFAULT_N
        if count:
            try:
                k = int(count)
            except ValueError:
                raise UsageError(f"bad prompt-set count in {spec!r}", hint=f"write NAME:N, e.g. {BUILTIN_LOCAL[0]}:{DEFAULT_N}") from None
        if k <= 0:
            raise UsageError(f"prompt-set size must be positive in {spec!r}")
        return PromptSet(name, _builtin(name, k, seed), f"builtin:{name}")
    if any(spec.endswith(s) for s in (".txt", ".json", ".jsonl", ".parquet")) or "/" in spec:
        raise InputNotFound(f"no such prompt file: {spec!r}")
    raise UsageError(f"unknown prompt set {spec!r}",
                     hint=f"pass a file or a built-in name: {', '.join(BUILTIN_LOCAL + BUILTIN_EVAL)}")


def shard_prompts(prompts: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Prompt i belongs to shard ``i mod N`` (1-based K: shard K/N takes i ≡ K-1 mod N)."""
    if shard is None:
        return prompts
    k, n = shard
    return prompts[k - 1::n]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"bad --shard {text!r}", hint="write K/N with 1 <= K <= N, e.g. 2/4") from None
    if not (1 <= k <= n):
        raise UsageError(f"bad --shard {text!r}: need 1 <= K <= N", hint="e.g. --shard 2/4")
    return k, n

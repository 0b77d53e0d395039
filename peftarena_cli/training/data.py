"""Training data for `peftarena finetune`: records for SFT (prompt/completion) and RLVR (prompt/answer).

Sources (``--data``):

* ``arith`` (default): the built-in arithmetic word problems, *train* split
  (:mod:`peftarena_cli.tasks.arith`; disjoint from the test split that evaluation uses);
  ``arith-1`` ... ``arith-3``: the same generator at an easier difficulty level;
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file, read here (UTF-8 JSON of bounded depth,
  :mod:`peftarena_cli.artifacts.textfiles`; Parquet with pyarrow), without ``datasets``;
* a local dataset directory or a hub dataset name (``openai/gsm8k`` with ``--data-config main``),
  both through ``datasets.load_dataset(name, config, split=...)`` with its download counter off;
  only a hub name touches the network.

Every prompt is rendered with :func:`peftarena_cli.tasks.prompting.render_prompt` (the model's
chat template when it has one), the same function evaluation uses, so train and eval see the same
format. Multiple-choice records (``choices``/``options`` or ``opa..opd`` columns) get their
options lettered A, B, ... in the prompt and a letter as the answer.

Output rows: ``prompt`` (rendered text), ``completion`` (SFT: the response) or ``answer`` (RLVR:
the reference), and ``kind`` (``math`` or ``choice``, which picks the reward's scorer).

Record formats (``data_format``): ``columns`` picks a prompt and a response/answer column by name (the
lists below, or the ``--*-column`` options); ``peft-arena`` reads the PEFT-Arena study's training files
(its OpenR1-Math and MedThink parquet files, the layout its verl trainers read): SFT takes
``extra_info.question`` as the user turn, as is, and ``extra_info.answer`` as the response, and drops a
record whose chat-rendered prompt plus response and EOS exceed ``max_length`` tokens (the study filters
overlong examples instead of truncating them); RLVR takes the ``prompt`` chat messages and
``reward_model.ground_truth``, and drops a prompt longer than the study's 1024 tokens. ``auto`` (the
default) reads a file in the study's layout as ``peft-arena`` and anything else as ``columns``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.errors import DataError, InputNotFound, UsageError
from peftarena_cli.tasks import benchmarks
from peftarena_cli.tasks.prompting import MATH_INSTRUCTION, render_prompt

BUILTIN = benchmarks.names("target", builtin=True)  # the built-in tasks, generated on their train split
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PROMPT_COLUMNS = ("prompt", "question", "problem", "input", "instruction", "query")
RESPONSE_COLUMNS = ("response", "completion", "solution", "output", "answer", "target")
ANSWER_COLUMNS = ("answer", "final_answer", "target", "label", "solution")
CHOICE_ANSWER_COLUMNS = ("answer_idx", "cop", "label", "answer", "target")
CHOICE_INSTRUCTION = "Answer with the letter of the correct option. End with: The answer is X."
LETTERS = "ABCDEFGHIJ"
DATA_FORMATS = ("auto", "columns", "peft-arena")
STUDY_FORMAT = "peft-arena"
# The study's RLVR prompt budget: train/train_rl.sh PROMPT_MAX_LENGTH="1024", passed as data.max_prompt_length
# with data.filter_overlong_prompts=True (its rl_dataset.py drops longer prompts).
STUDY_PROMPT_MAX_LENGTH = 1024
_HASH_FINAL = re.compile(r"\n?####\s*([^\n]+)\s*$")  # a solution's last line "#### N"


@dataclass
class TrainData:
    records: list[dict]
    source: dict = field(default_factory=dict)  # for the manifest

    def __len__(self) -> int:
        return len(self.records)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.records)


def _json_rows(p: Path, spec: str) -> list[dict]:
    """Records of a local ``.jsonl`` / ``.json`` file, read here rather than by ``datasets`` (whose
    loader pings the hub's download counter even for a local file, and whose JSON reader crashes on
    deeply nested input). JSONL: one object per line, blank lines skipped. JSON: a list of objects,
    ``{"data"|"examples"|"records"|"rows": [...]}``, a dict of equal-length columns, or JSON lines."""
    from peftarena_cli.artifacts.textfiles import loads_bounded, read_utf8

    text = read_utf8(p, "dataset file")
    name = str(spec)

    def bad(msg: str):
        return DataError(f"cannot read dataset {name!r}: {msg}",
                         hint="one JSON object per line for .jsonl; a list of objects for .json")

    def lines() -> list:
        out = []
        for i, ln in enumerate(text.splitlines(), 1):
            if not ln.strip():
                continue
            try:
                out.append((i, loads_bounded(ln, name, "dataset file", first_line=i)))
            except ValueError as e:
                raise bad(f"line {i} is not valid JSON ({str(e).splitlines()[0][:120]})") from None
        return out

    if p.suffix.lower() == ".jsonl":
        numbered = lines()
    else:
        try:
            data = loads_bounded(text, name, "dataset file")
        except ValueError:
            numbered = lines()  # JSON lines in a .json file, as `datasets` accepts them
        else:
            if isinstance(data, dict):
                inner = next((data[k] for k in ("data", "examples", "records", "rows") if isinstance(data.get(k), list)),
                             None)
                if inner is not None:
                    data = inner
                elif data and all(isinstance(v, list) for v in data.values()):
                    n = {len(v) for v in data.values()}
                    if len(n) != 1:
                        raise bad("its columns (a dict of lists) have different lengths")
                    data = [dict(zip(data, vals)) for vals in zip(*data.values())]
                else:
                    data = [data]
            if not isinstance(data, list):
                raise bad(f"expected a list of records, got a JSON {type(data).__name__}")
            numbered = [(None, r) for r in data]
    rows = []
    for i, (line, r) in enumerate(numbered):
        if not isinstance(r, dict):
            where = f"line {line}" if line is not None else f"record {i}"
            raise bad(f"{where} is a JSON {type(r).__name__}, not an object")
        rows.append(r)
    return rows


def _parquet_rows(p: Path, spec: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        raise DataError(f"cannot read dataset {spec!r}: not a readable Parquet file ({type(e).__name__})",
                        hint="pass a Parquet file, or .jsonl/.json") from None


def _same_columns(rows: list[dict]) -> list[dict]:
    """Every row with every column (None where a record lacks it), as a table read would give."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [r if len(r) == len(cols) else {c: r.get(c) for c in cols} for r in rows]


def _load_rows(spec: str, config: str | None, split: str) -> tuple[list[dict], dict]:
    """Rows (list of dicts) from a file, a dataset directory or a hub name. Local files are read
    here without ``datasets``; only a hub name reaches the network."""
    p = Path(spec).expanduser()
    looks_like_path = p.suffix.lower() in FILE_FORMATS or spec.startswith((".", "/", "~"))
    if looks_like_path and not p.exists():
        raise InputNotFound(f"no such dataset file: {spec!r}", hint=f"check the path, or use --data {benchmarks.DEFAULT_TRAIN}")
    if p.is_file():
        fmt = FILE_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise DataError(f"unsupported dataset file type {p.suffix!r} ({spec!r})",
                            hint="use .jsonl, .json or .parquet")
        if p.stat().st_size == 0:
            raise DataError(f"dataset file {spec!r} is empty", hint="pass a file with at least one record")
        rows = _json_rows(p, spec) if fmt == "json" else _parquet_rows(p, spec)
        rows = _same_columns(rows)
        source = {"kind": "file", "path": str(p.resolve()), "format": fmt}
    else:
        import datasets
        from datasets import load_dataset

        # the loader's download counter is a request to the hub for every load, local ones included
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        try:
            ds = load_dataset(str(p) if p.is_dir() else spec, config, split=split)
        except Exception as e:  # datasets raises many types for unreadable data
            first = str(e).splitlines()[0] if str(e) else ""
            raise DataError(f"cannot read dataset {spec!r}: {type(e).__name__}: {first[:200]}",
                            hint="check the dataset directory's files or the dataset name") from None
        source = {"kind": "dir" if p.is_dir() else "hub", "name": spec, "config": config, "split": split}
        rows = ds.to_list()
    if not rows:
        raise DataError(f"dataset {spec!r} has no records", hint="pass a dataset with at least one record")
    from peftarena_cli.artifacts.identity import path_identity

    if p.exists():
        source["identity"] = path_identity(p)
    return rows, source


def _pick(cols, explicit: str | None, candidates, what: str, spec: str, flag: str) -> str:
    if explicit:
        if explicit not in cols:
            raise DataError(f"dataset {spec!r} has no column {explicit!r} (columns: {', '.join(sorted(cols))})",
                            hint=f"pass an existing column to {flag}")
        return explicit
    for c in candidates:
        if c in cols:
            return c
    raise DataError(f"dataset {spec!r} lacks a {what} column (looked for {', '.join(candidates)}; "
                    f"has {', '.join(sorted(cols))})", hint=f"rename the column or pass {flag}")


def _choices(row: dict) -> list[str] | None:
    for key in ("choices", "options"):
        v = row.get(key)
        if isinstance(v, dict):
            return [str(v[k]) for k in sorted(v)]
        if isinstance(v, (list, tuple)) and v:
            return [str(x) for x in v]
    if all(k in row for k in ("opa", "opb")):
        return [str(row[k]) for k in ("opa", "opb", "opc", "opd", "ope") if row.get(k) is not None]
    return None


def _letter(value, options: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        return LETTERS[i] if 0 <= i < len(options) else None
    s = str(value).strip()
    if len(s) == 1 and s.upper() in LETTERS[: len(options)]:
        return s.upper()
    m = re.match(r"^\(?([A-J])[).:]?\s", s + " ")
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1)
    for i, o in enumerate(options):
        if s == o.strip():
            return LETTERS[i]
    return None


def _hash_final_response(text: str) -> str:
    """GSM8K-style solutions end in ``#### N``; rewrite that as "The answer is N." (the format eval extracts)."""
    m = _HASH_FINAL.search(text)
    if not m:
        return text
    return text[: m.start()].rstrip() + f"\nThe answer is {m.group(1).strip()}."


def is_builtin(spec: str) -> bool:
    """True for the built-in arithmetic task names (``arith``, ``arith-1`` ... ``arith-3``)."""
    from peftarena_cli.tasks.arith import is_task_name

    return is_task_name(spec)


def builtin_records(tokenizer, regime: str, n: int, seed: int, use_chat: bool = True,
                    name: str = benchmarks.DEFAULT_TRAIN) -> TrainData:
    """``n`` records of a built-in task (or one of its easier levels), generated on the train split."""
    from peftarena_cli.tasks.arith import generate, parse_task_name

    level = parse_task_name(name)
    recs = []
    for r in generate("train", n, seed, level=level):
        prompt = render_prompt(tokenizer, r["question"], MATH_INSTRUCTION, use_chat=use_chat)
        rec = {"prompt": prompt, "kind": "math"}
        if regime == "sft":
            rec["completion"] = r["solution"]
        else:
            rec["answer"] = r["answer"]
        recs.append(rec)
    src = {"kind": "builtin", "name": name, "split": "train", "n": n, "seed": seed}
    if level is not None:
        src["level"] = level
    return TrainData(recs, src)


def _study_messages(row: dict) -> list[dict] | None:
    """The chat messages of a study RLVR record (its ``prompt`` column), or None."""
    msgs = row.get("prompt")
    if isinstance(msgs, (list, tuple)) and msgs and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in msgs):
        return [{"role": str(m["role"]), "content": m["content"]} for m in msgs]
    return None


def is_study_layout(rows: list[dict], regime: str) -> bool:
    """True when the first record has the study's fields for ``regime``: ``extra_info`` holding
    ``question`` and ``answer`` (SFT); ``prompt`` chat messages and ``reward_model.ground_truth`` (RLVR)."""
    r = rows[0] if rows else {}
    if regime == "sft":
        info = r.get("extra_info")
        return isinstance(info, dict) and "question" in info and "answer" in info
    rm = r.get("reward_model")
    return _study_messages(r) is not None and isinstance(rm, dict) and "ground_truth" in rm


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def study_records(rows: list[dict], tokenizer, regime: str, use_chat: bool = True,
                  max_length: int | None = None) -> tuple[list[dict], int, int]:
    """Training records from rows in the study's layout: (records, records lacking a field, records
    dropped as overlong). SFT: the user turn is ``extra_info.question`` with no instruction added, the
    response ``extra_info.answer``; a record is dropped when the tokens of its rendered prompt plus
    those of response + EOS exceed ``max_length`` (PEFT-Arena train/peft_arena_verl/utils/dataset/
    sft_dataset.py, ``filter_overlong_examples``). RLVR: the ``prompt`` messages rendered with the chat
    template, the answer ``reward_model.ground_truth``; a prompt over 1024 tokens is dropped (rl_dataset.py,
    ``filter_overlong_prompts``). Both are scored as math (the study's shared_reward.py scores OpenR1 and
    MedThink with the same boxed-answer rule)."""
    from peftarena_cli.tasks.prompting import has_chat_template

    eos = getattr(tokenizer, "eos_token", None) or ""
    chat = use_chat and has_chat_template(tokenizer)
    recs, bad, overlong = [], 0, 0
    for row in rows:
        if regime == "sft":
            info = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
            q, t = info.get("question"), info.get("answer")
            if not isinstance(q, str) or not isinstance(t, str) or not q.strip() or not t.strip():
                bad += 1
                continue
            prompt = render_prompt(tokenizer, q, None, use_chat=use_chat)
            if max_length and _n_tokens(tokenizer, prompt) + _n_tokens(tokenizer, t + eos) > max_length:
                overlong += 1
                continue
            recs.append({"prompt": prompt, "completion": t, "kind": "math"})
            continue
        msgs = _study_messages(row)
        rm = row.get("reward_model")
        t = rm.get("ground_truth") if isinstance(rm, dict) else None
        if msgs is None or t is None or not str(t).strip():
            bad += 1
            continue
        if chat:
            prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            user = [m["content"] for m in msgs if m["role"] == "user"]
            prompt = render_prompt(tokenizer, user[-1] if user else msgs[-1]["content"], None, use_chat=False)
        if _n_tokens(tokenizer, prompt) > STUDY_PROMPT_MAX_LENGTH:
            overlong += 1
            continue
        recs.append({"prompt": prompt, "answer": str(t), "kind": "math"})
    return recs, bad, overlong


def load_train_data(spec: str, tokenizer, regime: str, n: int | None = None, seed: int = 0,
                    config: str | None = None, split: str = "train", prompt_column: str | None = None,
                    response_column: str | None = None, answer_column: str | None = None,
                    use_chat: bool = True, data_format: str = "auto", max_length: int | None = None) -> TrainData:
    """Records for ``regime`` ('sft' or 'rlvr') from ``spec``; ``n`` caps (file) or sets (arith) the count.
    ``data_format``: auto, columns or peft-arena (the module's docstring); ``max_length``: the SFT token
    budget the peft-arena format filters by."""
    if regime not in ("sft", "rlvr"):
        raise UsageError(f"unknown regime {regime!r}", hint="use sft or rlvr")
    if data_format not in DATA_FORMATS:
        raise UsageError(f"unknown data format {data_format!r}", hint=f"use one of: {', '.join(DATA_FORMATS)}")
    if is_builtin(spec):
        return builtin_records(tokenizer, regime, n or 1000, seed, use_chat=use_chat, name=spec)
    rows, source = _load_rows(spec, config, split)
    explicit = bool(prompt_column or response_column or answer_column)
    if data_format == STUDY_FORMAT or (data_format == "auto" and not explicit and is_study_layout(rows, regime)):
        if not is_study_layout(rows, regime):
            want = ("extra_info.question and extra_info.answer" if regime == "sft"
                    else "prompt (chat messages) and reward_model.ground_truth")
            raise DataError(f"dataset {spec!r} is not in the peft-arena layout: its first record lacks {want}",
                            hint="pass a file of the study's training data, or use the columns format")
        recs, bad, overlong = study_records(rows, tokenizer, regime, use_chat=use_chat,
                                            max_length=max_length if regime == "sft" else None)
        if not recs:
            raise DataError(f"dataset {spec!r}: none of its {len(rows)} records is usable in the peft-arena layout "
                            f"({overlong} over the length limit, {bad} lacking a field)",
                            hint="raise --max-length, or check the records' fields")
        if n:
            recs = recs[:n]
        source.update({"record_format": STUDY_FORMAT, "records": len(recs), "skipped": bad, "overlong_dropped": overlong,
                       "multiple_choice": False})
        return TrainData(recs, source)
    cols = set().union(*(r.keys() for r in rows[:50]))
    pcol = _pick(cols, prompt_column, PROMPT_COLUMNS, "prompt", spec, "--prompt-column")
    is_choice = _choices(rows[0]) is not None
    if regime == "sft":
        if is_choice and not response_column:
            tcol = _pick(cols, answer_column, CHOICE_ANSWER_COLUMNS, "answer", spec, "--answer-column")
        else:
            tcol = _pick(cols, response_column, RESPONSE_COLUMNS, "response", spec, "--response-column")
    else:
        cands = CHOICE_ANSWER_COLUMNS if is_choice else ANSWER_COLUMNS
        tcol = _pick(cols, answer_column, cands, "answer", spec, "--answer-column")
    recs, bad = [], 0
    for row in rows:
        q, t = row.get(pcol), row.get(tcol)
        if t is None and is_choice and not (answer_column or response_column):
            t = next((row[c] for c in CHOICE_ANSWER_COLUMNS if row.get(c) is not None), None)
        if q is None or t is None or (isinstance(q, str) and not q.strip()) or (isinstance(t, str) and not str(t).strip()):
            bad += 1
            continue
        opts = _choices(row) if is_choice else None
        if opts:
            letter = _letter(t, opts)
            question = str(q).rstrip() + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
            prompt = render_prompt(tokenizer, question, CHOICE_INSTRUCTION, use_chat=use_chat)
            if regime == "sft" and response_column:
                recs.append({"prompt": prompt, "completion": str(t), "kind": "choice"})
                continue
            if letter is None:
                bad += 1
                continue
            recs.append({"prompt": prompt, "kind": "choice",
                         **({"completion": f"The answer is {letter}."} if regime == "sft" else {"answer": letter})})
        else:
            prompt = render_prompt(tokenizer, str(q), MATH_INSTRUCTION, use_chat=use_chat)
            if regime == "sft":
                recs.append({"prompt": prompt, "completion": _hash_final_response(str(t)), "kind": "math"})
            else:
                recs.append({"prompt": prompt, "answer": str(t), "kind": "math"})
    if not recs:
        raise DataError(f"dataset {spec!r}: none of its {len(rows)} records has a usable {pcol!r}/{tcol!r} pair",
                        hint="check the columns' contents")
    if n:
        recs = recs[:n]
    source.update({"prompt_column": pcol, "target_column": tcol, "records": len(recs), "skipped": bad,
                   "multiple_choice": is_choice})
    return TrainData(recs, source)

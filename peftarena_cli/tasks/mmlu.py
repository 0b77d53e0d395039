"""MMLU's medical subsets (``mmlu_medical``): the records of the hub dataset ``cais/mmlu``
(``question``, ``subject``, ``choices``: 4 texts, ``answer``: the correct choice's index 0..3) kept
to the six subjects the medical literature groups as MMLU's medical part (MultiMedQA;
lm-evaluation-harness's ``multimedqa`` group), checked and put in a fixed order.

The items themselves are built by ``target_tasks`` like the other multiple-choice sets; this module
reads no other part of the package but the errors and the record reader, so the benchmark registry
and the loaders can both use it.
"""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.errors import DataError, InputNotFound
from peftarena_cli.tasks.sources import read_records, require_fields

# The six subjects, in the order items are listed (alphabetical, as lm-eval lists the group's tasks
# by name); lm-evaluation-harness 0.4.13 tasks/benchmarks/multimedqa/multimedqa.yaml names the same six.
SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
            "professional_medicine")
LETTERS = "ABCD"
# Files of a folder in the hub's layout that hold the test split (``<subject>/test-00000-of-00001.parquet``).
FOLDER_SUFFIXES = (".parquet", ".jsonl", ".json")


def description(subject: str) -> str:
    """lm-evaluation-harness's task description of one subject (tasks/mmlu/default/mmlu_SUBJECT.yaml):
    the subject's name with spaces for underscores."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def read_local(path) -> list[dict]:
    """Records of a local file, or of a folder's test files (every ``test*`` file with a suffix of
    :data:`FOLDER_SUFFIXES` below it, in path order: the hub's ``SUBJECT/test-*.parquet`` layout)."""
    p = Path(path)
    if not p.exists():
        raise InputNotFound(f"no such file or folder: {str(p)!r}", hint="pass an MMLU test file (cais/mmlu format) or its folder")
    if not p.is_dir():
        return read_records(p)
    files = sorted(f for f in p.rglob("test*") if f.is_file() and f.suffix in FOLDER_SUFFIXES)
    if not files:
        raise DataError(f"{str(p)!r} holds no test files (test*.parquet, test*.jsonl)",
                        hint="pass the folder of the hub's per-subject test files, or one file")
    return [r for f in files for r in read_records(f)]


def _answer_index(value, n: int, where: str) -> int:
    """The correct choice's index: an integer 0..n-1 (the hub's ClassLabel), or its letter."""
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n] and not value.strip().isdigit():
        return LETTERS.index(value.strip().upper())
    try:
        idx = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: answer {value!r} is neither an index 0..{n - 1} nor a letter",
                        hint="cais/mmlu's answer is the correct choice's index (0 = A)") from None
    if not 0 <= idx < n or float(value) != idx:
        raise DataError(f"{where}: answer {value!r} is outside 0..{n - 1}", hint="the answer indexes the 4 choices (0 = A)")
    return idx


def medical_records(recs: list[dict], path=None, limit: int | None = None) -> list[dict]:
    """The records of the six medical subjects, checked, in :data:`SUBJECTS` order (each subject's
    in file order), at most ``limit`` per subject; each as ``{subject, index, question, choices,
    answer}`` with ``index`` its position within its subject and ``answer`` a letter. Records of
    other subjects are left out (the hub's ``all`` configuration holds 57)."""
    where = f"mmlu_medical data{' ' + repr(str(path)) if path else ''}"
    require_fields(recs, ["question", "subject", "choices", "answer"], "mmlu_medical data", path)
    by_subject: dict = {s: [] for s in SUBJECTS}
    for i, r in enumerate(recs):
        subject = str(r.get("subject", "")).strip()
        if subject not in by_subject:
            continue
        choices = r.get("choices")
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__len__"):
            raise DataError(f"{where}, record {i}: choices is {type(choices).__name__}, not a list of 4 texts")
        choices = [str(c) for c in list(choices)]
        if len(choices) != 4:
            raise DataError(f"{where}, record {i}: {len(choices)} choices, MMLU has 4",
                            hint="each record's choices lists the 4 option texts")
        ans = _answer_index(r.get("answer"), 4, f"{where}, record {i}")
        by_subject[subject].append({"subject": subject, "index": len(by_subject[subject]), "question": str(r["question"]),
                                    "choices": choices, "answer": LETTERS[ans]})
    if not any(by_subject.values()):
        found = sorted({str(r.get("subject")) for r in recs})
        raise DataError(f"{where} holds none of the medical subjects ({', '.join(SUBJECTS)}); it has "
                        f"{', '.join(found[:6])}{' ...' if len(found) > 6 else ''}",
                        hint="pass cais/mmlu's test split (all subjects, or the six medical ones)")
    out = []
    for s in SUBJECTS:
        out += by_subject[s][: None if limit is None else int(limit)]
    return out

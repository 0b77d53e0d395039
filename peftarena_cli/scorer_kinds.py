"""Scorer kinds: one object per kind of scoring, which every layer that scores, summarises or
compares per-sample rows dispatches on (docs/eval.md, "Scorer kinds"; docs/design.md, "How to add").

A :class:`ScorerKind` holds

* its **scorers**: the scorer names a task may carry (``KIND`` for a built-in suite,
  ``KIND:PROTOCOL`` or ``ALIAS:PROTOCOL`` under a protocol), each with its scoring function;
* how it **summarises** (``summary``): ``samples`` (avg@n, pass@k, maj@k, strict/flexible accuracy
  over every sample), ``instructions`` (IFEval's prompt- and instruction-level accuracies),
  ``subtasks`` (accuracy per subtask and their mean), ``exact_match`` (one binary score per item);
  the interval estimator of each summary row follows from it (evaluation/intervals.py);
* its **strata** for paired comparisons (``strata``, read by :mod:`peftarena_cli.stats`):
  ``item_mean`` (each item's mean over its samples), ``instruction_clusters`` (followed /
  given instructions per prompt, a ratio with instructions clustered in prompts), ``subtasks``
  (one binary stratum per subtask), ``first_sample`` (the first sample's binary score per item);
* its **primary** metric and whether it is a **general** (stability) part or a target task.

This module imports nothing of the package, so that :mod:`peftarena_cli.stats` (below
``evaluation``) can read it. For the same reason a scoring function is named, like lm-evaluation-
harness's ``!function`` entries, as ``"MODULE:FUNCTION"`` inside ``peftarena_cli.evaluation.scorers``
and resolved at first use by :mod:`peftarena_cli.evaluation.scoring`; a callable works too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

SUMMARIES = ("samples", "instructions", "subtasks", "exact_match")
STRATA = ("item_mean", "instruction_clusters", "subtasks", "first_sample")
# How a scoring function takes an item (its arguments after the completion):
# text: str(reference); list: list(reference); options: str(reference), meta["options"];
# subtask: str(reference), str(meta["subtask"]); instructions: meta["instruction_id_list"], meta["kwargs"];
# item: the reference and the item's whole meta dict.
ARGS = ("text", "list", "options", "subtask", "instructions", "item")


@dataclass(frozen=True)
class Scorer:
    """One scoring function of a kind: ``fn`` ("MODULE:FUNCTION" in evaluation/scorers, or a
    callable), the way it takes an item (``args``, one of :data:`ARGS`) and, for a ``subtasks``
    summary, whether the task score is the mean over all items (``weight_by_size``) rather than
    over subtasks."""

    fn: Union[str, Callable]
    args: str = "text"
    weight_by_size: bool = False


@dataclass(frozen=True)
class ScorerKind:
    name: str
    summary: str                          # one of SUMMARIES
    strata: str                           # one of STRATA
    primary: str                          # the summary metric of the task's score ("avg@n": avg@<n>)
    general: bool                         # a general (stability) part, else a target task
    scorers: dict = field(default_factory=dict)   # scorer name -> Scorer
    aliases: tuple[str, ...] = ()         # other prefixes of this kind's protocol scorers ("gsm8k:lm-eval")

    def __post_init__(self):
        if self.summary not in SUMMARIES:
            raise ValueError(f"scorer kind {self.name!r}: summary {self.summary!r} is not one of {SUMMARIES}")
        if self.strata not in STRATA:
            raise ValueError(f"scorer kind {self.name!r}: strata {self.strata!r} is not one of {STRATA}")
        for s in self.scorers.values():
            if s.args not in ARGS:
                raise ValueError(f"scorer kind {self.name!r}: args {s.args!r} is not one of {ARGS}")


KINDS: dict[str, ScorerKind] = {}


def register_kind(kind: ScorerKind, replace: bool = False) -> ScorerKind:
    """Add a scorer kind (``replace``: overwrite one of the same name). Its scorer names and aliases
    must not belong to another kind."""
    if kind.name in KINDS and not replace:
        raise ValueError(f"scorer kind {kind.name!r} exists")
    for other in KINDS.values():
        if other.name == kind.name:
            continue
        clash = (set(kind.scorers) & set(other.scorers)) | ({kind.name, *kind.aliases} & {other.name, *other.aliases})
        if clash:
            raise ValueError(f"scorer kind {kind.name!r} reuses {sorted(clash)} of kind {other.name!r}")
    KINDS[kind.name] = kind
    return kind


def kind_of(scorer: str) -> ScorerKind:
    """The kind a scorer name belongs to: the kind that lists it, else the kind named by its prefix
    (``KIND:...`` or an alias). Unknown scorers raise ValueError."""
    for k in KINDS.values():
        if scorer in k.scorers:
            return k
    prefix = str(scorer).split(":", 1)[0]
    for k in KINDS.values():
        if prefix == k.name or prefix in k.aliases:
            return k
    raise ValueError(f"unknown scorer {scorer!r}")


def scorer_of(scorer: str) -> Scorer:
    """The :class:`Scorer` entry of a scorer name (ValueError when no kind lists it)."""
    k = kind_of(scorer)
    if scorer not in k.scorers:
        raise ValueError(f"unknown scorer {scorer!r}")
    return k.scorers[scorer]


def general_kinds() -> tuple[str, ...]:
    """Names of the kinds that score general (stability) parts."""
    return tuple(k.name for k in KINDS.values() if k.general)


# --- the built-in kinds ----------------------------------------------------------------------------
register_kind(ScorerKind(
    "math", summary="samples", strata="item_mean", primary="avg@n", general=False, aliases=("gsm8k", "minerva"),
    scorers={"math": Scorer("math:score_math"),
             "math:study": Scorer("math_study:score_math_study"),
             "gsm8k:lm-eval": Scorer("math_lmeval:score_gsm8k_lmeval"),
             "minerva:lm-eval": Scorer("math_lmeval:score_minerva_lmeval")}))
register_kind(ScorerKind(
    "choice", summary="samples", strata="item_mean", primary="avg@n", general=False,
    scorers={"choice": Scorer("choice:score_choice", "options"),
             "choice:study": Scorer("choice_study:score_choice_study", "options"),
             "choice:lm-eval": Scorer("choice:score_choice_loglik", "options")}))
register_kind(ScorerKind(
    "ifeval", summary="instructions", strata="instruction_clusters", primary="inst_strict", general=True,
    scorers={"ifeval": Scorer("ifeval:score_ifeval", "instructions")}))
register_kind(ScorerKind(
    "bbh", summary="subtasks", strata="subtasks", primary="accuracy", general=True,
    scorers={"bbh": Scorer("bbh:score_bbh"),
             "bbh:study": Scorer("bbh:score_bbh_study", "subtask"),
             "bbh:lm-eval": Scorer("bbh:score_bbh_lmeval", weight_by_size=True)}))
register_kind(ScorerKind(
    "nq", summary="exact_match", strata="first_sample", primary="exact_match", general=True,
    scorers={"nq": Scorer("nq:score_nq", "list"),
             "nq:study": Scorer("nq:score_nq_study", "list"),
             "nq:lm-eval": Scorer("nq:score_nq_lmeval", "list")}))
register_kind(ScorerKind(
    "facts", summary="exact_match", strata="first_sample", primary="exact_match", general=True,
    scorers={"facts": Scorer("nq:score_facts", "list")}))

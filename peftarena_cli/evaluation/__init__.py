"""Evaluation: the batched generation engine (``engine``), scorers (``scorers/``), aggregate
metrics (``metrics``), per-sample scoring (``scoring``) and the public API (``api``)."""

from peftarena_cli.evaluation.api import builtin_prompts, evaluate_general, evaluate_target  # noqa: F401

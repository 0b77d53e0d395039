"""The one generation-backend interface: what every way of producing completions implements.

* :class:`Generation` — completions in input order plus their token counts and timing;
* :class:`GenerationBackend` — ``generate(tokenizer, prompts, ...) -> Generation``; the built-in
  batched engine (:class:`~peftarena_cli.evaluation.engine.HfBackend`) and the optional vLLM engine
  (:class:`~peftarena_cli.evaluation.vllm_backend.VllmModel`) and the served-model client
  (:class:`~peftarena_cli.evaluation.openai_backend.OpenAIBackend`) implement it;
* :func:`encode_prompts` and :func:`first_stop` — the prompt encoding and stop-sequence cut that
  every backend shares, so they all see the same tokens and cut the same way.

:func:`peftarena_cli.evaluation.engine.generate` takes a model *or* a backend: a backend generates on
its own, a plain (PEFT) model goes through the built-in engine. This module imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Generation:
    """Completions in input order: ``texts[i][s]`` is sample ``s`` of prompt ``i``."""

    texts: list[list[str]]
    n_tokens: list[list[int]]            # generated tokens per completion (up to the stop)
    seconds: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0            # tokens actually decoded (greedy samples are computed once)
    extra: dict = field(default_factory=dict)
    token_ids: list[list[list[int]]] = field(default_factory=list)  # generated ids, a final EOS included

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


class GenerationBackend:
    """A way of generating completions. Subclasses implement :meth:`generate`; greedy decoding
    (``temperature`` 0 or None) computes one completion per prompt and repeats it ``n_samples``
    times; completions are cut before the first stop sequence (:func:`first_stop`)."""

    name = "backend"

    def generate(self, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(),
                 temperature: float = 0.0, top_p: float = 1.0, n_samples: int = 1, seed: int = 0,
                 batch_size: int | None = None, progress=None, label: str = "", **options) -> Generation:
        raise NotImplementedError

    def choice_logliks(self, tokenizer, contexts: list[str], choices: list[list[str]], progress=None,
                       label: str = ""):
        """Log-likelihoods of multiple-choice continuations (``out[i][j]``, token counts), for the
        tasks scored by log-likelihood; a backend that cannot compute them refuses the task."""
        from peftarena_cli.errors import UnsupportedMethod

        raise UnsupportedMethod(f"{label or 'this task'} scores multiple choice by log-likelihood, which the "
                                f"{self.name} backend does not compute",
                                hint="evaluate this task with --backend hf (the local engine)")


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt. A BOS is added only when the tokenizer adds one and the text
    (e.g. from a chat template) does not already start with it."""
    bos = tokenizer.bos_token
    out = []
    for p in prompts:
        add = not (bos and p.startswith(bos))
        out.append(tokenizer(p, add_special_tokens=add)["input_ids"])
    return out


def first_stop(text: str, stop: tuple[str, ...]) -> int:
    """Index of the earliest stop sequence in ``text``, or -1."""
    cut = -1
    for s in stop:
        j = text.find(s)
        if j >= 0 and (cut < 0 or j < cut):
            cut = j
    return cut

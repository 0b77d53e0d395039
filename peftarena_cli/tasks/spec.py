"""What an evaluation task is: items (id, prompt, reference, metadata), a prompt format, generation
settings and the name of its scorer. Loaders in ``target_tasks``/``general_tasks``/``builtin_general``
build these; ``peftarena_cli.evaluation`` runs and scores them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SCORERS = ("math", "choice", "ifeval", "bbh", "nq", "facts")


@dataclass
class Item:
    id: str
    prompt: str                 # the user message (chat tasks) or the full raw prompt (raw tasks)
    reference: object           # str, or a list of str (NQ-open), or None (IFEval)
    meta: dict = field(default_factory=dict)


@dataclass
class Task:
    name: str
    items: list[Item]
    scorer: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    chat: bool = True           # render through the tokenizer's chat template (when it has one)
    subtask_key: str | None = None   # meta key holding the subtask (BBH), averaged per subtask
    system: str | None = None   # system message of the chat template
    n_samples: int = 1          # samples per item, and their temperature (0 = greedy)
    temperature: float = 0.0
    protocol: str = "builtin@1"  # the protocol that set these values (evaluation/protocols.py)
    overrides: str = ""         # explicit overrides of the protocol's values, "key=value,..."
    raw: bool = False           # items hold a benchmark's raw fields (meta["fields"]): apply a protocol first
    fewshot: dict = field(default_factory=dict)  # subtask -> few-shot block (BBH's published CoT prompts)
    loglik: str | None = None   # scored by log-likelihood of each choice ("options" texts or "letters"), not generated

    def render(self, tokenizer, item: Item) -> str:
        """The text the model continues: the chat template around the prompt (with the system
        message) when the task uses it and the tokenizer has one. Without a chat template, a
        benchmark protocol's prompt goes in as it is (as the references do for base models); the
        built-in tasks use the "Question: ...\nAnswer:" form that training uses too."""
        if not self.chat:
            return item.prompt
        from peftarena_cli.tasks.prompting import render_prompt

        if self.protocol.startswith("builtin") or getattr(tokenizer, "chat_template", None):
            return render_prompt(tokenizer, item.prompt, instruction=None, use_chat=True, system=self.system)
        return item.prompt

    def limited(self, limit: int | None) -> "Task":
        if limit is None:
            return self
        if self.subtask_key:  # keep every subtask: the first `limit` items of each
            seen: dict = {}
            items = []
            for it in self.items:
                k = it.meta.get(self.subtask_key)
                if seen.get(k, 0) < limit:
                    items.append(it)
                    seen[k] = seen.get(k, 0) + 1
        else:
            items = self.items[:limit]
        return replace(self, items=items)

"""What an evaluation task is: items (id, prompt, reference, metadata), a prompt format, generation
settings and the name of its scorer. Loaders in ``target_tasks``/``general_tasks``/``builtin_general``
build these; ``peftarena_cli.evaluation`` runs and scores them."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    chat: bool = True           # render through the tokenizer's chat template
    subtask_key: str | None = None   # meta key holding the subtask (BBH), averaged per subtask

    def render(self, tokenizer, item: Item) -> str:
        if self.chat:
            from peftarena_cli.tasks.prompting import render_prompt

            return render_prompt(tokenizer, item.prompt, instruction=None, use_chat=True)
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
        return Task(self.name, items, self.scorer, self.max_new_tokens, self.stop, self.chat, self.subtask_key)

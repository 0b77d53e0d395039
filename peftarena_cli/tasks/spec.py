"""What an evaluation task is: items (id, prompt, reference, metadata), a prompt format, generation
settings and the name of its scorer. Loaders in ``target_tasks``/``general_tasks``/``builtin_general``
build these; ``peftarena_cli.evaluation`` runs and scores them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    chat_by_name: bool = False  # ... only for an instruct model by the study's name rule (tasks/prompting.py)
    subtask_key: str | None = None   # meta key holding the subtask (BBH), averaged per subtask
    system: str | None = None   # system message of the chat template
    n_samples: int = 1          # samples per item, and their temperature (0 = greedy)
    temperature: float = 0.0
    protocol: str = "builtin@1"  # the protocol that set these values (evaluation/protocols.py)
    overrides: str = ""         # explicit overrides of the protocol's values, "key=value,..."
    raw: bool = False           # items hold a benchmark's raw fields (meta["fields"]): apply a protocol first
    fewshot: dict = field(default_factory=dict)  # subtask -> few-shot block (BBH's published CoT prompts)
    loglik: str | None = None   # scored by log-likelihood of each choice ("options" texts or "letters"), not generated
    chat_template: bool | None = None  # decided for the model (tasks/prompting.py decide_chat_template); None: by ``chat``
    chat_rule: str = ""         # the rule that decided ``chat_template``
    prompt_type: str = ""       # the study's math prompt type of the items (tasks/math_prompts.py); "" where none applies
    prompt_rule: str = ""       # the rule that decided ``prompt_type`` for the model

    def render(self, tokenizer, item: Item) -> str:
        """The text the model continues. With the chat template (``chat_template`` as decided for
        the model, or, undecided, ``chat`` and the tokenizer having one): the template around the
        prompt, with the system message. Without it: a benchmark protocol's prompt goes in as it is
        (as the references do for base models); the built-in tasks that use the template otherwise
        take the "Question: ...\nAnswer:" form that training uses too."""
        from peftarena_cli.tasks.prompting import has_chat_template, render_prompt

        use = self.chat_template
        if use is None:
            use = bool(self.chat) and has_chat_template(tokenizer)
        if use:
            return render_prompt(tokenizer, item.prompt, instruction=None, use_chat=True, system=self.system)
        if self.chat and self.protocol.startswith("builtin"):
            return render_prompt(tokenizer, item.prompt, instruction=None, use_chat=False)
        return item.prompt

    def for_model(self, mode: str, tokenizer, names=(), prompt_type: str = "auto") -> "Task":
        """This task with its chat-template use decided for one model (``mode``: auto, on, off;
        ``names``: the model's names, :func:`peftarena_cli.tasks.prompting.model_names`), after its
        math prompt type (``prompt_type``: auto, boxed or a type's name; only a task that has one,
        :func:`peftarena_cli.tasks.math_prompts.for_model`)."""
        from peftarena_cli.tasks.math_prompts import for_model as with_prompt_type
        from peftarena_cli.tasks.prompting import BY_NAME, decide_chat_template, has_chat_template

        task = with_prompt_type(self, prompt_type, names)
        setting = BY_NAME if task.chat and task.chat_by_name else task.chat
        use, why = decide_chat_template(mode, setting, task.protocol, has_chat_template(tokenizer), names)
        return replace(task, chat_template=use, chat_rule=why)

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

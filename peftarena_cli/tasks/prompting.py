"""Prompt rendering shared by training and evaluation, so both see the same format."""

from __future__ import annotations

MATH_INSTRUCTION = "Solve the problem step by step. End with: The answer is N."


def user_message(question: str, instruction: str | None = MATH_INSTRUCTION) -> str:
    return f"{question}\n{instruction}" if instruction else question


def render_prompt(tokenizer, question: str, instruction: str | None = MATH_INSTRUCTION,
                  use_chat: bool = True, system: str | None = None) -> str:
    """The text the model sees before its completion (chat template when the tokenizer has one)."""
    msg = user_message(question, instruction)
    if use_chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": msg}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {msg}\nAnswer:"

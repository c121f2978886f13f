"""Prompt rendering: one function turns (task, item, style) into the exact text every variant sees."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from evaluate.tasks.base import Item, TaskSpec

PromptStyle = Literal["direct", "cot"]
PROMPT_STYLES: tuple[str, ...] = ("direct", "cot")
COT_TRIGGER = "Let's think step by step."


@dataclass(frozen=True)
class PromptConfig:
    style: PromptStyle = "direct"
    k_shot: int = 0
    definition: bool = False
    chat_template: bool = False  # resolved: a recipe's "auto" becomes True when the tokenizer has a template

    @property
    def free_form(self) -> bool:
        """Chain of thought or a chat turn: the model chooses its answer's length and layout."""
        return self.style == "cot" or self.chat_template


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_chat_template(setting: bool | str, tokenizer: Any) -> bool:
    """`auto`: on when the tokenizer has a chat template (instruct models), off otherwise (base models)."""
    return has_chat_template(tokenizer) if setting == "auto" else bool(setting)


def decoding_for(task: TaskSpec, config: PromptConfig) -> tuple[tuple[str, ...], int]:
    """(stop strings, max_new_tokens) a prompt style needs. A stop string may only end an answer, never cut
    one: plain direct prompts ask for the answer on one line and stop at the task's `stop` (a newline);
    chain-of-thought and chat prompts stop at EOS / the end-of-turn token (always on) or at the start of a
    new exemplar, as lm-evaluation-harness's gsm8k does ("Question:"), with a budget for real reasoning."""
    if not config.free_form:
        return task.stop, task.max_new_tokens
    return ((task.item_marker,) if task.item_marker else ()), max(task.max_new_tokens_free, task.max_new_tokens)


def _answer_text(item: Item, style: PromptStyle) -> str:
    """A worked solution for chain-of-thought exemplars, the bare answer for direct ones."""
    if style == "cot" and item.target:
        return item.target
    return item.gold


def render_prompt(
    task: TaskSpec, item: Item, config: PromptConfig, exemplars: list[Item] | None = None
) -> str:
    if task.render is not None:  # the task owns its layout (e.g. SNI's study prompt)
        return task.render(item, config, list(exemplars or []))
    parts: list[str] = []
    if config.definition and task.definition:
        parts.append(task.definition + "\n\n")
    for ex in exemplars or []:
        parts.append(f"{ex.question}\nAnswer: {_answer_text(ex, config.style)}\n\n")
    tail = f"{item.question}\nAnswer:"
    if config.style == "cot" and config.k_shot == 0:
        tail += f" {COT_TRIGGER}"
    parts.append(tail)
    return "".join(parts)


def apply_chat_template(tokenizer: Any, prompt: str) -> str:
    """Wrap a plain prompt as one user turn of the model's own chat template."""
    if not has_chat_template(tokenizer):
        raise ValueError(
            "prompt chat_template: true, but the tokenizer has no chat_template; "
            "set chat_template: false for this model"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def pick_exemplars(pool: list[Item], k: int, seed: int, exclude_ids: set[str]) -> list[Item]:
    """Fixed, seeded exemplars shared by every item of a task so every variant sees the same shots."""
    candidates = [it for it in pool if it.id not in exclude_ids]
    if k > len(candidates):
        raise ValueError(f"k_shot={k} but only {len(candidates)} exemplars are available")
    return random.Random(seed).sample(candidates, k)

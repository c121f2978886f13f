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
    chat_template: bool = False


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
    if not getattr(tokenizer, "chat_template", None):
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

"""Judging one output against its item: parse by the task's answer type, then compare."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from evaluate.parsing import (
    NO_ANSWER,
    Parsed,
    math_equal,
    numbers_equal,
    parse_int_list,
    parse_letter,
    parse_math,
    parse_number,
)
from evaluate.tasks.base import Item, TaskSpec


@dataclass(frozen=True)
class Scored:
    parsed: str | None
    rule: str
    followed: bool
    correct: bool
    score: float  # 1.0/0.0 for exact tasks; a similarity for text tasks

    def as_dict(self) -> dict:
        return asdict(self)


def parse_for(task: TaskSpec, item: Item, output: str) -> Parsed:
    if task.answer_type == "number":
        return parse_number(output)
    if task.answer_type == "list":
        return parse_int_list(output, expected_len=len(item.gold.split(",")))
    if task.answer_type == "letter":
        return parse_letter(output, item.choices)
    if task.answer_type == "math":
        return parse_math(output)
    return Parsed(output.strip(), "text", bool(output.strip()))


def score_output(task: TaskSpec, item: Item, output: str) -> Scored:
    parsed = parse_for(task, item, output)
    if task.answer_type == "number":
        correct = numbers_equal(parsed.answer, item.gold) or (item.gold == NO_ANSWER == parsed.answer)
    elif task.answer_type == "math":
        correct = math_equal(parsed.answer, item.gold)
    elif task.answer_type == "text":
        correct = parsed.answer is not None and parsed.answer.strip() == item.gold.strip()
    else:
        correct = parsed.answer is not None and parsed.answer == item.gold.strip()
    return Scored(parsed.answer, parsed.rule, parsed.followed, correct, float(correct))

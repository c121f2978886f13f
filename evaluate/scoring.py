"""Judging outputs: one registered Scorer per answer type (how an answer is read from an output and compared
with the gold, as lm-eval's filters and metrics are registered), and scorers for metrics that need a model
(BERTScore recall). A task names its answer type and its metric; a new answer type is one registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from evaluate import bertscore
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
from evaluate.registry import Registry
from evaluate.tasks.base import Item, TaskSpec

BatchScore = Callable[[list[str], list[Item]], list[float]]  # (outputs, items) -> a score per output


@dataclass(frozen=True)
class Scored:
    parsed: str | None
    rule: str
    followed: bool
    correct: bool
    score: float  # 1.0/0.0 for exact tasks; a similarity for text tasks

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scorer:
    name: str
    parse: Callable[[str, Item], Parsed] | None = None  # answer types: read the answer from an output
    correct: Callable[[str | None, Item], bool] | None = None  # answer types: the parsed answer against the gold
    batch: Callable[[TaskSpec], BatchScore] | None = None  # metrics: a scorer for a whole cell (loads its model)


SCORERS: Registry[Scorer] = Registry("scorer")


def register_scorer(scorer: Scorer) -> Scorer:
    return SCORERS.register(scorer.name, scorer)


def score_output(task: TaskSpec, item: Item, output: str) -> Scored:
    scorer = SCORERS[task.scorer or task.answer_type]
    parsed = scorer.parse(output, item)
    correct = scorer.correct(parsed.answer, item)
    return Scored(parsed.answer, parsed.rule, parsed.followed, correct, float(correct))


def batch_scorer_for(task: TaskSpec) -> BatchScore | None:
    """The cell-level scorer of a task whose metric needs a model (BERTScore); None for exact tasks."""
    scorer = SCORERS.get(task.metric) if task.metric in SCORERS else None
    return scorer.batch(task) if scorer is not None and scorer.batch is not None else None


def _same_text(answer: str | None, item: Item) -> bool:
    return answer is not None and answer.strip() == item.gold.strip()


register_scorer(Scorer("number", lambda out, item: parse_number(out),
                       lambda answer, item: numbers_equal(answer, item.gold) or item.gold == NO_ANSWER == answer))
register_scorer(Scorer("list", lambda out, item: parse_int_list(out, expected_len=len(item.gold.split(","))),
                       lambda answer, item: answer is not None and answer == item.gold.strip()))
register_scorer(Scorer("letter", lambda out, item: parse_letter(out, item.choices),
                       lambda answer, item: answer is not None and answer == item.gold.strip()))
register_scorer(Scorer("math", lambda out, item: parse_math(out), lambda answer, item: math_equal(answer, item.gold)))
register_scorer(Scorer("text", lambda out, item: Parsed(out.strip(), "text", bool(out.strip())), _same_text))


def _bertscore_recall(task: TaskSpec) -> BatchScore:
    """Recall in [0, 1] against each item's gold (SNI: the first reference), so a cell's accuracy is the
    mean recall x100. The encoder loads here, before any generation, so a missing model fails early."""
    bertscore.get_scorer()

    def score(outputs: list[str], items: list[Item]) -> list[float]:
        return bertscore.recall(outputs, [it.gold for it in items])

    return score


register_scorer(Scorer("bertscore_recall", batch=_bertscore_recall))

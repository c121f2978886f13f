"""Batch scorers for tasks whose metric needs a model (BERTScore); exact tasks score per sample."""

from __future__ import annotations

from collections.abc import Callable

from evaluate.tasks.base import Item, TaskSpec

BATCH_SCORERS: dict[str, Callable[[TaskSpec], Callable[[list[str], list[Item]], list[float]]]] = {}


def batch_scorer_for(task: TaskSpec) -> Callable[[list[str], list[Item]], list[float]] | None:
    factory = BATCH_SCORERS.get(task.metric)
    return factory(task) if factory else None

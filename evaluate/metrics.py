"""Batch scorers for tasks whose metric needs a model (BERTScore); exact tasks score per sample."""

from __future__ import annotations

from collections.abc import Callable

from evaluate.tasks.base import Item, TaskSpec

BATCH_SCORERS: dict[str, Callable[[TaskSpec], Callable[[list[str], list[Item]], list[float]]]] = {}


def batch_scorer_for(task: TaskSpec) -> Callable[[list[str], list[Item]], list[float]] | None:
    factory = BATCH_SCORERS.get(task.metric)
    return factory(task) if factory else None


def _bertscore_recall(task: TaskSpec) -> Callable[[list[str], list[Item]], list[float]]:
    """Recall in [0, 1] against each item's gold (SNI: the first reference), so a cell's accuracy is the
    mean recall x100. The encoder loads here, before any generation, so a missing model fails early."""
    from evaluate import bertscore

    bertscore.get_scorer()

    def score(outputs: list[str], items: list[Item]) -> list[float]:
        return bertscore.recall(outputs, [it.gold for it in items])

    return score


BATCH_SCORERS["bertscore_recall"] = _bertscore_recall

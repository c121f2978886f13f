"""Executors: who runs the study's baseline and variants. The local executor runs them one after another in
this process; compress/ray_executor.py runs each as a Ray task (`compress run --executor ray`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the runner imports this module; these names are for type checkers only
    from compress.recipe import Recipe
    from compress.runner import Cell, Study


class ExecutorError(RuntimeError):
    """Bad input for an executor (an unreachable cluster, resources no node has), raised before heavy work."""


class Executor(Protocol):
    name: str

    def connect(self, recipe: Recipe) -> None:
        """Reach the machines and check the recipe's resources, before any heavy work (errors name the fix)."""

    def run(self, study: Study, tokenizer: Any, cells: list[Cell]) -> None:
        """The baseline, then every variant; everything finished lands in study.ledger."""

    def close(self) -> None: ...


class LocalExecutor:
    """In this process, one model at a time: evaluation then profiling for each (the default)."""

    name = "local"

    def connect(self, recipe: Recipe) -> None:
        return None

    def run(self, study: Study, tokenizer: Any, cells: list[Cell]) -> None:
        study.run_baseline(tokenizer, cells)
        for position, variant in enumerate(study.recipe.variants, start=1):
            study.run_variant(position, variant.name, variant.steps, tokenizer, cells)

    def close(self) -> None:
        return None

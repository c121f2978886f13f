"""Task registry: one file per task (or family) registers its TaskSpec when imported."""

from __future__ import annotations

from evaluate.registry import Registry
from evaluate.tasks.base import TASKS, Item, TaskSpec, register_task


def load_builtin_tasks() -> Registry[TaskSpec]:
    """Import every task module (each registers itself)."""
    return TASKS.load_builtins()


__all__ = ["TASKS", "Item", "TaskSpec", "load_builtin_tasks", "register_task"]

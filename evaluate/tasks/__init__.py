"""Task registry: importing this package registers every built-in task."""

from __future__ import annotations

import importlib
import pkgutil

from evaluate.tasks.base import TASKS, Item, TaskSpec, register_task


def load_builtin_tasks() -> dict[str, TaskSpec]:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    return TASKS


__all__ = ["TASKS", "Item", "TaskSpec", "load_builtin_tasks", "register_task"]

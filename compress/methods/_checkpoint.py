"""Shared by methods that quantize while loading (bitsandbytes, ...): they need the current
weights as a dense checkpoint on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.registry import StepContext


def dense_checkpoint(model: Any, ctx: StepContext) -> Path:
    """The FP source when no earlier step changed the model; otherwise the current weights, saved."""
    if ctx.extras.get("pristine", False):
        return ctx.source_dir
    path = ctx.workdir / "dense-input"
    model.save_pretrained(path)
    ctx.tokenizer.save_pretrained(path)
    return path

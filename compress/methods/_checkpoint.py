"""Shared by methods that quantize while transformers loads (bitsandbytes, torchao): they need the current
weights as a dense checkpoint on disk, loaded back through their quantization config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.registry import StepContext
from evaluate.models import load_model


def dense_checkpoint(model: Any, ctx: StepContext) -> Path:
    """The FP source when no earlier step changed the model; otherwise the current weights, saved."""
    if ctx.pristine:
        return ctx.source_dir
    path = ctx.workdir / "dense-input"
    model.save_pretrained(path)
    ctx.tokenizer.save_pretrained(path)
    return path


def reload_quantized(model: Any, ctx: StepContext, config: Any) -> Any:
    """Write the current weights as a dense checkpoint and load them back through `config` (a transformers
    quantization config: BitsAndBytesConfig, TorchAoConfig, ...), which quantizes while loading."""
    source = dense_checkpoint(model, ctx)
    return load_model(str(source), ctx.dtype, ctx.device, ctx.trust_remote_code, quantization_config=config)

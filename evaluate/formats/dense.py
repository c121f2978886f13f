"""Plain PyTorch weights (what transformers' from_pretrained gives for an unquantized checkpoint)."""

from __future__ import annotations

from typing import Any

from evaluate.formats import ModelFormat, register_format

register_format(ModelFormat(
    name="dense",
    description="PyTorch dense weights (float32 / bfloat16 / float16), saved with save_pretrained",
    layer_kind=lambda module: None,  # the fallback: "PyTorch dense <dtype>" when no format claims a layer
    held_packed=False,
))


def dense_kind(model: Any) -> str:
    dtype = next(model.parameters()).dtype
    return f"PyTorch dense {str(dtype).removeprefix('torch.')}"

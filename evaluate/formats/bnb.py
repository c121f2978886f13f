"""bitsandbytes (LLM.int8, nf4/fp4): transformers quantizes while loading and saves the packed weights with a
quantization_config, so save_pretrained / from_pretrained round-trip it."""

from __future__ import annotations

from typing import Any

from evaluate.formats import ModelFormat, register_format


def layer_kind(module: Any) -> str | None:
    cls = type(module).__name__
    if cls == "Linear8bitLt":
        return "bitsandbytes int8 LLM.int8 (Linear8bitLt)"
    if cls == "Linear4bit":
        qt = getattr(getattr(module.weight, "quant_state", None), "quant_type", "4bit")
        return f"bitsandbytes {qt} (Linear4bit)"
    return None


register_format(ModelFormat(
    name="bnb",
    description="bitsandbytes int8 / nf4 / fp4 layers, packed in memory (transformers' BitsAndBytesConfig)",
    layer_kind=layer_kind,
))

"""torchao (PyTorch's quantization library, through transformers' TorchAoConfig): weights become torchao tensor
subclasses; save_pretrained / from_pretrained round-trip them with the config's quantization_config."""

from __future__ import annotations

from typing import Any

from evaluate.formats import ModelFormat, register_format


def layer_kind(module: Any) -> str | None:
    weight = getattr(module, "weight", None)
    cls = type(weight)
    if weight is None or not cls.__module__.startswith("torchao"):
        return None
    if cls.__name__ == "Int8Tensor" and getattr(weight, "act_quant_kwargs", None) is None:
        # torchao 0.18's weight-only linear: per-row int8 weights cast to the activation dtype for a dense matmul
        return "torchao int8 weight-only (Int8Tensor; int8 held, cast to the activation dtype per matmul)"
    return f"torchao {cls.__name__}"


register_format(ModelFormat(
    name="torchao",
    description="torchao tensor subclasses (TorchAoConfig), packed in memory, saved with a quantization_config",
    layer_kind=layer_kind,
))

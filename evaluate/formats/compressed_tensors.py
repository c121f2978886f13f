"""compressed-tensors (llm-compressor's checkpoints: GPTQ, AWQ, RTN, FP8, W8A8): saved with its
quantization_config; transformers loads it and, on CPU, decompresses the weights to the model dtype (load_model
does so at once, so memory figures describe the model that runs)."""

from __future__ import annotations

from typing import Any

import torch

from evaluate.formats import ModelFormat, register_format


def _is_linear_like(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int)


def _args_label(args: Any) -> str:
    """'int4 g128', 'fp8 per-channel', 'int8 per-token dynamic' from compressed-tensors QuantizationArgs."""
    kind = "fp" if getattr(args.type, "value", args.type) == "float" else "int"
    strategy = getattr(args.strategy, "value", args.strategy)
    where = f"g{args.group_size}" if args.group_size else f"per-{strategy}"
    return f"{kind}{args.num_bits} {where}" + (" dynamic" if args.dynamic is True else "")


def _compressed_tensors_kind(module: torch.nn.Module) -> str:
    """What a compressed-tensors layer really does. transformers has no int/fp8 kernels for it (the
    opt-in FP8 kernel path aside): weights are dequantized to the model dtype (a dense matmul), and
    quantized activations are emulated by quantize-dequantize in that dtype."""
    scheme = module.quantization_scheme
    fmt = getattr(scheme, "format", None)
    fmt = getattr(fmt, "value", fmt) or "unsaved"
    status = getattr(getattr(module, "quantization_status", None), "value", None)
    weight = getattr(module, "weight", None)
    weights = f"W {_args_label(scheme.weights)}" if scheme.weights is not None else "W dense"
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.element_size() >= 2:
        dtype = str(weight.dtype).removeprefix("torch.")
        held = (f"decompressed to {dtype}: no memory saving" if status == "decompressed"
                else f"fake-quantized in {dtype}")
    else:
        held = "packed; decompressed on first forward"
    if scheme.input_activations is not None:
        acts = f" + A {_args_label(scheme.input_activations)}"
        math = "activations quantize-dequantized: int/fp8 matmul emulated, none ran"
    else:
        acts = ""
        math = "dense matmul"
    if hasattr(module, "_original_forward_func"):  # compressed_tensors.offload.offload_module wrapped it
        math += "; weights and inputs pass compressed-tensors' offload wrapper on every call"
    return f"compressed-tensors {fmt} {weights}{acts} ({held}; {math})"


def layer_kind(module: Any) -> str | None:
    if getattr(module, "quantization_scheme", None) is not None and _is_linear_like(module):
        return _compressed_tensors_kind(module)
    return None


register_format(ModelFormat(
    name="compressed-tensors",
    description="compressed-tensors (llm-compressor); vLLM serves it; transformers decompresses it on CPU",
    layer_kind=layer_kind,
    held_packed=False,
))

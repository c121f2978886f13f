"""What a loaded model really holds: bytes of every tensor storage (quantization side-tensors
included), bits per parameter over the quantized layers, and the backend/kernel that runs it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch


def _inner_tensors(t: Any) -> Iterator[torch.Tensor]:
    """Leaf tensors of `t`: wrapper subclasses (quanto QTensor) are flattened; bitsandbytes keeps
    its scales beside the parameter (Int8Params.SCB, Params4bit.quant_state)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from _inner_tensors(getattr(t, n))
    elif isinstance(t, torch.Tensor):
        yield t
    for attr in ("SCB", "CB"):
        extra = getattr(t, attr, None)
        if isinstance(extra, torch.Tensor):
            yield extra
    state = getattr(t, "quant_state", None)
    if state is not None:
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value
            elif value is not None and hasattr(value, "absmax"):  # nested (double-quant) state
                yield from (v for v in vars(value).values() if isinstance(v, torch.Tensor))


def _module_tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        yield from _inner_tensors(t)


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        return (t.device.type, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return ("id", id(t))


def _nbytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def is_linear_like(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int
    )


@dataclass(frozen=True)
class MemoryFootprint:
    weight_bytes: int  # every distinct tensor storage the model holds
    quantized_layer_bytes: int
    quantized_layer_params: int
    bits_per_param: float  # over the decoder's Linear layers (lm_head and embeddings excluded)
    n_params: int  # logical parameter count (packed weights counted unpacked)
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)


def measure_footprint(model: torch.nn.Module, device_label: str | None = None) -> MemoryFootprint:
    seen: set[tuple] = set()
    total = 0
    layer_bytes = 0
    layer_params = 0
    n_params = 0
    skip = _unquantized_names(model)
    for name, module in model.named_modules():
        own = 0
        for t in _module_tensors(module):
            key = _storage_key(t)
            if key in seen:
                continue
            seen.add(key)
            own += _nbytes(t)
        total += own
        if is_linear_like(module):
            logical = module.in_features * module.out_features
            n_params += logical + (module.out_features if getattr(module, "bias", None) is not None else 0)
            if name not in skip:
                layer_bytes += own
                layer_params += logical
        elif not any(True for _ in module.children()):
            n_params += sum(p.numel() for p in module.parameters(recurse=False))
    bits = 8.0 * layer_bytes / layer_params if layer_params else 0.0
    return MemoryFootprint(total, layer_bytes, layer_params, round(bits, 3), n_params,
                           describe_backend(model, device_label, bits))


def _unquantized_names(model: torch.nn.Module) -> set[str]:
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n for n, m in model.named_modules() if m is out_emb}


def device_label(model: torch.nn.Module) -> str:
    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return device.type.upper()


def describe_backend(model: torch.nn.Module, device: str | None, bits: float) -> str:
    """Name what really runs: the layer class/kernel and whether weights stay packed in memory."""
    device = device or device_label(model)
    kinds: set[str] = set()
    for module in model.modules():
        cls = type(module).__name__
        mod = type(module).__module__
        if cls == "Linear8bitLt":
            kinds.add("bitsandbytes int8 LLM.int8 (Linear8bitLt)")
        elif cls == "Linear4bit":
            qt = getattr(getattr(module.weight, "quant_state", None), "quant_type", "4bit")
            kinds.add(f"bitsandbytes {qt} (Linear4bit)")
        elif mod.startswith("optimum.quanto") and hasattr(module, "weight_qtype"):
            kinds.add(f"optimum-quanto {getattr(module.weight_qtype, 'name', module.weight_qtype)} (QLinear)")
        elif getattr(module, "quantization_scheme", None) is not None and is_linear_like(module):
            fmt = getattr(module.quantization_scheme, "format", None)
            fmt = getattr(fmt, "value", fmt) or "compressed-tensors"
            state = "packed, dequantized per forward" if bits < 16 else "decompressed to dense: no memory saving"
            kinds.add(f"compressed-tensors {fmt} ({state})")
    if not kinds:
        dtype = next(model.parameters()).dtype
        kinds.add(f"PyTorch dense {str(dtype).removeprefix('torch.')}")
    return ", ".join(sorted(kinds)) + f"; {device}"

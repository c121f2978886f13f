"""What a loaded model really holds: bytes of every tensor storage (quantization side-tensors
included), bits per parameter over the quantized layers, and the backend/kernel that runs it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from evaluate.formats import layer_kinds
from evaluate.formats.dense import dense_kind
from evaluate.records import Backend, Footprint
from evaluate.sparsity import detect_pattern, measure_sparsity


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


def measure_footprint(model: torch.nn.Module, device_label: str | None = None) -> Footprint:
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
        tied = own == 0 and getattr(module, "weight", None) is not None  # e.g. lm_head tied to the embeddings
        if is_linear_like(module) and not hasattr(module, "base_layer"):  # a peft wrapper: its base_layer counts
            logical = module.in_features * module.out_features
            if not tied:  # a tied weight is one parameter tensor, counted once (as torch's parameters() does)
                n_params += logical + (module.out_features if getattr(module, "bias", None) is not None else 0)
            if name not in skip:
                layer_bytes += own
                layer_params += logical
        elif not any(True for _ in module.children()):
            n_params += sum(p.numel() for p in module.parameters(recurse=False))
    bits = 8.0 * layer_bytes / layer_params if layer_params else 0.0
    sparsity, per_layer = measure_sparsity(model)
    return Footprint(weight_bytes=total, quantized_layer_bytes=layer_bytes, quantized_layer_params=layer_params,
                     bits_per_param=round(bits, 3), n_params=n_params,
                     backend=describe_backend(model, device_label, sparsity),
                     sparsity=sparsity, sparsity_per_layer=per_layer or None)


def _unquantized_names(model: torch.nn.Module) -> set[str]:
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n for n, m in model.named_modules() if m is out_emb}


def device_label(model: torch.nn.Module) -> str:
    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return device.type.upper()


def describe_backend(model: torch.nn.Module, device: str | None = None, sparsity: float | None = None) -> Backend:
    """What really runs the model: each registered format names the kernel of its own layers; dense
    PyTorch otherwise. Notes say what the kernel does not exploit (zeros) or adds (unmerged adapters)."""
    fmt, kinds = layer_kinds(model)
    if not kinds:
        kinds = {dense_kind(model)}
    notes = []
    if any(hasattr(m, "lora_A") for m in model.modules()):
        notes.append(" + LoRA adapters (peft, unmerged: an extra matmul per layer)")
    if sparsity is not None and sparsity >= 0.01:
        if fmt == "compressed-tensors":  # decompressed grid values: zeros are pruned or rounded to zero
            notes.append(f", {sparsity:.0%} exact zeros after decompression (pruned or quantized to 0; not skipped)")
        else:
            notes.append(f", {detect_pattern(model) or 'unstructured'} {sparsity:.0%} zeros (dense kernel, "
                         "zeros not skipped)")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return Backend(format=fmt, kernels=sorted(kinds), notes=notes, device=device or device_label(model),
                   dtype=dtype, attention=attention)


_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2,
                      "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def stored_bits_per_param(model_dir: Any, model: torch.nn.Module) -> float | None:
    """Bits per parameter of the decoder Linear layers as stored on disk: bytes of every safetensors
    tensor under those modules (scales, zero points, quant state included) over their logical
    parameter count, read from the files' headers (safetensors.safe_open). None when not safetensors."""
    from pathlib import Path

    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    skip = _unquantized_names(model)
    layers = {n: m.in_features * m.out_features for n, m in model.named_modules()
              if is_linear_like(m) and n not in skip}
    stored = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                parts = key.split(".")
                if any(".".join(parts[:i]) in layers for i in range(len(parts) - 1, 0, -1)):
                    tensor = f.get_slice(key)
                    numel = 1
                    for dim in tensor.get_shape():
                        numel *= dim
                    stored += numel * _SAFETENSORS_BYTES[tensor.get_dtype()]
    params = sum(layers.values())
    return round(8.0 * stored / params, 3) if params else None

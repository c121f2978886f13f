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
    sparsity: float | None = None  # exact zeros over the decoder's dense Linear weights; None: packed format
    sparsity_per_layer: dict | None = None  # the same per decoder layer ('layers.3': 0.5)

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
    sparsity, per_layer = _measured_sparsity(model)
    backend = describe_backend(model, device_label, bits)
    head, _, device = backend.rpartition("; ")
    if any(hasattr(m, "lora_A") for m in model.modules()):
        head += " + LoRA adapters (peft, unmerged: an extra matmul per layer)"
    if sparsity is not None and sparsity >= 0.01:
        from compress.methods._sparsity import detect_pattern

        if "compressed-tensors" in head:  # decompressed grid values: zeros are pruned or rounded to zero
            head += f", {sparsity:.0%} exact zeros after decompression (pruned or quantized to 0; not skipped)"
        else:
            pattern = detect_pattern(model) or "unstructured"
            head += f", {pattern} {sparsity:.0%} zeros (dense kernel, zeros not skipped)"
    return MemoryFootprint(total, layer_bytes, layer_params, round(bits, 3), n_params, f"{head}; {device}",
                           sparsity, per_layer or None)


def _measured_sparsity(model: torch.nn.Module) -> tuple[float | None, dict]:
    """Exact zeros of the dense decoder Linear weights (see compress.methods._sparsity); packed: (None, {})."""
    from compress.methods._sparsity import measure_sparsity

    return measure_sparsity(model)


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
            kinds.add(_compressed_tensors_kind(module))
    if not kinds:
        dtype = next(model.parameters()).dtype
        kinds.add(f"PyTorch dense {str(dtype).removeprefix('torch.')}")
    return ", ".join(sorted(kinds)) + f"; {device}"


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


def stored_bits_per_param(model_dir: Any, model: torch.nn.Module) -> float | None:
    """Bits per parameter of the decoder Linear layers as stored on disk: bytes of every safetensors
    tensor under those modules (scales, zero points, quant state included) over their logical
    parameter count. Reads only the safetensors headers. None when the weights are not safetensors."""
    import json
    import struct
    from pathlib import Path

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    skip = _unquantized_names(model)
    layers = {n: m.in_features * m.out_features for n, m in model.named_modules()
              if is_linear_like(m) and n not in skip}
    stored = 0
    for path in files:
        with open(path, "rb") as f:  # format: u64 little-endian header length, then a JSON header
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            parts = key.split(".")
            if any(".".join(parts[:i]) in layers for i in range(len(parts) - 1, 0, -1)):
                start, end = info["data_offsets"]
                stored += end - start
    params = sum(layers.values())
    return round(8.0 * stored / params, 3) if params else None

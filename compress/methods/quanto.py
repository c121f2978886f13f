"""Weight-only int8 / int4 / float8 through optimum-quanto: QLinear layers keep their weights packed
(int8, uint8-packed int4 with group scales and shifts, float8) in memory on CPU too, and dequantize
inside each forward. Saved with quanto's quantization map and reloaded with quanto's `requantize`:
plain from_pretrained does not know the format, so this module registers the "quanto" format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from compress.methods._quant import QuantParams, check_bits, matches
from compress.models import ModelFormat, register_format, torch_dtype
from compress.registry import MethodSpec, StepContext, register_method

QTYPES = {"int8": "qint8", "int4": "qint4", "float8": "qfloat8"}
QMAP_FILE = "quanto_qmap.json"  # the name optimum-quanto's QuantizedTransformersModel uses


class QuantoParams(QuantParams):
    override_fields: ClassVar[frozenset[str]] = frozenset({"bits", "skip"})
    override_hint: ClassVar[str] = "quanto can set bits (int4/int8) or skip per layer; its group size is fixed"

    weights: Literal["int8", "int4", "float8"] = Field("int8", description="weight qtype (activations stay float)")

    @field_validator("overrides")
    @classmethod
    def _override_bits(cls, v: list) -> list:
        for o in v:
            if o.bits is not None:
                check_bits(o.bits, (4, 8), "a quanto override", "bits 4 = qint4, 8 = qint8")
        return v


def unavailable(device: str, params: QuantoParams | None) -> str | None:
    """int4 weights on CPU unpack through quanto's C++ extension, JIT-compiled on first use (needs a
    C++ compiler and ninja, about a minute once); int8/float8 need nothing beyond torch."""
    import shutil

    uses_int4 = params is None or params.weights == "int4" or any(o.bits == 4 for o in params.overrides)
    if not uses_int4 or device.startswith("cuda"):
        return None
    import optimum.quanto.library.extensions.cpp as cpp

    if (Path(cpp.__file__).parent / "build" / "quanto_cpp.so").exists():
        return None
    missing = [tool for tool in ("c++", "ninja") if shutil.which(tool) is None]
    if missing:
        return (f"optimum-quanto int4 on CPU compiles its C++ unpack kernel on first use and {missing} "
                "is not installed; install a C++ compiler and ninja, or use weights: int8 / float8")
    return None


def _layer_qtypes(model: Any, params: QuantoParams) -> dict[str, str]:
    """Exact module names -> quanto qtype name, after ignore and overrides (recipe order)."""
    import torch

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if any(matches(name, module, p) for p in params.ignore):
            continue
        o = params.override_for(name, module)
        if o is not None and o.skip:
            continue
        out[name] = f"qint{o.bits}" if o is not None and o.bits else QTYPES[params.weights]
    return out


def allow_inference_mode(model: Any) -> Any:
    """quanto's packed 4-bit weights fail under torch.inference_mode ("Cannot set version_counter for
    inference tensor", optimum-quanto issue #304, unfixed in 0.2.7) while no_grad works; evaluation
    and profiling run under inference_mode, so those layers leave it for their own forward (still
    without autograd). Same numbers, same kernel."""
    import functools

    import torch

    for module in model.modules():
        qtype = getattr(module, "weight_qtype", None)
        if qtype is None or qtype.bits >= 8 or getattr(module, "_slimlab_no_inference_mode", False):
            continue
        forward = module.forward

        @functools.wraps(forward)
        def wrapped(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            if not torch.is_inference_mode_enabled():
                return _forward(*args, **kwargs)
            with torch.inference_mode(False), torch.no_grad():
                return _forward(*args, **kwargs)

        module.forward = wrapped
        module._slimlab_no_inference_mode = True
    return model


def apply(model: Any, params: QuantoParams, ctx: StepContext) -> Any:
    from optimum.quanto import freeze, quantize

    by_qtype: dict[str, list[str]] = {}
    for name, qtype in _layer_qtypes(model, params).items():
        by_qtype.setdefault(qtype, []).append(name)
    for qtype, names in by_qtype.items():
        quantize(model, weights=qtype, include=names)  # exact names are valid fnmatch patterns
    freeze(model)
    return allow_inference_mode(model)


def save(model: Any, directory: Path) -> None:
    """optimum-quanto's own layout: safetensors of the QTensor parts plus the quantization map."""
    from optimum.quanto import quantization_map

    model.save_pretrained(directory, safe_serialization=True)
    (directory / QMAP_FILE).write_text(json.dumps(quantization_map(model), indent=1))


def load(location: str, dtype: str, device: str, trust_remote_code: bool = False) -> Any:
    """QuantizedModelForCausalLM.from_pretrained's steps, with the study's dtype and device: an empty
    model from the config, quanto's `requantize` to rebuild QLinear layers, then every tensor
    loaded and checked present (requantize itself loads non-strictly)."""
    import torch
    from accelerate import init_empty_weights
    from optimum.quanto import requantize
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    qmap = json.loads((Path(location) / QMAP_FILE).read_text())
    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(location).glob("*.safetensors")):
        state.update(load_file(path))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code)
    requantize(model, state_dict=state, quantization_map=qmap, device=torch.device(device))
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"{location}: quanto checkpoint lacks {missing[:5]}")
    return allow_inference_mode(model.eval())


register_format(ModelFormat("quanto", save=save, load=load))

register_method(
    MethodSpec(
        name="quanto",
        description="optimum-quanto weight-only int8 / int4 / float8 (weights stay packed on CPU too)",
        kind="quantize",
        params=QuantoParams,
        apply=apply,
        produces="quanto",
        finalizes=True,
        unavailable=unavailable,
    )
)

"""Weight-only int8 / int4 / float8 through optimum-quanto: QLinear layers keep their weights packed
(int8, uint8-packed int4 with group scales and shifts, float8) in memory on CPU too, and dequantize
inside each forward. Saved and reloaded by the "quanto" format (evaluate/formats/quanto.py), since
plain from_pretrained does not know it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from compress.methods._quant import QuantParams, check_bits, matches
from compress.registry import StepContext, method
from evaluate.formats.quanto import allow_inference_mode

QTYPES = {"int8": "qint8", "int4": "qint4", "float8": "qfloat8"}


class QuantoParams(QuantParams):
    override_fields: ClassVar[frozenset[str]] = frozenset({"bits", "skip"})
    override_hint: ClassVar[str] = "quanto can set bits (int4/int8) or skip per layer; its group size is fixed"

    weights: Literal["int8", "int4", "float8"] = Field("int8", description="weight qtype (activations stay float)")

    headline_fields = ("weights",)

    def headline(self) -> str:
        return f"weights={self.weights}"

    def weight_bits(self) -> float | None:
        return {"int8": 8, "int4": 4, "float8": 8}[self.weights]

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


@method("quanto", "quantize", QuantoParams, produces="quanto", unavailable=unavailable,
        description="optimum-quanto weight-only int8 / int4 / float8 (weights stay packed on CPU too)")
def apply(model: Any, params: QuantoParams, ctx: StepContext) -> Any:
    from optimum.quanto import freeze, quantize

    by_qtype: dict[str, list[str]] = {}
    for name, qtype in _layer_qtypes(model, params).items():
        by_qtype.setdefault(qtype, []).append(name)
    for qtype, names in by_qtype.items():
        quantize(model, weights=qtype, include=names)  # exact names are valid fnmatch patterns
    freeze(model)
    return allow_inference_mode(model)

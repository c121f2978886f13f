"""SmoothQuant (Xiao et al. 2023) then INT8 W8A8 through llm-compressor: activation outliers are
migrated into the weights (strength alpha), then int8 per-channel weights (GPTQ or round-to-nearest)
and dynamic per-token int8 activations. Saved as compressed-tensors (int-quantized). transformers has
no int8 matmul for it: weights are decompressed and activation rounding is emulated (backend says so)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.methods._llmc import check_disjoint, run_calibrated
from compress.methods._quant import CalibratedParams
from compress.registry import StepContext, method


class SmoothQuantParams(CalibratedParams):
    smoothing_strength: float = Field(0.8, gt=0, lt=1, description="alpha: share of the outliers moved to weights")

    stored_bits = 8
    headline_fields = ("smoothing_strength",)

    def headline(self) -> str:
        return f"smoothing_strength={self.smoothing_strength}"
    weights: Literal["gptq", "rtn"] = Field("gptq", description="how the int8 weights are chosen")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="GPTQ Hessian dampening (weights: gptq)")


@method("smoothquant_w8a8", "quantize", SmoothQuantParams, produces="compressed-tensors",
        description="SmoothQuant (smoothing strength) + INT8 weights and dynamic per-token INT8 activations "
                    "(llm-compressor, compressed-tensors); int8 matmul emulated on CPU")
def apply(model: Any, params: SmoothQuantParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    check_disjoint(model, params)
    common = {"scheme": "W8A8", "targets": ["Linear"], "ignore": params.skipped_patterns()}
    quant = (GPTQModifier(dampening_frac=params.dampening_frac, **common) if params.weights == "gptq"
             else QuantizationModifier(**common))
    return run_calibrated(model, [SmoothQuantModifier(smoothing_strength=params.smoothing_strength), quant],
                          params, ctx)

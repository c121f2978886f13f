"""FP8 (e4m3) weights and activations through llm-compressor: weights per-channel with dynamic
per-token activation scales (FP8_DYNAMIC, no calibration), or per-tensor weights with static
activation scales from calibration (FP8). Saved as compressed-tensors (float-quantized). Without an
FP8 matmul (CPU, GPUs before sm89) transformers decompresses the weights and emulates the
activation rounding: the backend string and the measured bits/param say so."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.methods._llmc import fp8_unavailable, run_calibrated, run_oneshot
from compress.methods._quant import CalibratedParams
from compress.registry import StepContext, method


class FP8Params(CalibratedParams):
    activations: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: per-token scales at run time; static: per-tensor scales from calibration")

    stored_bits = 8
    headline_fields = ("activations",)

    def headline(self) -> str:
        return f"activations={self.activations}"

    def uses_calibration(self) -> bool:
        return self.activations == "static"


@method("fp8", "quantize", FP8Params, produces="compressed-tensors", unavailable=fp8_unavailable,
        description="FP8 e4m3 weights + dynamic (per-token) or static activation scales (llm-compressor, "
                    "compressed-tensors); emulated where there is no FP8 matmul")
def apply(model: Any, params: FP8Params, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    scheme = "FP8_DYNAMIC" if params.activations == "dynamic" else "FP8"
    modifier = QuantizationModifier(scheme=scheme, targets=["Linear"], ignore=params.skipped_patterns())
    if params.activations == "dynamic":
        return run_oneshot(model, [modifier], ctx, calibrate=False)
    return run_calibrated(model, [modifier], params, ctx)

"""Round-to-nearest weight quantization (no calibration): the floor every calibrated method must beat."""

from __future__ import annotations

from typing import Any

from compress.methods._llmc import WeightQuantParams, check_disjoint, run_oneshot
from compress.registry import StepContext, method


@method("rtn", "quantize", WeightQuantParams, produces="compressed-tensors",
        description="round-to-nearest W4A16/W8A16 weights, per-group or per-channel (llm-compressor, "
                    "compressed-tensors format)")
def apply(model: Any, params: WeightQuantParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    check_disjoint(model, params)
    modifier = QuantizationModifier(config_groups=params.config_groups(), ignore=params.ignore_list())
    return run_oneshot(model, [modifier], ctx, calibrate=False)

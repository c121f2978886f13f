"""Round-to-nearest weight quantization (no calibration): the floor every calibrated method must beat."""

from __future__ import annotations

from typing import Any

from compress.methods._llmc import WeightQuantParams, run_oneshot
from compress.registry import MethodSpec, StepContext, register_method


def apply(model: Any, params: WeightQuantParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(config_groups={"group_0": params.scheme()}, ignore=params.ignore)
    return run_oneshot(model, [modifier], ctx, calibrate=False)


register_method(
    MethodSpec(
        name="rtn",
        description="round-to-nearest W4/W8 weights (llm-compressor, compressed-tensors format)",
        kind="quantize",
        params=WeightQuantParams,
        apply=apply,
        produces="compressed-tensors",
        finalizes=True,
    )
)

"""GPTQ (Frantar et al. 2022) through llm-compressor's GPTQModifier: W4A16/W8A16 weights chosen
column by column to cancel the error with the calibration Hessian; saved as compressed-tensors
(pack-quantized), which vLLM and transformers load."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.methods._llmc import CalibratedWeightQuantParams, check_disjoint, run_calibrated
from compress.registry import StepContext, method


class GPTQParams(CalibratedWeightQuantParams):
    actorder: Literal["static", "weight", "none"] = Field(
        "static", description="activation order: columns by Hessian diagonal (static = weight); none = in order")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="added to the Hessian diagonal, x its mean")
    block_size: int = Field(128, ge=1, description="columns quantized per pass")


@method("gptq", "quantize", GPTQParams, produces="compressed-tensors",
        description="GPTQ W4A16/W8A16 (group size, act-order, dampening; llm-compressor, compressed-tensors)")
def apply(model: Any, params: GPTQParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.gptq import GPTQModifier

    check_disjoint(model, params)
    modifier = GPTQModifier(
        config_groups=params.config_groups(),
        ignore=params.ignore_list(),
        actorder=None if params.actorder == "none" else params.actorder,
        dampening_frac=params.dampening_frac,
        block_size=params.block_size,
    )
    return run_calibrated(model, [modifier], params, ctx)

"""AWQ (Lin et al. 2023) through llm-compressor: AWQModifier searches per-channel scales that protect
the weights with large activations (mappings inferred from the architecture), then W4A16 weights
are quantized with those scales folded in; saved as compressed-tensors (pack-quantized)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from compress.methods._llmc import CalibratedWeightQuantParams, check_disjoint, run_calibrated
from compress.registry import StepContext, method


class AWQParams(CalibratedWeightQuantParams):
    allowed_bits: ClassVar[tuple[int, ...]] = (4,)
    bits_hint: ClassVar[str] = "AWQ here is W4A16; for 8-bit weights use gptq or rtn"

    symmetric: bool = False  # AWQ's own default (llm-compressor's W4A16_ASYM)
    duo_scaling: bool | Literal["both"] = Field(True, description="scales from activations and weights")
    n_grid: int = Field(20, ge=4, le=100, description="grid points of the scale search (llm-compressor needs >= 4)")


@method("awq", "quantize", AWQParams, produces="compressed-tensors",
        description="AWQ W4A16 (activation-aware scales, then group quantization; llm-compressor, "
                    "compressed-tensors)")
def apply(model: Any, params: AWQParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    check_disjoint(model, params)
    modifiers = [
        AWQModifier(duo_scaling=params.duo_scaling, n_grid=params.n_grid),
        QuantizationModifier(config_groups=params.config_groups(), ignore=params.ignore_list()),
    ]
    return run_calibrated(model, modifiers, params, ctx)

"""4-bit NF4/FP4 weights through transformers' BitsAndBytesConfig (QLoRA's format)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from compress.methods._checkpoint import reload_quantized
from compress.methods._quant import QuantParams, check_bits
from compress.methods.bnb_int8 import bnb_skip_modules
from compress.registry import StepContext, method
from evaluate.models import torch_dtype


class Bnb4bitParams(QuantParams):
    override_hint = "bitsandbytes quantizes every layer alike; use skip: true, or gptq/rtn for mixed widths"

    bits: int = Field(4, description="always 4 (bitsandbytes 4-bit); 8 bits is bnb_int8")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the absmax scales too (~0.37 bits/param saved)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    headline_fields = ("bits", "quant_type", "double_quant")

    def headline(self) -> str:
        return f"quant_type={self.quant_type} double_quant={self.double_quant}"

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        return check_bits(v, (4,), "bnb_4bit", "use bnb_int8 for 8 bits, or gptq/rtn for other widths")


@method("bnb_4bit", "quantize", Bnb4bitParams, produces="bnb",
        description="bitsandbytes 4-bit weights (nf4 or fp4, double quantization, compute dtype)")
def apply(model: Any, params: Bnb4bitParams, ctx: StepContext) -> Any:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=params.quant_type,
        bnb_4bit_use_double_quant=params.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(params.compute_dtype),
        llm_int8_skip_modules=bnb_skip_modules(params),
    )
    return reload_quantized(model, ctx, config)

"""4-bit NF4/FP4 weights through transformers' BitsAndBytesConfig (QLoRA's format)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.methods._checkpoint import dense_checkpoint
from compress.models import load_model, torch_dtype
from compress.registry import MethodParams, MethodSpec, StepContext, register_method


class Bnb4bitParams(MethodParams):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    skip_modules: list[str] = Field(default_factory=lambda: ["lm_head"])


def apply(model: Any, params: Bnb4bitParams, ctx: StepContext) -> Any:
    from transformers import BitsAndBytesConfig

    source = dense_checkpoint(model, ctx)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=params.quant_type,
        bnb_4bit_use_double_quant=params.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(params.compute_dtype),
        llm_int8_skip_modules=params.skip_modules,
    )
    return load_model(str(source), ctx.dtype, ctx.device, ctx.trust_remote_code, quantization_config=config)


register_method(
    MethodSpec(
        name="bnb_4bit",
        description="bitsandbytes 4-bit weights (nf4 or fp4, double quantization, compute dtype)",
        kind="quantize",
        params=Bnb4bitParams,
        apply=apply,
        produces="bnb",
        finalizes=True,
    )
)

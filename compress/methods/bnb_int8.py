"""LLM.int8() through transformers' BitsAndBytesConfig: int8 weights with fp16 outlier columns."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.methods._checkpoint import dense_checkpoint
from compress.models import load_model
from compress.registry import MethodParams, MethodSpec, StepContext, register_method


class BnbInt8Params(MethodParams):
    threshold: float = Field(6.0, ge=0, description="outlier threshold; 0 disables the fp16 outlier path")
    skip_modules: list[str] = Field(default_factory=lambda: ["lm_head"])


def apply(model: Any, params: BnbInt8Params, ctx: StepContext) -> Any:
    from transformers import BitsAndBytesConfig

    source = dense_checkpoint(model, ctx)
    config = BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=params.threshold,
        llm_int8_skip_modules=params.skip_modules,
    )
    return load_model(str(source), ctx.dtype, ctx.device, ctx.trust_remote_code, quantization_config=config)


register_method(
    MethodSpec(
        name="bnb_int8",
        description="bitsandbytes LLM.int8 weights (outlier threshold), runs on CPU and CUDA",
        kind="quantize",
        params=BnbInt8Params,
        apply=apply,
        produces="bnb",
        finalizes=True,
    )
)

"""LLM.int8() through transformers' BitsAndBytesConfig: int8 weights with fp16 outlier columns."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.methods._checkpoint import dense_checkpoint
from compress.methods._quant import QuantParams
from compress.models import load_model
from compress.registry import MethodSpec, StepContext, register_method


def bnb_skip_modules(params: QuantParams) -> list[str]:
    """transformers matches llm_int8_skip_modules with re.match / endswith: a 're:' pattern is passed
    on as its regex, an exact module name as itself."""
    return [p[3:] if p.startswith("re:") else p for p in params.skipped_patterns()]


def reload_with_bnb(model: Any, ctx: StepContext, config: Any) -> Any:
    """bitsandbytes quantizes while transformers loads: write the current weights as a dense checkpoint and
    load them back through `config` (a BitsAndBytesConfig)."""
    source = dense_checkpoint(model, ctx)
    return load_model(str(source), ctx.dtype, ctx.device, ctx.trust_remote_code, quantization_config=config)


class BnbInt8Params(QuantParams):
    override_hint = "bitsandbytes quantizes every layer alike; use skip: true, or gptq/rtn for mixed widths"

    threshold: float = Field(6.0, ge=0, description="outlier threshold; 0 disables the fp16 outlier path")


def apply(model: Any, params: BnbInt8Params, ctx: StepContext) -> Any:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=params.threshold,
        llm_int8_skip_modules=bnb_skip_modules(params),
    )
    return reload_with_bnb(model, ctx, config)


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

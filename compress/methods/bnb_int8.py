"""LLM.int8() through transformers' BitsAndBytesConfig: int8 weights with fp16 outlier columns."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.methods._checkpoint import reload_quantized
from compress.methods._quant import QuantParams
from compress.registry import StepContext, method


def bnb_skip_modules(params: QuantParams) -> list[str]:
    """transformers matches llm_int8_skip_modules with re.match / endswith: a 're:' pattern is passed
    on as its regex, an exact module name as itself."""
    return [p[3:] if p.startswith("re:") else p for p in params.skipped_patterns()]


class BnbInt8Params(QuantParams):
    override_hint = "bitsandbytes quantizes every layer alike; use skip: true, or gptq/rtn for mixed widths"

    threshold: float = Field(6.0, ge=0, description="outlier threshold; 0 disables the fp16 outlier path")

    stored_bits = 8
    headline_fields = ("threshold",)

    def headline(self) -> str:
        return f"threshold={self.threshold}"


@method("bnb_int8", "quantize", BnbInt8Params, produces="bnb",
        description="bitsandbytes LLM.int8 weights (outlier threshold), runs on CPU and CUDA")
def apply(model: Any, params: BnbInt8Params, ctx: StepContext) -> Any:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=params.threshold,
        llm_int8_skip_modules=bnb_skip_modules(params),
    )
    return reload_quantized(model, ctx, config)  # bitsandbytes quantizes while transformers loads

"""int8 weight-only quantization through torchao (TorchAoConfig(Int8WeightOnlyConfig()), torchao's `quantize_`
config API): per-row int8 weights held in memory, on CPU too."""

from __future__ import annotations

from typing import Any

from compress.methods._checkpoint import reload_quantized
from compress.methods._quant import QuantParams
from compress.registry import StepContext, method


class TorchaoInt8Params(QuantParams):
    override_hint = "torchao int8 weight-only quantizes every Linear alike; use skip: true to keep layers in full " \
                    "precision, or gptq/rtn for mixed widths"
    stored_bits = 8

    def headline(self) -> str:
        return "int8 weight-only, per-row"


def unavailable(device: str, params: TorchaoInt8Params | None = None) -> str | None:
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed; pip install torchao"
    return None


@method("torchao_int8", "quantize", TorchaoInt8Params, produces="torchao", unavailable=unavailable,
        description="torchao int8 weight-only (per-row scales; TorchAoConfig), weights held in int8 on CPU too")
def apply(model: Any, params: TorchaoInt8Params, ctx: StepContext) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    skip = [p[3:] if p.startswith("re:") else p for p in params.skipped_patterns()]
    config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skip)
    return reload_quantized(model, ctx, config)  # torchao quantizes while transformers loads

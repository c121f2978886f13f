"""Shared pieces for the llm-compressor based methods: weight schemes, group-size checks, oneshot."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from compress.registry import MethodParams, StepContext


def linear_input_sizes(model_config: Any) -> dict[str, int]:
    """Input width of each kind of decoder Linear, from the config alone (no weights loaded)."""
    hidden = model_config.hidden_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    return {
        "q/k/v_proj": hidden,
        "o_proj": heads * head_dim,
        "gate/up_proj": hidden,
        "down_proj": model_config.intermediate_size,
    }


class WeightQuantParams(MethodParams):
    bits: Literal[4, 8] = 4
    group_size: int = Field(128, description="32/64/128..., or -1 for per-channel scales")
    symmetric: bool = True
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], description="module names or 're:' patterns")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and (v < 8 or v & (v - 1)):
            raise ValueError("group_size must be a power of two >= 8 (32, 64, 128) or -1 for per-channel")
        return v

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        if self.group_size == -1:
            return []
        bad = {k: n for k, n in linear_input_sizes(model_config).items() if n % self.group_size}
        if not bad:
            return []
        fits = [g for g in (32, 64, 128) if all(n % g == 0 for n in linear_input_sizes(model_config).values())]
        return [("group_size", f"does not divide the input size of {bad}; use one of {fits + [-1]} "
                 "(-1 = per-channel)")]

    def scheme(self) -> Any:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        weights = QuantizationArgs(
            num_bits=self.bits,
            type="int",
            symmetric=self.symmetric,
            strategy="channel" if self.group_size == -1 else "group",
            group_size=None if self.group_size == -1 else self.group_size,
        )
        return QuantizationScheme(targets=["Linear"], weights=weights)


def run_oneshot(model: Any, modifiers: list[Any], ctx: StepContext, calibrate: bool, n_samples: int = 0,
                seq_len: int = 0) -> Any:
    """Apply llm-compressor modifiers in place; calibration texts come from the recipe's source."""
    from llmcompressor import oneshot

    kwargs: dict[str, Any] = {}
    if calibrate:
        from datasets import Dataset

        if ctx.calibration is None:
            raise RuntimeError("this method needs calibration data but the study supplied none")
        texts = ctx.calibration(n_samples, seq_len)
        encoded = ctx.tokenizer(texts, truncation=True, max_length=seq_len)
        kwargs.update(
            dataset=Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}),
            num_calibration_samples=len(texts),
            max_seq_length=seq_len,
        )
    oneshot(model=model, recipe=modifiers, **kwargs)
    return model

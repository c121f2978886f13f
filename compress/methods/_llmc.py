"""Shared pieces for the llm-compressor based methods (rtn, gptq, awq, fp8, smoothquant_w8a8): integer
weight schemes with per-layer overrides, group-size checks against the model, and oneshot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field, field_validator

from compress.methods._quant import CalibratedParams, QuantParams, check_bits, matches
from compress.registry import StepContext
from evaluate.progress import route_loguru

GROUP_FIX = "use 32, 64 or 128 (a power of two >= 8 dividing every quantized layer's input width) or -1 for per-channel"


def check_group(v: int | None) -> int | None:
    if v is not None and v != -1 and (v < 8 or v & (v - 1)):
        raise ValueError(f"group_size {v} is not a power of two >= 8; {GROUP_FIX}")
    return v


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


class WeightQuantParams(QuantParams):
    """Integer weight-only quantization (W4A16 / W8A16) in compressed-tensors' format."""

    override_fields: ClassVar[frozenset[str]] = frozenset({"bits", "group_size", "symmetric", "skip"})
    allowed_bits: ClassVar[tuple[int, ...]] = (4, 8)
    bits_hint: ClassVar[str] = "W4A16 or W8A16; for float8 use fp8, for 8-bit activations smoothquant_w8a8"

    bits: int = Field(4, description="weight bits: 4 or 8")
    group_size: int = Field(128, description="32/64/128..., or -1 for per-channel scales")
    symmetric: bool = True

    headline_fields: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    def headline(self) -> str:
        return f"W{self.bits} " + ("per-channel" if self.group_size == -1 else f"g{self.group_size}")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        return check_bits(v, cls.allowed_bits, "this method", cls.bits_hint)

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        return check_group(v)

    @field_validator("overrides")
    @classmethod
    def _override_values(cls, v: list) -> list:
        for o in v:
            if o.bits is not None:
                check_bits(o.bits, cls.allowed_bits, "an override", cls.bits_hint)
            check_group(o.group_size)
        return v

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        issues = super().check_model(model_config)
        # every quantized Linear by name; the per-kind widths when the model cannot be built from its config
        layers = self.quantized_layers(model_config) or linear_input_sizes(model_config)
        widths = set(layers.values())
        fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        bad: dict[str, dict[tuple[int, int], set[str]]] = {}  # field -> (input width, group) -> layer kinds
        for name, width in layers.items():
            o = self.override_for(name)
            from_override = o is not None and o.group_size is not None
            group = o.group_size if from_override else self.group_size
            if group != -1 and width % group:
                field = "overrides" if from_override else "group_size"
                bad.setdefault(field, {}).setdefault((width, group), set()).add(name.rsplit(".", 1)[-1])
        for field, groups in bad.items():
            where = "; ".join(f"{'/'.join(sorted(kinds))} (input {w}, group {g})"
                              for (w, g), kinds in sorted(groups.items()))
            issues.append((field, f"group_size does not divide the input width of {where}; use one of "
                                  f"{[*fits, -1]} (-1 = per-channel), or an override for those layers"))
        return issues

    def weight_args(self, bits: int | None = None, group_size: int | None = None,
                    symmetric: bool | None = None) -> Any:
        from compressed_tensors.quantization import QuantizationArgs

        group = self.group_size if group_size is None else group_size
        return QuantizationArgs(
            num_bits=self.bits if bits is None else bits,
            type="int",
            symmetric=self.symmetric if symmetric is None else symmetric,
            strategy="channel" if group == -1 else "group",
            group_size=None if group == -1 else group,
        )

    def config_groups(self) -> dict[str, Any]:
        """One scheme for every Linear, then one per override: compressed-tensors gives a name or
        're:' target priority over the class target 'Linear', so the override wins on its layers."""
        from compressed_tensors.quantization import QuantizationScheme

        groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=self.weight_args())}
        for i, o in enumerate(self.overrides):
            if not o.skip:
                groups[f"override_{i}"] = QuantizationScheme(
                    targets=[o.pattern], weights=self.weight_args(o.bits, o.group_size, o.symmetric))
        return groups

    def ignore_list(self) -> list[str]:
        return self.skipped_patterns()


class CalibratedWeightQuantParams(WeightQuantParams, CalibratedParams):
    """Weight quantization that needs calibration data (GPTQ, AWQ)."""


def check_disjoint(model: Any, params: QuantParams) -> None:
    """compressed-tensors resolves two matching 're:' targets alphabetically, not in recipe order;
    refuse the ambiguity instead (validation already does this from the config)."""
    for name, module in model.named_modules():
        hits = [i for i, o in enumerate(params.overrides) if matches(name, module, o.pattern)]
        if len(hits) > 1:
            raise ValueError(f"overrides {hits} all match {name!r}; make the patterns disjoint")


@contextlib.contextmanager
def cpu_safe_pinning() -> Iterator[None]:
    """llm-compressor's activation cache pins host memory to speed host->GPU copies (AWQ); torch
    raises on pin_memory() when no accelerator exists. With no accelerator there is no copy to
    speed up, so pinning becomes a no-op for the duration (no library switch turns it off)."""
    import torch

    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.__dict__["_pin_intermediate"]
    IntermediatesCache._pin_intermediate = classmethod(lambda cls, intermediate: None)
    try:
        yield
    finally:
        IntermediatesCache._pin_intermediate = original


def run_oneshot(model: Any, modifiers: list[Any], ctx: StepContext, calibrate: bool, n_samples: int = 0,
                seq_len: int = 0) -> Any:
    """Apply llm-compressor modifiers in place; calibration texts come from the recipe's source."""
    from llmcompressor import oneshot

    route_loguru()  # its import has reset loguru's sinks to stdout
    kwargs: dict[str, Any] = {}
    if calibrate:
        from datasets import Dataset

        texts = ctx.calibration_texts(n_samples, seq_len)
        encoded = ctx.tokenizer(texts, truncation=True, max_length=seq_len)
        kwargs.update(
            dataset=Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}),
            num_calibration_samples=len(texts),
            max_seq_length=seq_len,
        )
    with cpu_safe_pinning():
        oneshot(model=model, recipe=modifiers, **kwargs)
    return model


def run_calibrated(model: Any, modifiers: list[Any], params: CalibratedParams, ctx: StepContext) -> Any:
    n, seq_len = params.calibration_size(ctx)
    return run_oneshot(model, modifiers, ctx, calibrate=True, n_samples=n, seq_len=seq_len)


def fp8_unavailable(device: str, params: Any = None) -> str | None:
    """FP8 checkpoints need torch's float8 dtypes (weights are stored as float8_e4m3fn)."""
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no float8_e4m3fn dtype; FP8 needs torch >= 2.1"
    return None

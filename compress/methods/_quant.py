"""What every quantization method shares: `ignore` patterns, per-layer overrides by pattern, the
model's Linear layers (from its config alone, for validation), and calibration sizes.

Patterns follow llm-compressor's convention so a recipe means the same thing for every backend: a
plain string is an exact module name or a class name ("lm_head", "Linear"); "re:<regex>" is a
regular expression matched from the start of the module name ("re:.*down_proj")."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from compress.registry import Calibrated, MethodParams


def matches(name: str, module: Any, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or (module is not None and any(c.__name__ == pattern for c in type(module).__mro__))


def check_pattern(pattern: str) -> str:
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc}); "
                             "write 're:<python regex>', e.g. 're:.*down_proj'") from exc
    elif not pattern:
        raise ValueError("an empty pattern matches nothing; give a module name or 're:<regex>'")
    return pattern


def check_bits(bits: int, allowed: tuple[int, ...], method: str, other: str) -> int:
    if bits not in allowed:
        raise ValueError(f"{method} supports bits in {list(allowed)}, not {bits}; {other}")
    return bits


# module names, class names or 're:<regex>' patterns, each checked when the recipe is read
Patterns = Annotated[list[str], AfterValidator(lambda patterns: [check_pattern(p) for p in patterns])]


class LayerOverride(BaseModel):
    """Settings for the layers a pattern matches; unset fields inherit the step's own."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(description="module name or 're:<regex>', e.g. 're:.*down_proj'")
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    skip: bool = False  # keep these layers in full precision

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return check_pattern(v)

    def set_fields(self) -> set[str]:
        return {k for k in self.model_fields_set if k != "pattern" and not (k == "skip" and not self.skip)}


class QuantParams(MethodParams):
    """Base of every quantization method's parameters: ignore patterns and per-layer overrides."""

    # which override fields this backend can honour; others fail validation with the fix
    override_fields: ClassVar[frozenset[str]] = frozenset({"skip"})
    override_hint: ClassVar[str] = "this backend can only skip layers (keep them in full precision)"
    stored_bits: ClassVar[int | None] = None  # weight bits of a method without a `bits` parameter

    def weight_bits(self) -> float | None:
        return getattr(self, "bits", None) or self.stored_bits

    def describe(self) -> str:
        """The setting, the parameters changed from their defaults, then each per-layer override."""
        overrides = [f"override {o.pattern}: " + ", ".join(f"{k}={v}" for k, v in o if k != "pattern"
                                                          and v is not None and (k, v) != ("skip", False))
                     for o in self.overrides]
        return " ".join([super().describe(), *overrides]).strip()

    ignore: Patterns = Field(default_factory=lambda: ["lm_head"],
                             description="module names or 're:' patterns left unquantized")
    overrides: list[LayerOverride] = Field(default_factory=list,
                                           description="[{pattern: 're:.*down_proj', bits: 8}] per-layer settings")

    @field_validator("overrides")
    @classmethod
    def _overrides_supported(cls, v: list[LayerOverride]) -> list[LayerOverride]:
        for i, o in enumerate(v):
            extra = o.set_fields() - cls.override_fields
            if extra:
                raise ValueError(f"overrides[{i}] sets {sorted(extra)}, which this method cannot apply per layer "
                                 f"({cls.override_hint}); allowed: {sorted(cls.override_fields)}")
            if not o.set_fields():
                raise ValueError(f"overrides[{i}] ({o.pattern!r}) changes nothing; set one of "
                                 f"{sorted(cls.override_fields)}")
        return v

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        layers = linear_layers(model_config)
        if not layers:
            return []
        issues = []
        claimed: dict[str, int] = {}
        for i, o in enumerate(self.overrides):
            hits = [n for n in layers if matches(n, None, o.pattern)]
            if not hits:
                example = next(iter(layers))
                issues.append(("overrides", f"overrides[{i}].pattern {o.pattern!r} matches no Linear layer; "
                                            f"names look like {example!r} (use 're:.*<suffix>')"))
            for n in hits:
                if n in claimed:
                    issues.append(("overrides", f"overrides[{claimed[n]}] and overrides[{i}] both match {n!r}; "
                                                "make the patterns disjoint"))
                    break
                claimed[n] = i
        return issues

    def quantized_layers(self, model_config: Any) -> dict[str, int]:
        """The Linear layers this step quantizes (ignored and skipped ones left out), by name."""
        skipped = self.skipped_patterns()
        return {n: w for n, w in linear_layers(model_config).items()
                if not any(matches(n, None, p) for p in skipped)}

    def override_for(self, name: str, module: Any = None) -> LayerOverride | None:
        """The first override matching `name` (overrides are tried in recipe order)."""
        return next((o for o in self.overrides if matches(name, module, o.pattern)), None)

    def skipped_patterns(self) -> list[str]:
        return list(self.ignore) + [o.pattern for o in self.overrides if o.skip]


class CalibratedParams(QuantParams, Calibrated):
    """Quantization that runs calibration data through the model; sizes default to the recipe's block."""


def linear_layers(model_config: Any) -> dict[str, int]:
    """Input width of every Linear of the model, by module name, from its config alone (the model is
    built on the meta device: no weights are read). Empty if the architecture cannot be built so."""
    try:
        key = model_config.to_json_string()
    except Exception:  # not a transformers config
        return {}
    return dict(_linear_layers_cached(key, type(model_config)))


@functools.lru_cache(maxsize=8)
def _linear_layers_cached(config_json: str, config_cls: type) -> tuple[tuple[str, int], ...]:
    import json

    import torch
    from transformers import AutoModelForCausalLM

    config = config_cls.from_dict(json.loads(config_json))
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # remote code or an architecture transformers cannot build offline
        return ()
    return tuple((n, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))

"""The method registry: one file per method registers a MethodSpec, and the recipe, CLI and runner
find it here (in the spirit of llm-compressor's modifiers and torchao's `quantize_(model, config)`)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

MethodKind = Literal["quantize", "prune", "train"]


class MethodParams(BaseModel):
    """Parameters of one step. Subclasses add fields; unknown keys are errors (typos caught)."""

    model_config = ConfigDict(extra="forbid")

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        """Checks that need the model's architecture (cheap: config.json only).

        Returns (field, message-with-fix) pairs; empty when the setting fits the model."""
        return []

    def uses_calibration(self) -> bool:
        """Whether the step reads the study's calibration text (recorded with each build)."""
        return "n_samples" in type(self).model_fields

    def check_chain(self, earlier: list[MethodSpec]) -> list[tuple[str, str]]:
        """Checks that need the steps before this one (e.g. a format this step cannot train on).

        Returns (field, message-with-fix) pairs, like check_model."""
        return []


@dataclass
class StepContext:
    """What a step may use besides the model: the tokenizer, where the FP weights live, seeds,
    calibration data and scratch space."""

    tokenizer: Any
    source_dir: Path  # the FP checkpoint the study started from
    workdir: Path  # scratch space for this variant
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    calibration: Callable[[int, int], list[str]] | None = None  # (n_samples, seq_len) -> texts
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    kind: MethodKind
    params: type[MethodParams]
    apply: Callable[[Any, MethodParams, StepContext], Any]  # (model, params, ctx) -> model
    produces: str = "dense"  # the storage format after this step: dense, bnb, compressed-tensors, quanto
    needs_cuda: bool = False
    finalizes: bool = False  # True when the format admits no further dense steps
    # (device, params or None) -> why this method cannot run here (a missing kernel, dtype, compiler),
    # or None; the runner then skips the variant with that reason instead of failing the study
    unavailable: Callable[[str, MethodParams | None], str | None] | None = None

    def unavailable_reason(self, device: str, params: MethodParams | None = None) -> str | None:
        if self.needs_cuda and not device.startswith("cuda"):
            return f"needs a CUDA GPU; model.device is {device!r}"
        return self.unavailable(device, params) if self.unavailable is not None else None

    def parameter_table(self) -> list[tuple[str, str, str]]:
        """(name, type, default) per parameter, for `compress methods`."""
        rows = []
        for name, info in self.params.model_fields.items():
            # a class by its name; Literal/Union/list[...] spelled out so their choices show
            annotation = info.annotation.__name__ if isinstance(info.annotation, type) else str(info.annotation)
            annotation = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", annotation)  # module prefixes dropped
            default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
            rows.append((name, annotation.replace("typing.", ""), default))
        return rows


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def load_builtin_methods() -> dict[str, MethodSpec]:
    """Import every module of compress.methods so each registers itself."""
    import compress.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    return METHODS

"""The method registry: one file per method registers a MethodSpec, and the recipe, CLI and runner find it
here (in the spirit of llm-compressor's modifiers and torchao's `quantize_(model, config)`). A method's
parameters are a pydantic model; the recipe validates each step against them once, as a discriminated
union on `method`."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluate.registry import Registry

MethodKind = Literal["quantize", "prune", "train"]


class MethodParams(BaseModel):
    """Parameters of one step. Subclasses add fields; unknown keys are errors (typos caught)."""

    model_config = ConfigDict(extra="forbid")

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        """Checks that need the model's architecture (cheap: config.json only).

        Returns (field, message-with-fix) pairs; empty when the setting fits the model."""
        return []

    def check_chain(self, earlier: list[MethodSpec]) -> list[tuple[str, str]]:
        """Checks that need the steps before this one (e.g. a format this step cannot train on).

        Returns (field, message-with-fix) pairs, like check_model."""
        return []

    def uses_calibration(self) -> bool:
        """Whether the step reads the study's calibration text (recorded with each build)."""
        return False

    # fields the headline names; describe() lists every other field that differs from its default
    headline_fields: ClassVar[tuple[str, ...]] = ()

    def headline(self) -> str:
        """The step's defining setting, for tables ("W4 g128", "50% 2:4"); "" when it has none."""
        return ""

    def weight_bits(self) -> float | None:
        """Bits per weight after this step (None: the step does not change them): tables group by it."""
        return None

    def describe(self) -> str:
        """A short label of the step for tables: the headline, then each other setting changed from its default."""
        changed = [f"{k}={v}" for k, v in self if k not in ("method", *self.headline_fields)
                   and not isinstance(v, list) and v != type(self).model_fields[k].default]
        return " ".join(x for x in (self.headline(), *changed) if x)

    def recipe_dict(self) -> dict[str, Any]:
        """The step with every parameter (defaults included), `method` first: what a build is keyed on."""
        data = self.model_dump(mode="json")
        return {"method": data.pop("method", None), **data}

    def written(self) -> dict[str, Any]:
        """The step as the recipe wrote it (the fields it set), `method` first."""
        data = self.model_dump(mode="json", exclude_unset=True)
        return {"method": data.pop("method", None), **data}


@dataclass(frozen=True)
class CalibrationData:
    """The study's calibration text: its source (`auto` resolved), the default sizes, and the texts on demand."""

    source: str
    n_samples: int
    seq_len: int
    texts: Callable[[int, int], list[str]]  # (n_samples, seq_len) -> texts


class Calibrated(MethodParams):
    """A step that runs calibration text through the model; its sizes default to the recipe's calibration block."""

    n_samples: int | None = Field(None, ge=1, description="calibration texts; null: the recipe's calibration block")
    seq_len: int | None = Field(None, ge=8, description="tokens per text; null: the recipe's calibration block")

    def uses_calibration(self) -> bool:
        return True

    def calibration_size(self, ctx: StepContext) -> tuple[int, int]:
        """(n_samples, seq_len): the step's own values, else the study's calibration block (64 x 256)."""
        cal = ctx.calibration
        return (self.n_samples or (cal.n_samples if cal else 64), self.seq_len or (cal.seq_len if cal else 256))


@dataclass
class StepContext:
    """What a step may use besides the model: the tokenizer, where the FP weights live, seeds, calibration
    text and scratch space."""

    tokenizer: Any
    source_dir: Path  # the FP checkpoint the study started from
    workdir: Path  # scratch space for this variant
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    calibration: CalibrationData | None = None
    pristine: bool = True  # the model is still the FP checkpoint at source_dir (no earlier step changed it)

    def calibration_texts(self, n: int, seq_len: int) -> list[str]:
        if self.calibration is None:
            raise RuntimeError("this method needs calibration data but the study supplied none")
        texts = self.calibration.texts(n, seq_len)
        if not texts:
            raise RuntimeError(f"the calibration source {self.calibration.source!r} returned no text")
        return texts


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    kind: MethodKind
    params: type[MethodParams]
    apply: Callable[[Any, MethodParams, StepContext], Any]  # (model, params, ctx) -> model
    produces: str = "dense"  # the storage format after this step (a registered format: dense, bnb, quanto, ...)
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
            if name == "method":
                continue
            # a class by its name; Literal/Union/list[...] spelled out so their choices show
            annotation = info.annotation.__name__ if isinstance(info.annotation, type) else str(info.annotation)
            annotation = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", annotation)  # module prefixes dropped
            default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
            rows.append((name, annotation.replace("typing.", ""), default))
        return rows


METHODS: Registry[MethodSpec] = Registry("method", "compress.methods")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.register(spec.name, spec)


def method(name: str, kind: MethodKind, params: type[MethodParams], *, description: str, produces: str = "dense",
           needs_cuda: bool = False, unavailable: Callable[[str, MethodParams | None], str | None] | None = None,
           ) -> Callable[[Callable[[Any, Any, StepContext], Any]], Callable[[Any, Any, StepContext], Any]]:
    """Register the decorated `apply(model, params, ctx) -> model` as a method. A step that leaves a non-dense
    storage format finalizes the chain (no dense step may follow it)."""

    def register(apply: Callable[[Any, Any, StepContext], Any]) -> Callable[[Any, Any, StepContext], Any]:
        register_method(MethodSpec(name, description, kind, params, apply, produces, needs_cuda,
                                   finalizes=produces != "dense", unavailable=unavailable))
        return apply

    return register


def load_builtin_methods() -> Registry[MethodSpec]:
    """Import every module of compress.methods so each registers itself."""
    return METHODS.load_builtins()


@functools.cache
def step_model(name: str) -> type[MethodParams]:
    """The parameters model of one method with its `method: <name>` tag: a member of the recipe's step union."""
    from pydantic import create_model

    return create_model(name, __base__=METHODS[name].params, method=(Literal[name], ...))


def make_step(name: str, **params: Any) -> MethodParams:
    """A typed step built in code, e.g. make_step("gptq", bits=4) (`compress profile --quantize`, tests)."""
    return step_model(name).model_validate({"method": name, **params})

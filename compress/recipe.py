"""The recipe: one YAML file describing a study, validated completely before any heavy work.

Every error names the field (with its line in the file), the bad value and the fix."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.models import DTYPES, ModelSourceError, load_config, resolve_model_source

BASELINE = "baseline"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    name: str = "embedded:tiny-reasoner"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$")
    revision: str | None = None
    trust_remote_code: bool = False


class VariantSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    steps: list[dict[str, Any]] = Field(min_length=1)
    eval_stages: bool = False  # also evaluate after each intermediate step

    @field_validator("name")
    @classmethod
    def _not_baseline(cls, v: str) -> str:
        if v == BASELINE:
            raise ValueError("'baseline' is the FP model, always evaluated; choose another name")
        return v


class TaskEntry(Strict):
    name: str
    label: str | None = Field(None, pattern=NAME_PATTERN)  # the cell's name; defaults to name
    n: int = Field(50, ge=1)
    prompt_style: Literal["direct", "cot"] = "direct"
    k_shot: int = Field(0, ge=0, le=16)
    definition: bool = False
    chat_template: bool = False
    seed: int | None = None
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    data_dir: str | None = None
    repeats: int = Field(1, ge=1, le=32)

    @property
    def cell(self) -> str:
        return self.label or self.name


class DecodingSpec(Strict):
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=1024)


class ProfileSpec(Strict):
    enabled: bool = True
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(32, ge=2)
    warmup: int = Field(1, ge=0)
    repeats: int = Field(5, ge=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)


class CalibrationSpec(Strict):
    source: str = "synthetic"  # synthetic | hf:<dataset id>[:split] | path to .jsonl/.txt
    n_samples: int = Field(64, ge=1)
    seq_len: int = Field(256, ge=8)


class Recipe(Strict):
    name: str | None = None
    seed: int = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    variants: list[VariantSpec] = Field(default_factory=list)
    tasks: list[TaskEntry] = Field(min_length=1)
    decoding: DecodingSpec = Field(default_factory=DecodingSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    output: str | None = None

    def fingerprint(self, *parts: Any) -> str:
        """Stable hash of whatever determines a result (used as a cache key in the ledger)."""
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Issue:
    loc: tuple[str | int, ...]
    value: Any
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.loc).lstrip(".")
        where = f"{source}:{self.line}" if self.line else source
        value = "" if self.value is _MISSING else f" = {self.value!r}"
        return f"{where}: {path or '<recipe>'}{value}: {self.message}"


_MISSING = object()


class RecipeError(ValueError):
    def __init__(self, issues: list[Issue], source: str = "recipe") -> None:
        self.issues = issues
        self.source = source
        super().__init__("\n".join(i.render(source) for i in issues))


def _line_of(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest YAML node reachable along `loc`."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _value_at(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}known: {', '.join(sorted(known))}"


def _pydantic_issues(exc: ValidationError, data: Any, prefix: tuple = ()) -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        issues.append(Issue(loc, _value_at(data, loc[len(prefix):]), msg))
    return issues


def check_semantics(recipe: Recipe, data: dict, check_model: bool = True) -> list[Issue]:
    """Checks that need the registries and the model's config."""
    from compress.registry import load_builtin_methods
    from evaluate.tasks import load_builtin_tasks

    methods = load_builtin_methods()
    tasks = load_builtin_tasks()
    issues: list[Issue] = []

    model_config = None
    try:
        source = resolve_model_source(recipe.model.name)
        if check_model:
            model_config = load_config(source.location, recipe.model.trust_remote_code, recipe.model.revision)
    except ModelSourceError as exc:
        issues.append(Issue(("model", "name"), recipe.model.name, str(exc)))
    if recipe.model.dtype not in DTYPES:  # pragma: no cover - pydantic already restricts it
        issues.append(Issue(("model", "dtype"), recipe.model.dtype, f"use one of {DTYPES}"))

    seen_cells: set[str] = set()
    for i, task in enumerate(recipe.tasks):
        if task.name not in tasks:
            issues.append(Issue(("tasks", i, "name"), task.name, "no such task; " + _suggest(task.name, list(tasks))))
            continue
        if task.cell in seen_cells:
            issues.append(Issue(("tasks", i, "label"), task.cell, "two tasks share this name; give one a distinct label"))
        seen_cells.add(task.cell)
        if task.repeats > 1 and not recipe.decoding.do_sample:
            issues.append(Issue(("tasks", i, "repeats"), task.repeats,
                                "repeats > 1 only makes sense with sampling; set decoding.do_sample: true or repeats: 1"))

    seen_variants: set[str] = set()
    for v, variant in enumerate(recipe.variants):
        if variant.name in seen_variants:
            issues.append(Issue(("variants", v, "name"), variant.name, "duplicate variant name; names must be unique"))
        seen_variants.add(variant.name)
        issues.extend(check_steps(variant.steps, ("variants", v, "steps"), methods, model_config, recipe))
    return issues


def check_steps(steps: list[dict], prefix: tuple, methods: dict, model_config: Any, recipe: Recipe) -> list[Issue]:
    issues: list[Issue] = []
    finalized_by: str | None = None
    for s, step in enumerate(steps):
        loc = prefix + (s,)
        name = step.get("method")
        if name is None:
            issues.append(Issue(loc, step, "each step needs 'method: <name>'; see `compress methods`"))
            continue
        if name not in methods:
            issues.append(Issue(loc + ("method",), name, "no such method; " + _suggest(str(name), list(methods))))
            continue
        spec = methods[name]
        if finalized_by is not None and not getattr(spec.params, "accepts_quantized", False):
            issues.append(Issue(loc + ("method",), name,
                                f"comes after {finalized_by!r}, whose format admits no further dense steps; "
                                f"put {name!r} before it"))
        if spec.finalizes:
            finalized_by = name
        params_data = {k: v for k, v in step.items() if k != "method"}
        try:
            params = spec.params.model_validate(params_data)
        except ValidationError as exc:
            issues.extend(_pydantic_issues(exc, params_data, loc))
            continue
        if model_config is not None:
            for field_name, message in params.check_model(model_config):
                issues.append(Issue(loc + (field_name,), step.get(field_name, _MISSING), message))
    return issues


def load_recipe(path: str | Path, check_model: bool = True) -> Recipe:
    """Parse and fully validate a recipe file; raise RecipeError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError([Issue((), _MISSING, f"cannot read the recipe: {exc}")], source) from exc
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise RecipeError([Issue((), _MISSING, f"not valid YAML: {exc}", line)], source) from exc
    if not isinstance(data, dict):
        raise RecipeError([Issue((), _MISSING, "a recipe is a YAML mapping with model, variants and tasks")], source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        issues = _pydantic_issues(exc, data)
    else:
        issues = check_semantics(recipe, data, check_model=check_model)
    if issues:
        located = [Issue(i.loc, i.value, i.message, _line_of(root, i.loc)) for i in issues]
        raise RecipeError(located, source)
    if recipe.output is None:
        recipe.output = str(Path("runs") / path.stem)
    if recipe.name is None:
        recipe.name = path.stem
    return recipe

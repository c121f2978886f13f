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
    stop: list[str] | None = None  # stop strings; default: the task's own (a newline for most tasks)
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


class BertScoreSpec(Strict):
    """The encoder for BERTScore-scored tasks (SNI): a hub id, a local directory (offline), or
    package:<module>/<subdir>; num_layers null = bert-score's tuned layer (roberta-large: 17)."""

    model: str = Field("roberta-large", min_length=1)
    num_layers: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1, le=1024)


class SelectSpec(Strict):
    """How the report picks the variant to deploy: the accuracy budget, then the cost to minimize."""

    max_accuracy_drop: float = Field(1.0, ge=0)  # points below the baseline (mean over tasks, or each task)
    per_task: bool = False  # apply max_accuracy_drop to every task, not to the mean
    minimize: Literal["memory", "peak_memory", "latency", "ttft", "disk"] = "memory"
    require_status: Literal["ok"] = "ok"
    include_baseline: bool = True  # the FP model is a candidate too (it may win on latency)
    max_memory_mib: float | None = Field(None, gt=0)  # optional hard caps on weights in memory / ms per token
    max_latency_ms_per_token: float | None = Field(None, gt=0)


class EndpointSpec(Strict):
    """An OpenAI-compatible chat endpoint. Only the NAME of the key's environment variable is stored
    (null: send no key, for a local server); the key itself is read at request time."""

    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    max_concurrency: int = Field(4, ge=1, le=64)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an http:// or https:// URL with a host, the prefix that "
                             "/chat/completions follows, e.g. https://api.openai.com/v1")
        if parts.username or parts.password or "key=" in parts.query.lower():
            raise ValueError("base_url must not carry credentials (they would be written to the ledger); "
                             "put the key in the environment variable named by api_key_env")
        return v


class JudgeSpec(EndpointSpec):
    max_tokens: int = Field(8, ge=1, le=512)
    audit: int = Field(0, ge=0)  # settled samples per cell also judged, seeded, to measure agreement
    tasks: Literal["all"] | list[str] = "all"  # task cells (labels) the judge covers


class ApiModelSpec(EndpointSpec):
    name: str = Field(pattern=NAME_PATTERN)


class Recipe(Strict):
    name: str | None = None
    seed: int = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    variants: list[VariantSpec] = Field(default_factory=list)
    tasks: list[TaskEntry] = Field(min_length=1)
    decoding: DecodingSpec = Field(default_factory=DecodingSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    bertscore: BertScoreSpec = Field(default_factory=BertScoreSpec)  # encoder for bertscore_recall tasks
    select: SelectSpec | None = None  # the report's deployment choice; None: the defaults of SelectSpec
    judge: JudgeSpec | None = None  # LLM-as-judge for samples the answer rules cannot settle
    api_models: list[ApiModelSpec] = Field(default_factory=list)  # API models evaluated beside the baseline
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
    from evaluate.tasks._hf import check_data_dir

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
            issues.append(Issue(("tasks", i, "label"), task.cell,
                                "two tasks share this name; give one a distinct label"))
        seen_cells.add(task.cell)
        if task.repeats > 1 and not recipe.decoding.do_sample:
            issues.append(Issue(("tasks", i, "repeats"), task.repeats,
                                "repeats > 1 only makes sense with sampling; "
                                "set decoding.do_sample: true or repeats: 1"))
        spec = tasks[task.name]
        if spec.needs_data_dir and not (task.data_dir and Path(task.data_dir).is_dir()):
            issues.append(Issue(("tasks", i, "data_dir"), task.data_dir, spec.needs_data_dir))
        elif task.data_dir and (why := check_data_dir(task.name, task.data_dir, task.k_shot)):  # hub datasets
            issues.append(Issue(("tasks", i, "data_dir"), task.data_dir, why))
    issues.extend(check_bertscore(recipe, tasks))

    seen_variants: set[str] = set()
    for v, variant in enumerate(recipe.variants):
        if variant.name in seen_variants:
            issues.append(Issue(("variants", v, "name"), variant.name, "duplicate variant name; names must be unique"))
        seen_variants.add(variant.name)
        issues.extend(check_steps(variant.steps, ("variants", v, "steps"), methods, model_config, recipe))
    issues.extend(check_endpoints(recipe, seen_variants, tasks))
    return issues


def check_endpoints(recipe: Recipe, variant_names: set[str], tasks: dict) -> list[Issue]:
    """judge and api_models: names that do not clash, cells that exist, keys present in the environment
    (the variable is named, its value never printed)."""
    import os

    issues: list[Issue] = []
    endpoints: list[tuple[tuple, EndpointSpec]] = [(("api_models", i), m) for i, m in enumerate(recipe.api_models)]
    seen = set(variant_names) | {BASELINE}
    for i, m in enumerate(recipe.api_models):
        if m.name in seen:
            issues.append(Issue(("api_models", i, "name"), m.name,
                                "clashes with the baseline, a variant or another api model; choose a unique name"))
        seen.add(m.name)
    if recipe.judge is not None:
        endpoints.append((("judge",), recipe.judge))
        cells = {t.cell: t.name for t in recipe.tasks}
        for j, cell in enumerate([] if recipe.judge.tasks == "all" else recipe.judge.tasks):
            spec = tasks.get(cells.get(cell, ""))
            if cell not in cells:
                issues.append(Issue(("judge", "tasks", j), cell, "no such task cell; " + _suggest(cell, list(cells))))
            elif spec is not None and (spec.metric != "accuracy" or spec.answer_type == "text"):
                issues.append(Issue(("judge", "tasks", j), cell,
                                    f"scored by {spec.metric!r}, not right/wrong; remove it from judge.tasks"))
    for loc, ep in endpoints:
        if ep.api_key_env is not None and not os.environ.get(ep.api_key_env):
            issues.append(Issue((*loc, "api_key_env"), ep.api_key_env,
                                f"environment variable {ep.api_key_env} is not set; export it before running "
                                "(or api_key_env: null for a server that needs no key)"))
    return issues


def check_bertscore(recipe: Recipe, tasks: dict) -> list[Issue]:
    """bertscore.model must resolve (a missing local directory or package fails here, not after generation)."""
    from evaluate.bertscore import check_model

    if not any(tasks.get(t.name) is not None and tasks[t.name].metric == "bertscore_recall" for t in recipe.tasks):
        return []
    message = check_model(recipe.bertscore.model)
    return [Issue(("bertscore", "model"), recipe.bertscore.model, message)] if message else []


def check_steps(steps: list[dict], prefix: tuple, methods: dict, model_config: Any, recipe: Recipe) -> list[Issue]:
    issues: list[Issue] = []
    finalized_by: str | None = None
    earlier: list = []  # the MethodSpecs of the steps before this one
    for s, step in enumerate(steps):
        loc = (*prefix, s)
        name = step.get("method")
        if name is None:
            issues.append(Issue(loc, step, "each step needs 'method: <name>'; see `compress methods`"))
            continue
        if name not in methods:
            issues.append(Issue((*loc, "method"), name, "no such method; " + _suggest(str(name), list(methods))))
            continue
        spec = methods[name]
        if finalized_by is not None and not getattr(spec.params, "accepts_quantized", False):
            issues.append(Issue((*loc, "method"), name,
                                f"comes after {finalized_by!r}, whose format admits no further dense steps; "
                                f"put {name!r} before it"))
        if spec.finalizes:
            finalized_by = name
        params_data = {k: v for k, v in step.items() if k != "method"}
        before, earlier = list(earlier), [*earlier, spec]
        try:
            params = spec.params.model_validate(params_data)
        except ValidationError as exc:
            issues.extend(_pydantic_issues(exc, params_data, loc))
            continue
        for field_name, message in params.check_chain(before):
            issues.append(Issue((*loc, field_name), step.get(field_name, _MISSING), message))
        if model_config is not None:
            for field_name, message in params.check_model(model_config):
                issues.append(Issue((*loc, field_name), step.get(field_name, _MISSING), message))
    return issues


def recipe_from_dict(data: dict, source: str = "<recipe>", check_model: bool = True) -> Recipe:
    """Validate a recipe built in code (no YAML, so no line numbers)."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_pydantic_issues(exc, data), source) from exc
    issues = check_semantics(recipe, data, check_model=check_model)
    if issues:
        raise RecipeError(issues, source)
    return recipe


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

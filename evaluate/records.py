"""Every measurement slimlab keeps, as typed records (in the spirit of optimum-benchmark's Memory/Latency
records in a BenchmarkReport): the ledger writes and reads them, and the report, `compress compare`,
`compress profile` and the benchmark tables read their fields. Adding a measurement is one field here plus
the code that fills it; the report lists any number it has no section for under "Other metrics".

SCHEMA_VERSION is stored in each ledger; a ledger of another version is refused with the fix (rerun into a
new directory), never read as if it were this one."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class Backend(Record):
    """What really runs a model, as structured fields; `describe()` renders it for people (and only for them)."""

    format: str = "dense"  # the storage format registered in evaluate.formats (dense, bnb, quanto, ...)
    kernels: list[str] = Field(default_factory=list)  # per kind of layer: "bitsandbytes nf4 (Linear4bit)", ...
    notes: list[str] = Field(default_factory=list)  # adapters, zeros not skipped, wrappers
    device: str = "CPU"  # "CPU", "CUDA NVIDIA H200", "remote"
    dtype: str | None = None
    attention: str | None = None

    def describe(self) -> str:
        head = ", ".join(self.kernels) + "".join(self.notes)
        return f"{head}; {self.device}"

    @property
    def kernel(self) -> str:
        """The kernel column of profile rows: the layers' kernels and the attention implementation."""
        return ", ".join(self.kernels) + "".join(self.notes) + f"; attention {self.attention or 'default'}"


class Footprint(Record):
    """What a loaded model holds: bytes of every tensor storage (quantization side tensors included) and
    bits per parameter over the decoder's Linear layers (lm_head and embeddings excluded)."""

    weight_bytes: int
    quantized_layer_bytes: int
    quantized_layer_params: int
    bits_per_param: float
    n_params: int  # logical parameters (packed weights counted unpacked)
    backend: Backend
    sparsity: float | None = None  # exact zeros of the dense decoder Linear weights; None: packed format
    sparsity_per_layer: dict[str, float] | None = None
    stored_bits_per_param: float | None = None  # the same layers as stored on disk (safetensors)


class Nvml(Record):
    process_bytes: int | None = None
    device_used_bytes: int | None = None
    error: str | None = None


class BatchProfile(Record):
    """Latency and memory at one batch size (optimum-benchmark's protocol: warm-up, median of repeats)."""

    batch_size: int
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    repeats: int | None = None
    ttft_ms: float | None = None
    end_to_end_ms: float | None = None
    end_to_end_spread_ms: float | None = None
    latency_ms_per_token: float | None = None
    per_token_p50_ms: float | None = None
    per_token_p90_ms: float | None = None
    decode_ms_per_token_in_run: float | None = None
    tokens_per_s: float | None = None
    kv_cache_bytes: int | None = None
    kv_cache_tokens: int | None = None
    generation_peak_rss_bytes: int | None = None
    generation_rss_delta_bytes: int | None = None
    rss_samples: int | None = None
    timer: str | None = None  # "cuda events" | "perf_counter" | "request wall time"
    paused_during_timing: bool = False  # the process was stopped and resumed while timed: timings invalid
    cuda_max_memory_allocated: int | None = None
    cuda_max_memory_reserved: int | None = None
    nvml: Nvml | None = None


class Host(Record):
    cpu: str = ""
    cpu_cores: int = 0
    torch_threads: int = 0
    torch: str = ""
    load_avg_1m: float | None = None
    thread_env: dict[str, str] = Field(default_factory=dict)
    gpu: str | None = None
    cuda: str | None = None


class ServedInfo(Record):
    """A variant served by vLLM (compress/serving.py): what vLLM itself said (its log and API) beside slimlab's own
    measurements of the server process; the `profile` of a `<variant>@vllm` row carries it."""

    serves: str | None = None  # the HF row whose checkpoint was served
    version: str | None = None
    platform: str | None = None  # "cpu", "cuda", ...
    dtype: str | None = None
    quantization: str | None = None  # vLLM's quantization method ("compressed-tensors", ...), None: dense
    kernels: list[str] = Field(default_factory=list)  # "CPUWNA16LinearKernel for CompressedTensorsWNA16", ...
    max_model_len: int | None = None
    start_s: float | None = None  # process start to a healthy /health
    weights_load_s: float | None = None  # vLLM's "Loading weights took"
    compilation: str | None = None  # "eager", "torch.compile, cache loaded", "... compiled now (cold cache)", ...
    weights_bytes: int | None = None  # vLLM's "Model loading took X GiB" (GPU runner)
    non_kv_bytes: int | None = None  # CPU, auto KV sizing: the worker's RSS before the KV cache ("non-kv usages")
    kv_cache_bytes: int | None = None  # the KV cache pool vLLM allocated
    kv_cache_tokens: int | None = None  # tokens that pool holds
    max_concurrency: float | None = None  # requests of max_model_len the pool holds at once
    server_rss_bytes: int | None = None  # the server's process tree, summed RSS right after start (CPU)
    server_pss_bytes: int | None = None  # the same as PSS (shared pages counted once)
    nvml_bytes: int | None = None  # GPU: NVML's memory of the server's processes right after start
    log_path: str | None = None
    command: list[str] = Field(default_factory=list)


class Profile(Record):
    """A model as it really runs: load and generation memory, latency per batch size, with what ran it."""

    kind: Literal["local", "api"] = "local"
    backend: Backend
    dtype: str | None = None
    batches: list[BatchProfile] = Field(default_factory=list)
    load_s: float | None = None
    rss_before_load_bytes: int | None = None
    load_rss_delta_bytes: int | None = None
    load_peak_rss_bytes: int | None = None  # ru_maxrss right after loading: the load peak
    generation_peak_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None  # the whole process, load and generation
    cuda_load_max_memory_allocated: int | None = None
    cuda_load_max_memory_reserved: int | None = None
    cuda_memory_allocated_after_load: int | None = None
    nvml_after_load: Nvml | None = None
    footprint: Footprint | None = None
    host: Host | None = None
    load_avg_1m_after: float | None = None
    paused_during_run: bool = False
    torch: str | None = None
    # API models: measured requests (no load, no memory)
    n_requests: int | None = None
    max_concurrency: int | None = None
    request_ms_p50: float | None = None
    request_ms_p90: float | None = None
    retried_requests: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    served: ServedInfo | None = None  # a variant served by vLLM: vLLM's own figures

    @property
    def device(self) -> str:
        return self.backend.device

    def batch(self, size: int = 1) -> BatchProfile | None:
        """The row of this batch size, else the first row."""
        return next((b for b in self.batches if b.batch_size == size), self.batches[0] if self.batches else None)

    def peak_memory(self) -> int | None:
        """Peak bytes of the device the model ran on: CUDA allocator peak on GPU, process RSS on CPU."""
        b1 = self.batch(1)
        if b1 is not None and b1.cuda_max_memory_allocated is not None:
            return b1.cuda_max_memory_allocated
        return self.peak_rss_bytes


class CellMetrics(Record):
    """One model on one task cell. `value()` is the cell's headline number."""

    metric: str = "accuracy"  # accuracy | bertscore_recall | perplexity
    n: float
    eval_s: float | None = None
    accuracy: float | None = None  # percent (BERTScore tasks: mean recall x100)
    instruction_following: float | None = None  # percent of outputs in the requested answer format
    accuracy_std: float | None = None  # over sampled repeats
    truncated: float | None = None  # outputs cut by max_new_tokens
    repeat_loops: float | None = None  # outputs ended in a repetition loop
    rules: dict[str, int] = Field(default_factory=dict)  # which parser rule read each answer
    breakdowns: dict[str, dict[str, float]] = Field(default_factory=dict)  # meta key -> value -> accuracy
    breakdown_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    # multiple choice scored by the log-likelihood of each option (evaluate/loglikelihood.py)
    accuracy_loglik: float | None = None
    accuracy_loglik_norm: float | None = None
    accuracy_loglik_letter: float | None = None
    loglik_agreement: float | None = None
    # LLM-as-judge (evaluate/judge.py); judge_key: what produced the verdicts (no secret in it)
    judge_key: str | None = None
    judge_error: str | None = None
    judge_calls: int | None = None
    judge_unsettled: int | None = None
    judge_audited: int | None = None
    judge_unparsed: int | None = None
    judge_overturned: int | None = None
    accuracy_judged: float | None = None
    judge_agreement: float | None = None
    judge_kappa: float | None = None
    # token windows (perplexity) and fidelity to the FP model on them (evaluate/fidelity.py)
    perplexity: float | None = None
    nll_mean: float | None = None
    n_tokens: float | None = None
    seq_len: float | None = None
    tokenizer: str | None = None
    kl_mean: float | None = None
    kl_p50: float | None = None
    kl_p90: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1_agreement: float | None = None
    # meta-reasoning (MR-GSM8K, MR-Ben; evaluate/mr_score.py), percent, means over subjects for MR-Ben:
    # MR-Score = 0.2 * max(0, MCC) + 0.3 * step accuracy + 0.5 * reason accuracy
    mr_score: float | None = None  # None: not measured (the error reasons need the recipe's judge)
    mr_mcc: float | None = None  # task 1: max(0, MCC) of the correct/incorrect verdicts x100, as the score uses it
    mr_step_accuracy: float | None = None  # task 2: first error step right, over the incorrect solutions
    mr_reason_accuracy: float | None = None  # task 3: error reason judged right, over the incorrect solutions
    mr_n_correct: int | None = None  # correct solutions evaluated
    mr_n_incorrect: int | None = None  # incorrect solutions evaluated
    mr_tp: int | None = None  # correct solutions called correct
    mr_tn: int | None = None  # incorrect solutions called incorrect
    mr_step_hits: int | None = None  # ... with the first error step right
    mr_reason_review: int | None = None  # error reasons the judge had to grade (coding: all called incorrect)
    mr_reason_hits: int | None = None  # ... judged right
    mr_groups: int | None = None  # subjects the MR-Score averages over (1 for MR-GSM8K)
    mr_reason_status: str | None = None  # "judged by <model> ..." or "not measured: ..."
    mr_mcc_raw: float | None = None  # the MCC itself x100 (-100 when no verdict is given: missing counts as wrong)
    # a served row's cell (`<variant>@vllm`, compress/serving.py) against its HF row's samples, item for item
    hf_vllm_n: int | None = None  # samples compared (same item and repeat on both backends)
    hf_vllm_identical: int | None = None  # identical output text
    hf_vllm_same_verdict: int | None = None  # scored the same (same correctness)
    hf_vllm_same_loglik: int | None = None  # multiple choice: the same option picked by log-likelihood
    hf_vllm_differing: list[str] | None = None  # ids of the items whose text differs (the first 100)
    hf_vllm_verdict_differs: list[str] | None = None  # ids of the items scored differently (the first 100)

    # fields with their own place in the report; every other number is shown under "Other metrics"
    REPORTED: ClassVar[frozenset[str]] = frozenset({
        "metric", "n", "eval_s", "accuracy", "instruction_following", "accuracy_std", "truncated", "repeat_loops",
        "rules", "breakdowns", "breakdown_counts", "judge_key", "judge_error", "perplexity", "nll_mean", "n_tokens",
        "seq_len", "tokenizer", "kl_mean", "kl_p50", "kl_p90", "kl_p99", "kl_max", "top1_agreement",
        "hf_vllm_n", "hf_vllm_identical", "hf_vllm_same_verdict", "hf_vllm_same_loglik", "hf_vllm_differing",
        "hf_vllm_verdict_differs"})
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset({"perplexity"})

    def merged(self, update: dict[str, Any]) -> CellMetrics:
        """A copy with `update` applied and validated (a misspelt field is an error, not a silent extra)."""
        return CellMetrics.model_validate({**self.model_dump(), **update})

    def value(self) -> float | None:
        """The headline number: the metric's own field when it has one (perplexity), else accuracy."""
        own = getattr(self, self.metric, None) if self.metric in type(self).model_fields else None
        return own if own is not None else self.accuracy

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in self.LOWER_IS_BETTER

    def other_metrics(self) -> dict[str, float]:
        """Numbers without a section of their own (log-likelihood scores, judge figures, ...), set ones only."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name not in self.REPORTED and isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = value
        return out


class Calibration(Record):
    """What calibrated a variant (the recipe's block with `auto` resolved) and which steps read it."""

    source: str
    n_samples: int
    seq_len: int
    used_by: list[str] = Field(default_factory=list)


class GgufSource(Record):
    """A baseline dequantized from a GGUF file: what the file held."""

    gguf_file: str
    bytes: int
    sha256: str
    architecture: str
    tensor_types: dict[str, int]
    dtype: str = "float32"
    converted_by: str = ""
    logits_round_trip: str = ""


class StepTiming(Record):
    method: str
    seconds: float


class Build(Record):
    """How a variant was made: its key, the steps, their timings, the storage format and its calibration."""

    key: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    timings: list[StepTiming] = Field(default_factory=list)
    format: str | None = None
    calibration: Calibration | None = None
    source: GgufSource | None = None  # the baseline's origin when it is a converted GGUF file
    traceback: str | None = None  # a failed variant's
    node: str | None = None  # the Ray node that built it (None: the study's own process)


Status = Literal["pending", "ok", "failed", "skipped", "interrupted"]


class VariantRecord(Record):
    variant: str
    key: str
    position: int | None = None
    status: Status | None = None
    reason: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    model_dir: str | None = None
    build: Build | None = None
    footprint: Footprint | None = None
    profile: Profile | None = None
    disk_bytes: int | None = None
    updated_at: float | None = None

    @property
    def steps_text(self) -> str:
        return " -> ".join(str(s.get("method")) for s in self.steps) or "FP"

    @property
    def serves(self) -> str | None:
        """A served row (`<variant>@vllm`, last step `serve:<backend>`): the HF row whose checkpoint it served."""
        if self.steps and str(self.steps[-1].get("method", "")).startswith("serve:"):
            return self.variant.rpartition("@")[0] or None
        return None


class CellRecord(Record):
    variant: str
    cell: str
    task: str
    metrics: CellMetrics


class StageRecord(Record):
    """An intermediate model of a chain (after step `stage`), evaluated so each step's cost shows."""

    variant: str
    stage: int
    method: str
    cell: str
    metrics: CellMetrics
    footprint: Footprint | None = None


class RunRecord(Record):
    id: int
    started_at: float
    finished_at: float | None = None
    status: Literal["running", "finished", "interrupted", "failed"] = "running"
    pid: int | None = None
    host: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    computed: list[str] = Field(default_factory=list)


class ResultRow(Record):
    """One row of results.json: a variant on a task, with its costs (a person's and a script's view)."""

    variant: str
    task: str
    metric: str
    value: float | None
    n: int | None
    delta_vs_baseline: float | None
    higher_is_better: bool
    truncated: float | None
    rules: dict[str, int] | None
    instruction_following: float | None
    accuracy_std: float | None
    weight_bytes: int | None
    bits_per_param: float | None
    n_params: int | None
    disk_bytes: int | None
    peak_memory_bytes: int | None
    load_rss_delta_bytes: int | None
    latency_ms_per_token: float | None
    ttft_ms: float | None
    tokens_per_s: float | None
    backend: str | None
    device: str | None
    dtype: str | None
    steps: str
    status: str
    reason: str | None
    extra_metrics: dict[str, float]
    breakdowns: dict[str, dict[str, float]]
    kl_mean: float | None = None  # a token-window cell: mean KL(FP || this model) per token (select: max_kl)


class ProfileSettings(Record):
    prompt_tokens: int
    new_tokens: int
    warmup: int
    repeats: int
    batch_sizes: list[int]


class ProfiledVariant(Record):
    """One model of a `compress profile` run: the dense model or one quantized variant of it."""

    variant: str
    method: str | None = None
    status: Literal["ok", "failed", "skipped"]
    reason: str | None = None
    profile: Profile | None = None
    disk_bytes: int | None = None
    weight_bytes_vs_params_x_dtype: float | None = None  # weights in memory / (parameters x dtype size)


class ProfileRun(Record):
    """`compress profile`: a model (or an architecture with random weights) and its quantized variants."""

    target: str
    kind: Literal["config", "model"]
    dtype: str
    device_requested: str
    host: Host
    settings: ProfileSettings
    weights: str = "real"  # or "random (architecture config only): accuracy not measured"
    shape_of: str | None = None
    published_parameters: int | None = None
    config: str | None = None
    n_params: int | None = None
    expected_dense_bytes: int | None = None
    variants: list[ProfiledVariant] = Field(default_factory=list)

"""slimlab's variants measured on a GPU in one timed pass (run it through benchmarks/gpu/run.sh; README.md there).

For SmolLM2-135M-Instruct (the real weights, from the GGUF; random weights of its shape when they did not reach the
machine) and Qwen2.5-1.5B-Instruct's shape with random weights, in bfloat16 and float16: the FP baseline and the
variants that run on the image (bnb int8 / nf4, GPTQ W4A16 g64 / W8A16, FP8 dynamic as transformers runs it by
default and through its FP8 kernel, SmoothQuant W8A8), each built on slimlab's build path (compress.build) and
then loaded back as it runs. Per row: weights in memory, CUDA allocator peaks after load and during generation,
NVML's process figure, TTFT and decode ms/token at each batch size with CUDA events (evaluate.profiling), the
batch-1 decode bandwidth against the copy bandwidth measured on the spot, and for real weights GSM8K CoT
accuracy (chat template, greedy) and perplexity / KL / top-1 agreement against the FP model on WikiText-2 windows,
every item's verdict written so GPU and CPU runs compare item by item.

Every part is timed; a part whose estimate does not fit before the deadline is skipped and recorded as such, and
gpu_results.json / gpu_results.md are rewritten after every part. `--dry-run` runs the same code on CPU with tiny
models (CI keeps it from rotting while no GPU is lent)."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gpu.report import Budget, MiB, PartSkipped, Results, run_part, summary_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED = 0
EMBEDDED_CONFIG = ROOT / "evaluate" / "embedded" / "tiny-reasoner" / "config.json"
FP8_KERNEL_NEEDS = "transformers' FP8 kernel (use_optimized_inference) needs CUDA with compute capability >= 8.9"


@dataclass(frozen=True)
class VariantSpec:
    name: str
    method: str | None = None  # None: the FP baseline
    params: tuple[tuple[str, Any], ...] = ()  # "$dtype" stands for the row's dtype
    load: str = "default"  # "fp8-kernel": CompressedTensorsConfig(use_optimized_inference=True) at load
    build_of: str | None = None  # reuse another variant's checkpoint (a second way of loading it)
    # random weights: the same compressed-tensors scheme and format with the grid chosen by round-to-nearest, since
    # on random weights only the format (what memory and latency depend on) is worth a GPTQ pass's minutes
    random_weights: tuple[str, tuple[tuple[str, Any], ...]] | None = None

    def step_args(self, dtype: str, real: bool) -> tuple[str, dict[str, Any]]:
        method, params = (self.method, self.params) if real or self.random_weights is None else self.random_weights
        return method, {k: dtype if v == "$dtype" else v for k, v in params}


BASELINE = VariantSpec("FP")
# The study's settings (recipes/smollm2.yaml): group 64 divides SmolLM2's 576 and Qwen's 1536 / 8960 inputs. Order
# is priority: what the deadline leaves out comes last (compressed kernels first, decompressed formats after).
VARIANTS = (
    VariantSpec("bnb-nf4", "bnb_4bit", (("quant_type", "nf4"), ("double_quant", True), ("compute_dtype", "$dtype"))),
    VariantSpec("bnb-int8", "bnb_int8"),
    VariantSpec("fp8-dynamic", "fp8", (("activations", "dynamic"),)),
    VariantSpec("fp8-dynamic-kernel", "fp8", (("activations", "dynamic"),), load="fp8-kernel",
                build_of="fp8-dynamic"),
    VariantSpec("gptq-w4-g64", "gptq", (("bits", 4), ("group_size", 64)),
                random_weights=("rtn", (("bits", 4), ("group_size", 64)))),
    VariantSpec("w8a8-smoothquant", "smoothquant_w8a8", random_weights=("smoothquant_w8a8", (("weights", "rtn"),))),
    VariantSpec("gptq-w8", "gptq", (("bits", 8), ("group_size", -1)),
                random_weights=("rtn", (("bits", 8), ("group_size", -1)))),
)


@dataclass
class Settings:
    mode: str
    device: str
    dtypes: tuple[str, ...]  # FP baselines
    variant_dtypes: tuple[str, ...]  # variants, in this order, after every baseline
    prompt_tokens: int
    new_tokens: int
    warmup: int
    repeats: int
    batch_sizes: tuple[int, ...]
    gsm8k_n: int
    gsm8k_batch: int
    max_new_tokens: int | None  # None: the task's own budget for chain of thought (512)
    windows_n: int
    seq_len: int
    calibration_real: tuple[int, int]  # (n_samples, seq_len) of WikiText-2 for real weights (the study's)
    calibration_random: tuple[int, int]  # random weights: the text is immaterial, only the time counts
    copy_bytes: int
    real_model: str
    real_key: str  # the real model's row name, also when random weights of its shape stand in for it
    real_fallback_config: Path
    random_configs: tuple[tuple[str, Path], ...]
    estimates: dict[str, float] = field(default_factory=dict)  # seconds per kind of part, before one ran


def preset(dry_run: bool) -> Settings:
    if dry_run:
        return Settings(
            mode="dry-run (CPU, tiny models)", device="cpu", dtypes=("bfloat16", "float16"),
            variant_dtypes=("bfloat16",), prompt_tokens=16, new_tokens=8, warmup=1, repeats=1, batch_sizes=(1, 2),
            gsm8k_n=4, gsm8k_batch=4, max_new_tokens=24, windows_n=2, seq_len=64, calibration_real=(8, 64),
            calibration_random=(8, 64), copy_bytes=64 * MiB, real_model="embedded:tiny-reasoner",
            real_key="tiny-reasoner", real_fallback_config=EMBEDDED_CONFIG,
            random_configs=(("tiny-random", HERE / "configs" / "tiny-random.json"),),
            estimates={"prepare": 5, "build": 5, "profile": 3, "gsm8k": 3, "windows": 2})
    return Settings(
        mode="GPU", device="cuda", dtypes=("bfloat16", "float16"), variant_dtypes=("bfloat16", "float16"),
        prompt_tokens=64, new_tokens=32, warmup=1, repeats=3, batch_sizes=(1, 8, 32), gsm8k_n=50, gsm8k_batch=50,
        max_new_tokens=None, windows_n=16, seq_len=512, calibration_real=(64, 256), calibration_random=(16, 256),
        copy_bytes=4 * 2**30, real_model="smollm2-135m-instruct", real_key="smollm2-135m-instruct",
        real_fallback_config=HERE / "configs" / "smollm2-135m-instruct.json",
        random_configs=(("qwen2.5-1.5b-instruct", ROOT / "compress" / "configs" / "qwen2.5-1.5b-instruct.json"),),
        estimates={"prepare": 30, "build": 45, "profile": 20, "gsm8k": 30, "windows": 5})


@dataclass
class ModelSpec:
    key: str
    source: str  # a directory transformers loads
    real: bool
    weights: str  # in words, for the report
    tokenizer: Any
    calibration: tuple[int, int]
    n_params: int | None = None
    psets: dict[str, Any] = field(default_factory=dict)  # real weights: task -> (prompt set, decoding)


# ------------------------------------------------------------------------------------------- helpers


def free_device(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def nvml_reading() -> dict[str, Any]:
    """NVML's process and device figures through evaluate.profiling (an error record where NVML is unavailable)."""
    from evaluate import profiling

    reader = getattr(profiling, "_nvml_memory", None)
    if reader is None:
        return {"error": "evaluate.profiling has no NVML reader"}
    return reader().model_dump()


def environment(settings: Settings) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "device": "CPU"}
    for name in ("transformers", "compressed-tensors", "llmcompressor", "bitsandbytes", "accelerate", "datasets",
                 "pydantic", "gguf", "numpy", "safetensors", "pyarrow"):
        try:
            env[name.replace("-", "_")] = md.version(name)
        except md.PackageNotFoundError:
            env[name.replace("-", "_")] = "not installed"
    if settings.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
        env["device"] += f"{props.minor})"
        env["capability"] = [props.major, props.minor]
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            env["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        except Exception as exc:
            env["driver"] = f"unknown ({type(exc).__name__})"
    from evaluate.profiling import host_description

    env["host"] = host_description().model_dump()
    return env


def copy_bandwidth(device: str, nbytes: int, repeats: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Device-to-device copy of `nbytes` (random data, never zeros), median of `repeats`; counts read + write."""
    import torch

    cuda = device.startswith("cuda")
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_(-1, 1)
    dst = torch.empty_like(src)
    times = []
    for i in range(warmup + repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds = time.perf_counter() - t0
        if i >= warmup:
            times.append(seconds)
    if not torch.equal(dst, src):
        raise RuntimeError("the copy did not reproduce its source")
    median = statistics.median(times)
    moved = 2 * n * 4
    del src, dst
    free_device(device)
    return {"bytes_copied": n * 4, "bytes_moved": moved, "seconds_median": median, "seconds_min": min(times),
            "bytes_per_s": moved / median, "repeats": repeats,
            "method": f"{n * 4 / 2**30:.2f} GiB tensor.copy_, {'CUDA events' if cuda else 'perf_counter'}, median of "
                      f"{repeats} after {warmup} warm-up"}


def execution_of(model: Any) -> dict[str, Any]:
    """Whether the quantized layers run compressed (their own kernel on packed / low-precision weights) or
    decompressed (weights dequantized to the model dtype, a dense matmul), read off the loaded modules."""
    from collections import Counter

    import torch

    from evaluate.memory import is_linear_like

    classes: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    ct_dense = ct_packed = 0
    for _, module in model.named_modules():
        if not is_linear_like(module):
            continue
        classes[type(module).__name__] += 1
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor):
            dtypes[str(w.dtype).removeprefix("torch.")] += 1
        if getattr(module, "quantization_scheme", None) is not None:
            dense = isinstance(w, torch.Tensor) and w.is_floating_point() and w.element_size() >= 2
            ct_dense, ct_packed = ct_dense + dense, ct_packed + (not dense)
    if classes.get("CompressedTensorsFP8Linear"):
        execution = "compressed"
        detail = (f"{classes['CompressedTensorsFP8Linear']} layers hold float8_e4m3fn weights and run torch scaled_mm "
                  "with per-row dynamic FP8 activations (transformers' CompressedTensorsFP8Linear)")
    elif classes.get("Linear8bitLt"):
        execution = "compressed"
        detail = "bitsandbytes LLM.int8: int8 weights, int8 matmul with float16 outlier columns"
        if getattr(model, "dtype", None) == torch.bfloat16:
            detail += " (bfloat16 inputs cast to float16 on every matmul)"
    elif classes.get("Linear4bit"):
        execution = "compressed"
        detail = "bitsandbytes 4-bit: packed weights dequantized inside its kernels, matmul in the compute dtype"
    elif ct_dense:
        execution = "decompressed"
        detail = (f"{ct_dense} compressed-tensors layers dequantized to {dtypes.most_common(1)[0][0]} at load "
                  "(transformers' default): dense matmul, quantized activations emulated by quantize-dequantize")
    elif ct_packed:
        execution = "compressed"
        detail = f"{ct_packed} compressed-tensors layers still packed"
    else:
        execution, detail = "dense", "dense PyTorch matmul"
    return {"execution": execution, "execution_detail": detail, "linear_classes": dict(classes),
            "linear_weight_dtypes": dict(dtypes)}


def bytes_per_decode_step(model: Any, weight_bytes: int) -> int:
    """Weights a batch-1 decode step reads: all of them, but an untied input embedding only by one row."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and getattr(out, "weight", None) is not None and \
        out.weight.untyped_storage().data_ptr() == emb.untyped_storage().data_ptr()
    if tied:
        return weight_bytes
    row = emb.shape[1] * emb.element_size()
    return weight_bytes - emb.numel() * emb.element_size() + row


def describe_step(step: Any, spec: Any) -> str:
    """The step's short label for tables ("W4 g64"): MethodParams.describe(), or the registry's older spelling."""
    own = getattr(step, "describe", None)
    if callable(own):
        return own()
    return spec.describe(step) if callable(getattr(spec, "describe", None)) else ""


def load_kwargs(variant: VariantSpec) -> dict[str, Any]:
    if variant.load == "fp8-kernel":
        from transformers import CompressedTensorsConfig

        return {"quantization_config": CompressedTensorsConfig(use_optimized_inference=True)}
    return {}


# ------------------------------------------------------------------------------------------ the parts


class Run:
    def __init__(self, settings: Settings, results: Results, budget: Budget, work: Path) -> None:
        self.s, self.results, self.budget, self.work = settings, results, budget, work
        self.cuda = settings.device.startswith("cuda")
        self.models: list[ModelSpec] = []
        self.copy_bw: float | None = None
        self.built: dict[tuple[str, str, str], Path] = {}  # (model, dtype, variant) -> checkpoint directory

    def part(self, name: str, kind: str, key: str, fn: Any) -> tuple[str, Any]:
        return run_part(self.results, self.budget, name, kind, key, fn)

    # setup -----------------------------------------------------------------------------------
    def prepare(self, gguf: str | None, real_missing: str | None = None) -> None:
        s = self.s
        status, value = self.part("copy bandwidth", "prepare", "bandwidth",
                                  lambda: copy_bandwidth(s.device, s.copy_bytes))
        if status == "ok":
            self.results.data["bandwidth"] = value
            self.copy_bw = value["bytes_per_s"]
        real_ref = gguf or s.real_model
        status, value = self.part(f"real model: {real_ref}", "prepare", "real",
                                  lambda: self.prepare_real(real_ref, real_missing))
        real = value if status == "ok" else None
        tokenizer = real.tokenizer if real is not None else self.embedded_tokenizer()
        if real is None:
            key = s.real_key
            why = value
            status, value = self.part(f"random weights of {key}'s shape", "prepare", "random",
                                      lambda: self.prepare_random(key, s.real_fallback_config, tokenizer,
                                                                  f"the real weights are not here ({why})"))
            if status == "ok":
                self.models.append(value)
        else:
            self.models.append(real)
        for key, config in s.random_configs:
            status, value = self.part(f"random weights of {key}'s shape", "prepare", "random",
                                      lambda key=key, config=config: self.prepare_random(key, config, tokenizer))
            if status == "ok":
                self.models.append(value)
        self.results.data["models"] = [{"key": m.key, "weights": m.weights, "source": m.source, "n_params": m.n_params,
                                        "calibration": list(m.calibration)} for m in self.models]
        self.results.write()

    def embedded_tokenizer(self) -> Any:
        from evaluate.models import load_tokenizer, resolve_model_source

        return load_tokenizer(resolve_model_source("embedded:tiny-reasoner").location)

    def prepare_real(self, ref: str, missing: str | None = None) -> ModelSpec:
        from evaluate.generation import DecodingConfig
        from evaluate.harness import build_prompt_set
        from evaluate.models import load_tokenizer, resolve_model_source, source_info
        from evaluate.prompts import PromptConfig, decoding_for, resolve_chat_template

        if missing:
            raise PartSkipped(missing)
        source = resolve_model_source(ref)
        if source.kind == "hub":
            raise PartSkipped(f"{ref!r} would need the Hugging Face hub, which the device cannot reach")
        source = source.materialize()  # a GGUF file is dequantized once, into $SLIMLAB_CACHE
        tok = load_tokenizer(source.location)
        origin = source_info(source.location)
        key = "smollm2-135m-instruct" if "smollm2" in ref.lower() else self.s.real_key
        what = (f"real weights: {origin['gguf_file'].rsplit('/', 1)[-1]} (sha256 {origin['sha256'][:12]}), "
                f"dequantized to float32 and cast to each row's dtype" if origin else f"real weights ({ref})")
        spec = ModelSpec(key, source.location, True, what, tok, self.s.calibration_real)
        s = self.s
        prompt = PromptConfig("cot", 0, False, resolve_chat_template("auto", tok))
        gsm = build_prompt_set("gsm8k", "gsm8k", s.gsm8k_n, SEED, prompt, tok)
        stop, budget = decoding_for(gsm.task, prompt)
        spec.psets["gsm8k"] = (gsm, DecodingConfig(max_new_tokens=s.max_new_tokens or budget, stop=stop, seed=SEED,
                                                   batch_size=s.gsm8k_batch))
        spec.psets["perplexity"] = (build_prompt_set("perplexity", "perplexity", s.windows_n, SEED, PromptConfig(),
                                                     tok, seq_len=s.seq_len), None)
        return spec

    def prepare_random(self, key: str, config: Path, tokenizer: Any, why: str | None = None) -> ModelSpec:
        import json

        import torch

        from compress.profile_cli import build_random_checkpoint, config_meta

        vocab = json.loads(Path(config).read_text())["vocab_size"]
        if len(tokenizer) > vocab:  # calibration ids must exist in the random model's embedding
            tokenizer = self.embedded_tokenizer()
            if len(tokenizer) > vocab:
                raise PartSkipped(f"no tokenizer here fits {key}'s vocabulary of {vocab}")
        out = self.work / "models" / key
        shutil.rmtree(out, ignore_errors=True)
        try:
            with torch.device(self.s.device):  # random init on the GPU takes seconds; a 1.5B model on CPU, long
                n_params = build_random_checkpoint(str(config), "bfloat16", out, seed=SEED)
        except Exception:
            if not self.cuda:
                raise
            shutil.rmtree(out, ignore_errors=True)
            n_params = build_random_checkpoint(str(config), "bfloat16", out, seed=SEED)  # on CPU, then
        free_device(self.s.device)
        tokenizer.save_pretrained(out)  # builds save it beside each variant; calibration encodes with it
        meta = config_meta(str(config))
        what = (f"random weights of {meta.get('shape_of', key)}'s shape (bfloat16 checkpoint, {n_params:,} parameters;"
                f" cast to each row's dtype): accuracy not measured")
        if why:
            what += f"; {why}"
        return ModelSpec(key, str(out), False, what, tokenizer, self.s.calibration_random, n_params)

    # one row ---------------------------------------------------------------------------------
    def row(self, model: ModelSpec, dtype: str, variant: VariantSpec) -> None:
        from compress.registry import METHODS, load_builtin_methods, make_step

        label = f"{model.key} {dtype} {variant.name}"
        row = self.results.row({"model": model.key, "dtype": dtype, "variant": variant.name,
                                "method": variant.method, "status": "pending", "weights": "real" if model.real
                                else "random", "load": variant.load})
        if variant.method is not None:
            load_builtin_methods()
            method, params = variant.step_args(dtype, model.real)
            step = make_step(method, **params)
            row["setting"] = describe_step(step, METHODS[method])
            row["steps"] = [step.recipe_dict()]
            if method != variant.method or params != variant.step_args(dtype, True)[1]:
                row["built_with"] = (f"{method} {row['setting']}: the same compressed-tensors scheme and format as "
                                     f"{variant.method}; on random weights only the format matters to memory and "
                                     "latency, not how the grid was chosen")
        if variant.load == "fp8-kernel" and not self.cuda:
            row.update(status="skipped", reason=f"{FP8_KERNEL_NEEDS}; this run is on {self.s.device}")
            self.results.part(f"{label}: load", "profile", "skipped", 0.0, row["reason"])
            self.results.write()
            return
        location = model.source
        if variant.method is not None:
            ref = (model.key, dtype, variant.build_of or variant.name)
            if variant.build_of is not None:
                if ref not in self.built:
                    row.update(status="skipped", reason=f"{variant.build_of} was not built")
                    self.results.write()
                    return
            else:
                status, value = self.part(f"{label}: build", "build", f"{model.key}/{method}",
                                          lambda: self.build(model, dtype, variant, step))
                if status != "ok":
                    row.update(status=status, reason=f"build {status}: {value}")
                    self.results.write()
                    return
                self.built[ref] = value["dir"]
                row.update(build_s=value["seconds"], disk_bytes=value["disk_bytes"], format=value["format"])
            location = str(self.built[ref])
        status, value = self.part(f"{label}: load + profile", "profile", model.key,
                                  lambda: self.profile(location, dtype, variant))
        if status != "ok":
            row.update(status=status, reason=f"profile {status}: {value}")
            self.results.write()
            free_device(self.s.device)
            return
        loaded, info = value
        del value  # the loaded model must go with `loaded`, before the next row measures its memory
        row.update(info, status="ok", reason=None)
        if not model.real:
            row["accuracy"] = "not measured: random weights"
        else:
            row["accuracy"] = {}
            self.accuracy(loaded, model, dtype, variant, row)
        del loaded
        free_device(self.s.device)
        self.results.write()

    def build(self, model: ModelSpec, dtype: str, variant: VariantSpec, step: Any) -> dict[str, Any]:
        from compress.build import SkipVariant, build
        from compress.calibration import calibration_provider
        from compress.registry import CalibrationData
        from evaluate.models import disk_bytes

        free_device(self.s.device)
        out = self.work / "variants" / model.key / dtype / variant.name
        shutil.rmtree(out, ignore_errors=True)
        n, seq_len = model.calibration
        calibration = CalibrationData("wikitext2", n, seq_len, calibration_provider("wikitext2", SEED))
        t0 = time.perf_counter()
        try:
            record = build(model.source, [step], out / "model", model.tokenizer, dtype=dtype, device=self.s.device,
                           seed=SEED, calibration=calibration)
        except SkipVariant as exc:
            raise PartSkipped(str(exc)) from None
        finally:
            if "llmcompressor" in sys.modules:  # its session keeps the last model it compressed until the next one
                from llmcompressor.core import active_session

                active_session().reset()
            free_device(self.s.device)
        return {"dir": out / "model", "seconds": time.perf_counter() - t0, "format": record.format,
                "disk_bytes": disk_bytes(out / "model")}

    def profile(self, location: str, dtype: str, variant: VariantSpec) -> tuple[Any, dict[str, Any]]:
        """evaluate.profiling.profile_model_dir's protocol, in this process and keeping the model for accuracy:
        allocator peaks reset before loading and (in profile_loaded) before each batch size's generation."""
        import torch

        from evaluate.memory import measure_footprint, stored_bits_per_param
        from evaluate.models import load_model
        from evaluate.profiling import ProfileConfig, profile_loaded

        s = self.s
        free_device(s.device)
        info: dict[str, Any] = {}
        nvml_before = nvml_reading()
        if self.cuda:
            info["cuda_allocated_before_load"] = torch.cuda.memory_allocated()  # 0 unless an earlier row leaked
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model = load_model(location, dtype, s.device, **load_kwargs(variant))
        if self.cuda:
            torch.cuda.synchronize()
        info["load_s"] = time.perf_counter() - t0
        nvml_after = nvml_reading()
        if self.cuda:
            info["cuda_load_max_allocated"] = torch.cuda.max_memory_allocated()
            info["cuda_load_max_reserved"] = torch.cuda.max_memory_reserved()
            info["cuda_allocated_after_load"] = torch.cuda.memory_allocated()
        info["nvml_after_load_bytes"] = nvml_after.get("process_bytes")
        if nvml_before.get("process_bytes") is not None and nvml_after.get("process_bytes") is not None:
            info["nvml_load_delta_bytes"] = nvml_after["process_bytes"] - nvml_before["process_bytes"]
        info["nvml_after_load"] = nvml_after
        fp = measure_footprint(model)
        info.update(execution_of(model))
        if variant.load == "fp8-kernel" and info["execution"] != "compressed":
            info["execution_detail"] += "; use_optimized_inference was asked for but transformers did not use it"
        info.update(weight_bytes=fp.weight_bytes, bits_per_param=fp.bits_per_param, n_params=fp.n_params,
                    kernel=fp.backend.describe(), attention=fp.backend.attention, format=fp.backend.format)
        if "CompressedTensorsFP8Linear" in info["linear_classes"]:  # slimlab's format registry reads it as dense
            info["kernel"] = f"{info['execution_detail']}; {fp.backend.device}"
        info["stored_bits_per_param"] = stored_bits_per_param(location, model)
        config = ProfileConfig(s.prompt_tokens, s.new_tokens, s.warmup, s.repeats, s.batch_sizes)
        t1 = time.perf_counter()
        batches = profile_loaded(model, model.config.vocab_size, config, seed=SEED)
        info["profile_s"] = time.perf_counter() - t1
        info["batches"] = [{
            "batch_size": b.batch_size, "ttft_ms": b.ttft_ms, "ms_per_token": b.latency_ms_per_token,
            "in_run_ms_per_token": b.decode_ms_per_token_in_run, "per_token_p50_ms": b.per_token_p50_ms,
            "per_token_p90_ms": b.per_token_p90_ms, "tokens_per_s": b.tokens_per_s, "end_to_end_ms": b.end_to_end_ms,
            "kv_cache_bytes": b.kv_cache_bytes, "cuda_max_allocated": b.cuda_max_memory_allocated,
            "cuda_max_reserved": b.cuda_max_memory_reserved,
            "nvml_process_bytes": b.nvml.process_bytes if b.nvml else None,
            "nvml_device_used_bytes": b.nvml.device_used_bytes if b.nvml else None,
            "nvml_error": b.nvml.error if b.nvml else None, "timer": b.timer,
            "paused_during_timing": b.paused_during_timing} for b in batches]
        b1 = next((b for b in batches if b.batch_size == 1), None)
        if b1 is not None and b1.latency_ms_per_token:
            step_bytes = bytes_per_decode_step(model, fp.weight_bytes)
            achieved = step_bytes / (b1.latency_ms_per_token / 1000)
            info["bandwidth"] = {
                "bytes_per_step": step_bytes, "ms_per_token": b1.latency_ms_per_token, "achieved_bytes_per_s": achieved,
                "copy_bytes_per_s": self.copy_bw,
                "fraction_of_copy": achieved / self.copy_bw if self.copy_bw else None,
                "bound_ms_per_token": 1000 * step_bytes / self.copy_bw if self.copy_bw else None}
        info["footprint"] = fp.model_dump(exclude={"sparsity_per_layer"})
        return model, info

    def accuracy(self, loaded: Any, model: ModelSpec, dtype: str, variant: VariantSpec, row: dict[str, Any]) -> None:
        from evaluate.fidelity import evaluate_windows
        from evaluate.generation import generate
        from evaluate.harness import summarize
        from evaluate.models import load_model
        from evaluate.scoring import score_output

        label = f"{model.key} {dtype} {variant.name}"
        tag = f"{model.key}-{dtype}-{variant.name}"
        base = {"model": model.key, "dtype": dtype, "variant": variant.name}

        def gsm8k() -> dict[str, Any]:  # what evaluate.harness.evaluate_cell does for one greedy repeat
            pset, decoding = model.psets["gsm8k"]
            t0 = time.perf_counter()
            generations = generate(loaded, model.tokenizer, pset.prompts, decoding)
            samples = [{"id": item.id, "repeat": 0, "output": g.text, "finish": g.finish, "new_tokens": g.n_tokens,
                        "gold": item.gold, **score_output(pset.task, item, g.text).as_dict(), "meta": item.meta}
                       for item, g in zip(pset.items, generations, strict=True)]
            m = summarize(samples, 1, pset.task.breakdown, pset.task.metric)
            self.results.samples([{**base, "task": "gsm8k", **{k: smp.get(k) for k in (
                "id", "correct", "score", "parsed", "gold", "rule", "followed", "finish", "new_tokens", "output")}}
                for smp in samples])
            return {"accuracy": m.accuracy, "n": m.n, "instruction_following": m.instruction_following,
                    "truncated": m.truncated, "repeat_loops": m.repeat_loops, "rules": m.rules,
                    "max_new_tokens": decoding.max_new_tokens, "batch_size": decoding.batch_size,
                    "eval_s": time.perf_counter() - t0}

        reference: list[Any] = []

        def windows() -> dict[str, Any]:
            pset, _ = model.psets["perplexity"]
            partial = self.work / "samples" / f"{tag}-perplexity.partial.jsonl"
            partial.unlink(missing_ok=True)
            ids = [[int(t) for t in p.split()] for p in pset.prompts]

            def load_reference() -> Any:  # the FP model in the same dtype, beside the variant
                reference.append(load_model(model.source, dtype, self.s.device))
                return reference[0]

            t0 = time.perf_counter()
            m, samples = evaluate_windows(loaded, ids, [it.id for it in pset.items], partial,
                                          load_reference if variant.method is not None else None)
            self.results.samples([{**base, "task": "perplexity", "id": smp["id"], "nll": smp["nll"],
                                   "n_tokens": smp["n_tokens"], "top1_same": smp.get("top1_same"),
                                   "kl_mean": statistics.fmean(smp["kl"]) if smp.get("kl") else None}
                                  for smp in samples])
            return {**{k: getattr(m, k) for k in ("perplexity", "nll_mean", "n", "n_tokens", "seq_len", "kl_mean",
                                                  "kl_p50", "kl_p90", "kl_p99", "kl_max", "top1_agreement")},
                    "reference": f"FP {dtype}" if variant.method is not None else None,
                    "eval_s": time.perf_counter() - t0}

        for task, fn in (("gsm8k", gsm8k), ("perplexity", windows)):
            kind = "gsm8k" if task == "gsm8k" else "windows"
            status, value = self.part(f"{label}: {task}", kind, model.key, fn)
            row["accuracy"][task] = value if status == "ok" else {"status": status, "reason": value}
            self.results.write()
        reference.clear()

    def forget(self, model: ModelSpec, dtype: str, variant: VariantSpec, pending: list[VariantSpec]) -> None:
        """Remove a built checkpoint once no pending row loads it again."""
        ref = (model.key, dtype, variant.build_of or variant.name)
        if ref in self.built and not any((p.build_of or p.name) == ref[2] for p in pending):
            shutil.rmtree(self.built.pop(ref).parent, ignore_errors=True)

    def all_rows(self, only: set[str] | None) -> None:
        variants = [v for v in VARIANTS if only is None or v.name in only]
        for dtype in self.s.dtypes:
            for model in self.models:
                self.row(model, dtype, BASELINE)
        for dtype in self.s.variant_dtypes:
            for i, variant in enumerate(variants):
                for model in self.models:
                    self.row(model, dtype, variant)
                    self.forget(model, dtype, variant, variants[i + 1:])


# ---------------------------------------------------------------------------------------------- main


def quiet_libraries() -> None:
    """Keep the output readable (the device tool returns its last 12,000 characters): llm-compressor reconfigures
    its logger on every oneshot, from these variables."""
    import logging
    import warnings

    # e.g. bitsandbytes warns on every int8 matmul of a bfloat16 model that it casts the inputs to float16
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("slimlab").setLevel(logging.WARNING)
    # bitsandbytes logs on every int8 matmul of a bfloat16 model that it casts the inputs to float16 (the row says so)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "out" / "gpu"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, tiny n (what CI runs)")
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct's GGUF file (reassembled by run.sh from the carry)")
    p.add_argument("--real-missing", help="why the real weights are not here (run.sh): random weights of their shape")
    p.add_argument("--deadline-at", type=float, help="epoch seconds after which no part starts (run.sh sets it)")
    p.add_argument("--deadline-s", type=float, default=450.0, help="without --deadline-at: seconds from now")
    p.add_argument("--started-at", type=float, help="epoch seconds when run.sh started (for the report)")
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed at the end)")
    a = p.parse_args(argv)
    settings = preset(a.dry_run)
    start = a.started_at or time.time()
    deadline_at = a.deadline_at or time.time() + a.deadline_s
    budget = Budget(deadline_at, settings.estimates)
    meta = {"mode": settings.mode, "deadline_s": round(deadline_at - start), "run_started_at": start,
            "settings": {**{k: v for k, v in asdict(settings).items() if k not in ("estimates", "random_configs",
                                                                                   "real_fallback_config")},
                         "timer": "CUDA events" if settings.device.startswith("cuda") else "perf_counter",
                         "accuracy": (f"GSM8K test, {settings.gsm8k_n} items (seed {SEED}), chain of thought in the "
                                      "chat template, greedy, the task's stop and budget; WikiText-2 test, "
                                      f"{settings.windows_n} windows of {settings.seq_len} tokens, KL and top-1 vs "
                                      "the FP model of the same dtype; real weights only")},
            "env": {}, "bandwidth": None, "models": []}
    results = Results(a.out, meta, started=start)
    results.part("run.sh start-up before measure.py (stash, versions, install, reassembly)", "prepare", "ok",
                 time.time() - start)
    own_work = a.work is None
    work = Path(tempfile.mkdtemp(prefix="slimlab-gpu-")) if own_work else a.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SLIMLAB_CACHE", str(work / "cache"))
    status = "complete"
    from evaluate.interrupts import interruptible

    try:
        with interruptible():  # SIGTERM (the hard deadline in run.sh) ends the part in progress as 'cut'
            t0 = time.time()
            quiet_libraries()
            import torch

            torch.manual_seed(SEED)
            if settings.device.startswith("cuda") and not torch.cuda.is_available():
                raise RuntimeError("no CUDA device is visible; for the CPU dry run use --dry-run (or DEVICE=cpu)")
            results.data["env"] = environment(settings)
            results.part("imports + environment", "prepare", "ok", time.time() - t0)
            results.write()
            run = Run(settings, results, budget, work)
            run.prepare(a.gguf, a.real_missing)
            run.all_rows(set(a.only.split(",")) if a.only else None)
    except KeyboardInterrupt:
        status = "cut at the hard deadline (run.sh's timeout): the part in progress is recorded as cut"
        for row in results.rows:
            if row.get("status") == "pending":
                row.update(status="cut", reason="stopped by the hard deadline while being measured")
    except Exception as exc:  # outside any part (imports, environment): recorded, then raised
        status = f"failed: {type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        skipped = sum(p["status"] == "skipped" and (p["reason"] or "").startswith("deadline")
                      for p in results.data["parts"])
        if status == "complete" and skipped:
            status = f"complete up to the deadline: {skipped} parts skipped for time"
        results.write(status)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + summary_table(results.data))
    print(f"\nstatus: {results.data['status']}; {results.data['elapsed_s']:.0f} s since run.sh started; results in "
          f"{a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

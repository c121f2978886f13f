"""`compress profile MODEL_OR_CONFIG`: memory and speed of one model and its quantized variants, with
no study around it. Given only an architecture (a shipped config such as `qwen2.5-0.5b-instruct`, a
config.json, or a directory holding one without weights) it builds random weights of the real shape,
so a real-size model can be measured without downloading it; accuracy is then not reported.

Each variant goes the way the study runner takes it: built, saved, then loaded and profiled in a
fresh process (evaluate.profiling), so its load and generation peaks are its own."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.build import build
from compress.calibration import calibration_provider
from compress.recipe import _suggest
from compress.registry import CalibrationData, load_builtin_methods, make_step
from evaluate.models import ModelSourceError, load_tokenizer, resolve_model_source, torch_dtype
from evaluate.profiling import ProfileConfig, host_description, profile_in_subprocess, thread_tuning
from evaluate.records import ProfiledVariant, ProfileRun, ProfileSettings

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class ProfileTargetError(ValueError):
    pass


def shipped_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


@dataclass(frozen=True)
class Target:
    ref: str
    kind: str  # "config" (random weights of the real shape) or "model" (real weights)
    location: str  # the config.json path, or the model's directory / hub id


def resolve_target(ref: str) -> Target:
    """A shipped config name (with or without 'config:' and '-instruct'), a config .json, a directory with
    config.json but no weights, or any model reference the study accepts."""

    name = ref.removeprefix("config:").lower()
    configs = shipped_configs()
    for candidate in (name, f"{name}-instruct"):
        if candidate in configs:
            return Target(ref, "config", str(configs[candidate]))
    if ref.startswith("config:"):
        raise ProfileTargetError(f"no shipped config {name!r}; shipped: {', '.join(configs)}")
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".json":
        return Target(ref, "config", str(path.resolve()))
    if path.is_dir() and (path / "config.json").exists() and not any(
            p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        return Target(ref, "config", str((path / "config.json").resolve()))
    try:
        source = resolve_model_source(ref)
    except ModelSourceError as exc:
        raise ProfileTargetError(f"{exc}; or a shipped config: {', '.join(configs)}") from exc
    return Target(ref, "model", source.location)


def config_meta(config_path: str) -> dict:
    data = json.loads(Path(config_path).read_text())
    return data.get("_slimlab", {})


def build_random_checkpoint(config_path: str, dtype: str, out_dir: Path, seed: int = 0) -> int:
    """Random weights of the config's shape, saved as a checkpoint; returns the parameter count
    (tied weights counted once, as torch's parameters() does)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_path, out_dir / "config.json")
    config = AutoConfig.from_pretrained(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    del model
    return n_params


def count_parameters(config_path: str) -> int:
    """Parameters of the architecture, counted on the meta device (no memory used)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(config_path, Path(tmp) / "config.json")
        config = AutoConfig.from_pretrained(tmp)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_fits(n_params: int, dtype: str, device: str) -> None:
    """Refuse early, with the numbers, a model this machine cannot hold: on CPU, loading peaks at up to
    2x the dense weights (measured on Qwen2.5-0.5B fp32, 1.84 GiB of weights: 2.83 GiB loading the dense
    checkpoint, up to 3.53 GiB loading its bitsandbytes variants), plus ~1 GiB of runtime."""
    import psutil

    need = 2.0 * n_params * DTYPE_BYTES[dtype] + 2**30
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
        where = "GPU memory"
        need = n_params * DTYPE_BYTES[dtype] * 1.2 + 2**30
    else:
        have = psutil.virtual_memory().available
        where = "available RAM"
    if need > have:
        smaller = " or --dtype bfloat16" if dtype == "float32" else ""
        raise ProfileTargetError(f"{n_params / 1e9:.2f}B parameters in {dtype} need about {need / 2**30:.1f} GiB; "
                                 f"{where} is {have / 2**30:.1f} GiB: choose a smaller config{smaller}")


def build_variant(method: str, source_dir: str, dtype: str, device: str, out_dir: Path) -> Path:
    """One registered method with default parameters applied to the model at `source_dir`, built and saved the
    way the study runner does it (compress.build: the method's own format, read back by load_model)."""
    # a random-weights checkpoint has no tokenizer: methods that need one (calibration) fail and say so
    has_tokenizer = not Path(source_dir).is_dir() or (Path(source_dir) / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(source_dir) if has_tokenizer else None
    calibration = (CalibrationData("synthetic", 64, 256, calibration_provider("synthetic", 0))
                   if tokenizer is not None else None)
    build(source_dir, [make_step(method)], out_dir / "model", tokenizer, dtype=dtype, device=device,
          calibration=calibration)
    return out_dir / "model"


def _weights_on_disk(directory: Path) -> int | None:
    if not directory.is_dir():
        return None
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES) or None


def check_methods(names: list[str], device: str) -> dict[str, str]:
    """Unknown methods are errors; CUDA-only methods on a CPU run are skipped with their reason."""

    methods = load_builtin_methods()
    skipped = {}
    for name in names:
        if name not in methods:
            raise ProfileTargetError(f"--quantize {name!r}: no such method; " + _suggest(name, list(methods)))
        if methods[name].needs_cuda and not device.startswith("cuda"):
            skipped[name] = f"method {name!r} needs a CUDA GPU; --device is {device!r}"
    return skipped


def profile_target(ref: str, dtype: str = "float32", device: str = "cpu", quantize: tuple[str, ...] = (),
                   config: ProfileConfig | None = None, workdir: Path | None = None, log: Any = print) -> ProfileRun:
    """Profile the dense model and each quantized variant, each built on the study's build path."""
    config = config or ProfileConfig()
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProfileTargetError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    target = resolve_target(ref)
    skipped = check_methods(list(quantize), device)
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="slimlab-profile-")) if own_tmp else Path(workdir)
    result = ProfileRun(target=ref, kind=target.kind, dtype=dtype, device_requested=device, host=host_description(),
                        settings=ProfileSettings(prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens,
                                                 warmup=config.warmup, repeats=config.repeats,
                                                 batch_sizes=list(config.batch_sizes)))
    try:
        if target.kind == "config":
            meta = config_meta(target.location)
            check_fits(count_parameters(target.location), dtype, device)
            log(f"building random weights of {ref} ({dtype})")
            dense = work / "dense"
            n_params = build_random_checkpoint(target.location, dtype, dense)
            result.weights = "random (architecture config only): accuracy not measured"
            result.shape_of, result.published_parameters = meta.get("shape_of"), meta.get("published_parameters")
            result.config = target.location
            source = str(dense)
        else:
            source, n_params = target.location, None
        runs: list[tuple[str, str | None, str]] = [(f"dense {dtype}", None, source)]
        for method in quantize:
            if method in skipped:
                result.variants.append(ProfiledVariant(variant=method, method=method, status="skipped",
                                                       reason=skipped[method]))
                continue
            runs.append((method, method, ""))
        for label, method, location in runs:
            try:
                if method is not None:
                    log(f"building {method} from {source}")
                    location = str(build_variant(method, source, dtype, device, work / method))
                log(f"profiling {label}")
                prof = profile_in_subprocess(location, dtype, device, config)
            except Exception as exc:  # one variant failing must not lose the others' numbers
                result.variants.append(ProfiledVariant(variant=label, method=method, status="failed",
                                                       reason=f"{type(exc).__name__}: {exc}"[:1500]))
                continue
            if n_params is None and prof.footprint is not None:
                n_params = prof.footprint.n_params
            result.variants.append(ProfiledVariant(variant=label, method=method, status="ok", profile=prof,
                                                   disk_bytes=_weights_on_disk(Path(location))))
        result.n_params = n_params
        result.expected_dense_bytes = n_params * DTYPE_BYTES[dtype] if n_params else None
        expected = result.expected_dense_bytes
        for entry in result.variants:
            if entry.profile is not None and entry.profile.footprint is not None and expected:
                entry.weight_bytes_vs_params_x_dtype = entry.profile.footprint.weight_bytes / expected
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _mib(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:,.1f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def render_profile_markdown(result: ProfileRun) -> str:
    """A person's view of a profile result: one memory row per variant, one latency row per batch size."""
    host = result.host
    out = [f"# Profile: {result.target} ({result.dtype}, {result.device_requested})", ""]
    out.append(f"- weights: {result.weights}")
    if result.shape_of:
        out.append(f"- shape of `{result.shape_of}` (published parameters {result.published_parameters:,}); "
                   f"parameters built: {result.n_params:,}")
    if result.expected_dense_bytes:
        out.append(f"- parameters x dtype size: {_mib(result.expected_dense_bytes)} MiB")
    out.append(f"- host: {host.cpu}, {host.cpu_cores} cores, torch {host.torch}"
               + (f", GPU {host.gpu}" if host.gpu else ", no GPU") + thread_tuning(host))
    s = result.settings
    out.append(f"- prompt {s.prompt_tokens} tokens, {s.new_tokens} new tokens, warm-up {s.warmup}, median of "
               f"{s.repeats} repeats; ms/token = (median end-to-end - median TTFT) / (new tokens - 1); in-run "
               "ms/token = median over repeats of the decode steps' mean within one generate (the two part when "
               "other work shares the machine)")
    if host.load_avg_1m is not None:
        out.append(f"- machine load (1-min average) when the run started: {host.load_avg_1m:.1f} on "
                   f"{host.cpu_cores} cores")
    out += ["", "## Memory", "",
            "| variant | weights in memory (MiB) | vs params x dtype | bits/param | disk (MiB) | load (s) | "
            "load peak RSS (MiB) | CUDA load peak (MiB) | backend |", "|---|---|---|---|---|---|---|---|---|"]
    ok = [v for v in result.variants if v.status == "ok" and v.profile is not None and v.profile.footprint]
    for v in ok:
        p, fp = v.profile, v.profile.footprint
        ratio = v.weight_bytes_vs_params_x_dtype
        out.append(f"| {v.variant} | {_mib(fp.weight_bytes)} | {'—' if ratio is None else f'{ratio:.3f}'} | "
                   f"{fp.bits_per_param:.2f} | {_mib(v.disk_bytes)} | {p.load_s:.2f} | "
                   f"{_mib(p.load_peak_rss_bytes)} | {_mib(p.cuda_load_max_memory_allocated)} | "
                   f"{fp.backend.describe()} |")
    out += ["", "## Generation", "",
            "| variant | batch | TTFT (ms) | end-to-end (ms) | ms/token | in-run ms/token | p50 / p90 (ms) | tokens/s "
            "| KV cache (MiB) | generation peak RSS (MiB) | CUDA peak alloc / reserved (MiB) | kernel |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in ok:
        for r in v.profile.batches:
            cuda = "—" if r.cuda_max_memory_allocated is None else \
                f"{_mib(r.cuda_max_memory_allocated)} / {_mib(r.cuda_max_memory_reserved)}"
            out.append(f"| {v.variant} | {r.batch_size} | {_num(r.ttft_ms, '.1f')} | {_num(r.end_to_end_ms, '.1f')} | "
                       f"{_num(r.latency_ms_per_token)} | {_num(r.decode_ms_per_token_in_run)} | "
                       f"{_num(r.per_token_p50_ms)} / {_num(r.per_token_p90_ms)} | "
                       f"{_num(r.tokens_per_s, '.1f')} | {_mib(r.kv_cache_bytes)} | "
                       f"{_mib(r.generation_peak_rss_bytes)} | {cuda} | {v.profile.backend.kernel}"
                       + (" **(process paused during timing: timings invalid)**" if r.paused_during_timing
                          else "") + " |")
    bad = [v for v in result.variants if v.status != "ok"]
    if bad:
        out += ["", "## Not profiled", ""] + [f"- **{v.variant}** ({v.status}): {v.reason}" for v in bad]
    device = next((v.profile.device for v in result.variants if v.profile is not None), "—")
    out += ["", f"Device of every figure: {device}."]
    return "\n".join(out) + "\n"

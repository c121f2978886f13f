"""Latency and memory of a model as it really runs, measured in a fresh process.

A fresh process per model gives each variant its own peak RSS (the kernel's high-water mark);
in one long process the peak of the largest model would hide every other. Timings follow
optimum-benchmark: warm-up first, median of repeats, prefill = a one-token generate, decode =
the rest; CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ProfileConfig:
    prompt_tokens: int = 64
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    batch_sizes: tuple[int, ...] = (1,)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _StepClock:
    """A logits processor that only records when each decoding step happens."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _timed_generate(model: Any, inputs: dict, new_tokens: int, cuda: bool) -> tuple[float, list[float], Any]:
    from transformers import LogitsProcessorList

    clock = _StepClock(cuda)
    if cuda:
        start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_evt.record()
    t0 = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         temperature=None, top_p=None, top_k=None, logits_processor=LogitsProcessorList([clock]),
                         return_dict_in_generate=True, pad_token_id=0)
    if cuda:
        end_evt.record()
        torch.cuda.synchronize()
        total = start_evt.elapsed_time(end_evt) / 1000.0
    else:
        total = time.perf_counter() - t0
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    return total, steps, out


def kv_cache_bytes(out: Any) -> int:
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        return 0
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def profile_loaded(model: Any, vocab_size: int, config: ProfileConfig, seed: int = 0) -> list[dict]:
    cuda = next(model.parameters()).device.type == "cuda"
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for batch in config.batch_sizes:
        ids = torch.randint(3, max(vocab_size, 4), (batch, config.prompt_tokens), generator=gen).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(config.warmup):
            _timed_generate(model, inputs, config.new_tokens, cuda)
        prefills, totals, step_times = [], [], []
        kv = 0
        for _ in range(config.repeats):
            prefill, _, _ = _timed_generate(model, inputs, 1, cuda)
            total, steps, out = _timed_generate(model, inputs, config.new_tokens, cuda)
            prefills.append(prefill)
            totals.append(total)
            step_times.extend(steps)
            kv = kv_cache_bytes(out)
        prefill = statistics.median(prefills)
        total = statistics.median(totals)
        decode = max(total - prefill, 1e-9)
        row = {
            "batch_size": batch,
            "prompt_tokens": config.prompt_tokens,
            "new_tokens": config.new_tokens,
            "ttft_ms": 1000 * prefill,
            "end_to_end_ms": 1000 * total,
            "end_to_end_spread_ms": 1000 * (max(totals) - min(totals)),
            "latency_ms_per_token": 1000 * decode / (config.new_tokens - 1),
            "per_token_p50_ms": 1000 * _percentile(step_times, 0.5) if step_times else None,
            "per_token_p90_ms": 1000 * _percentile(step_times, 0.9) if step_times else None,
            "tokens_per_s": batch * (config.new_tokens - 1) / decode,
            "kv_cache_bytes": kv,
            "timer": "cuda events" if cuda else "perf_counter",
        }
        if cuda:
            row["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
            row["cuda_max_memory_reserved"] = torch.cuda.max_memory_reserved()
        rows.append(row)
    return rows


def profile_model_dir(location: str, dtype: str, device: str, config: ProfileConfig,
                      trust_remote_code: bool = False) -> dict:
    """Load and profile in this process; call through `profile_in_subprocess` for clean peaks."""
    from compress.models import load_model
    from evaluate.memory import measure_footprint

    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    model = load_model(location, dtype, device, trust_remote_code)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_bytes()
    peak_after_load = _peak_rss_bytes()
    footprint = measure_footprint(model)
    rows = profile_loaded(model, model.config.vocab_size, config)
    result = {
        "load_s": load_s,
        "rss_before_load_bytes": rss_before,
        "load_rss_delta_bytes": rss_loaded - rss_before,
        "peak_rss_after_load_bytes": peak_after_load,
        "peak_rss_bytes": _peak_rss_bytes(),
        "footprint": footprint.as_dict(),
        "batches": rows,
        "device": footprint.backend.rsplit("; ", 1)[-1],
        "dtype": dtype,
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        result["nvml_process_bytes"] = _nvml_process_bytes()
    return result


def _nvml_process_bytes() -> int | None:
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return int(proc.usedGpuMemory)
    except Exception:  # NVML absent or not permitted: report nothing rather than a guess
        return None
    return None


def profile_in_subprocess(location: str, dtype: str, device: str, config: ProfileConfig,
                          trust_remote_code: bool = False, timeout_s: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "evaluate.profiling", location, "--dtype", dtype, "--device", device,
           "--prompt-tokens", str(config.prompt_tokens), "--new-tokens", str(config.new_tokens),
           "--warmup", str(config.warmup), "--repeats", str(config.repeats),
           "--batch-sizes", ",".join(map(str, config.batch_sizes))]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"profiling {location} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="profile one saved model in this process")
    p.add_argument("model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    config = ProfileConfig(a.prompt_tokens, a.new_tokens, a.warmup, a.repeats,
                           tuple(int(b) for b in a.batch_sizes.split(",")))
    result = profile_model_dir(a.model, a.dtype, a.device, config, a.trust_remote_code)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

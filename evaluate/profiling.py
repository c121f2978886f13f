"""Latency and memory of a model as it really runs, measured in a fresh process.

A fresh process per model gives each variant its own peak RSS (the kernel's high-water mark);
in one long process the peak of the largest model would hide every other. Timings follow
optimum-benchmark: warm-up first, median of repeats, prefill = a one-token generate, decode =
the rest; CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from evaluate.interrupts import die_with_parent, watch_parent
from evaluate.memory import measure_footprint
from evaluate.models import load_model
from evaluate.records import Backend, BatchProfile, Host, Nvml, Profile

THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_")  # OpenMP / MKL runtime tuning
SET_BY_LIBRARIES = ("KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")  # bitsandbytes sets these on import: not tuning


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


_RESUMED = [0]  # SIGCONTs received: a process stopped and resumed mid-timing has no valid wall-clock figure


def _count_resume(signum: int, frame: Any) -> None:
    _RESUMED[0] += 1


def watch_for_pauses() -> None:
    """Count SIGCONT (sent when a stopped process is resumed, e.g. by a job-control script sharing the
    machine), so rows timed across a pause say so instead of reporting the pause as latency."""
    import signal

    if hasattr(signal, "SIGCONT"):
        signal.signal(signal.SIGCONT, _count_resume)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class RssSampler:
    """Polls this process's RSS in a thread: the peak of one phase (generation), which ru_maxrss
    cannot give once loading has set a higher mark. Runs only around untimed generations, so it
    does not perturb the timings. (optimum-benchmark polls the same way; a thread of ours is
    needed because no library exposes a per-phase RSS peak.)"""

    def __init__(self, interval_s: float = 0.002, measure: Callable[[], int] | None = None) -> None:
        import threading

        self.interval_s = interval_s
        self.measure = measure or _rss_bytes  # also a served model's process tree (evaluate/vllm_server.py)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, self.measure())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def host_description() -> Host:
    """The machine behind every figure: CPU model and cores, torch threads, GPU name when used."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return Host(cpu=cpu, cpu_cores=cores, torch_threads=torch.get_num_threads(), torch=torch.__version__,
                load_avg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # >cores: contended
                # OpenMP/MKL tuning changes CPU timings a lot (OMP_WAIT_POLICY=PASSIVE nearly doubles a small
                # model's decode step): a reading names it
                thread_env={k: v for k, v in sorted(os.environ.items())
                            if k.startswith(THREAD_ENV_PREFIXES) and k not in SET_BY_LIBRARIES},
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                cuda=torch.version.cuda if torch.cuda.is_available() else None)


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
    """The q-quantile, interpolated between the two nearest ranks (statistics' "inclusive" method)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


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


def kv_cache_tokens(out: Any) -> int:
    """Context length the cache holds after generation (prompt + new tokens - 1: the last token is never fed)."""
    cache = getattr(out, "past_key_values", None)
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


@torch.inference_mode()
def profile_loaded(model: Any, vocab_size: int, config: ProfileConfig, seed: int = 0) -> list[BatchProfile]:
    """One row per batch size. Memory of the generation phase is measured on the warm-up runs (RSS sampler;
    CUDA peaks reset just before), timings on the repeats that follow."""
    cuda = next(model.parameters()).device.type == "cuda"
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for batch in config.batch_sizes:
        ids = torch.randint(3, max(vocab_size, 4), (batch, config.prompt_tokens), generator=gen).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_start = _rss_bytes()
        resumed = _RESUMED[0]
        with RssSampler() as sampler:
            for _ in range(max(config.warmup, 1)):  # at least one untimed run carries the memory sampling
                _timed_generate(model, inputs, config.new_tokens, cuda)
        prefills, totals, step_times, in_run = [], [], [], []
        kv = kv_tokens = 0
        for _ in range(config.repeats):
            prefill, _, _ = _timed_generate(model, inputs, 1, cuda)
            total, steps, out = _timed_generate(model, inputs, config.new_tokens, cuda)
            prefills.append(prefill)
            totals.append(total)
            step_times.extend(steps)
            if steps:  # decode steps of this very run: immune to prefill/total coming from different runs
                in_run.append(sum(steps) / len(steps))
            kv, kv_tokens = kv_cache_bytes(out), kv_cache_tokens(out)
            del out
        prefill = statistics.median(prefills)
        total = statistics.median(totals)
        decode = total - prefill
        if decode <= 0 and in_run:  # medians of different runs inverted by noise: use this run's own steps
            decode = statistics.median(in_run) * (config.new_tokens - 1)
        measured = decode > 0  # else unmeasurable: reported as None, never as a made-up huge tokens/s
        row = BatchProfile(
            batch_size=batch, prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens, repeats=config.repeats,
            ttft_ms=1000 * prefill, end_to_end_ms=1000 * total, end_to_end_spread_ms=1000 * (max(totals) - min(totals)),
            latency_ms_per_token=1000 * decode / (config.new_tokens - 1) if measured else None,
            per_token_p50_ms=1000 * _percentile(step_times, 0.5) if step_times else None,
            per_token_p90_ms=1000 * _percentile(step_times, 0.9) if step_times else None,
            decode_ms_per_token_in_run=1000 * statistics.median(in_run) if in_run else None,
            tokens_per_s=batch * (config.new_tokens - 1) / decode if measured else None,
            kv_cache_bytes=kv, kv_cache_tokens=kv_tokens, generation_peak_rss_bytes=sampler.peak,
            generation_rss_delta_bytes=sampler.peak - rss_start, rss_samples=sampler.samples,
            timer="cuda events" if cuda else "perf_counter",
            paused_during_timing=_RESUMED[0] > resumed,  # True: the process was stopped; timings invalid
        )
        if cuda:  # generation phase only: peaks were reset after loading
            row.cuda_max_memory_allocated = torch.cuda.max_memory_allocated()
            row.cuda_max_memory_reserved = torch.cuda.max_memory_reserved()
            row.nvml = _nvml_memory()
        rows.append(row)
    return rows


def _device_label(device: str, host: Host) -> str:
    if device.startswith("cuda") and host.gpu:
        return f"CUDA {host.gpu}"
    return f"CPU ({host.cpu}, {host.cpu_cores} cores, {host.torch_threads} torch threads{thread_tuning(host)})"


def thread_tuning(host: Host) -> str:
    """", OMP_WAIT_POLICY=PASSIVE"-style suffix naming the thread-runtime tuning a reading ran under ("" if none)."""
    return "".join(f", {k}={v}" for k, v in host.thread_env.items())


def profile_model_dir(location: str, dtype: str, device: str, config: ProfileConfig,
                      trust_remote_code: bool = False) -> Profile:
    """Load and profile in this process; call through `profile_in_subprocess` for clean peaks.

    Load and generation are measured apart: on CPU, RSS before/after loading and ru_maxrss right
    after loading (the load peak), then a polled RSS peak per batch size during generation; on
    CUDA, allocator peaks reset before loading and again before each batch size's generation."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    model = load_model(location, dtype, device, trust_remote_code)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_bytes()
    peak_after_load = _peak_rss_bytes()
    profile = Profile(backend=Backend(), dtype=dtype, load_s=load_s, rss_before_load_bytes=rss_before,
                      load_rss_delta_bytes=rss_loaded - rss_before, load_peak_rss_bytes=peak_after_load)
    if cuda:
        profile.cuda_load_max_memory_allocated = torch.cuda.max_memory_allocated()
        profile.cuda_load_max_memory_reserved = torch.cuda.max_memory_reserved()
        profile.cuda_memory_allocated_after_load = torch.cuda.memory_allocated()
        profile.nvml_after_load = _nvml_memory()
    footprint = measure_footprint(model)
    host = host_description()
    profile.backend = footprint.backend.model_copy(update={"device": _device_label(device, host), "dtype": dtype})
    profile.batches = profile_loaded(model, model.config.vocab_size, config)
    generation_peaks = [r.generation_peak_rss_bytes for r in profile.batches if r.generation_peak_rss_bytes]
    profile.generation_peak_rss_bytes = max(generation_peaks, default=None)
    # whole process, load and generation; the kernel's high-water mark can lag the polled RSS by a
    # few pages (per-thread counters are synced lazily), so the larger of the two is the peak
    profile.peak_rss_bytes = max(_peak_rss_bytes(), *generation_peaks)
    profile.footprint = footprint
    profile.host = host
    profile.load_avg_1m_after = host_description().load_avg_1m  # other work on the machine during the run
    profile.paused_during_run = _RESUMED[0] > 0  # stopped and resumed at some point (load time invalid if so)
    profile.torch = torch.__version__
    return profile


def _nvml_memory() -> Nvml:
    """NVML's view: this process's GPU memory (context and allocator slack included) and the device's
    used total. In containers NVML often lists host PIDs, so the process figure can be missing."""
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            domain = getattr(props, "pci_domain_id", 0)
            dev = getattr(props, "pci_device_id", 0)
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{dev:02x}.0".encode())
        else:  # index order can differ from CUDA's under CUDA_VISIBLE_DEVICES; PCI id is preferred
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        process = next((int(p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                        if p.pid == os.getpid() and p.usedGpuMemory is not None), None)
        return Nvml(process_bytes=process, device_used_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
    except Exception as exc:  # NVML absent or not permitted: say so rather than guess
        return Nvml(error=f"{type(exc).__name__}: {exc}"[:200])


def profile_in_subprocess(location: str, dtype: str, device: str, config: ProfileConfig,
                          trust_remote_code: bool = False, timeout_s: float = 1800) -> Profile:
    cmd = [sys.executable, "-m", "evaluate.profiling", location, "--dtype", dtype, "--device", device,
           "--prompt-tokens", str(config.prompt_tokens), "--new-tokens", str(config.new_tokens),
           "--warmup", str(config.warmup), "--repeats", str(config.repeats),
           "--batch-sizes", ",".join(map(str, config.batch_sizes))]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    # the profiler dies with the study, whatever kills it: an orphan would load the CPU (or GPU) that the next
    # run's profile measures
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=die_with_parent)
    if proc.returncode != 0:
        raise RuntimeError(f"profiling {location} failed: {proc.stderr.strip()[-2000:]}")
    return Profile.model_validate_json(proc.stdout.strip().splitlines()[-1])


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
    watch_parent()
    watch_for_pauses()
    config = ProfileConfig(a.prompt_tokens, a.new_tokens, a.warmup, a.repeats,
                           tuple(int(b) for b in a.batch_sizes.split(",")))
    result = profile_model_dir(a.model, a.dtype, a.device, config, a.trust_remote_code)
    print(result.model_dump_json())


if __name__ == "__main__":
    main()

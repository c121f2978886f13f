"""A quiet console: one rich progress view of the study (models done, the variant and its phase, the cell, items/s
and ETA), slimlab's own warnings and errors under it, and everything else (transformers, llm-compressor's
loguru lines, bitsandbytes, Python warnings, third-party progress bars) in `run.log` in the output directory,
whose tail is shown when the study fails."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

RUN_LOG = "run.log"
THIRD_PARTY_ENV = {  # read by the libraries when they start up: no console output of their own
    "TQDM_DISABLE": "1",  # tqdm bars (transformers' loading/saving, llm-compressor's calibration, datasets)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "warning",
    "LLM_COMPRESSOR_LOG_LEVEL": "",  # no console sink for llm-compressor's loguru logger
}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Text without terminal colour and cursor codes (Ray's task names, vLLM's log lines)."""
    return _ANSI.sub("", text)


class NullProgress:
    """Progress hooks that do nothing (tests, library use)."""

    def study(self, total_models: int) -> None: ...
    def variant(self, name: str, phase: str) -> None: ...
    def cell(self, variant: str, cell: str, total_items: int) -> None: ...
    def advance(self, items: int = 1) -> None: ...
    def finished(self, name: str, status: str) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


Progress = NullProgress  # the interface the runner calls


class RichProgress(NullProgress):
    """The study's one live view: a bar of models (ok / skipped / failed so far) and one of the current cell."""

    def __init__(self, console: object | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBar

        self.bar = RichBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), console=console, transient=False, refresh_per_second=4)
        self.bar.start()
        self.models = self.bar.add_task("models", total=1, speed="")
        self.items = self.bar.add_task("", total=1, visible=False, speed="")
        self.counts: dict[str, int] = {}
        self.current = ""
        self.open = True

    def _models_text(self) -> str:
        done = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return f"models ({done})" if done else "models"

    def study(self, total_models: int) -> None:
        self.bar.update(self.models, total=total_models, description=self._models_text())

    def variant(self, name: str, phase: str) -> None:
        self.current = name
        self.bar.update(self.items, description=f"{name}: {phase}", visible=True, completed=0, total=None,
                        speed="")

    def cell(self, variant: str, cell: str, total_items: int) -> None:
        self.bar.reset(self.items, total=max(total_items, 1), description=f"{variant}: {cell}", visible=True,
                       speed="")

    def advance(self, items: int = 1) -> None:
        self.bar.advance(self.items, items)
        task = self.bar.tasks[self.items]
        if task.speed:
            self.bar.update(self.items, speed=f"{task.speed:.2f} items/s")

    def finished(self, name: str, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        self.bar.update(self.models, advance=1, description=self._models_text())

    def note(self, text: str) -> None:
        """A line for the person watching (a dashboard's address), printed above the bars."""
        self.bar.console.print(text)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.bar.update(self.items, visible=False)
            self.bar.stop()


class _Once(logging.Filter):
    """Keep the first record of each (logger, message template): libraries that warn on every call
    (bitsandbytes' MatMul8bitLt cast, once per matmul) write one line, not thousands."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "slimlab" or record.name.startswith("slimlab."):
            return True
        key = (record.name, str(record.msg))
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key] == 1

    def repeats(self) -> dict[tuple[str, str], int]:
        return {k: n - 1 for k, n in self.seen.items() if n > 1}


def quiet_libraries() -> None:
    """Ask the libraries not to draw on the console: environment variables they read when they load (see
    THIRD_PARTY_ENV; call this before importing them), and their own switches for progress bars."""
    for key, value in THIRD_PARTY_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


@contextlib.contextmanager
def quiet_console(out_dir: Path, verbose: bool = False) -> Iterator[RichProgress]:
    """For the duration of a study: the progress view on the console, slimlab's warnings (and, verbose, its
    info) above it, every library's output in out_dir/run.log. On an exception the log's tail is printed."""
    from rich.console import Console
    from rich.logging import RichHandler

    quiet_libraries()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / RUN_LOG
    terminal = _redirect_stderr(log_path)
    console = Console(file=terminal, stderr=terminal is None)  # not redirected: sys.stderr, looked up per write
    once = _Once()
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.addFilter(once)
    file_handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    console_handler = RichHandler(console=console, show_path=False, show_time=False)
    console_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    console_handler.addFilter(lambda record: record.name == "slimlab" or record.name.startswith("slimlab."))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers = [file_handler, console_handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    route_loguru()
    progress = RichProgress(console)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once per place, into run.log
            yield progress
    except BaseException:
        progress.close()
        _show_tail(console, log_path)
        raise
    finally:
        progress.close()
        for (name, msg), n in once.repeats().items():
            file_handler.stream.write(f"(the message of {name} {msg!r} repeated {n} more times; shown once)\n")
        logging.captureWarnings(False)
        root.handlers, root.level = saved
        file_handler.close()
        if terminal is not None:
            _restore_stderr(terminal)


def _redirect_stderr(log_path: Path) -> TextIO | None:
    """Point file descriptor 2 at run.log, so what libraries write to stderr directly (tqdm bars passed
    disable=False, C++ warnings, child processes' stderr) lands there too; returns the terminal, opened on a
    copy of the old descriptor 2 (None when stderr is not the process's descriptor 2: a test runner's capture,
    click's runner)."""
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return terminal


def _restore_stderr(terminal: TextIO) -> None:
    sys.stderr.flush()
    terminal.flush()
    os.dup2(terminal.fileno(), 2)
    terminal.close()


def route_loguru() -> None:
    """llm-compressor (and compressed-tensors) log through loguru, whose sinks llm-compressor sets on import:
    stdout, or a JSON-lines file. Once it is imported, replace them with one sink that hands each record to
    Python logging under its module's name, so the lines land in run.log in run.log's own format (and on no
    console). Called when a study starts and before each llm-compressor run (its import resets the sinks)."""
    if "llmcompressor" not in sys.modules:
        return
    from llmcompressor.logger import support_log_once
    from loguru import logger

    logger.remove()
    logger.add(_loguru_to_logging, level="DEBUG", format="{message}", filter=support_log_once)


def _loguru_to_logging(message: object) -> None:
    record = message.record  # type: ignore[attr-defined]
    logging.getLogger(record["name"] or "loguru").log(record["level"].no, str(record["message"]).rstrip())


def _show_tail(console: object, log_path: Path, lines: int = 20) -> None:
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        from rich.text import Text

        console.print(Text(f"last lines of {log_path}:", style="dim"))
        for line in tail:
            console.print(Text("  " + line, style="dim"))

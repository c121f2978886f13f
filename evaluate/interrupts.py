"""One writer per study, and studies that stop cleanly: an exclusive lock on the output directory (a second
`compress run` stops at once, naming the pid that holds it), SIGINT/SIGTERM turned into an interrupt that waits
for the current write to finish, and child processes (the profiler) that die with the study whatever kills it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

LOCK_FILE = ".slimlab.lock"


class StudyLocked(RuntimeError):
    """Another live process is writing this study directory."""


class StudyLock:
    """An advisory exclusive lock (flock) on <out_dir>/.slimlab.lock holding the owner's pid, host and start time.
    The kernel drops it when its process dies, however it dies: a stale file is simply taken over. Re-entrant
    within one process (the CLI takes it before its log file opens, the study again)."""

    _held: ClassVar[dict[Path, int]] = {}  # lock file -> how many holders in this process

    def __init__(self, out_dir: Path) -> None:
        self.path = (Path(out_dir) / LOCK_FILE).absolute()
        self.fd: int | None = None

    def acquire(self) -> StudyLock:
        import fcntl

        if self.path in StudyLock._held:
            StudyLock._held[self.path] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner(fd)
            os.close(fd)
            raise StudyLocked(f"{self.path.parent} is being written by another `compress run` ({owner}); wait for "
                              "it to finish or stop it, or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self.fd = fd
        StudyLock._held[self.path] = 1
        return self

    @staticmethod
    def _owner(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
            return f"pid {info['pid']} on {info['host']}, since {since}"
        except (ValueError, KeyError, OSError):
            return "pid unknown"

    def release(self) -> None:
        if self.path not in StudyLock._held:
            return
        StudyLock._held[self.path] -= 1
        if StudyLock._held[self.path] == 0 and self.fd is not None:
            import fcntl

            del StudyLock._held[self.path]
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the study; finished work is in the ledger and a rerun resumes."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_depth = 0
_pending: int | None = None


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    if _depth:  # inside a write: raise once it is whole
        _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def whole_write() -> Iterator[None]:
    """A write that an interrupt must not cut in half (a sample line, a window's record)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (deferred past whole writes) for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def die_with_parent() -> None:
    """For a child process (preexec_fn): the kernel kills it when the process that started it dies (Linux
    PR_SET_PDEATHSIG); elsewhere the child's own watchdog (watch_parent) does."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def watch_parent(interval_s: float = 1.0) -> None:
    """In a child: exit at once when the parent is gone (reparented), for systems without PR_SET_PDEATHSIG."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="slimlab-parent-watch", daemon=True).start()

"""What a study survives: a second writer is refused at once; SIGTERM ends it cleanly with the run marked
interrupted; kill -9 at random moments loses nothing (the reruns give the uninterrupted results item by item);
no child process (the profiler) outlives the study."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluate.interrupts import LOCK_FILE, StudyLock, StudyLocked
from evaluate.ledger import Ledger

RECIPE = """\
name: reliability
model: {{name: "embedded:tiny-reasoner"}}
variants:
  - {{name: rtn, steps: [{{method: rtn, bits: 8, group_size: -1}}]}}
  - {{name: int8, steps: [{{method: bnb_int8}}]}}
tasks:
  - {{name: sort8_positive, n: {n}}}
  - {{name: synth_mc, n: {n}}}
decoding: {{batch_size: 4}}
profile: {{prompt_tokens: 16, new_tokens: {new_tokens}, repeats: 1, warmup: 0}}
"""


def _recipe(tmp_path: Path, n: int = 12, new_tokens: int = 4) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(n=n, new_tokens=new_tokens))
    return path


def _compress(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "compress"), *args]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_a_second_writer_is_refused_at_once_naming_the_pid(tmp_path):
    out = tmp_path / "out"
    with StudyLock(out):
        with pytest.raises(StudyLocked, match=rf"pid {os.getpid()} on "):  # another process's view
            _other_process_lock(out)
        t0 = time.monotonic()
        proc = subprocess.run(_compress("run", str(_recipe(tmp_path)), "--out", str(out)), capture_output=True,
                              text=True, env=_env(), timeout=120)
        assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
        assert time.monotonic() - t0 < 30  # refused before any model loads
        assert not (out / "results.sqlite").exists()  # nothing written by the refused run
    # the lock file of a process that died (no flock held) is taken over
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "since": 0}))
    with StudyLock(out) as lock:
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid() and lock.fd is not None


def _other_process_lock(out: Path) -> None:
    code = ("import sys\nfrom evaluate.interrupts import StudyLock, StudyLocked\n"
            f"try:\n    StudyLock({str(out)!r}).acquire()\nexcept StudyLocked as e:\n    print(e)\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode == 3:
        raise StudyLocked(proc.stdout.strip())


def _samples(out: Path) -> dict[tuple[str, str, str], tuple]:
    found = {}
    for path in sorted((out / "samples").rglob("*.jsonl")):
        if path.name.endswith(".partial.jsonl"):
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            found[(path.parent.name, path.stem, r["id"])] = (r["output"], r["parsed"], r["correct"])
    return found


def _values(out: Path) -> dict[tuple[str, str], float]:
    return {(r["variant"], r["task"]): r["value"] for r in json.loads((out / "results.json").read_text())}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_gives_the_uninterrupted_results(tmp_path):
    recipe = _recipe(tmp_path)
    whole = tmp_path / "whole"
    subprocess.run(_compress("run", str(recipe), "--out", str(whole)), check=True, capture_output=True, env=_env(),
                   timeout=600)
    killed = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(3):  # each run is killed at a random moment, then resumed by the next
        proc = subprocess.Popen(_compress("run", str(recipe), "--out", str(killed)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_env())
        time.sleep(rng.uniform(4.0, 14.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(_compress("run", str(recipe), "--out", str(killed)), capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert _samples(killed) == _samples(whole) and len(_samples(whole)) == 3 * 2 * 12
    assert _values(killed) == _values(whole)
    runs = Ledger(killed / "results.sqlite").runs()
    assert runs[-1].status == "finished" and all(r.status == "running" for r in runs[:-1])  # killed: no end
    assert sum(len(r.computed) for r in runs) >= 9  # what the killed runs finished is on record


@pytest.mark.slow
def test_sigterm_ends_the_run_cleanly_and_the_profiler_dies_with_a_killed_study(tmp_path):
    import psutil

    recipe = _recipe(tmp_path, n=4, new_tokens=400)  # a profile long enough to catch the profiler running
    out = tmp_path / "out"
    proc = subprocess.Popen(_compress("run", str(recipe), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    child = None
    while child is None and time.monotonic() < deadline and proc.poll() is None:
        child = next((c for c in psutil.Process(proc.pid).children(recursive=True)
                      if "evaluate.profiling" in " ".join(c.cmdline())), None)
        time.sleep(0.2)
    assert child is not None, "the profiler never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(psutil.NoSuchProcess):  # gone with its parent, not left loading the CPU
        psutil.wait_procs([child], timeout=10)
        child.status()

    proc = subprocess.Popen(_compress("run", str(recipe), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted (SIGTERM)" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert Ledger(out / "results.sqlite").runs()[-1].status == "interrupted"
    for partial in (out / "samples").rglob("*.partial.jsonl"):  # whole lines only: the write finished
        assert all(json.loads(line) for line in partial.read_text().splitlines())

"""The quiet console: during a study the terminal shows slimlab's progress view and its own warnings; what
libraries print (llm-compressor's loguru lines, compressed-tensors' tqdm bars, anything written to stderr,
also by child processes) goes to run.log in plain text; on failure the log's tail and slimlab's message reach
the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

RECIPE = """\
name: console
model: {name: "embedded:tiny-reasoner"}
variants:
  - {name: rtn, steps: [{method: rtn, bits: 8, group_size: -1}]}
tasks:
  - {name: sort8_positive, n: 4}
decoding: {batch_size: 4}
profile: {prompt_tokens: 16, new_tokens: 4, repeats: 1, warmup: 0}
"""


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_a_study_prints_its_progress_and_libraries_write_plain_lines_to_run_log(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    proc = subprocess.run([str(Path(sys.executable).parent / "compress"), "run", str(recipe), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "models (2 ok)" in proc.stderr and "log:" in proc.stdout
    for noise in ("llmcompressor", "it/s]", "Compression lifecycle", "Traceback"):
        assert noise not in console, (noise, console[-2000:])
    log = (tmp_path / "out" / "run.log").read_text()
    # llm-compressor's loguru records in run.log's own format, not loguru's JSON file records
    assert " INFO llmcompressor.core.lifecycle: Compression lifecycle initialized for 1 modifiers" in log
    assert not any(line.startswith("{") for line in log.splitlines())


SCRIPT = """\
import logging, os, subprocess, sys
from pathlib import Path
from evaluate.progress import quiet_console

try:
    with quiet_console(Path(sys.argv[1])) as progress:
        os.write(2, b"a library writes straight to stderr\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('a child process complains', file=sys.stderr)"])
        logging.getLogger("transformers").warning("a library warning")
        logging.getLogger("slimlab.study").warning("a slimlab warning")
        raise RuntimeError("the study broke")
except RuntimeError as exc:
    print(f"error: {exc}", file=sys.stderr)
"""


def test_library_stderr_goes_to_run_log_and_a_failure_shows_its_tail_then_the_message(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path)], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run.log").read_text()
    for line in ("a library writes straight to stderr", "a child process complains",
                 "WARNING transformers: a library warning", "WARNING slimlab.study: a slimlab warning"):
        assert line in log, (line, log)
    console = proc.stderr
    assert "a slimlab warning" in console.split("last lines of")[0]  # slimlab's own warning, live
    head, tail = console.split("last lines of", 1)
    assert "a library" not in head and "a child process" not in head  # libraries: only in the tail
    assert "a library writes straight to stderr" in tail and "a child process complains" in tail
    assert console.rstrip().endswith("error: the study broke")  # stderr is the terminal again afterwards

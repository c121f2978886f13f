"""One build path for every variant, whoever asks (the study runner, `compress profile`): the FP model loaded,
each step applied in order, the result saved in the format of the last step that produced a non-dense one
(a registered format, named in the directory's marker so any process loads it back the same way)."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.registry import METHODS, CalibrationData, MethodParams, MethodSpec, StepContext
from evaluate.formats import save_model
from evaluate.models import load_model
from evaluate.records import Build, Calibration, StepTiming


class SkipVariant(Exception):
    """A variant that cannot run here (e.g. a CUDA-only kernel on a CPU machine): reported, not fatal."""


def unavailable(steps: list[MethodParams], device: str) -> str | None:
    """Why a step of the chain cannot run on this machine (checked before any model is loaded), or None."""
    for step in steps:
        if (reason := METHODS[step.method].unavailable_reason(device, step)) is not None:
            return f"method {step.method!r} cannot run here: {reason}"
    return None


def final_format(steps: list[MethodParams]) -> str:
    return next((f for f in (METHODS[s.method].produces for s in reversed(steps)) if f != "dense"), "dense")


def build(source_dir: str, steps: list[MethodParams], model_dir: Path, tokenizer: Any, *, dtype: str = "float32",
          device: str = "cpu", trust_remote_code: bool = False, seed: int = 0,
          calibration: CalibrationData | None = None,
          on_stage: Callable[[int, MethodSpec, Any], None] | None = None) -> Build:
    """Apply `steps` to the model at `source_dir` and save it to `model_dir` (scratch space beside it is removed
    afterwards). `on_stage(i, spec, model)` sees the model after every step but the last (chain stages)."""
    if (why := unavailable(steps, device)) is not None:
        raise SkipVariant(why)
    work = model_dir.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = load_model(source_dir, dtype, device, trust_remote_code)
    ctx = StepContext(tokenizer=tokenizer, source_dir=Path(source_dir), workdir=work, seed=seed, device=device,
                      dtype=dtype, trust_remote_code=trust_remote_code, calibration=calibration)
    timings = []
    for i, step in enumerate(steps):
        spec = METHODS[step.method]
        ctx.pristine = i == 0
        t0 = time.perf_counter()
        model = spec.apply(model, step, ctx)
        timings.append(StepTiming(method=spec.name, seconds=time.perf_counter() - t0))
        if on_stage is not None and i < len(steps) - 1:
            on_stage(i, spec, model)
    fmt = final_format(steps)
    save_model(model, tokenizer, model_dir, fmt)
    shutil.rmtree(work, ignore_errors=True)
    del model
    gc.collect()
    used_by = [s.method for s in steps if s.uses_calibration()]
    return Build(steps=[s.recipe_dict() for s in steps], timings=timings, format=fmt,
                 calibration=Calibration(source=calibration.source, n_samples=calibration.n_samples,
                                         seq_len=calibration.seq_len, used_by=used_by)
                 if calibration is not None and used_by else None)

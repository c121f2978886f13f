"""Wanda (Sun et al. 2023): prune by |w| x input-activation norm, per output row, no weight update;
llm-compressor's WandaPruningModifier on the recipe's calibration data. Saved dense (zeros kept)."""

from __future__ import annotations

from typing import Any

from compress.methods._llmc import run_oneshot
from compress.methods._sparsity import CalibratedSparsityParams, calibration_size
from compress.registry import MethodSpec, StepContext, register_method


def apply(model: Any, params: CalibratedSparsityParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    modifier = WandaPruningModifier(sparsity=params.sparsity, mask_structure=params.mask_structure,
                                    ignore=params.ignore)
    n, seq_len = calibration_size(params, ctx)
    return run_oneshot(model, [modifier], ctx, calibrate=True, n_samples=n, seq_len=seq_len)


register_method(
    MethodSpec(
        name="wanda",
        description="Wanda pruning (|w| x activation norm), unstructured or 2:4/4:8 (llm-compressor)",
        kind="prune",
        params=CalibratedSparsityParams,
        apply=apply,
    )
)

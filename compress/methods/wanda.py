"""Wanda (Sun et al. 2023): prune by |w| x input-activation norm, per output row, no weight update;
llm-compressor's WandaPruningModifier on the recipe's calibration data. Saved dense (zeros kept)."""

from __future__ import annotations

from typing import Any

from compress.methods._llmc import run_calibrated
from compress.methods._sparsity import CalibratedSparsityParams
from compress.registry import StepContext, method


@method("wanda", "prune", CalibratedSparsityParams,
        description="Wanda pruning (|w| x activation norm), unstructured or 2:4/4:8 (llm-compressor)")
def apply(model: Any, params: CalibratedSparsityParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    modifier = WandaPruningModifier(sparsity=params.sparsity, mask_structure=params.mask_structure,
                                    ignore=params.ignore)
    return run_calibrated(model, [modifier], params, ctx)

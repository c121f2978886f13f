"""SparseGPT (Frantar & Alistarh 2023): prune with second-order (Hessian) error compensation of the
remaining weights; llm-compressor's SparseGPTModifier on the recipe's calibration data. Saved dense."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.methods._llmc import run_calibrated
from compress.methods._sparsity import CalibratedSparsityParams
from compress.registry import StepContext, method


class SparseGPTParams(CalibratedSparsityParams):
    block_size: int = Field(128, ge=1, description="columns compressed per pass")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="added to the Hessian diagonal, x its mean")


@method("sparsegpt", "prune", SparseGPTParams,
        description="SparseGPT pruning with Hessian-based weight updates, unstructured or 2:4/4:8 (llm-compressor)")
def apply(model: Any, params: SparseGPTParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    modifier = SparseGPTModifier(sparsity=params.sparsity, mask_structure=params.mask_structure,
                                 ignore=params.ignore, block_size=params.block_size,
                                 dampening_frac=params.dampening_frac)
    return run_calibrated(model, [modifier], params, ctx)

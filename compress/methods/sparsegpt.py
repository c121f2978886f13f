"""SparseGPT (Frantar & Alistarh 2023): prune with second-order (Hessian) error compensation of the
remaining weights; llm-compressor's SparseGPTModifier on the recipe's calibration data. Saved dense."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.methods._llmc import run_oneshot
from compress.methods._sparsity import CalibratedSparsityParams, calibration_size
from compress.registry import MethodSpec, StepContext, register_method


class SparseGPTParams(CalibratedSparsityParams):
    block_size: int = Field(128, ge=1, description="columns compressed per pass")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="added to the Hessian diagonal, x its mean")


def apply(model: Any, params: SparseGPTParams, ctx: StepContext) -> Any:
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    modifier = SparseGPTModifier(sparsity=params.sparsity, mask_structure=params.mask_structure,
                                 ignore=params.ignore, block_size=params.block_size,
                                 dampening_frac=params.dampening_frac)
    n, seq_len = calibration_size(params, ctx)
    return run_oneshot(model, [modifier], ctx, calibrate=True, n_samples=n, seq_len=seq_len)


register_method(
    MethodSpec(
        name="sparsegpt",
        description="SparseGPT pruning with Hessian-based weight updates, unstructured or 2:4/4:8 (llm-compressor)",
        kind="prune",
        params=SparseGPTParams,
        apply=apply,
    )
)

"""Shared by the pruning and recovery methods: which Linear layers are pruned, N:M patterns and masks that
keep zeros at zero during fine-tuning (measured sparsity is evaluate/sparsity.py)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from compress.methods._llmc import linear_input_sizes
from compress.methods._quant import Patterns, matches
from compress.registry import Calibrated, MethodParams
from evaluate.sparsity import dense_linears

PATTERNS: dict[str, tuple[int, int] | None] = {"unstructured": None, "2:4": (2, 4), "4:8": (4, 8)}


class SparsityParams(MethodParams):
    """Unstructured or N:M (2:4, 4:8) sparsity of the decoder's Linear weights."""

    pattern: Literal["unstructured", "2:4", "4:8"] = "unstructured"
    sparsity: float = Field(0.5, description="fraction of each layer's weights set to zero, in (0, 1)")
    ignore: Patterns = Field(default_factory=lambda: ["re:.*lm_head"],
                             description="module or class names, or 're:' patterns, left dense")

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float, info: Any) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("sparsity must lie strictly between 0 and 1 (0.5 zeroes half of each layer's weights)")
        nm = PATTERNS.get(info.data.get("pattern", "unstructured"))
        if nm is not None and abs(v - (1 - nm[0] / nm[1])) > 1e-9:
            n, m = nm
            raise ValueError(f"pattern '{n}:{m}' keeps {n} of every {m} weights, i.e. sparsity "
                             f"{1 - n / m:g}; set sparsity: {1 - n / m:g} or pattern: unstructured")
        return v

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        nm = PATTERNS[self.pattern]
        if nm is None:
            return []

        bad = {k: n for k, n in linear_input_sizes(model_config).items() if n % nm[1]}
        if bad:
            return [("pattern", f"{self.pattern} groups {nm[1]} consecutive input weights, but the input sizes "
                     f"{bad} are not multiples of {nm[1]}; use pattern: unstructured")]
        return []

    headline_fields: ClassVar[tuple[str, ...]] = ("sparsity", "pattern")

    def headline(self) -> str:
        return f"{self.sparsity:.0%}" + ("" if self.pattern == "unstructured" else f" {self.pattern}")

    @property
    def mask_structure(self) -> str:
        """llm-compressor's spelling: '0:0' unstructured, else 'N:M' with N pruned of every M."""
        nm = PATTERNS[self.pattern]
        return "0:0" if nm is None else f"{nm[1] - nm[0]}:{nm[1]}"


class CalibratedSparsityParams(SparsityParams, Calibrated):
    """Scorers that read activations (Wanda, SparseGPT) also take a calibration size."""


def prunable_linears(model: torch.nn.Module, ignore: list[str] | None = None) -> dict[str, torch.nn.Module]:
    """Dense floating-point Linear layers of the decoder, minus the `ignore` patterns; never the output embedding."""
    return {name: module for name, module in dense_linears(model).items()
            if not any(matches(name, module, p) for p in ignore or [])}


def magnitude_mask(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask (True = kept) by |w|: per layer for unstructured, per group of M inputs for N:M.

    Hand-written: llm-compressor's MagnitudePruningModifier only applies its masks inside the training
    loop it no longer ships (in oneshot it leaves the weights untouched) and has no N:M mask creator."""
    scores = weight.detach().abs().float()
    if nm is None:
        k = round(sparsity * scores.numel())
        mask = torch.ones_like(scores, dtype=torch.bool)
        if k > 0:
            idx = torch.topk(scores.flatten(), k, largest=False).indices
            mask.view(-1)[idx] = False
        return mask
    n, m = nm
    rows, cols = scores.shape
    groups = scores.view(rows, cols // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.view(rows, cols)


def nonzero_masks(model: torch.nn.Module, min_sparsity: float = 0.0) -> dict[str, torch.Tensor]:
    """Keep-masks of the prunable Linear weights that hold exact zeros (more than `min_sparsity`)."""
    masks = {}
    for name, module in prunable_linears(model).items():
        mask = module.weight.detach() != 0
        if (1.0 - mask.float().mean().item()) > min_sparsity:
            masks[name] = mask
    return masks

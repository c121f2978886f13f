"""Shared by the pruning and recovery methods: which Linear layers are pruned, N:M patterns, masks that
keep zeros at zero during fine-tuning, and measured sparsity (exact zeros of the weights that run)."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from compress.methods._quant import check_pattern, matches
from compress.registry import MethodParams, StepContext

PATTERNS: dict[str, tuple[int, int] | None] = {"unstructured": None, "2:4": (2, 4), "4:8": (4, 8)}


class SparsityParams(MethodParams):
    """Unstructured or N:M (2:4, 4:8) sparsity of the decoder's Linear weights."""

    pattern: Literal["unstructured", "2:4", "4:8"] = "unstructured"
    sparsity: float = Field(0.5, description="fraction of each layer's weights set to zero, in (0, 1)")
    ignore: list[str] = Field(default_factory=lambda: ["re:.*lm_head"],
                              description="module or class names, or 're:' patterns, left dense")

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, v: list[str]) -> list[str]:
        return [check_pattern(p) for p in v]

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
        from compress.methods._llmc import linear_input_sizes

        bad = {k: n for k, n in linear_input_sizes(model_config).items() if n % nm[1]}
        if bad:
            return [("pattern", f"{self.pattern} groups {nm[1]} consecutive input weights, but the input sizes "
                     f"{bad} are not multiples of {nm[1]}; use pattern: unstructured")]
        return []

    @property
    def mask_structure(self) -> str:
        """llm-compressor's spelling: '0:0' unstructured, else 'N:M' with N pruned of every M."""
        nm = PATTERNS[self.pattern]
        return "0:0" if nm is None else f"{nm[1] - nm[0]}:{nm[1]}"


class CalibratedSparsityParams(SparsityParams):
    """Scorers that read activations (Wanda, SparseGPT) also take a calibration size."""

    n_samples: int | None = Field(None, ge=1, description="calibration texts; null: the recipe's calibration block")
    seq_len: int | None = Field(None, ge=8, description="tokens per text; null: the recipe's calibration block")


def calibration_size(params: SparsityParams | Any, ctx: StepContext) -> tuple[int, int]:
    """(n_samples, seq_len): the step's own values, else the recipe's calibration block."""
    recipe = ctx.extras.get("recipe")
    cal = getattr(recipe, "calibration", None)
    n = getattr(params, "n_samples", None) or (cal.n_samples if cal else 64)
    seq = getattr(params, "seq_len", None) or (cal.seq_len if cal else 256)
    return n, seq


def prunable_linears(model: torch.nn.Module, ignore: list[str] | None = None) -> dict[str, torch.nn.Module]:
    """Dense floating-point Linear layers of the decoder; the output embedding is never included."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {}
    for name, module in model.named_modules():
        if module is out_emb or not isinstance(module, torch.nn.Linear) or any(matches(name, module, p)
                                                                                for p in ignore or []):
            continue
        if ".lora_" in name:  # peft adapters are trained dense; they are not the pruned weights
            continue
        w = getattr(module, "weight", None)  # packed compressed-tensors layers hold weight_packed instead
        if type(w) in (torch.Tensor, torch.nn.Parameter) and w.is_floating_point():
            found[name] = module
    return found


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


def _layer_key(name: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'layers.3'; names outside a numbered block keep their module path."""
    match = re.search(r"(?:^|\.)([A-Za-z_]+\.\d+)\.", name)
    return match.group(1) if match else name


def measure_sparsity(model: torch.nn.Module) -> tuple[float | None, dict[str, float]]:
    """Fraction of exact zeros over the decoder's dense Linear weights, overall and per decoder layer.

    Packed formats (bitsandbytes, quanto, compressed-tensors kept packed) hold no dense weight to count:
    they give (None, {})."""
    linears = prunable_linears(model)
    if not linears:
        return None, {}
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    for name, module in linears.items():
        key = _layer_key(name)
        w = module.weight.detach()
        zeros[key] = zeros.get(key, 0) + int((w == 0).sum().item())
        totals[key] = totals.get(key, 0) + w.numel()
    overall = sum(zeros.values()) / sum(totals.values())
    return round(overall, 6), {k: round(zeros[k] / totals[k], 6) for k in totals}


def detect_pattern(model: torch.nn.Module) -> str | None:
    """'2:4' / '4:8' when every prunable weight keeps at most N of each M consecutive inputs, else None."""
    linears = prunable_linears(model)
    if not linears:
        return None
    for n, m in ((2, 4), (4, 8)):
        ok = True
        for module in linears.values():
            w = module.weight.detach()
            if w.shape[1] % m or ((w.view(w.shape[0], -1, m) != 0).sum(-1) > n).any():
                ok = False
                break
        if ok:
            return f"{n}:{m}"
    return None

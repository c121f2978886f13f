"""Measured sparsity: exact zeros of the dense Linear weights that run, overall, per decoder layer, and the N:M
pattern they follow. Packed formats (bitsandbytes, quanto, compressed-tensors kept packed) hold no dense weight
to count."""

from __future__ import annotations

import re

import torch


def dense_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Dense floating-point Linear layers of the decoder by name; the output embedding and LoRA adapters
    (trained dense, not the pruned weights) are left out."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {}
    for name, module in model.named_modules():
        if module is out_emb or not isinstance(module, torch.nn.Linear) or ".lora_" in name:
            continue
        w = getattr(module, "weight", None)  # packed compressed-tensors layers hold weight_packed instead
        if type(w) in (torch.Tensor, torch.nn.Parameter) and w.is_floating_point():
            found[name] = module
    return found


def _layer_key(name: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'layers.3'; names outside a numbered block keep their module path."""
    match = re.search(r"(?:^|\.)([A-Za-z_]+\.\d+)\.", name)
    return match.group(1) if match else name


def measure_sparsity(model: torch.nn.Module) -> tuple[float | None, dict[str, float]]:
    """Fraction of exact zeros over the decoder's dense Linear weights, overall and per decoder layer;
    (None, {}) for a packed format."""
    linears = dense_linears(model)
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
    """'2:4' / '4:8' when every dense weight keeps at most N of each M consecutive inputs, else None."""
    linears = dense_linears(model)
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

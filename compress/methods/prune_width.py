"""Width pruning: remove attention heads (whole KV groups, so grouped-query attention stays valid) and
MLP channels with the lowest activation-weighted importance on calibration data (as Minitron does),
then slice q/k/v/o and gate/up/down and rewrite the config: a genuinely smaller transformers model.

Importance of a head = mean over calibration tokens of || W_o[:, head] a_head ||_2, its contribution to
the residual stream; of a KV group = the sum over its query heads. Importance of an MLP channel j =
mean |a_j| x ||W_down[:, j]||_2. Hand-written: no maintained library slices transformers decoders."""

from __future__ import annotations

import logging
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from compress.methods._calib import decoder_layers, run_calibration
from compress.registry import Calibrated, StepContext, method

log = logging.getLogger("slimlab")


class WidthParams(Calibrated):
    heads: int = Field(0, ge=0, description="query heads removed per layer, a whole number of KV groups")
    mlp_ratio: float = Field(0.0, description="fraction of MLP intermediate channels removed, in [0, 1)")
    round_to: int = Field(8, ge=1, description="kept MLP channels rounded to a multiple of this (kernel-friendly)")
    batch_size: int = Field(8, ge=1)

    def describe(self) -> str:
        return ", ".join([*([f"-{self.heads} heads/layer"] if self.heads else []),
                          *([f"-{self.mlp_ratio:.0%} MLP"] if self.mlp_ratio else [])])

    @field_validator("mlp_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("mlp_ratio must be in [0, 1) (0.25 removes a quarter of the MLP channels)")
        return v

    @model_validator(mode="after")
    def _something(self) -> WidthParams:
        if self.heads == 0 and self.mlp_ratio == 0.0:
            raise ValueError("heads: 0 and mlp_ratio: 0 remove nothing; set heads (e.g. 2) and/or "
                             "mlp_ratio (e.g. 0.25)")
        return self

    def kept_channels(self, intermediate: int) -> int:
        kept = intermediate - round(self.mlp_ratio * intermediate)
        if self.round_to > 1:
            kept = max(self.round_to, round(kept / self.round_to) * self.round_to)
        return min(kept, intermediate)

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        issues = []
        n_heads = model_config.num_attention_heads
        n_kv = getattr(model_config, "num_key_value_heads", None) or n_heads
        group = n_heads // n_kv
        if self.heads >= n_heads:
            issues.append(("heads", f"the model has {n_heads} attention heads per layer; removing {self.heads} "
                           f"leaves none; remove at most {n_heads - group}"))
        elif self.heads % group:
            issues.append(("heads", f"grouped-query attention: {n_heads} query heads share {n_kv} KV heads in groups "
                           f"of {group}; remove a multiple of {group} heads (whole KV groups)"))
        if self.mlp_ratio > 0:
            inter = model_config.intermediate_size
            kept = self.kept_channels(inter)
            if kept >= inter:
                issues.append(("mlp_ratio", f"removes no channel of {inter} after rounding kept channels to a "
                               f"multiple of round_to={self.round_to}; raise mlp_ratio or lower round_to"))
        return issues


def _attn_mlp(layer: Any) -> tuple[Any, Any]:
    attn = getattr(layer, "self_attn", None)
    mlp = getattr(layer, "mlp", None)
    if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ValueError(f"{type(layer).__name__}: width pruning needs separate q/k/v/o_proj attention "
                         "(fused qkv layouts are not supported)")
    if mlp is None or not all(hasattr(mlp, p) for p in ("up_proj", "down_proj")):
        raise ValueError(f"{type(layer).__name__}: width pruning needs an MLP with up_proj/down_proj")
    return attn, mlp


@torch.no_grad()
def importance(model: Any, ctx: StepContext, params: WidthParams, head_dim: int) -> tuple[list, list]:
    """Per layer: head scores [n_heads] and MLP channel scores [intermediate], from calibration data."""
    layers = decoder_layers(model)
    head_scores: list[torch.Tensor | None] = [None] * len(layers)
    chan_scores: list[torch.Tensor | None] = [None] * len(layers)
    state: dict[str, Any] = {"tokens": 0}

    def head_hook(i: int, o_proj: Any):
        def fn(module: Any, args: tuple) -> None:
            a = args[0].float()
            valid = state["mask"].reshape(-1).bool()
            a = a.reshape(-1, a.shape[-1])[valid]
            w = o_proj.weight.float()
            n = a.shape[-1] // head_dim
            scores = torch.stack([(a[:, h * head_dim:(h + 1) * head_dim] @ w[:, h * head_dim:(h + 1) * head_dim].T)
                                  .norm(dim=-1).sum() for h in range(n)])
            head_scores[i] = scores if head_scores[i] is None else head_scores[i] + scores
        return fn

    def chan_hook(i: int, down: Any):
        def fn(module: Any, args: tuple) -> None:
            a = args[0].float()
            valid = state["mask"].reshape(-1).bool()
            a = a.reshape(-1, a.shape[-1])[valid]
            scores = a.abs().sum(0) * down.weight.float().norm(dim=0)
            chan_scores[i] = scores if chan_scores[i] is None else chan_scores[i] + scores
        return fn

    def on_batch(mask: torch.Tensor) -> None:
        state["mask"] = mask

    n, seq_len = params.calibration_size(ctx)
    handles = []
    for i, layer in enumerate(layers):
        attn, mlp = _attn_mlp(layer)
        if params.heads:
            handles.append(attn.o_proj.register_forward_pre_hook(head_hook(i, attn.o_proj)))
        if params.mlp_ratio:
            handles.append(mlp.down_proj.register_forward_pre_hook(chan_hook(i, mlp.down_proj)))
    run_calibration(model, ctx, n, seq_len, params.batch_size, on_batch, hooks=handles)
    return head_scores, chan_scores


def _slice_linear(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear keeping rows (dim 0: outputs) or columns (dim 1: inputs) `index` of `linear`."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    out_f, in_f = weight.shape
    bias = linear.bias is not None
    new = torch.nn.Linear(in_f, out_f, bias=bias, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias:
        b = linear.bias.detach()
        new.bias.data.copy_(b.index_select(0, index.to(b.device)) if dim == 0 else b)
    return new


def _rows(units: list[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(u * size, (u + 1) * size) for u in units])


def prune_layer(layer: Any, keep_groups: list[int] | None, group: int, head_dim: int,
                keep_channels: torch.Tensor | None) -> None:
    """Slice one decoder layer in place to the kept KV groups (with their query heads) and channels."""
    attn, mlp = _attn_mlp(layer)
    if keep_groups is not None:
        heads = [g * group + j for g in keep_groups for j in range(group)]
        attn.q_proj = _slice_linear(attn.q_proj, _rows(heads, head_dim), 0)
        attn.k_proj = _slice_linear(attn.k_proj, _rows(keep_groups, head_dim), 0)
        attn.v_proj = _slice_linear(attn.v_proj, _rows(keep_groups, head_dim), 0)
        attn.o_proj = _slice_linear(attn.o_proj, _rows(heads, head_dim), 1)
        for name, value in (("num_heads", len(heads)), ("num_attention_heads", len(heads)),
                            ("num_key_value_heads", len(keep_groups)), ("num_kv_heads", len(keep_groups))):
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, value)
    if keep_channels is not None:
        for name in ("gate_proj", "up_proj"):
            if hasattr(mlp, name):
                setattr(mlp, name, _slice_linear(getattr(mlp, name), keep_channels, 0))
        mlp.down_proj = _slice_linear(mlp.down_proj, keep_channels, 1)
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = len(keep_channels)


@method("prune_width", "prune", WidthParams,
        description="remove attention heads (whole KV groups) and MLP channels by activation importance; "
                    "rewrites the config (a smaller dense model)")
def apply(model: Any, params: WidthParams, ctx: StepContext) -> Any:
    config = model.config
    problems = params.check_model(config)
    if problems:
        raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    head_scores, chan_scores = importance(model, ctx, params, head_dim)
    remove_groups = params.heads // group
    kept_channels = params.kept_channels(config.intermediate_size) if params.mlp_ratio else None
    for i, layer in enumerate(decoder_layers(model)):
        keep_groups = None
        if remove_groups:
            groups = head_scores[i].view(n_kv, group).sum(-1)
            keep_groups = sorted(torch.topk(groups, n_kv - remove_groups).indices.tolist())
        keep_channels = None
        if kept_channels is not None:
            keep_channels = torch.sort(torch.topk(chan_scores[i], kept_channels).indices).values
        prune_layer(layer, keep_groups, group, head_dim, keep_channels)
        log.info("layer %d: kept KV groups %s, %s MLP channels", i, keep_groups,
                 kept_channels if kept_channels is not None else "all")
    config.head_dim = head_dim  # explicit: hidden_size // num_attention_heads no longer holds
    if remove_groups:
        config.num_attention_heads = n_heads - params.heads
        config.num_key_value_heads = n_kv - remove_groups
    if kept_channels is not None:
        config.intermediate_size = kept_channels
    return model

"""Depth pruning: drop whole decoder layers, chosen by block influence (ShortGPT, Men et al. 2024:
BI = 1 - cos(layer input, layer output), averaged over calibration tokens; the least influential go)
or given as explicit indices. The result is a genuinely shallower transformers model.

Hand-written: no maintained library prunes transformers decoder layers by block influence."""

from __future__ import annotations

import logging
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from compress.methods._calib import decoder_layers, run_calibration
from compress.registry import Calibrated, StepContext, method

log = logging.getLogger("slimlab")


class DepthParams(Calibrated):
    n_layers: int | None = Field(None, ge=1, description="drop this many layers (lowest block influence)")
    ratio: float | None = Field(None, description="drop round(ratio x layers) layers, ratio in (0, 1)")
    layers: list[int] | None = Field(None, description="explicit 0-based indices of the layers to drop")
    batch_size: int = Field(8, ge=1)

    def describe(self) -> str:
        """'-N layers', '-25% of layers' or '-1 layers [1]'; the pruning table adds 'of M' from the models."""
        if self.layers is not None:
            return f"-{len(self.layers)} layers {self.layers}"
        return f"-{self.n_layers} layers" if self.n_layers is not None else f"-{self.ratio:.0%} of layers"

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError("ratio must lie strictly between 0 and 1 (0.25 drops a quarter of the layers)")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("layers is empty; list the 0-based indices to drop, e.g. [2, 3]")
        if any(i < 0 for i in v):
            raise ValueError("layer indices are 0-based and non-negative, e.g. [2, 3]")
        if len(set(v)) != len(v):
            raise ValueError("layers lists an index twice; list each layer to drop once")
        return v

    @model_validator(mode="after")
    def _one_choice(self) -> DepthParams:
        given = [k for k in ("n_layers", "ratio", "layers") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of n_layers, ratio or layers (got "
                             f"{', '.join(given) if given else 'none'})")
        return self

    def n_drop(self, total: int) -> int:
        if self.layers is not None:
            return len(self.layers)
        if self.n_layers is not None:
            return self.n_layers
        return round(self.ratio * total)

    def check_model(self, model_config: Any) -> list[tuple[str, str]]:
        total = model_config.num_hidden_layers
        if self.layers is not None:
            bad = [i for i in self.layers if i >= total]
            if bad:
                return [("layers", f"index {bad} out of range: the model has {total} decoder layers "
                         f"(indices 0..{total - 1})")]
        field = next(k for k in ("layers", "n_layers", "ratio") if getattr(self, k) is not None)
        n = self.n_drop(total)
        if n >= total:
            return [(field, f"would drop {n} of the model's {total} decoder layers, leaving none; "
                     f"drop at most {total - 1}")]
        if n == 0:
            return [(field, f"drops no layer of {total} (ratio x layers rounds to 0); use ratio >= {0.5 / total:.2f} "
                     "or n_layers")]
        return []


@torch.no_grad()
def block_influence(model: Any, ctx: StepContext, params: DepthParams) -> list[float]:
    """Per layer, 1 - mean cosine similarity of its input and output hidden states (padding excluded)."""
    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    count = [0]
    state: dict[str, torch.Tensor] = {}

    def hook(index: int):
        def fn(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            sums[index] += float((cos * state["mask"]).sum())
        return fn

    def on_batch(mask: torch.Tensor) -> None:
        state["mask"] = mask.float()
        count[0] += int(mask.sum())

    n, seq_len = params.calibration_size(ctx)
    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    run_calibration(model, ctx, n, seq_len, params.batch_size, on_batch, hooks=handles)
    return [1.0 - s / max(count[0], 1) for s in sums]


def drop_layers(model: Any, drop: list[int]) -> Any:
    """Remove decoder layers in place; renumber the rest (KV cache slots) and rewrite the config."""
    layers = decoder_layers(model)
    total = len(layers)
    if not drop or len(set(drop)) >= total or any(not 0 <= i < total for i in drop):
        raise ValueError(f"cannot drop layers {drop} of a {total}-layer model")
    keep = [i for i in range(total) if i not in set(drop)]
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    decoder.layers = kept
    config = model.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == total:
        config.layer_types = [config.layer_types[i] for i in keep]
    return model


@method("prune_depth", "prune", DepthParams,
        description="drop whole decoder layers by block influence (angular distance) or explicit indices")
def apply(model: Any, params: DepthParams, ctx: StepContext) -> Any:
    total = len(decoder_layers(model))
    problems = params.check_model(model.config)
    if problems:
        raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
    if params.layers is not None:
        drop = sorted(params.layers)
    else:
        scores = block_influence(model, ctx, params)
        order = sorted(range(total), key=lambda i: scores[i])
        drop = sorted(order[: params.n_drop(total)])
        log.info("block influence per layer: %s; dropping %s", [round(s, 4) for s in scores], drop)
    return drop_layers(model, drop)

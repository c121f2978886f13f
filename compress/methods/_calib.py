"""Calibration texts as padded token batches, for the methods that run their own forward passes
(structured pruning scores, distillation)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from compress.registry import StepContext


def token_batches(tokenizer: Any, texts: list[str], seq_len: int, batch_size: int,
                  device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches (input_ids, attention_mask), each text truncated to seq_len tokens."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=seq_len, padding=True,
                            return_tensors="pt")
            yield {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    finally:
        tokenizer.padding_side = side


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks of a transformers causal LM (model.model.layers for Llama-likes)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder layer list found (expected model.model.layers); "
                         "structured pruning supports transformers decoders laid out like Llama/Qwen/Mistral")
    return layers


@torch.no_grad()
def run_calibration(model: torch.nn.Module, ctx: StepContext, n: int, seq_len: int, batch_size: int,
                    on_batch: Any = None, hooks: Sequence[Any] = ()) -> None:
    """Forward the calibration texts through the model (hooks collect what they need); on_batch(mask)
    is called before each batch with its attention mask, so hooks can skip padding. `hooks` (the
    collecting handles) are removed afterwards, also when a forward fails."""
    try:
        texts = ctx.calibration_texts(n, seq_len)
        was_training = model.training
        model.eval()
        for batch in token_batches(ctx.tokenizer, texts, seq_len, batch_size, model_device(model)):
            if on_batch is not None:
                on_batch(batch["attention_mask"])
            model(**batch, use_cache=False)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()

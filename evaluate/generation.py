"""Batched greedy (or seeded sampling) generation with stop strings, shortest prompts batched together."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ("\n",)
    batch_size: int = 16


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model always has parameters
        return torch.device("cpu")


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    config: DecodingConfig,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Completions for `prompts`, in order. Prompts of similar length share a batch (less padding);
    each sequence stops at its first stop string; `on_batch` lets callers persist finished work."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outputs: list[str] = [""] * len(prompts)
    device = model_device(model)
    gen_kwargs: dict = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config.do_sample:
        gen_kwargs.update(temperature=config.temperature, top_p=config.top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if config.stop:
        gen_kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    for batch_index, idx in enumerate(_length_sorted_batches([len(e) for e in encoded], config.batch_size)):
        if config.do_sample:
            torch.manual_seed(config.seed + batch_index)
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(**batch, **gen_kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        texts = [truncate_at_stop(t, config.stop) for t in texts]
        for i, t in zip(idx, texts, strict=True):
            outputs[i] = t
        if on_batch is not None:
            on_batch(idx, texts)
    return outputs

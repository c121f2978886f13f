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
    fast_greedy: bool = True  # our shrinking-batch loop; False = transformers' generate()


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


class _StopMatcher:
    """Per-row stop detection on text, with each token's string decoded once and cached."""

    def __init__(self, tokenizer, stop: Sequence[str], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.eos_ids = eos_ids
        self.window = max((len(s) for s in self.stop), default=0) + 16
        self.piece: dict[int, str] = {}

    def text_of(self, token_id: int) -> str:
        if token_id not in self.piece:
            self.piece[token_id] = self.tokenizer.decode([token_id])
        return self.piece[token_id]

    def finished(self, token_id: int, tail: str) -> tuple[bool, str]:
        if token_id in self.eos_ids:
            return True, tail
        tail = (tail + self.text_of(token_id))[-self.window :]
        return any(s in tail for s in self.stop), tail


@torch.inference_mode()
def greedy_generate_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                          matcher: _StopMatcher) -> list[list[int]]:
    """Greedy decoding in which a row leaves the batch (and its KV cache) as soon as it hits a stop
    string or EOS. transformers' generate() keeps finished rows computing until the whole batch
    is done; this loop is written here because no library offers that for HF models on CPU."""
    from transformers import DynamicCache

    n = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    tails = [""] * n
    alive = list(range(n))  # original row index of each live batch row
    cache = DynamicCache(config=model.config)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   past_key_values=cache, use_cache=True, **logits_to_keep(model, 1)).logits[:, -1, :]
    next_pos = position_ids[:, -1:] + 1
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        keep = []
        for row, tok in enumerate(tokens.tolist()):
            orig = alive[row]
            done, tails[orig] = matcher.finished(tok, tails[orig])
            if tok not in matcher.eos_ids:
                out[orig].append(tok)
            if not done:
                keep.append(row)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=tokens.device)
            cache.batch_select_indices(index)
            tokens, attention_mask, next_pos = tokens[index], attention_mask[index], next_pos[index]
            alive = [alive[r] for r in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(alive), 1))], dim=-1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_pos,
                       past_key_values=cache, use_cache=True).logits[:, -1, :]
        next_pos = next_pos + 1
    return out


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt as the model expects them: the tokenizer's own special tokens (e.g. Llama's
    BOS), unless the text already starts with the BOS string (a rendered chat template carries it).
    lm-evaluation-harness's HF backend follows the same rule."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def logits_to_keep(model, keep: int) -> dict:
    """`logits_to_keep=keep` where the model's forward takes it (transformers' causal LMs do): only the last
    `keep` positions are projected onto the vocabulary, with the same logits there; else no argument."""
    import inspect

    try:
        return {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    except (TypeError, ValueError):  # pragma: no cover - a forward without a readable signature
        return {}


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


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
    if hasattr(model, "generate_texts"):  # a model behind an API (evaluate/api_model.py): same prompts, decoding
        return model.generate_texts(prompts, config, on_batch)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
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
    matcher = _StopMatcher(tokenizer, config.stop, _eos_ids(model, tokenizer))
    for batch_index, idx in enumerate(_length_sorted_batches([len(e) for e in encoded], config.batch_size)):
        if config.do_sample:
            torch.manual_seed(config.seed + batch_index)
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        if config.do_sample or not config.fast_greedy:
            out = model.generate(**batch, **gen_kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
        else:
            new_tokens = greedy_generate_batch(model, batch["input_ids"], batch["attention_mask"],
                                               config.max_new_tokens, matcher)
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        texts = [truncate_at_stop(t, config.stop) for t in texts]
        for i, t in zip(idx, texts, strict=True):
            outputs[i] = t
        if on_batch is not None:
            on_batch(idx, texts)
    return outputs

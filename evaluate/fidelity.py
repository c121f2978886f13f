"""Perplexity over token windows, and the fidelity of a compressed model to its FP baseline on the same windows.

Per window: the model's log-probabilities of every next token (float32 log-softmax of the logits), the NLL
of the tokens that follow, and, when a reference (the FP model) is given, KL(FP || model) at every
position and whether both put their highest probability on the same token. The reference is the FP
model itself, run beside the variant on each window: exact (no stored top-k approximation), and a
forward pass of the FP model costs what the variant's does. Written here because no maintained library
computes llama.cpp's KL statistics for transformers models."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from evaluate.generation import model_device
from evaluate.harness import read_records
from evaluate.interrupts import whole_write
from evaluate.records import CellMetrics


def _window_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """log P(next token) at every position but the last: (len - 1, vocab), float32."""
    logits = model(input_ids=ids[None].to(model_device(model)), use_cache=False).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def score_window(model: torch.nn.Module, ids: torch.Tensor, reference: torch.nn.Module | None = None) -> dict:
    """NLL of one window; with a reference: KL(reference || model) per predicted token and top-1 agreement."""
    logp = _window_logprobs(model, ids)
    targets = ids[1:].to(logp.device)
    nll = -logp.gather(-1, targets[:, None]).squeeze(-1)
    out = {"nll": float(nll.double().sum()), "n_tokens": int(targets.numel())}
    if reference is not None:
        ref = _window_logprobs(reference, ids).to(logp.device)
        kl = (ref.exp() * (ref - logp)).sum(-1).clamp(min=0.0)  # rounding can leave -1e-9 where both agree
        out["kl"] = [round(float(x), 7) for x in kl]
        out["top1_same"] = int((ref.argmax(-1) == logp.argmax(-1)).sum())
    return out


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1] if len(values) > 1 \
        else values[0]


def summarize_windows(samples: list[dict], metric: str = "perplexity") -> CellMetrics:
    """Cell metrics: perplexity and mean NLL over every predicted token; KL mean, percentiles and max, and
    top-1 agreement (percent) when the samples were scored against a reference."""
    tokens = sum(s["n_tokens"] for s in samples)
    nll = sum(s["nll"] for s in samples) / tokens
    metrics = CellMetrics(metric=metric, perplexity=math.exp(nll), nll_mean=nll, n=float(len(samples)),
                          n_tokens=float(tokens), seq_len=float(samples[0]["n_tokens"] + 1) if samples else None)
    if samples and all("kl" in s for s in samples):
        kl = [x for s in samples for x in s["kl"]]
        metrics = metrics.merged(dict(
            kl_mean=statistics.fmean(kl), kl_p50=_percentile(kl, 0.5), kl_p90=_percentile(kl, 0.9),
            kl_p99=_percentile(kl, 0.99), kl_max=max(kl),
            top1_agreement=100.0 * sum(s["top1_same"] for s in samples) / tokens))
    return metrics


def evaluate_windows(model: torch.nn.Module, window_ids: list[list[int]], item_ids: list[str], partial_path: Path,
                     reference: Callable[[], torch.nn.Module] | None = None,
                     on_window: Callable[[int], None] | None = None) -> tuple[CellMetrics, list[dict]]:
    """Score every window (finished windows are appended to `partial_path`, so a killed cell resumes);
    `reference` loads the FP model when a window still needs it (None for the baseline itself)."""
    partial_path.parent.mkdir(parents=True, exist_ok=True)
    done = {record["id"]: record for record in read_records(partial_path)}
    ref = None
    with partial_path.open("a") as f:
        for item_id, ids in zip(item_ids, window_ids, strict=True):
            if item_id in done:
                continue
            if reference is not None and ref is None:
                ref = reference()
            record = {"id": item_id, "repeat": 0, **score_window(model, torch.tensor(ids), ref)}
            done[item_id] = record
            with whole_write():
                f.write(json.dumps(record) + "\n")
                f.flush()
            if on_window is not None:
                on_window(1)
    samples = [done[i] for i in item_ids]
    return summarize_windows(samples), samples

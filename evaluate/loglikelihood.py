"""Multiple choice scored by log-likelihood: which option does the model find most probable?

For every item and option, the summed log-probability of the continuation ``" " + option text``
(and of ``" " + letter``) given the item's stored prompt, the exact bytes the generation saw.  Reported
beside the generated-letter accuracy because the two disagree for small models (a model can rank
the right option highest yet fail to write its letter).

- ``accuracy_loglik``: argmax of the summed log-probability of the option text;
- ``accuracy_loglik_norm``: the same divided by the continuation's length in UTF-8 bytes
  (lm-evaluation-harness's ``acc_norm``), which removes the bias towards short options;
- ``accuracy_loglik_letter``: argmax over the option letters (MMLU-style);
- ``loglik_agreement``: percent of generated answers that name the option ``accuracy_loglik`` picks.

Plain forward passes on the model as loaded, so bitsandbytes, quanto and compressed-tensors models
work unchanged.  Batched with left padding and explicit position ids, and only the logits of the
continuation positions are materialised (``logits_to_keep``).  Written here because the libraries
that do this (lm-evaluation-harness) drive their own model loading and cannot score a model object
on slimlab's frozen prompts.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from evaluate.generation import encode_prompt, logits_to_keep, model_device
from evaluate.tasks.base import Item

if TYPE_CHECKING:
    from evaluate.harness import PromptSet

LETTERS = "ABCDEFGHIJ"


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the model would see ``context + continuation``: trailing
    spaces of the context move to the continuation, the whole string is tokenized once and split
    after the context's tokens (lm-evaluation-harness's rule); if tokenization merges across the
    boundary, the two parts are tokenized separately. The context gets the tokenizer's BOS, as a
    generation prompt does (`encode_prompt`)."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = encode_prompt(tokenizer, context)
    whole = encode_prompt(tokenizer, context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    return ctx, tokenizer(continuation, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def continuation_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each continuation given its context, in order."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    device = model_device(model)
    seqs: list[tuple[list[int], int]] = []
    for ctx, cont in encoded:
        if not cont:
            raise ValueError("an empty continuation has no likelihood to score")
        if not ctx:  # the first continuation token needs something to be predicted from
            ctx = [start_id if start_id is not None else pad_id]
        seq = ctx + cont
        if max_len and len(seq) > max_len:  # keep the continuation, drop the oldest context
            seq = seq[-max_len:]
        seqs.append((seq, min(len(cont), len(seq) - 1)))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        keep = max(seqs[i][1] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = seqs[i][0]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), **logits_to_keep(model, keep + 1)).logits
        # logits at position p predict token p + 1: the last `keep` tokens come from positions -keep-1 .. -2
        logp = torch.log_softmax(logits[:, -(keep + 1) : -1, :].float(), dim=-1)
        token_lp = logp.gather(-1, ids[:, width - keep :].to(logp.device).unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(idx):
            n = seqs[i][1]
            results[i] = (float(token_lp[row, keep - n :].sum()), n)
    return results


def score_choices(backend: Any, prompts: Sequence[str], items: Sequence[Item],
                  batch_size: int = 16) -> list[dict[str, Any]] | None:
    """Per item: log-probabilities of each option's text and letter, and the option each rule picks; None when
    the backend offers no log-probabilities (a chat API)."""
    pairs: list[tuple[str, str]] = []
    for prompt, item in zip(prompts, items, strict=True):
        pairs += [(prompt, " " + c) for c in item.choices]
        pairs += [(prompt, " " + LETTERS[j]) for j in range(len(item.choices))]
    scores = backend.continuation_logprobs(pairs, batch_size)
    if scores is None:
        return None
    records, k = [], 0
    for item in items:
        n = len(item.choices)
        text, letter = scores[k : k + n], scores[k + n : k + 2 * n]
        k += 2 * n
        logprob = [s for s, _ in text]
        norm = [s / len((" " + c).encode("utf-8")) for (s, _), c in zip(text, item.choices, strict=True)]
        letter_lp = [s for s, _ in letter]
        records.append({
            "logprob": logprob,
            "logprob_norm": norm,
            "letter_logprob": letter_lp,
            "n_tokens": [t for _, t in text],
            "pick": LETTERS[max(range(n), key=logprob.__getitem__)],
            "pick_norm": LETTERS[max(range(n), key=norm.__getitem__)],
            "pick_letter": LETTERS[max(range(n), key=letter_lp.__getitem__)],
        })
    return records


def applies(pset: PromptSet) -> bool:
    """Log-likelihood scoring runs for letter-answer tasks whose items all carry their options."""
    return pset.task.answer_type == "letter" and bool(pset.items) and all(it.choices for it in pset.items)


def apply_loglik(backend: Any, pset: PromptSet, samples: list[dict], batch_size: int = 16) -> dict[str, float]:
    """Score every item of a cell by log-likelihood through the backend (evaluate.backends), attach
    ``loglik_choice`` to its samples (every repeat) and return the cell's loglik metrics; {} for tasks it does
    not apply to and for backends without log-probabilities (chat APIs)."""
    if not applies(pset):
        return {}
    records = score_choices(backend, pset.prompts, pset.items, batch_size)
    if records is None:
        return {}
    by_id = {it.id: rec for it, rec in zip(pset.items, records, strict=True)}
    for s in samples:
        s["loglik_choice"] = by_id[s["id"]]

    def pct(values: list[bool]) -> float:
        return 100.0 * statistics.fmean(values) if values else 0.0

    golds = [it.gold for it in pset.items]
    return {
        "accuracy_loglik": pct([r["pick"] == g for r, g in zip(records, golds, strict=True)]),
        "accuracy_loglik_norm": pct([r["pick_norm"] == g for r, g in zip(records, golds, strict=True)]),
        "accuracy_loglik_letter": pct([r["pick_letter"] == g for r, g in zip(records, golds, strict=True)]),
        "loglik_agreement": pct([s.get("parsed") == s["loglik_choice"]["pick"] for s in samples]),
    }

"""Perplexity on WikiText-2 test, the protocol of GPTQ, SparseGPT and Wanda, plus fidelity to the FP model.

The corpus is tokenized once and split into non-overlapping windows of ``seq_len`` tokens (the model's
context up to 2048 unless the recipe sets ``seq_len``); the last partial window is dropped; every token of
a window but its first is predicted; perplexity = exp(mean NLL over all predicted tokens). ``n`` keeps the
first ``n`` windows (the whole corpus when ``n`` covers it), so a smaller study is a prefix of a larger one.

On the same windows each variant is compared with the FP baseline's next-token distribution, as
llama.cpp's ``llama-perplexity --kl-divergence`` does: mean KL(FP || variant) per token with its
percentiles, and how often both models' most likely next token is the same (top-1 agreement). These
show compression damage where a small model's accuracy sits near zero (evaluate/fidelity.py).

Text: the packaged WikiText-2 test file (``evaluate/data/wikitext2/test.txt``, pytorch/examples' copy of
the word-level, already tokenized release with ``<unk>``; CC BY-SA 3.0), read as is; or ``test.txt`` in
``data_dir`` (e.g. ``wiki.test.tokens`` renamed, or the raw release for "wikitext-2-raw" figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.sources import PACKAGED_ROOT

WIKITEXT2_TEST = PACKAGED_ROOT / "wikitext2" / "test.txt"
DEFAULT_MAX_SEQ_LEN = 2048


def corpus_file(data_dir: str | Path | None) -> Path:
    return Path(data_dir) / "test.txt" if data_dir else WIKITEXT2_TEST


def load_corpus(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """The whole corpus as one item; `window_items` cuts it into token windows once a tokenizer is known."""
    path = corpus_file(data_dir)
    if not path.is_file():
        raise FileNotFoundError(f"perplexity: no corpus file {path}; data_dir must hold test.txt")
    return [Item(id=f"perplexity-{path.stem}", question=path.read_text(encoding="utf-8"), gold="")]


def default_seq_len(tokenizer: Any, model_config: Any = None) -> int:
    """The model's context (max_position_embeddings), capped at 2048 as the GPTQ protocol used for LLaMA."""
    context = getattr(model_config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", None)
    if not isinstance(context, int) or context <= 0 or context > 10**7:  # tokenizers report 1e30 when unset
        context = DEFAULT_MAX_SEQ_LEN
    return min(context, DEFAULT_MAX_SEQ_LEN)


def window_items(tokenizer: Any, text: str, seq_len: int, n: int) -> tuple[list[Item], list[str]]:
    """(items, prompts): the first `n` non-overlapping windows of `seq_len` tokens; each prompt holds its
    window's token ids (space-separated), so the frozen prompt set pins the exact tokens every variant sees."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    total = len(ids) // seq_len
    if total == 0:
        raise ValueError(f"perplexity: the corpus has {len(ids)} tokens, fewer than seq_len={seq_len}")
    items, prompts = [], []
    for w in range(min(n, total)):
        window = ids[w * seq_len : (w + 1) * seq_len]
        items.append(Item(id=f"perplexity-w{w:04d}", question="", gold="",
                          meta={"window": w, "first_token": w * seq_len, "of_windows": total,
                                "corpus_tokens": len(ids)}))
        prompts.append(" ".join(map(str, window)))
    return items, prompts


register_task(
    TaskSpec(
        name="perplexity",
        description="WikiText-2 test perplexity (GPTQ protocol: non-overlapping seq_len windows; n = windows) "
                    "with KL divergence and top-1 agreement against the FP baseline.",
        answer_type="text",
        load=load_corpus,
        family="fidelity",
        metric="perplexity",
        windows=True,
    )
)

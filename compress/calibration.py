"""Calibration texts for the methods that need them: real text shipped with slimlab (WikiText-2 validation,
GSM8K train: what a real model should be calibrated on), the toy model's synthetic tasks, a Hugging Face
dataset (online), or a local JSONL/text file. Never the evaluation items."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from evaluate.prompts import PromptConfig, render_prompt
from evaluate.tasks import TASKS, load_builtin_tasks
from evaluate.tasks.sources import PACKAGED_ROOT
from evaluate.tasks.synthetic import TRAINING_TASKS


def synthetic_texts(n: int, seed: int) -> list[str]:
    """Prompts with worked answers from the training split: never the evaluation items."""
    return [prompt + answer for prompt, answer in synthetic_pairs(n, seed)]


def synthetic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, " " + worked answer) from the training split, for training on the answer only."""

    load_builtin_tasks()
    per_task = -(-n // len(TRAINING_TASKS))
    pairs = []
    for name in TRAINING_TASKS:
        task = TASKS[name]
        for item in task.load(n=per_task, seed=seed + 7919, split="train"):
            pairs.append((render_prompt(task, item, PromptConfig()), " " + (item.target or item.gold)))
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


def file_texts(path: Path, n: int, seed: int) -> list[str]:
    if path.suffix == ".jsonl":
        texts = []
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                texts.append(r.get("text") or (r.get("prompt", "") + r.get("completion", "")))
    else:
        texts = [t.strip() for t in path.read_text().split("\n\n") if t.strip()]
    if not texts:
        raise ValueError(f"calibration file {path} holds no text")
    random.Random(seed).shuffle(texts)
    return texts[:n]


def hf_texts(spec: str, n: int, seed: int) -> list[str]:
    """'hf:<dataset>[:<split>[:<field>]]', e.g. 'hf:openai/gsm8k:train:question' (needs network)."""
    from datasets import load_dataset

    parts = spec.removeprefix("hf:").split(":")
    name, split = parts[0], parts[1] if len(parts) > 1 else "train"
    field = parts[2] if len(parts) > 2 else "text"
    ds = load_dataset(name, split=split).shuffle(seed=seed).select(range(n))
    return [str(r[field]) for r in ds]


PACKAGED_SOURCES = {
    "wikitext2": "WikiText-2 validation paragraphs (packaged, CC BY-SA 3.0)",
    "gsm8k": "GSM8K train problems with their worked solutions (packaged, MIT)",
}


def wikitext2_texts(n: int, seed: int) -> list[str]:
    """Paragraphs of WikiText-2 validation (headings and short lines dropped), seeded order."""
    path = PACKAGED_ROOT / "wikitext2" / "valid.txt"
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if len(line.strip()) >= 200 and not line.strip().startswith("=")]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def gsm8k_texts(n: int, seed: int) -> list[str]:
    """GSM8K train problems, each with its reference solution (calculator annotations kept as written)."""
    rows = [json.loads(line) for line in (PACKAGED_ROOT / "gsm8k" / "train.jsonl").read_text().splitlines() if line]
    random.Random(seed).shuffle(rows)
    return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows[:n]]


def resolve_source(source: str, model_kind: str) -> str:
    """`auto`: the toy model's own synthetic tasks for the embedded model, real text (WikiText-2) for a real one."""
    if source != "auto":
        return source
    return "synthetic" if model_kind == "embedded" else "wikitext2"


def calibration_provider(source: str, seed: int) -> Callable[[int, int], list[str]]:
    def provide(n_samples: int, seq_len: int) -> list[str]:
        if source == "synthetic":
            return synthetic_texts(n_samples, seed)
        if source == "wikitext2":
            return wikitext2_texts(n_samples, seed)
        if source == "gsm8k":
            return gsm8k_texts(n_samples, seed)
        if source.startswith("hf:"):
            return hf_texts(source, n_samples, seed)
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"calibration.source {source!r}: no such file; use 'auto', 'wikitext2', "
                                    "'gsm8k', 'synthetic', 'hf:<dataset>[:split[:field]]' or a .jsonl/.txt path")
        return file_texts(path, n_samples, seed)

    return provide

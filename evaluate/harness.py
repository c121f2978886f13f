"""Evaluate one model on one task cell: frozen prompts in, per-sample records and metrics out.

Prompts are rendered once per study and stored, so the baseline and every variant see the same
bytes; finished batches are appended to a partial file so an interrupted cell resumes where it
stopped."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluate.generation import DecodingConfig, Generation
from evaluate.interrupts import whole_write
from evaluate.prompts import PromptConfig, apply_chat_template, pick_exemplars, render_prompt
from evaluate.records import CellMetrics
from evaluate.scoring import score_output
from evaluate.tasks import TASKS, Item, TaskSpec, load_builtin_tasks
from evaluate.tasks.perplexity import default_seq_len, window_items


@dataclass
class PromptSet:
    cell: str
    task: TaskSpec
    items: list[Item]
    prompts: list[str]
    exemplar_ids: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\x00".join(self.prompts).encode()).hexdigest()[:16]


def build_prompt_set(
    cell: str,
    task_name: str,
    n: int,
    seed: int,
    prompt: PromptConfig,
    tokenizer: Any = None,
    data_dir: str | None = None,
    seq_len: int | None = None,
) -> PromptSet:
    load_builtin_tasks()
    task = TASKS[task_name]
    items = task.load(n=n, seed=seed, split="test", data_dir=data_dir)
    if task.windows:  # token windows of the corpus: the "prompts" are their token ids
        items, prompts = window_items(tokenizer, items[0].question, seq_len or default_seq_len(tokenizer), n)
        return PromptSet(cell, task, items, prompts)
    exemplars: list[Item] = []
    if task.exemplars is not None:  # per-item shots, e.g. SNI's Positive Examples of each item's task file
        shots = [task.exemplars(it, prompt.k_shot, data_dir) if prompt.k_shot else [] for it in items]
        prompts = [render_prompt(task, it, prompt, s) for it, s in zip(items, shots, strict=True)]
        exemplars = list({e.id: e for s in shots for e in s}.values())
    else:
        if prompt.k_shot:
            pool = task.load(n=max(4 * prompt.k_shot, 16), seed=seed + 1, split="train", data_dir=data_dir)
            exemplars = pick_exemplars(pool, prompt.k_shot, seed, {it.id for it in items})
        prompts = [render_prompt(task, it, prompt, exemplars) for it in items]
    if prompt.chat_template:
        prompts = [apply_chat_template(tokenizer, p) for p in prompts]
    return PromptSet(cell, task, items, prompts, [e.id for e in exemplars])


def save_prompt_set(pset: PromptSet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for item, prompt in zip(pset.items, pset.prompts, strict=True):
            record = {"id": item.id, "prompt": prompt, "question": item.question, "gold": item.gold,
                      "target": item.target, "choices": list(item.choices), "meta": item.meta}
            f.write(json.dumps(record) + "\n")
    tmp.replace(path)


def load_prompt_set(path: Path, cell: str, task_name: str) -> PromptSet:
    load_builtin_tasks()
    items, prompts = [], []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        items.append(Item(r["id"], r["question"], r["gold"], r["target"], tuple(r["choices"]), r["meta"]))
        prompts.append(r["prompt"])
    return PromptSet(cell, TASKS[task_name], items, prompts)


@dataclass
class CellResult:
    metrics: CellMetrics
    samples: list[dict]


def read_records(path: Path) -> list[dict]:
    """The finished records of a partial file (JSON lines); a torn last line from a killed run is skipped."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _read_partial(path: Path) -> dict[tuple[str, int], dict]:
    return {(r["id"], r["repeat"]): r for r in read_records(path)}


def breakdown_by(samples: list[dict], key: str) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy (percent) and sample count per value of ``meta[key]``, over every repeat. A list value
    counts the sample in each of its groups (multi-label explode); samples without the key are left out."""
    groups: dict[str, list[float]] = {}
    for s in samples:
        value = (s.get("meta") or {}).get(key)
        for v in value if isinstance(value, list | tuple) else [] if value is None else [value]:
            groups.setdefault(str(v), []).append(s["score"])
    acc = {g: 100.0 * sum(v) / len(v) for g, v in sorted(groups.items())}
    return acc, {g: len(v) for g, v in sorted(groups.items())}


def summarize(samples: list[dict], repeats: int, breakdown: tuple[str, ...] = (),
              metric: str = "accuracy") -> CellMetrics:
    """Accuracy and instruction-following in percent; with repeats, the mean and spread over them; for each
    meta key in ``breakdown``, the accuracy per value and its count."""
    per_repeat = []
    for r in range(repeats):
        rows = [s for s in samples if s["repeat"] == r]
        per_repeat.append(100.0 * sum(s["score"] for s in rows) / max(len(rows), 1))
    metrics = CellMetrics(
        metric=metric,
        accuracy=statistics.fmean(per_repeat),
        instruction_following=100.0 * sum(s["followed"] for s in samples) / max(len(samples), 1),
        n=float(len(samples) // repeats),
        # outputs cut by max_new_tokens (their answer may never have come) and which rule read each answer
        truncated=float(sum(s.get("finish") == "length" for s in samples)),
        repeat_loops=float(sum(s.get("finish") == "repeat" for s in samples)),  # ended in a repetition loop
        rules=dict(Counter(s["rule"] for s in samples).most_common()),
        accuracy_std=statistics.stdev(per_repeat) if repeats > 1 else None,
    )
    for key in breakdown:
        acc, counts = breakdown_by(samples, key)
        if acc:
            metrics.breakdowns[key], metrics.breakdown_counts[key] = acc, counts
    return metrics


def evaluate_cell(
    backend: Any,
    pset: PromptSet,
    decoding: DecodingConfig,
    partial_path: Path,
    repeats: int = 1,
    batch_scorer: Callable[[list[str], list[Item]], list[float]] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CellResult:
    """Generate and score every item not yet in `partial_path` (finished batches are appended to it);
    `on_progress(n)` is told of each finished batch."""
    partial_path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_partial(partial_path)
    if on_progress is not None and done:
        on_progress(len(done))  # resumed: what a killed run already finished
    for repeat in range(repeats):
        todo = [i for i, it in enumerate(pset.items) if (it.id, repeat) not in done]
        if not todo:
            continue
        dec = DecodingConfig(**{**decoding.__dict__, "seed": decoding.seed + 1000 * repeat})

        def persist(idx: list[int], gens: list[Generation], todo: list[int] = todo, repeat: int = repeat) -> None:
            with whole_write(), partial_path.open("a") as f:
                for j, gen in zip(idx, gens, strict=True):
                    item = pset.items[todo[j]]
                    s = score_output(pset.task, item, gen.text)
                    record = {"id": item.id, "repeat": repeat, "prompt": pset.prompts[todo[j]], "output": gen.text,
                              "finish": gen.finish, "new_tokens": gen.n_tokens, "gold": item.gold, **s.as_dict(),
                              "meta": item.meta}
                    done[(item.id, repeat)] = record
                    f.write(json.dumps(record) + "\n")
            if on_progress is not None:
                on_progress(len(idx))

        backend.generate([pset.prompts[i] for i in todo], dec, on_batch=persist)
    samples = [done[(it.id, r)] for r in range(repeats) for it in pset.items]
    if batch_scorer is not None:
        scores = batch_scorer([s["output"] for s in samples], [it for _ in range(repeats) for it in pset.items])
        for s, value in zip(samples, scores, strict=True):
            s["score"] = value
    metrics = summarize(samples, repeats, pset.task.breakdown, pset.task.metric)
    if pset.task.cell_metrics is not None:
        metrics = metrics.merged(pset.task.cell_metrics(samples, [it for _ in range(repeats) for it in pset.items]))
    return CellResult(metrics, samples)

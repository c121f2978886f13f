"""Super-Natural Instructions (SNI) as used by the three-tier study of small LMs (arXiv 2406.11402).

Reads the natural-instructions repository's task files (``tasks/task*.json``: ``Definition``,
``Positive Examples``, ``Instances``, ``Categories``, ``Domains``, ``Reasoning``) from the recipe
entry's ``data_dir``. Which files: ``<data_dir>/<split>_tasks.txt`` if present, else the repository's
``<data_dir>/../splits/default/<split>_tasks.txt`` (the 119-task English test split), else every
``task*.json`` in ``data_dir``.

Sampling: at most ``n`` instances *per task file* (the study used at most 100 per task), drawn with
``random.Random(f"slimlab-sni:{task}:{seed}")`` and kept in file order; items are ordered by task file.
Gold is the first reference output only, as in the study; the metric is BERTScore recall
(``evaluate/bertscore.py``), aggregated per task type, top-level domain and reasoning type by
``evaluate/sni.py``.

Prompt layout, byte for byte the study's prompt code (its public ``SuperNaturalInstructionPrompt``)::

    context = Definition if definition else ""
    if k > 0:  context += "\\n\\nRefer to the following examples for reference:\\n\\n"
                          + "\\n\\n".join("Input: {in}\\nOutput: {out}\\n" for each example)
    prompt  = context + "\\n\\nNow complete the following task: \\nInput: {x}\\nOutput: "

So every example ends with its own "\\n" (examples are separated by three newlines), and a prompt
without a definition starts with "\\n\\n". Shots are the first ``min(k, available)`` Positive Examples
of the item's own task file (the study capped k at the examples a task has; it drew them at random
per instance, we take the first k so every variant and rerun sees the same prompt).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.tasks.base import Item, TaskSpec, register_task

NONE_LABEL = "(none)"  # the group of tasks with no Reasoning label (the study's blank 18th group)
EXAMPLES_HEADER = "\n\nRefer to the following examples for reference:\n\n"
TASK_HEADER = "\n\nNow complete the following task: \n"
DATA_DIR_HELP = (
    "the sni task reads Super-Natural Instructions task files; set data_dir to a directory of "
    "task*.json files (the natural-instructions repository's tasks/ directory, or tests/fixtures/sni)"
)


@dataclass(frozen=True)
class TaskFile:
    """What a prompt needs from one SNI task file besides its instances."""

    name: str
    definition: str
    positive_examples: tuple[tuple[str, str], ...]  # (input, output)
    categories: tuple[str, ...]
    domains: tuple[str, ...]  # top level only ("Commonsense -> Concepts ..." -> "Commonsense"), deduplicated
    reasoning: tuple[str, ...]  # as labelled; (NONE_LABEL,) when the task has none


_HEADERS: dict[Path, TaskFile] = {}  # parsed headers, so per-item shots do not re-read large files


def top_level(domain: str) -> str:
    return domain.split(" -> ")[0].strip()


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value]) if str(v).strip()]


def read_task_file(path: Path) -> tuple[TaskFile, list[dict]]:
    """Header and raw instances of one task file; a missing required field names the file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("Definition", "Instances"):
        if key not in data:
            raise ValueError(f"{path}: not a Super-Natural Instructions task file (no {key!r} field)")
    definition = data["Definition"]
    header = TaskFile(
        name=path.stem,
        definition=definition[0] if isinstance(definition, list) else str(definition),
        positive_examples=tuple((str(e["input"]), str(e["output"])) for e in data.get("Positive Examples", [])),
        categories=tuple(_strings(data.get("Categories"))) or (NONE_LABEL,),
        domains=tuple(dict.fromkeys(top_level(d) for d in _strings(data.get("Domains")))) or (NONE_LABEL,),
        reasoning=tuple(_strings(data.get("Reasoning"))) or (NONE_LABEL,),
    )
    _HEADERS[path.resolve()] = header
    return header, data["Instances"]


def task_header(path: Path) -> TaskFile:
    return _HEADERS.get(path.resolve()) or read_task_file(path)[0]


def _split_list(root: Path, split: str) -> Path | None:
    for candidate in (root / f"{split}_tasks.txt", root.parent / "splits" / "default" / f"{split}_tasks.txt"):
        if candidate.is_file():
            return candidate
    return None


def task_files(data_dir: str | Path | None, split: str = "test") -> list[Path]:
    """The task files of ``split``: a split list if one is found, else every task*.json in data_dir."""
    if data_dir is None or not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data_dir = {data_dir!r}: {DATA_DIR_HELP}")
    root = Path(data_dir)
    listing = _split_list(root, split)
    if listing is None:
        files = sorted(root.glob("task*.json"))
    else:
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        files = [root / (name if name.endswith(".json") else f"{name}.json") for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{listing} lists task files missing from {root}: {', '.join(missing[:5])}")
    if not files:
        raise FileNotFoundError(f"data_dir = {str(data_dir)!r} holds no task*.json files; {DATA_DIR_HELP}")
    return files


def load(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """At most ``n`` seeded instances per task file of ``split``, first reference output as gold."""
    items: list[Item] = []
    for path in task_files(data_dir, split):
        header, instances = read_task_file(path)
        rng = random.Random(f"slimlab-sni:{header.name}:{seed}")
        chosen = sorted(rng.sample(range(len(instances)), min(n, len(instances))))
        for i in chosen:
            inst = instances[i]
            outputs = _strings(inst.get("output"))
            gold = outputs[0] if outputs else ""
            items.append(Item(
                id=str(inst.get("id") or f"{header.name}-{i}"),
                question=str(inst["input"]),
                gold=gold,
                target=gold,
                meta={"task": header.name, "categories": list(header.categories), "domains": list(header.domains),
                      "reasoning": list(header.reasoning), "definition": header.definition},
            ))
    return items


def exemplars(item: Item, k: int, data_dir: str | Path | None) -> list[Item]:
    """The first min(k, available) Positive Examples of the item's own task file."""
    if data_dir is None:
        raise FileNotFoundError(f"data_dir = None: {DATA_DIR_HELP}")
    header = task_header(Path(data_dir) / f"{item.meta['task']}.json")
    return [Item(id=f"{header.name}-pos{i}", question=inp, gold=out, target=out)
            for i, (inp, out) in enumerate(header.positive_examples[:k])]


def render(item: Item, config: Any, shots: list[Item]) -> str:
    """The study's plain-text prompt (see the module docstring for the exact joins)."""
    context = item.meta.get("definition", "") if config.definition else ""
    if shots:
        context += EXAMPLES_HEADER + "\n\n".join(f"Input: {e.question}\nOutput: {e.gold}\n" for e in shots)
    return context + TASK_HEADER + f"Input: {item.question}\nOutput: "


SNI = register_task(
    TaskSpec(
        name="sni",
        description="Super-Natural Instructions task files (data_dir); BERTScore recall vs the first reference.",
        answer_type="text",
        load=load,
        max_new_tokens=512,
        stop=(),  # as in the study: up to 512 new tokens or EOS
        max_new_tokens_free=512,
        item_marker="",
        family="sni",
        metric="bertscore_recall",
        offline=False,
        render=render,
        exemplars=exemplars,
        needs_data_dir=DATA_DIR_HELP,
    )
)

"""Multiple-choice reasoning datasets: ARC-Easy, ARC-Challenge, CommonsenseQA, OpenBookQA, HellaSwag.

One formatter for all: ``Question: <stem>\\nA. <option>\\nB. <option>...``; the gold is the letter of
the correct option by position (ARC's numeric labels '1'..'4' become A..D; the original labels stay
in ``meta["labels"]``).  Every task is scored twice: by the letter the model generates (``accuracy``)
and by the log-likelihood of each option (``accuracy_loglik``, see evaluate/loglikelihood.py).

Local files (``data_dir``), fields exactly as on the hub:

- arc_easy / arc_challenge (allenai/ai2_arc): ``test.jsonl``, ``train.jsonl``;
  ``{"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}``
- commonsense_qa (tau/commonsense_qa; hub test has no answers, so evaluation uses validation):
  ``validation.jsonl``, ``train.jsonl``; same fields as ARC plus ``question_concept``
- openbookqa (allenai/openbookqa, main): ``test.jsonl``, ``train.jsonl``;
  ``{"id", "question_stem", "choices": {"text", "label"}, "answerKey"}``
- hellaswag (Rowan/hellaswag; hub test has no labels, so evaluation uses validation):
  ``validation.jsonl``, ``train.jsonl``; ``{"activity_label", "ctx_a", "ctx_b", "endings": [...],
  "label": "2"}``
"""

from __future__ import annotations

import re
from collections.abc import Callable

from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.sources import DatasetSpec, expected_file, item_id, items_loader, same_splits

LETTERS = "ABCDEFGHIJ"
MC_DEFINITION = "Answer the multiple-choice question with the letter of the correct option."


def mc_question(stem: str, options: list[str]) -> str:
    """The shared layout (the one synth_mc uses, so the embedded model knows it)."""
    stem = " ".join(stem.split())
    return "Question: " + stem + "".join(f"\n{LETTERS[i]}. {' '.join(o.split())}" for i, o in enumerate(options))


def mc_item(task: str, stem: str, options: list[str], gold_index: int, meta: dict) -> Item | None:
    """An Item with options labelled A, B, ... by position; None when the gold index is not an option."""
    if not options or not 0 <= gold_index < len(options) or len(options) > len(LETTERS):
        return None
    options = [" ".join(o.split()) for o in options]
    question = mc_question(stem, options)
    letter = LETTERS[gold_index]
    return Item(id=item_id(task, question), question=question, gold=letter, target=letter,
                choices=tuple(options), meta=meta)


def _choices(raw: object) -> tuple[list[str], list[str]]:
    """(texts, labels) from the hub's {"text": [...], "label": [...]} (or a list of {"text", "label"})."""
    if isinstance(raw, dict):
        return [str(t) for t in raw["text"]], [str(lab).strip() for lab in raw["label"]]
    if isinstance(raw, list):
        return [str(c["text"]) for c in raw], [str(c["label"]).strip() for c in raw]
    raise ValueError(f"unexpected choices field: {raw!r}")


def _labelled(task: str, stem_field: str) -> Callable[[dict, str], Item | None]:
    """ARC / CommonsenseQA / OpenBookQA rows: stem, choices{text,label}, answerKey."""

    def convert(row: dict, _split: str) -> Item | None:
        texts, labels = _choices(row["choices"])
        key = str(row["answerKey"]).strip()
        if key not in labels:  # unlabelled (hidden test answers) or malformed
            return None
        meta = {"source_id": row.get("id", ""), "labels": labels}
        if "question_concept" in row:
            meta["concept"] = row["question_concept"]
        return mc_item(task, row[stem_field], texts, labels.index(key), meta)

    return convert


def hellaswag_preprocess(text: str) -> str:
    """HellaSwag's WikiHow markup removed the way lm-evaluation-harness does ('[title]' -> '. ',
    other [tags] dropped, double spaces collapsed)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, _split: str) -> Item | None:
    label = str(row["label"]).strip()
    if not label.isdigit():  # the hub's test split has empty labels
        return None
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    stem = "Which ending is the most likely continuation? " + hellaswag_preprocess(
        row["activity_label"] + ": " + ctx)
    endings = [hellaswag_preprocess(e) for e in row["endings"]]
    return mc_item("hellaswag", stem, endings, int(label),
                   {"source_id": str(row.get("ind", "")), "activity": row["activity_label"]})




_ARC = ("id", "question", "choices", "answerKey")
# Splits without labels on the hub (CommonsenseQA and HellaSwag test) are not used: their items come from validation
_TASKS: tuple[tuple[str, str, DatasetSpec, Callable[[dict, str], Item | None]], ...] = (
    ("arc_easy", "ARC-Easy grade-school science (allenai/ai2_arc ARC-Easy test), 3-5 options.",
     DatasetSpec("arc_easy", same_splits("allenai/ai2_arc", "ARC-Easy", _ARC)), _labelled("arc_easy", "question")),
    ("arc_challenge", "ARC-Challenge grade-school science (allenai/ai2_arc ARC-Challenge test), 3-5 options.",
     DatasetSpec("arc_challenge", same_splits("allenai/ai2_arc", "ARC-Challenge", _ARC)),
     _labelled("arc_challenge", "question")),
    ("commonsense_qa", "CommonsenseQA (tau/commonsense_qa validation), 5 options.",
     DatasetSpec("commonsense_qa", same_splits("tau/commonsense_qa", None, _ARC, test="validation")),
     _labelled("commonsense_qa", "question")),
    ("openbookqa", "OpenBookQA elementary science (allenai/openbookqa main test), 4 options.",
     DatasetSpec("openbookqa", same_splits("allenai/openbookqa", "main",
                                           ("id", "question_stem", "choices", "answerKey"))),
     _labelled("openbookqa", "question_stem")),
    ("hellaswag", "HellaSwag commonsense sentence completion (Rowan/hellaswag validation), 4 endings.",
     DatasetSpec("hellaswag", same_splits("Rowan/hellaswag", None,
                                          ("activity_label", "ctx_a", "ctx_b", "endings", "label"), test="validation")),
     _hellaswag),
)

def register_mc_task(name: str, description: str, dataset: DatasetSpec, convert: Callable[[dict, str], Item | None],
                     family: str = "multiple_choice") -> TaskSpec:
    """A hub dataset of lettered options: generated letter scored, option log-likelihoods scored too."""
    return register_task(TaskSpec(name=name, description=f"{description} data_dir: {expected_file(dataset)}.",
                                  answer_type="letter", load=items_loader(dataset, convert), definition=MC_DEFINITION,
                                  max_new_tokens=8, family=family, offline=False, dataset=dataset))


for _name, _description, _dataset, _convert in _TASKS:
    register_mc_task(_name, _description, _dataset, _convert)

"""GSM-Plus (qintongli/GSM-Plus): eight perturbations of every GSM8K test problem; accuracy is also
reported per perturbation type (``breakdowns["perturbation"]`` in the cell's metrics).

Perturbation types as spelled in the data: numerical substitution, digit expansion,
integer-decimal-fraction conversion, adding operation, reversing operation, problem understanding,
distraction insertion, critical thinking.  'critical thinking' questions lack a needed fact: their
gold answer is ``None`` and an output saying so ("#### None", "cannot be determined") is correct.

Local files (``data_dir``): ``test.jsonl`` (``testmini.jsonl`` for gsm_plus_mini) with the hub's fields
(question, solution, answer, perturbation_type, seed_question, ...); GSM-Plus has no train split, so
k-shot exemplars come from GSM8K's train split: ``train.jsonl`` with GSM8K's fields (question, answer).
"""

from __future__ import annotations

from evaluate.parsing import NO_ANSWER, normalize_number
from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.gsm8k import GSM8K_DEFINITION, gsm8k_item, worked_solution
from evaluate.tasks.sources import GSM8K_TRAIN, DatasetSpec, Source, item_id, items_loader

GSM_PLUS_DEFINITION = GSM8K_DEFINITION + " If the problem lacks information needed to answer, say 'The answer is None.'"


def gsm_plus_item(task: str, row: dict) -> Item | None:
    gold = str(row["answer"]).strip().replace(",", "")
    if gold != NO_ANSWER and normalize_number(gold) is None:
        return None
    question = "Question: " + " ".join(row["question"].split())
    meta = {"perturbation": row["perturbation_type"], "seed_question": row["seed_question"]}
    if "seed_answer" in row:
        meta["seed_answer"] = row["seed_answer"]
    return Item(id=item_id(task, question), question=question, gold=gold,
                target=worked_solution(row["solution"], gold), meta=meta)


GSM_PLUS_FIELDS = ("question", "solution", "answer", "perturbation_type", "seed_question")


def _dataset(task: str, split: str) -> DatasetSpec:
    """GSM-Plus has no train split: k-shot exemplars come from GSM8K's."""
    return DatasetSpec(task, {"test": Source("qintongli/GSM-Plus", (None,), split, GSM_PLUS_FIELDS),
                              "train": GSM8K_TRAIN})


def _loader(task: str, dataset: DatasetSpec):
    def convert(row: dict, split: str) -> Item | None:
        return gsm8k_item(task, row) if split == "train" else gsm_plus_item(task, row)

    return items_loader(dataset, convert)


for _name, _split, _size in (("gsm_plus", "test", "10,552"), ("gsm_plus_mini", "testmini", "2,400")):
    _data = _dataset(_name, _split)
    register_task(
        TaskSpec(
            name=_name,
            description=f"GSM-Plus perturbed GSM8K (qintongli/GSM-Plus {_split}; {_size} items), accuracy per "
                        f"perturbation type. data_dir: {_split}.jsonl.",
            answer_type="number",
            load=_loader(_name, _data),
            definition=GSM_PLUS_DEFINITION,
            max_new_tokens=256,
            max_new_tokens_free=512,
            family="math",
            offline=False,
            breakdown=("perturbation",),
            dataset=_data,
        )
    )

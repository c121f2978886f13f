"""GSM8K (openai/gsm8k, config main): grade-school math word problems, gold after '####'.

Local files (``data_dir``): ``test.jsonl`` (evaluation) and ``train.jsonl`` (k-shot exemplars), rows
``{"question": ..., "answer": "...<<48/2=24>>24 ...\\n#### 72"}`` exactly as on the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluate.parsing import normalize_number
from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.sources import GSM8K_FIELDS, GSM8K_TRAIN, DatasetSpec, Source, item_id, load_items

GSM8K_DEFINITION = (
    "Solve the math word problem step by step and finish with 'The answer is' and the number."
)


def worked_solution(solution: str, final: str) -> str:
    """A one-line chain of thought ending 'The answer is N.' from a GSM8K-style solution: calculator
    annotations <<...>> and the '#### N' line removed (generation stops at a newline, so exemplars
    must not teach the model to write one)."""
    body = re.sub(r"<<[^<>]*>>", "", solution.rpartition("####")[0] if "####" in solution else solution)
    steps = " ".join(line.strip() for line in body.splitlines() if line.strip())
    return f"{steps} The answer is {final}.".strip()


def gsm8k_item(task: str, row: dict) -> Item | None:
    """An Item from a row with GSM8K's fields (question, answer ending '#### N')."""
    if "####" not in row["answer"]:
        return None
    gold = row["answer"].rpartition("####")[2].strip().replace(",", "")  # as written ("3.5"), compared numerically
    if normalize_number(gold) is None:
        return None
    question = "Question: " + " ".join(row["question"].split())
    return Item(id=item_id(task, question), question=question, gold=gold,
                target=worked_solution(row["answer"], gold), meta={})


GSM8K = DatasetSpec("gsm8k", {"test": Source("openai/gsm8k", ("main",), "test", GSM8K_FIELDS, "gsm8k/test.jsonl"),
                              "train": GSM8K_TRAIN})


def load_gsm8k(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """``n`` GSM8K problems of ``split`` (test: evaluation, train: exemplars)."""
    return load_items(GSM8K, lambda row, _split: gsm8k_item("gsm8k", row), n, seed, split, data_dir)


register_task(
    TaskSpec(
        name="gsm8k",
        description="GSM8K grade-school math (openai/gsm8k main; 1,319 test problems), numeric answer. "
                    "data_dir: test.jsonl.",
        answer_type="number",
        load=load_gsm8k,
        definition=GSM8K_DEFINITION,
        max_new_tokens=256,
        max_new_tokens_free=512,  # real chains of thought (lm-eval's gsm8k allows 256; small models ramble)
        family="math",
        dataset=GSM8K,
    )
)

"""Competition and exam math: MATH (LaTeX answers), MATH-500, MathQA (five lettered options).

MATH gold answers are the last ``\\boxed{}`` of the reference solution, compared after LaTeX
normalisation (evaluate.parsing.math_equal); accuracy is also reported per level and subject.

Local files (``data_dir``), fields exactly as on the hub:

- math (EleutherAI/hendrycks_math, all seven subject configs): ``test.jsonl`` and ``train.jsonl``
  (or the hub layout ``<subject>/test-*.parquet``); ``{"problem", "solution", "level": "Level 5",
  "type": "Algebra"}``
- math500 (HuggingFaceH4/MATH-500, test only): ``test.jsonl`` with ``{"problem", "solution",
  "answer", "subject", "level": 5, "unique_id"}``; exemplars from ``train.jsonl`` in MATH's layout
- mathqa (allenai/math_qa, loaded from its parquet copy swiss-ai/math_qa): ``test.jsonl`` and
  ``train.jsonl``; ``{"Problem", "Rationale",
  "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these",
  "correct": "a", "category", ...}``
"""

from __future__ import annotations

import re

from evaluate.parsing import last_boxed
from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.multiple_choice import LETTERS, mc_item, register_mc_task
from evaluate.tasks.sources import (
    MATH_CONFIGS,
    MATH_FIELDS,
    MATH_TRAIN,
    DatasetSpec,
    Source,
    item_id,
    items_loader,
    same_splits,
)

MATH_DEFINITION = "Solve the math problem step by step and put the final answer in \\boxed{}."


def _level(value: object) -> str:
    """'Level 3' whichever form the dataset uses (MATH: 'Level 3', MATH-500: 3)."""
    text = str(value).strip()
    return text if text.startswith("Level") else f"Level {text}"


def math_item(task: str, problem: str, solution: str, gold: str | None, level: object, subject: str) -> Item | None:
    if gold is None or not gold.strip():
        return None
    question = "Question: " + problem.strip()
    target = " ".join(line.strip() for line in solution.splitlines() if line.strip())
    return Item(id=item_id(task, question), question=question, gold=gold.strip(), target=target,
                meta={"level": _level(level), "type": subject})


def _hendrycks(task: str):
    def convert(row: dict, _split: str) -> Item | None:
        return math_item(task, row["problem"], row["solution"], last_boxed(row["solution"]), row["level"], row["type"])

    return convert


def _math500(row: dict, split: str) -> Item | None:
    if split == "train":  # exemplars come from MATH's train split, in MATH's layout
        return _hendrycks("math500")(row, split)
    return math_item("math500", row["problem"], row["solution"], str(row["answer"]), row["level"], row["subject"])


_OPTION = re.compile(r"(?:^|,)\s*['\"]?\s*([a-j])\s*\)\s*")


def mathqa_options(options: str | list) -> list[str]:
    """'a ) 38 , b ) 27.675 , c ) 30' (or the list-like "['a ) 38', 'b ) 27.675']") -> ['38', '27.675', '30'].
    A marker counts only where the next expected letter follows a comma (or the start), so commas and
    letters inside an option ('rs . 1 , 200', '( a + b )') do not split it."""
    text = ", ".join(options) if isinstance(options, list) else str(options)
    text = text.strip().lstrip("[").rstrip("]")
    starts: list[tuple[int, int]] = []
    pos = 0
    for letter in "abcdefghij":
        m = next((m for m in _OPTION.finditer(text, pos) if m.group(1) == letter), None)
        if m is None:
            break
        starts.append((m.start(), m.end()))
        pos = m.end()
    out = []
    for i, (_, content_start) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        out.append(text[content_start:end].strip().strip("'\"").strip().rstrip(",").strip())
    return out


def _mathqa(row: dict, _split: str) -> Item | None:
    options = mathqa_options(row["options"])
    correct = str(row["correct"]).strip().lower()
    if len(options) < 2 or len(correct) != 1 or correct not in "abcdefghij"[: len(options)]:
        return None
    gold_index = "abcdefghij".index(correct)
    item = mc_item("mathqa", row["Problem"], options, gold_index, {"category": row.get("category", "")})
    if item is None:
        return None
    rationale = " ".join(str(row["Rationale"]).strip().strip('"').split())
    letter = LETTERS[gold_index]
    return Item(item.id, item.question, item.gold, f"{rationale} The answer is {letter}.", item.choices, item.meta)


MATH = DatasetSpec("math", {"test": Source("EleutherAI/hendrycks_math", MATH_CONFIGS, "test", MATH_FIELDS),
                            "train": MATH_TRAIN})
MATH500 = DatasetSpec("math500", {  # MATH-500 is test only: exemplars come from MATH's train split
    "test": Source("HuggingFaceH4/MATH-500", (None,), "test", ("problem", "solution", "answer", "subject", "level"),
                   "math500/test.jsonl"),
    "train": MATH_TRAIN})
# allenai/math_qa is a loading-script dataset that datasets>=4 refuses; swiss-ai/math_qa is its parquet copy with the
# same fields (what lm-evaluation-harness loads now)
MATHQA = DatasetSpec("mathqa", same_splits("swiss-ai/math_qa", None, ("Problem", "Rationale", "options", "correct")))




register_task(
    TaskSpec(
        name="math",
        description="MATH competition problems (EleutherAI/hendrycks_math, 5,000 test), LaTeX answer in "
                    "\\boxed{}. data_dir: test.jsonl.",
        answer_type="math",
        load=items_loader(MATH, _hendrycks("math")),
        definition=MATH_DEFINITION,
        max_new_tokens=512,
        max_new_tokens_free=1024,  # competition solutions run longer than GSM8K's
        family="math",
        offline=False,
        breakdown=("level", "type"),
        dataset=MATH,
    )
)
register_task(
    TaskSpec(
        name="math500",
        description="MATH-500 (HuggingFaceH4/MATH-500), the 500-problem MATH test subset. data_dir: test.jsonl.",
        answer_type="math",
        load=items_loader(MATH500, _math500),
        definition=MATH_DEFINITION,
        max_new_tokens=512,
        max_new_tokens_free=1024,  # competition solutions run longer than GSM8K's
        family="math",
        breakdown=("level", "type"),
        dataset=MATH500,
    )
)
register_mc_task("mathqa", "MathQA GRE/GMAT-style word problems (allenai/math_qa test, via swiss-ai/math_qa), five "
                 "lettered options.", MATHQA, _mathqa, family="math")

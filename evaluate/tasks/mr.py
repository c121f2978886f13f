"""Meta-reasoning: MR-GSM8K and MR-Ben. The model does not solve a problem, it grades a given step-by-step solution:
is it correct, which step is the first wrong one, and why. Scored by the MR-Score (evaluate/mr_score.py).

Data (the original files' fields):

- ``mr_gsm8k``: MR-GSM8K (dvlab-research/MR-GSM8K; 3,000 GSM8K solutions, original / POT / reversed questions),
  hub ``Randolphzeng/Mr-GSM8K`` split test, or ``data_dir/test.json`` (the repository's dataset/MR-GSM8K.json
  under that name; also .jsonl/.parquet). Rows: ``question``, ``model_output_steps`` (the "Step N: ..." list),
  ``model_output_solution_correctness`` (correct/wrong), ``model_output_solution_first_error_step`` (an int, or
  N/A), ``model_output_solution_first_error_reason``, ``question_type``, ``uuid``, ...
- ``mr_ben``: MR-Ben (dvlab-research/Mr-Ben; biology, chemistry, coding, logic, math, medicine, physics), hub
  ``Randolphzeng/Mr-Ben`` files ``<subject>.json``, or the same files in ``data_dir`` (the repository's data/):
  ``{Question_UUID: [solution, ...]}`` with ``Question``, ``Options``, ``Model_Solution_Steps``,
  ``Model_Solution_Correctness`` (correct/incorrect), ``Model_Solution_First_Error_Step``,
  ``Model_Solution_Error_Reason``, ``Model_Solution_Rectified_First_Error_Step``, ``Subject``, ... One item per
  solution; ``n`` is split evenly over the subjects present (seeded), and the MR-Score is the mean over subjects.

Prompts: the benchmarks' own zero-shot evaluation prompts (MR-GSM8K scripts/eval_mr_gsm8k.py, Mr-Ben
script/utils.py ``process_subject_data``; MIT), the solution steps one per line (Mr-Ben's script pastes the
Python list). They ask for an analysis, then ``Final Judgement: correct/wrong`` (MR-GSM8K) or ``Solution
Correctness: correct/incorrect`` (MR-Ben), ``First Error Step`` and ``Error Reason`` / ``Error Analysis``.
``parse_mr`` reads those fields (and what small models write instead: markdown, echoed templates, a verdict in
prose); ``accuracy`` is the share of right correct/incorrect verdicts, and the MR-Score parts are cell metrics.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluate.mr_score import CORRECT, INCORRECT, judge_mr_cell, mr_cell_metrics
from evaluate.parsing import Parsed
from evaluate.scoring import Scorer, register_scorer
from evaluate.tasks.base import Item, TaskSpec, register_task
from evaluate.tasks.sources import (
    DatasetSpec,
    DatasetUnavailable,
    Source,
    _local_files,
    _read_file,
    item_id,
    load_rows,
    subsample,
)

log = logging.getLogger("slimlab")

MR_GSM8K_HUB = "Randolphzeng/Mr-GSM8K"  # the dataset dvlab-research/MR-GSM8K's README points to (was DiagGSM8K)
MR_BEN_HUB = "Randolphzeng/Mr-Ben"
MR_GSM8K_FIELDS = ("question", "model_output_steps", "model_output_solution_correctness",
                   "model_output_solution_first_error_step", "model_output_solution_first_error_reason")
MR_BEN_FIELDS = ("Question", "Model_Solution_Steps", "Model_Solution_Correctness", "Model_Solution_First_Error_Step",
                 "Model_Solution_Error_Reason")
MR_BEN_SUBJECTS = ("biology", "chemistry", "coding", "logic", "math", "medicine", "physics")  # script/evaluate.py
MR_GSM8K = DatasetSpec("mr_gsm8k", {"test": Source(MR_GSM8K_HUB, (None,), "test", MR_GSM8K_FIELDS)})
MAX_REASON_CHARS = 2000  # of the model's error reason kept for the judge

# ------------------------------------------------------------------------------------ field values


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA", "NONE", "NAN"))


def gold_verdict(value: Any) -> str | None:
    """'correct' / 'incorrect' from a dataset label (MR-GSM8K says 'wrong'); None for anything else."""
    text = str(value).strip().lower()
    return CORRECT if text == "correct" else INCORRECT if text in ("wrong", "incorrect") else None


def gold_step(value: Any) -> str | None:
    """A first error step as a digit string ("3"): from an int, a float (a CSV column with N/A holes), "3" or
    "Step 3"; None for N/A."""
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    m = re.fullmatch(r"\s*(?:step\s*)?(\d+)\s*", str(value), re.IGNORECASE)
    return m.group(1) if m else str(value).strip()


def step_list(value: Any) -> list[str]:
    """Solution steps as a list of strings: a list as is, else a JSON or Python list literal (the hub's CSV holds
    one), else one step per non-empty line."""
    if isinstance(value, str):
        for reader in (json.loads, ast.literal_eval):
            try:
                parsed = reader(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, list):
                value = parsed
                break
        else:
            value = [line for line in value.splitlines() if line.strip()]
    return [str(s).replace("\r", "").strip() for s in (value or []) if str(s).strip()]


def reason_text(value: Any) -> str:
    """An error reason: one string, or MR-Ben's list (one per annotator) joined; '' for N/A."""
    if isinstance(value, list | tuple):
        parts = [str(v).strip() for v in value if not _missing(v)]
        return parts[0] if len(parts) == 1 else "\n".join(f"{i}. {p}" for i, p in enumerate(parts, 1))
    return "" if _missing(value) else str(value).strip()


# ------------------------------------------------------------------------------------------ prompts

GSM8K_PROMPT = """Act as a grade school math teacher and score the following problem solution.

Question:
{question}

Student Solution:
{steps}

Your task involves three parts:
1. **Step-by-step Evaluation:** Go through the student solution carefully and identify key errors and potential \
misunderstandings that led to the incorrect solution.
2. **Final Judgement:**  Provide an overall judgement on the correctness of the student's solution.
3. **First Error Step:** If the solution is incorrect, generate the step number where the first error occurs, \
otherwise generate N/A here
4. **Error Analysis:** If the solution is incorrect, analyse the cause and reasons for the first error step, \
otherwise generate N/A here

Here's the format I want:
Step-by-step Evaluation: [Provide a step by step examination of the student solution and identify key errors and \
misunderstandings here.]
Final Judgement: [Insert only **correct** or **wrong** here]
First Error Step: [Insert either N/A or the step number where the first error occurs]
Error Analysis: [Insert either N/A or the analysis of error in the first error among solution steps]

Please follow this format without any additional introductory or concluding statements.
"""

BEN_PROMPT = """Following is a question/solution pair in subject {subject}. Your task is to examine the solutions \
step by step and determine the solution correctness.
If the solution is incorrect, please further find out the first error step and explain the error reason.

Following are the specific definitions of the fields:
Solution Correctness: Does the solution correctly answer the question with justifiable reasoning and selected the \
corrected options?
First Error Step: For every step it can either be correct, neutral or incorrect. Correct steps are those that \
possess sound logic and correct computation and lead to the correct answer.
Neutral steps are those step that are explanatory, exploring or focusing on background illustration. They have no \
obvious mistakes but is not very clear if they lead to the correct answer.
Incorrect steps are those with factual errors, computation errors or understanding/logic errors. These steps might \
or might not detour the reasoning path to incorrect answers.
We need to single out the first step that comes with above errors or lead to incorrect answers.
Error Reason: For the identified first error step, please specify the errors made in this step and suggest a \
rectified reasoning step instead.

Below is the question and solution for you to solve:
Question: {question}
Options: {options}
Step by Step Solution:
{steps}


Please follow the desired response format:
Solution Analysis: [Give a step by step analysis on the solution correctness here]
Solution Correctness: [Input 'correct'/'incorrect' here to indicate the overall correctness of the solution]
First Error Step: [Input 'Step x' here to indicate the first error step here. Input 'N/A' if the solution is \
correct.]
Error Reason: [Input the error reason and the rectified reasoning of the first error step here. Input 'N/A' if the \
solution is correct.]

Please follow this format without any additional introductory or concluding statements.
"""

CODING_PROMPT = """Following is a coding question and its solution. Your task is to examine the solutions step by \
step and determine the solution correctness.
If the solution is incorrect, please further find out the first error line and explain the error reason.

Following are the specific definitions of the fields:
Solution Correctness: Determines if the code correctly solves the problem. The code must be executable, logically \
sound, and correctly answer the question.
First Error Step: Examine each line to categorize as correct, neutral, or incorrect. Correct lines execute well \
and contribute to solving the problem. Neutral lines are auxiliary and not critical to the main logic. Incorrect \
lines contain logical, implementation errors, or show a misunderstanding of the problem. Both explanatory comments \
and code lines could be considered as correct, neutral or incorrect. If you believe the error is caused by missing \
logic, report the first reasonable place you think the missing code should be inserted.
Error Reason: For the first incorrect line/location identified, explain the specific mistakes and provide a \
corrected version of the line. The revised line could be either a explanatory comment or a code line.

Below is the question and solution for you to solve:
Question:
{question}

Code solution:
{steps}


Please follow the desired response format:
Solution Analysis: [Give a step by step analysis on the solution correctness here]
Solution Correctness: [Input 'correct'/'incorrect' here to indicate the overall correctness of the solution]
First Error Step: [Input the first incorrect line of code here. Input 'N/A' if the solution is correct.]
Error Reason: [Input the error reason and the rectified reasoning of the first error line here. Input 'N/A' if the \
solution is correct.]

Please follow this format without any additional introductory or concluding statements.
"""


def render_mr(item: Item, config: Any, exemplars: list[Item]) -> str:
    """The benchmark's evaluation prompt for one solution (zero-shot; style and definition do not apply)."""
    meta = item.meta
    if meta["benchmark"] == "mr_gsm8k":
        return GSM8K_PROMPT.format(question=meta["question_text"], steps=meta["steps_text"])
    template = CODING_PROMPT if meta.get("step_by_judge") else BEN_PROMPT
    return template.format(subject=meta.get("subject_name", meta["subject"]), question=meta["question_text"],
                           options=meta.get("options", ""), steps=meta["steps_text"])


def no_exemplars(item: Item, k: int, data_dir: str | None) -> list[Item]:
    raise ValueError(f"{item.meta.get('benchmark', 'mr')} is zero-shot here (the benchmarks' default protocol); "
                     "set k_shot: 0")


# ------------------------------------------------------------------------------------------ parsing

# Field labels as the prompts ask for them, and as small models write them (markdown, numbering, other words).
_LABELS = {
    "verdict": r"solution\s+correctness|final\s+judge?ment|overall\s+judge?ment|judge?ment|correctness|verdict",
    "step": r"first\s+(?:error|incorrect|wrong)\s+(?:step|line)|error\s+step|error\s+line",
    "reason": r"error\s+reason|error\s+analysis|reason\s+for\s+(?:the\s+)?error|reason",
    "analysis": r"solution\s+analysis|step[\s-]+by[\s-]+step\s+evaluation|step[\s-]+by[\s-]+step\s+analysis",
}
# a label: at a line start or after punctuation/markdown, optional **/##/numbering around it, then a colon
_LABEL = re.compile(
    r"(?:^|(?<=[\s*#>.\-\]|]))\**_*(?:\d+\.\s*)?\**_*(?P<label>" + "|".join(f"(?P<{k}>{v})" for k, v in _LABELS.items())
    + r")\s*\**_*\s*\]?\s*[:：]\**_*", re.IGNORECASE | re.MULTILINE)
_VERDICT_WORD = re.compile(r"\b(incorrect|wrong|not\s+correct|correct|right|invalid|valid|flawed|false|true)\b",
                           re.IGNORECASE)
_ECHO = re.compile(r"correct\W{0,4}(?:/|\bor\b)\W{0,4}(?:incorrect|wrong)|^\W*\[?\s*(?:input|insert|provide|give)\b",
                   re.IGNORECASE)
_PROSE_VERDICT = re.compile(
    r"\b(?:the\s+)?(?:student'?s?\s+|given\s+|provided\s+|this\s+)?(?:solution|answer|reasoning)\s+(?:is|was)\s+"
    r"(?:\w+\s+)?(not\s+correct|incorrect|wrong|correct|right)\b", re.IGNORECASE)
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_CONDITIONAL = re.compile(r"\b(?:if|whether|when|unless|of)\s+$", re.IGNORECASE)  # "if/rest of the solution is"
_STEP_WORD = re.compile(r"^\W*(?:step|line)\s*#?\s*(\d+)\b", re.IGNORECASE)  # "Step 3", "**Step 3**: ...", "step #3"
_STEP_NUMBER = re.compile(r"^\W*(\d+)\W*$")  # a bare "3" / "3." / "(3)" line; "24-19 = 5" is not a step
_STEP_ANYWHERE = re.compile(r"\bstep\s*#?\s*(\d+)\b", re.IGNORECASE)
_NA = re.compile(r"^\W*(?:n/?a|none|no\s+error|not\s+applicable|nil|-+)\W*$", re.IGNORECASE)
_NEGATIVE = {"incorrect", "wrong", "not correct", "invalid", "flawed", "false"}


def _fields(output: str) -> dict[str, str]:
    """The text after the first occurrence of each label, up to the next label (upstream splits the same way)."""
    found = list(_LABEL.finditer(output))
    values: dict[str, str] = {}
    for i, m in enumerate(found):
        kind = next(k for k in _LABELS if m.group(k))
        end = found[i + 1].start() if i + 1 < len(found) else len(output)
        values.setdefault(kind, output[m.end():end].strip())
    return values


def read_verdict(value: str) -> str | None:
    """'correct' / 'incorrect' from a field's text: the first verdict word decides ("Incorrect. Step 2 is ..."),
    an echoed template ("correct/incorrect", "[Insert only **correct** or **wrong** here]") reads as none."""
    head = value.strip().split("\n\n")[0]
    if _ECHO.search(head):
        return None
    word = _VERDICT_WORD.search(head)
    if word is None:
        return None
    return INCORRECT if re.sub(r"\s+", " ", word.group(1).lower()) in _NEGATIVE else CORRECT


def read_step(value: str, code: bool) -> str | None:
    """A first error step: "3" from "3", "Step 3", "**Step 3**: ...", "step #3", "The error is in step 3"; "N/A"
    for N/A; None when it cannot be read (a calculation such as "24-19 = 5" is no step). Coding: the first
    non-empty line, code fences and quotes removed."""
    text = value.strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("```")), "")
    if _ECHO.search(first):  # the template's placeholder written back
        return None
    if _NA.match(first or text):
        return "N/A"
    if code:
        return first.strip("`'\" ") or None
    m = _STEP_WORD.match(first) or _STEP_NUMBER.match(first) or _STEP_ANYWHERE.search(first)
    return m.group(1) if m else None


def prose_verdict(output: str) -> str | None:
    """A verdict stated in a sentence ("The student's solution is incorrect."), outside echoed template text
    ("[... Input 'N/A' if the solution is correct.]"), conditionals ("if the solution is correct") and parts ("the
    rest of the solution is correct")."""
    text = _BRACKETS.sub(" ", output)
    for m in _PROSE_VERDICT.finditer(text):
        if not _CONDITIONAL.search(text[max(0, m.start() - 12):m.start()]):
            return INCORRECT if re.sub(r"\s+", " ", m.group(1).lower()) in _NEGATIVE else CORRECT
    return None


def parse_mr(output: str, item: Item) -> Parsed:
    """The verdict, first error step and error reason of a meta-reasoning output, as JSON in Parsed.answer
    ({"verdict", "step", "reason"}; ``step_text`` the raw field). Rules: "fields" (verdict, step and reason fields
    all present: the format followed), "verdict_field" (a labelled verdict, other fields missing), "echo" (the
    template echoed, no verdict), "prose" (no verdict field; a sentence such as "the solution is incorrect"),
    "none"."""
    code = bool(item.meta.get("step_by_judge"))
    fields = _fields(output)
    verdict = read_verdict(fields["verdict"]) if "verdict" in fields else None
    rule = "none"
    if verdict is not None:
        rule = "fields" if {"step", "reason"} <= fields.keys() else "verdict_field"
    elif (prose := prose_verdict(output)) is not None:
        verdict, rule = prose, "prose"
    elif any(_ECHO.search(v) for v in fields.values()):
        rule = "echo"
    step_text = fields.get("step", "")
    step = read_step(step_text, code) if "step" in fields else None
    reason = fields.get("reason", "").strip()
    if _NA.match(reason) or _ECHO.search(reason.split("\n")[0]):
        reason = ""
    answer = {"verdict": verdict, "step": step, "reason": reason[:MAX_REASON_CHARS],
              "step_text": step_text.strip()[:300]}
    return Parsed(json.dumps(answer), rule, rule == "fields")


def _verdict_right(answer: str | None, item: Item) -> bool:
    if not answer:
        return False
    try:
        return json.loads(answer).get("verdict") == item.gold
    except (json.JSONDecodeError, AttributeError):
        return False


MR_SCORER = register_scorer(Scorer("mr_verdict", parse_mr, _verdict_right))


class MRCellMetrics:
    """A task's cell metrics (the MR-Score from its parts) and, as ``.judge``, its own judge hook: the runner's
    Study.judge calls it with the recipe's judge instead of the answer-equivalence judge."""

    def __init__(self, breakdown: tuple[str, ...] = ()) -> None:
        self.breakdown = breakdown

    def __call__(self, samples: list[dict], items: list[Item]) -> dict[str, Any]:
        return mr_cell_metrics(samples, items, judged=False, breakdown=self.breakdown)

    def judge(self, spec: Any, cell: str, samples: list[dict], items: Sequence[Item], seed: int) -> dict[str, Any]:
        """Grade the cell's error reasons when a judge is configured for it; {} otherwise (not measured)."""
        if spec is None or not (spec.tasks == "all" or cell in spec.tasks):
            return {}
        metrics = judge_mr_cell(spec, samples, items, seed, self.breakdown)
        if metrics.get("judge_error"):
            log.error("judge failed on %s: %s", cell, metrics["judge_error"])
        return metrics


# ------------------------------------------------------------------------------------------ MR-GSM8K


def _json_rows(path: Path) -> list[dict]:
    """Rows of a .json (a list, {"<name>": [rows]}, or JSON lines) or .jsonl file, read with the json module:
    MR-GSM8K's columns mix types (first error step 3 / "N/A"), which pyarrow's JSON reader rejects."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as bad:
                raise DatasetUnavailable(f"{path}:{lineno}: not a JSON row ({bad.msg}); fix or remove that line") \
                    from None
    return rows


def mr_gsm8k_rows(data_dir: str | Path | None) -> list[dict]:
    """MR-GSM8K rows: data_dir's test.json/.jsonl/.parquet, else the hub's test split."""
    if not data_dir:
        return load_rows(MR_GSM8K, "test")
    src, folder = MR_GSM8K.splits["test"], Path(data_dir)
    files = _local_files(folder, src) if folder.is_dir() else []
    if not files:
        raise DatasetUnavailable(
            f"mr_gsm8k: data_dir {str(data_dir)!r} has no test.json (or .jsonl/.parquet); save the MR-GSM8K "
            f"repository's dataset/MR-GSM8K.json there as test.json (rows with {list(MR_GSM8K_FIELDS)})")
    rows = [r for f in files for r in (_read_file(f) if f.suffix == ".parquet" else _json_rows(f))]
    for i, row in enumerate(rows):
        if missing := [k for k in MR_GSM8K_FIELDS if k not in row]:
            raise DatasetUnavailable(f"mr_gsm8k: row {i} of {[str(f) for f in files]} lacks field(s) {missing}; "
                                     f"rows need MR-GSM8K's fields {list(MR_GSM8K_FIELDS)}")
    return rows


def mr_gsm8k_item(row: dict) -> Item | None:
    verdict = gold_verdict(row["model_output_solution_correctness"])
    steps = step_list(row["model_output_steps"])
    if verdict is None or not steps:
        return None
    question = str(row["question"]).strip()
    steps_text = "\n".join(steps)
    meta = {"benchmark": "mr_gsm8k", "subject": "gsm8k", "question_type": str(row.get("question_type") or ""),
            "uuid": row.get("uuid"), "question_text": question, "steps_text": steps_text, "n_steps": len(steps),
            "first_error_step": gold_step(row["model_output_solution_first_error_step"]) if verdict == INCORRECT
            else None,
            "error_reason": reason_text(row["model_output_solution_first_error_reason"])}
    return Item(id=item_id("mr_gsm8k", f"{question}\n{steps_text}"),
                question=f"Question:\n{question}\n\nStudent Solution:\n{steps_text}", gold=verdict, meta=meta)


def _items(rows: list[dict], to_item: Any, task: str) -> list[Item]:
    items, seen, dropped = [], set(), 0
    for row in rows:
        item = to_item(row)
        if item is None:
            dropped += 1
        elif item.id not in seen:
            seen.add(item.id)
            items.append(item)
    if dropped:
        log.warning("%s: %d row(s) without a correct/incorrect label or steps were skipped", task, dropped)
    return items


def load_mr_gsm8k(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """``n`` MR-GSM8K solutions (a seeded subsample kept in dataset order)."""
    if split != "test":
        raise DatasetUnavailable("mr_gsm8k has only a test split (the tasks are zero-shot; set k_shot: 0)")
    items = _items(mr_gsm8k_rows(data_dir), mr_gsm8k_item, "mr_gsm8k")
    if not items:
        raise DatasetUnavailable("mr_gsm8k: no usable rows")
    return [items[i] for i in subsample(len(items), n, seed, "mr_gsm8k:test")]


# -------------------------------------------------------------------------------------------- MR-Ben


def _hub_subject(subject: str) -> dict | None:
    """One subject file of the hub dataset (None when the hub has no such file)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(MR_BEN_HUB, f"{subject}.json", repo_type="dataset")
    except EntryNotFoundError:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def mr_ben_files(data_dir: str | Path | None) -> dict[str, dict]:
    """{subject: {Question_UUID: [solutions]}} from data_dir's <subject>.json files, else from the hub."""
    if data_dir:
        folder = Path(data_dir)
        found = {s: folder / f"{s}.json" for s in MR_BEN_SUBJECTS if (folder / f"{s}.json").is_file()}
        if not folder.is_dir() or not found:
            raise DatasetUnavailable(
                f"mr_ben: data_dir {str(data_dir)!r} holds none of {[s + '.json' for s in MR_BEN_SUBJECTS]}; "
                "point it at the Mr-Ben repository's data/ folder (or files with its fields)")
        out = {}
        for subject, path in found.items():
            try:
                out[subject] = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DatasetUnavailable(f"{path}: not a JSON file ({exc}); expected Mr-Ben's "
                                         "{Question_UUID: [solutions]}") from None
        return out
    try:
        files = {s: _hub_subject(s) for s in MR_BEN_SUBJECTS}
    except Exception as exc:  # any hub failure gets the same actionable message
        raise DatasetUnavailable(
            f"mr_ben: could not load {MR_BEN_HUB} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Without network, set data_dir to a folder holding Mr-Ben's data/<subject>.json files") from exc
    return {s: d for s, d in files.items() if d is not None}


def mr_ben_item(subject: str, row: dict) -> Item | None:
    verdict = gold_verdict(row.get("Model_Solution_Correctness"))
    code = subject == "coding"
    raw = row.get("Model_Solution_Steps")
    steps_text = str(raw).strip("\n") if code else "\n".join(step_list(raw))
    if verdict is None or not steps_text.strip() or not row.get("Question"):
        return None
    question = str(row["Question"]).strip()
    first = row.get("Model_Solution_First_Error_Step")
    meta = {"benchmark": "mr_ben", "subject": subject, "subject_name": str(row.get("Subject") or subject),
            "uuid": row.get("Question_UUID"), "sampled_model": row.get("Sampled_Model"),
            "question_text": question, "options": str(row.get("Options") or "").strip(), "steps_text": steps_text,
            "step_by_judge": code,
            "first_error_step": None if verdict == CORRECT or _missing(first)
            else (str(first).strip() if code else gold_step(first)),
            "error_reason": reason_text(row.get("Model_Solution_Error_Reason")),
            "rectified_step": reason_text(row.get("Model_Solution_Rectified_First_Error_Step"))}
    shown = f"Question:\n{question}\n\nCode solution:\n{steps_text}" if code else (
        f"Question: {question}\nOptions: {meta['options']}\nStep by Step Solution:\n{steps_text}")
    return Item(id=item_id("mr_ben", f"{subject}\n{question}\n{steps_text}"), question=shown, gold=verdict, meta=meta)


def load_mr_ben(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """``n`` MR-Ben solutions split evenly over the subjects present (the first ``n % subjects`` of a seeded order
    of subjects get one more), each subject's a seeded subsample in file order; items ordered by subject."""
    if split != "test":
        raise DatasetUnavailable("mr_ben has only a test split (the tasks are zero-shot; set k_shot: 0)")
    per_subject: dict[str, list[Item]] = {}
    for subject, data in mr_ben_files(data_dir).items():
        if not isinstance(data, dict):
            raise DatasetUnavailable(f"mr_ben: {subject}.json is not Mr-Ben's {{Question_UUID: [solutions]}}")
        rows = [r for sols in data.values() for r in (sols if isinstance(sols, list) else [sols])]
        if rows and (missing := [k for k in MR_BEN_FIELDS if k not in rows[0]]):
            raise DatasetUnavailable(f"mr_ben: {subject}.json rows lack field(s) {missing}; rows need Mr-Ben's "
                                     f"fields {list(MR_BEN_FIELDS)}")
        items = _items(rows, lambda r, s=subject: mr_ben_item(s, r), f"mr_ben/{subject}")
        if items:
            per_subject[subject] = items
    if not per_subject:
        raise DatasetUnavailable("mr_ben: no usable rows")
    subjects = sorted(per_subject)
    order = subjects[:]
    random.Random(f"slimlab-dataset:mr_ben:subjects:{seed}").shuffle(order)
    quota = {s: n // len(subjects) + (order.index(s) < n % len(subjects)) for s in subjects}
    out: list[Item] = []
    for s in subjects:
        items = per_subject[s]
        out += [items[i] for i in subsample(len(items), quota[s], seed, f"mr_ben:{s}")] if quota[s] else []
    return out


# ----------------------------------------------------------------------------------------- the tasks

_NOTE = ("accuracy: right correct/incorrect verdicts; MR-Score (mr_score, mr_mcc, mr_step_accuracy, "
         "mr_reason_accuracy) in Other metrics; error reasons need the recipe's judge, without one mr_reason_accuracy "
         "and mr_score are not measured (mr_reason_status says so)")

# what both benchmarks share: the prompt, the parser and scorer, and the budget of a graded answer
_MR_SHARED: dict[str, Any] = {
    "answer_type": "letter",  # a label (correct/incorrect), exact; "text" would keep the judge off these cells
    "max_new_tokens": 512,
    "stop": (),  # the answer spans several lines: up to EOS / end of turn or the budget
    "max_new_tokens_free": 512,
    "item_marker": "",
    "family": "meta_reasoning",
    "offline": False,
    "render": render_mr,
    "exemplars": no_exemplars,
    "scorer": "mr_verdict",
}

register_task(
    TaskSpec(
        name="mr_gsm8k",
        description=f"MR-GSM8K meta-reasoning (grade a GSM8K solution; {MR_GSM8K_HUB} test, 3,000 solutions). "
                    f"{_NOTE}. data_dir: test.json (the repository's dataset/MR-GSM8K.json).",
        load=load_mr_gsm8k,
        dataset=MR_GSM8K,
        cell_metrics=MRCellMetrics(breakdown=("question_type",)),
        **_MR_SHARED,
    )
)

register_task(
    TaskSpec(
        name="mr_ben",
        description=f"MR-Ben meta-reasoning (grade a solution in biology, chemistry, coding, logic, math, medicine or "
                    f"physics; {MR_BEN_HUB}; n split over subjects, MR-Score averaged over them). {_NOTE}. "
                    "data_dir: the repository's data/ (<subject>.json).",
        load=load_mr_ben,
        cell_metrics=MRCellMetrics(breakdown=("subject",)),
        **_MR_SHARED,
    )
)

"""MR-Score, the metric of the meta-reasoning benchmarks MR-GSM8K and MR-Ben (the model grades a given solution:
is it correct, which step is the first wrong one, and why), and the LLM judge that grades the error reasons.

The definition follows the benchmarks' own scoring code (dvlab-research/MR-GSM8K scripts/calculate_mr_score.py and
eval_mr_gsm8k.py; dvlab-research/Mr-Ben script/evaluate.py ``calculate_mr_score`` and script/utils.py):

- task 1: ``MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))`` on the correct/incorrect verdicts, the
  positive class being "correct": ``tp`` correct solutions called correct, ``tn`` incorrect solutions called
  incorrect, ``fp = N_incorrect - tn``, ``fn = N_correct - tp`` (a missing or unreadable verdict is neither);
  0 when the numerator or the denominator is 0 (Mr-Ben's ``MCC_score``);
- task 2: ``acc_step = #(incorrect, called incorrect, first error step right) / N_incorrect``;
- task 3: ``acc_reason = #(... and the error reason judged right) / N_incorrect``, the reason judged by an LLM
  with the benchmarks' grading prompt; for MR-Ben's coding subject the judge decides step and reason together
  (its first error "step" is a code line) and a positive verdict counts for task 2 and task 3;
- ``MR-Score = 0.2 * max(0, MCC) + 0.3 * acc_step + 0.5 * acc_reason``.

The denominators are the counts of correct and incorrect solutions evaluated (MR-GSM8K's script hard-codes those of
its 3,000 rows, 1427 and 1573: the same numbers when the whole benchmark runs). MR-Ben computes the score per
subject and reports the mean over subjects; so does ``mr_cell_metrics`` (MR-GSM8K is one group). Deliberate
differences from the upstream code, all in reading text, none in the arithmetic:

- upstream tests a judge's decision with ``'correct' in text.lower()``, which also accepts "Incorrect", and
  MR-GSM8K's task 1 uses ``label in prediction`` (so "not correct" counts as "correct"); here a verdict is read
  as a word: "correct"/"right" against "incorrect"/"wrong"/"not correct";
- upstream accepts a first error step only as the bare string "N" or "step N"; the parser in
  evaluate/tasks/mr.py also reads "Step 3: ...", "**Step 3**", "step #3".

Without a judge the error reasons are not graded: ``mr_reason_accuracy`` and ``mr_score`` stay None ("not
measured", said in ``mr_reason_status``), never 0. Every share is reported in percent, MCC x100 as well (the
benchmarks' tables print them so); ``mr_mcc`` is max(0, MCC), the part the score uses, ``mr_mcc_raw`` the MCC
itself (-100 for a model that gives no verdict at all: upstream counts a missing verdict as a wrong one)."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from evaluate.api_model import APIError, client_from_spec
from evaluate.judge import judge_key
from evaluate.tasks.base import Item

WEIGHTS = (0.2, 0.3, 0.5)  # task 1 (MCC), task 2 (first error step), task 3 (error reason)
CORRECT, INCORRECT = "correct", "incorrect"
NOT_JUDGED = "not measured: no judge configured (the recipe's judge: grades the error reasons)"
JUDGE_MAX_TOKENS = 1024  # the grading prompt asks for reasoning before the decision (upstream: 2048 / no limit)
JUDGE_OUTPUT_CHARS = 1000  # of each judge reply kept in the sample


# ------------------------------------------------------------------------------------------- the score


def mcc(tp: int, tn: int, fp: int, fn: int) -> float:
    """Matthews correlation coefficient; 0 when the numerator or the denominator is 0 (Mr-Ben's MCC_score)."""
    numerator = tp * tn - fp * fn
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if numerator == 0 or denominator == 0 else numerator / denominator


@dataclass
class MRCounts:
    """What one group (MR-GSM8K, or one MR-Ben subject) scored; step/reason hits None: not measured."""

    n_correct: int = 0
    n_incorrect: int = 0
    tp: int = 0  # correct solutions called correct
    tn: int = 0  # incorrect solutions called incorrect
    step_hits: int | None = 0
    reason_hits: int | None = 0
    review: int = 0  # incorrect solutions called incorrect whose error reason the judge has to grade


@dataclass(frozen=True)
class MRParts:
    """The three parts and the score, as fractions; None where undefined or not measured."""

    mcc: float
    step_accuracy: float | None
    reason_accuracy: float | None
    score: float | None


def mr_parts(c: MRCounts, weights: tuple[float, float, float] = WEIGHTS) -> MRParts:
    """The MR-Score of one group from its counts (construct_eval_stats + mr_score upstream)."""
    value = mcc(c.tp, c.tn, c.n_incorrect - c.tn, c.n_correct - c.tp)
    step = c.step_hits / c.n_incorrect if c.n_incorrect and c.step_hits is not None else None
    reason = c.reason_hits / c.n_incorrect if c.n_incorrect and c.reason_hits is not None else None
    score = None if step is None or reason is None else (
        weights[0] * max(0.0, value) + weights[1] * step + weights[2] * reason)
    return MRParts(value, step, reason, score)


@dataclass(frozen=True)
class MRSample:
    """One graded solution: the gold labels and what the model said."""

    gold: str  # "correct" | "incorrect"
    verdict: str | None  # the model's verdict; None: none readable
    gold_step: str | None = None  # "3"; a code line for MR-Ben coding; None for correct solutions
    step: str | None = None  # the model's first error step ("3", "N/A"); None: none readable
    step_by_judge: bool = False  # MR-Ben coding: the judge decides step and reason together
    reason_ok: bool | None = None  # the judge's verdict on the error reason; None: not judged / unreadable


def needs_review(s: MRSample) -> bool:
    """Whether the judge must grade the sample's error reason: an incorrect solution called incorrect whose first
    error step is right (coding: any, the judge decides the step too); upstream's Need_Error_Reason_Review."""
    if s.gold != INCORRECT or s.verdict != INCORRECT:
        return False
    return s.step_by_judge or (s.step is not None and s.step == s.gold_step)


def tally(samples: Sequence[MRSample], judged: bool) -> MRCounts:
    """Counts of one group. ``judged``: the judge graded the reasons (else reason hits, and coding's step hits,
    are not measured)."""
    c = MRCounts()
    for s in samples:
        if s.gold == CORRECT:
            c.n_correct += 1
            c.tp += s.verdict == CORRECT
            continue
        c.n_incorrect += 1
        if s.verdict != INCORRECT:
            continue
        c.tn += 1
        if not needs_review(s):
            continue
        c.review += 1
        if not s.step_by_judge:
            c.step_hits = (c.step_hits or 0) + 1
        if s.reason_ok:  # coding: a right reason counts for the step as well (Mr-Ben calculate_mr_score)
            c.reason_hits = (c.reason_hits or 0) + 1
            if s.step_by_judge:
                c.step_hits = (c.step_hits or 0) + 1
    if not judged:
        c.reason_hits = None
        if any(s.step_by_judge for s in samples):
            c.step_hits = None
    return c


@dataclass
class MRSummary:
    """A cell's MR-Score: per group and the mean over groups (MR-Ben's average over subjects)."""

    groups: dict[str, MRParts] = field(default_factory=dict)
    counts: dict[str, MRCounts] = field(default_factory=dict)

    @staticmethod
    def _mean(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return statistics.fmean(got) if got else None

    def score(self) -> float | None:
        return self._mean([p.score for p in self.groups.values()])

    def mcc(self) -> float | None:
        """max(0, MCC), the part the score uses (the benchmarks' tables print it so)."""
        return self._mean([max(0.0, p.mcc) for p in self.groups.values()])

    def mcc_raw(self) -> float | None:
        return self._mean([p.mcc for p in self.groups.values()])

    def step_accuracy(self) -> float | None:
        return self._mean([p.step_accuracy for p in self.groups.values()])

    def reason_accuracy(self) -> float | None:
        return self._mean([p.reason_accuracy for p in self.groups.values()])


def summarize_groups(groups: dict[str, list[MRSample]], judged: bool) -> MRSummary:
    out = MRSummary()
    for name in sorted(groups):
        out.counts[name] = tally(groups[name], judged)
        out.groups[name] = mr_parts(out.counts[name])
    return out


# --------------------------------------------------------------------------- samples of a slimlab cell


def parsed_fields(sample: dict) -> dict[str, Any]:
    """The verdict, first error step and error reason the MR scorer stored in ``sample["parsed"]`` (JSON)."""
    raw = sample.get("parsed")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def mr_sample(sample: dict, item: Item) -> MRSample:
    got = parsed_fields(sample)
    meta = item.meta
    return MRSample(gold=item.gold, verdict=got.get("verdict"), gold_step=meta.get("first_error_step"),
                    step=got.get("step"), step_by_judge=bool(meta.get("step_by_judge")),
                    reason_ok=sample.get("mr_reason_verdict"))


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _breakdown(samples: list[dict], items: Sequence[Item], key: str) -> tuple[dict[str, float], dict[str, int]]:
    """Verdict accuracy (percent) and count per value of ``meta[key]`` (as the harness's breakdowns)."""
    groups: dict[str, list[float]] = {}
    for sample, item in zip(samples, items, strict=True):
        if (value := item.meta.get(key)) is not None:
            groups.setdefault(str(value), []).append(float(sample.get("score", 0.0)))
    return ({g: 100.0 * sum(v) / len(v) for g, v in sorted(groups.items())},
            {g: len(v) for g, v in sorted(groups.items())})


def mr_cell_metrics(samples: list[dict], items: Sequence[Item], judged: bool = False, status: str | None = None,
                    breakdown: tuple[str, ...] = ()) -> dict[str, Any]:
    """CellMetrics fields of an MR cell: the MR-Score and its parts (percent; the mean over subjects when there are
    several), the summed counts, the verdict accuracy per value of each ``breakdown`` meta key, and with several
    subjects each part per subject (breakdowns ``subject_mr_score``, ``subject_mr_mcc``, ...). ``samples`` and
    ``items`` are aligned (the harness repeats the items for sampled repeats)."""
    groups: dict[str, list[MRSample]] = {}
    for sample, item in zip(samples, items, strict=True):
        groups.setdefault(str(item.meta.get("subject", "all")), []).append(mr_sample(sample, item))
    summary = summarize_groups(groups, judged)
    counts = list(summary.counts.values())

    def total(name: str) -> int | None:
        values = [getattr(c, name) for c in counts]
        return None if any(v is None for v in values) else sum(values)

    out: dict[str, Any] = {
        "mr_score": _pct(summary.score()),
        "mr_mcc": _pct(summary.mcc()),
        "mr_mcc_raw": _pct(summary.mcc_raw()),
        "mr_step_accuracy": _pct(summary.step_accuracy()),
        "mr_reason_accuracy": _pct(summary.reason_accuracy()),
        "mr_n_correct": total("n_correct"), "mr_n_incorrect": total("n_incorrect"),
        "mr_tp": total("tp"), "mr_tn": total("tn"), "mr_step_hits": total("step_hits"),
        "mr_reason_review": total("review"), "mr_reason_hits": total("reason_hits"),
        "mr_groups": len(groups),
        "mr_reason_status": status or (None if judged else NOT_JUDGED),
    }
    breakdowns: dict[str, dict[str, float]] = {}
    breakdown_counts: dict[str, dict[str, int]] = {}
    for key in breakdown:
        acc, n = _breakdown(samples, items, key)
        if acc:
            breakdowns[key], breakdown_counts[key] = acc, n
    if len(groups) > 1:
        for key in ("score", "mcc", "step_accuracy", "reason_accuracy"):
            values = {g: 100.0 * (max(0.0, v) if key == "mcc" else v) for g, p in summary.groups.items()
                      if (v := getattr(p, key)) is not None}
            if values:
                breakdowns[f"subject_mr_{key}"] = values
    if breakdowns:
        out["breakdowns"], out["breakdown_counts"] = breakdowns, breakdown_counts
    return out


# ----------------------------------------------------------------------------- the error-reason judge

# The grading prompts of the benchmarks (MIT): MR-GSM8K scripts/eval_mr_gsm8k.py `grade_eval_outputs`, Mr-Ben
# script/utils.py `generate_scoring_prompt` (one for the multiple-choice subjects, one for coding).
# the closing part MR-GSM8K and Mr-Ben (multiple choice) share, word for word
_GRADE_TAIL = """

Based on this information, please provide the following:

1. Step-by-Step Reasoning: [Offer a succinct, step-by-step interpretation of the ground truth error reason.]
2. Student Error Reason Analysis: [Analyze the student's explanation step by step, determining its accuracy in \
reflecting the actual error briefly.]
3. Final Decision: [State only 'Correct' or 'Wrong' to conclude whether the student's explanation correctly \
identifies the error based on your analysis.]

Please follow this format without any additional introductory or concluding statements."""

GRADE_GSM8K = """As an experienced grade-school math teacher, your assistance is required to evaluate a student's \
explanation regarding the error in a math problem solution. The task involves a detailed understanding of the math \
problem, the incorrect solution provided, and the ground truth behind the error. Your analysis should focus on \
whether the student's explanation aligns with the actual error in the solution.

Please find the details below:

- Math Question: {question}
- Incorrect Solution Provided: {steps}
- First Incorrect Step in the Solution: {gold_step}
- Ground Truth Error Reason: {gold_reason}
- Student's Explanation of the Error: {reason}""" + _GRADE_TAIL

GRADE_BEN = """As an experienced {subject} teacher, your assistance is required to evaluate a student's explanation \
regarding the error in a problem solution. The task involves a detailed understanding of the problem, the incorrect \
solution provided, and the ground truth behind the error. Your analysis should focus on whether the student's \
explanation aligns with the actual error in the solution.

Please find the details below:

- Question: {question}
- Incorrect Solution Provided: {steps}
- First Incorrect Step in the Solution: {gold_step}
- Ground Truth Error Reasons: {gold_reason}
- Ground Truth Rectified Steps: {rectified}
- Student's Explanation of the Error: {reason}""" + _GRADE_TAIL

GRADE_CODING = """As an experienced programmer, your assistance is required to evaluate a student's explanation \
regarding the error in a coding problem solution. The task involves a detailed understanding of the problem, the \
incorrect solution provided, and the ground truth error reason. Your analysis should focus on whether the student's \
explanation aligns with the actual error in the solution.

Please find the details below:

- Question: {question}
- Incorrect Solution Provided: {steps}
- First Incorrect Step in the Solution: {gold_step}
- Ground Truth Error Reasons: {gold_reason}
- Ground Truth Rectified Steps: {rectified}
- Student's Reported First Error Step: {step}
- Student's Explanation of the Error: {reason}

Based on this information, please provide the following:

1. Step-by-Step Reasoning: [Offer a succinct, step-by-step interpretation of the ground truth error reason and \
error step.]
2. Student Error Reason Analysis: [Analyze the first error step reported by student and its explanation step by \
step, determining its accuracy in reflecting/aligning with the ground truth error briefly.]
3. Final Decision: [State only 'Correct' or 'Wrong' to conclude whether the student's explanation correctly \
identifies the error location and reason based on your analysis.]

Please follow this format without any additional introductory or concluding statements."""


def grading_prompt(sample: dict, item: Item) -> str:
    """The benchmark's grading prompt for one sample's error reason (the item's meta holds the gold fields)."""
    meta, got = item.meta, parsed_fields(sample)
    fields = {"question": meta.get("question_text", item.question), "steps": meta.get("steps_text", ""),
              "gold_step": meta.get("first_error_step") or "N/A", "gold_reason": meta.get("error_reason", ""),
              "rectified": meta.get("rectified_step", ""), "subject": meta.get("subject_name", "science"),
              "step": got.get("step_text") or got.get("step") or "", "reason": got.get("reason") or ""}
    if meta.get("benchmark") == "mr_gsm8k":
        return GRADE_GSM8K.format(**fields)
    return (GRADE_CODING if meta.get("step_by_judge") else GRADE_BEN).format(**fields)


_DECISION = re.compile(r"final\s+decision\W*?:\W*(.*)", re.IGNORECASE | re.DOTALL)
_DECISION_WORD = re.compile(r"\b(incorrect|wrong|not\s+correct|correct|right)\b", re.IGNORECASE)


def parse_decision(text: str) -> bool | None:
    """The judge's 'Final Decision': True for Correct, False for Wrong/Incorrect, None when the reply has no
    decision (upstream: ERROR_PARSING, counted as not correct). The first decision word after the last 'Final
    Decision:' label decides ("- Correct", "[Correct]", "**Wrong**" read as such); upstream's substring test would
    also take "Incorrect" for Correct."""
    found = list(_DECISION.finditer(text))
    if not found:
        return None
    word = _DECISION_WORD.search(found[-1].group(1))
    return None if word is None else word.group(1).lower() in ("correct", "right")


def judge_mr_cell(spec: Any, samples: list[dict], items: Sequence[Item], seed: int,
                  breakdown: tuple[str, ...] = ()) -> dict[str, Any]:
    """Grade the error reasons of one evaluated MR cell with the recipe's judge (``spec`` = recipe.judge): the
    samples needing review get ``mr_reason_verdict`` (True/False/None) and ``mr_judge_output``; returns the cell's
    MR fields recomputed with the verdicts, plus judge_key/judge_calls/judge_unparsed. A failing endpoint leaves
    the reasons not measured and says why (judge_error, mr_reason_status); a rerun retries."""
    by_id = {it.id: it for it in items}
    pairs = [(s, by_id[s["id"]]) for s in samples]
    for s, _ in pairs:
        s.pop("mr_reason_verdict", None)
        s.pop("mr_judge_output", None)
    jobs = [i for i, (s, it) in enumerate(pairs) if needs_review(mr_sample(s, it))]
    aligned = [it for _, it in pairs]
    try:
        client = client_from_spec(spec)

        def ask(i: int) -> str:
            s, it = pairs[i]
            return client.chat([{"role": "user", "content": grading_prompt(s, it)}], max_tokens=JUDGE_MAX_TOKENS,
                               temperature=0.0, seed=seed).text

        with ThreadPoolExecutor(max_workers=spec.max_concurrency) as pool:
            replies = list(pool.map(ask, jobs))
    except APIError as exc:
        for s, _ in pairs:
            s.pop("mr_reason_verdict", None)
        why = str(exc)[:500]
        return {**mr_cell_metrics(samples, aligned, False, f"not measured: the judge failed ({why})", breakdown),
                "judge_error": why}
    verdicts = [parse_decision(r) for r in replies]
    for i, reply, verdict in zip(jobs, replies, verdicts, strict=True):
        pairs[i][0].update(mr_reason_verdict=verdict, mr_judge_output=reply[:JUDGE_OUTPUT_CHARS])
    status = f"judged by {spec.model} ({len(jobs)} reasons graded)"
    return {**mr_cell_metrics(samples, aligned, True, status, breakdown), "judge_key": judge_key(spec, seed),
            "judge_calls": len(jobs), "judge_unparsed": sum(v is None for v in verdicts)}

"""LLM-as-judge, rule first: the answer-parsing cascade settles what it can, and an OpenAI-compatible
judge decides only the samples it could not settle, plus an optional seeded audit of settled ones
that measures how often judge and rules agree (raw agreement and Cohen's kappa).

A sample is *unsettled* when the cascade found no answer (rule "none") or only guessed one
(followed == False: last number in prose, a letter buried in text). There the judge's verdict
replaces the rule's in `accuracy_judged`; settled samples keep the rule's verdict."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from evaluate.api_model import ChatClient, client_from_spec
from evaluate.tasks.base import Item, TaskSpec

JUDGE_SYSTEM = "You are a strict grader. You compare a model's final answer with a reference answer."
JUDGE_TEMPLATE = """Question:
{question}

Reference answer: {reference}

Model output:
{output}

Does the model output state a final answer equivalent to the reference answer? Ignore the \
reasoning, formatting and wording; a missing, ambiguous or different answer is wrong. Reply with \
exactly one word: CORRECT or INCORRECT."""
JUDGE_FIELDS = ("judge_verdict", "judge_role", "judge_output")
JUDGE_METRICS = ("judge_key", "judge_error", "judge_calls", "judge_unsettled", "judge_audited", "judge_unparsed",
                 "judge_overturned", "accuracy_judged", "judge_agreement", "judge_kappa")


def is_unsettled(sample: dict) -> bool:
    return sample.get("rule") == "none" or not sample.get("followed", False)


def judge_prompt(question: str, reference: str, output: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, reference=reference,
                                                              output=output.strip() or "(empty)")}]


def parse_verdict(text: str) -> bool | None:
    """Strict: the reply must use exactly one of the two words (any case, any number of times).
    CORRECT -> True, INCORRECT -> False; both or neither -> None (counted as judge_unparsed)."""
    words = set(re.findall(r"\b(INCORRECT|CORRECT)\b", text.upper()))
    return words.pop() == "CORRECT" if len(words) == 1 else None


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters. Hand-written: four lines, and scikit-learn is no dependency.
    None when chance agreement is 1 (both raters constant and equal): kappa is undefined there."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    return None if p_e >= 1.0 else (p_o - p_e) / (1 - p_e)


def judge_applies(spec: Any, cell: str, task: TaskSpec) -> bool:
    """The judge covers exact-answer cells it is configured for (text metrics have no binary verdict)."""
    if spec is None or task.metric != "accuracy" or task.answer_type == "text":
        return False
    return spec.tasks == "all" or cell in spec.tasks


def judge_key(spec: Any, seed: int) -> str:
    """What determines the verdicts (never the key itself: only the variable's name is in the spec)."""
    blob = json.dumps([spec.base_url, spec.model, spec.max_tokens, spec.audit, seed, JUDGE_TEMPLATE])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    verdict: bool | None
    raw: str


def _ask(client: ChatClient, question: str, reference: str, output: str, max_tokens: int, seed: int) -> Verdict:
    result = client.chat(judge_prompt(question, reference, output), max_tokens=max_tokens, temperature=0.0,
                         seed=seed)
    return Verdict(parse_verdict(result.text), result.text[:200])


def judge_samples(samples: list[dict], items: Sequence[Item], client: ChatClient, *, audit: int = 0,
                  seed: int = 0, max_tokens: int = 8, max_concurrency: int = 4) -> dict[str, Any]:
    """Judge the unsettled samples (and `audit` seeded settled ones) in place; return the cell's judge
    metrics. Samples get judge_verdict (True/False/None), judge_role ("unsettled"/"audit"), judge_output."""
    by_id = {it.id: it for it in items}
    for s in samples:
        for f in JUDGE_FIELDS:
            s.pop(f, None)
    unsettled = [i for i, s in enumerate(samples) if is_unsettled(s)]
    settled = [i for i, s in enumerate(samples) if not is_unsettled(s)]
    audited = sorted(random.Random(seed).sample(settled, min(audit, len(settled))))
    jobs = [(i, "unsettled") for i in unsettled] + [(i, "audit") for i in audited]

    def run(job: tuple[int, str]) -> Verdict:
        s = samples[job[0]]
        item = by_id[s["id"]]
        return _ask(client, item.question, item.gold, s["output"], max_tokens, seed)

    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        verdicts = list(pool.map(run, jobs))
    for (i, role), v in zip(jobs, verdicts, strict=True):
        samples[i].update(judge_verdict=v.verdict, judge_role=role, judge_output=v.raw)

    final = [bool(s["correct"]) if s.get("judge_role") != "unsettled" or s["judge_verdict"] is None
             else s["judge_verdict"] for s in samples]
    pairs = [(bool(samples[i]["correct"]), samples[i]["judge_verdict"]) for i in audited
             if samples[i]["judge_verdict"] is not None]
    rule_v, judge_v = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "judge_calls": len(jobs),
        "judge_unsettled": len(unsettled),
        "judge_audited": len(audited),
        "judge_unparsed": sum(v.verdict is None for v in verdicts),
        "judge_overturned": sum(samples[i]["judge_verdict"] is not None
                                and samples[i]["judge_verdict"] != bool(samples[i]["correct"]) for i in unsettled),
        "accuracy_judged": 100.0 * sum(final) / max(len(final), 1),
        "judge_agreement": sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
        "judge_kappa": cohen_kappa(rule_v, judge_v),
    }


def judge_cell(spec: Any, samples: list[dict], items: Sequence[Item], seed: int) -> dict[str, Any]:
    """Run the recipe's judge (`spec` = recipe.judge) on one evaluated cell; metrics carry judge_key."""
    client = client_from_spec(spec)
    metrics = judge_samples(samples, items, client, audit=spec.audit, seed=seed, max_tokens=spec.max_tokens,
                            max_concurrency=spec.max_concurrency)
    return {"judge_key": judge_key(spec, seed), **metrics}

"""MR-GSM8K and MR-Ben (meta-reasoning) and their MR-Score: the score against counts computed by hand from the
benchmarks' definition and against one of MR-GSM8K's published per-item evaluation files, the loaders on the
fixtures (the original files' fields), the output parser on real model outputs, and the error-reason judge against
a real HTTP server on loopback."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from evaluate.mr_score import (
    NOT_JUDGED,
    MRCounts,
    MRSample,
    grading_prompt,
    judge_mr_cell,
    mcc,
    mr_cell_metrics,
    mr_parts,
    parse_decision,
    tally,
)
from evaluate.records import CellMetrics
from evaluate.scoring import score_output
from evaluate.tasks import Item, load_builtin_tasks
from evaluate.tasks.mr import gold_step, gold_verdict, parse_mr, read_step, step_list
from evaluate.tasks.sources import DatasetUnavailable
from tests.conftest import KEY_ENV, write_recipe
from tests.fake_openai_server import FakeOpenAI

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mr"
COR, INC = "correct", "incorrect"


def tasks():
    return load_builtin_tasks()


# ------------------------------------------------------------------------------ the MR-Score by hand


def hand_samples() -> list[MRSample]:
    """4 correct and 6 incorrect solutions; every case the definition distinguishes."""
    return [
        MRSample(COR, COR), MRSample(COR, COR), MRSample(COR, COR),  # tp = 3
        MRSample(COR, None),  # no readable verdict: fn (upstream: fn = N_correct - tp)
        MRSample(INC, INC, "2", "2", reason_ok=True),  # tn, step right, reason right
        MRSample(INC, INC, "3", "3", reason_ok=True),  # tn, step right, reason right
        MRSample(INC, INC, "1", "1", reason_ok=False),  # tn, step right, reason wrong
        MRSample(INC, INC, "2", "4", reason_ok=True),  # tn, step wrong: the reason does not count
        MRSample(INC, COR),  # fp
        MRSample(INC, None),  # no verdict: fp (fp = N_incorrect - tn)
    ]


def test_mr_score_against_hand_counts():
    counts = tally(hand_samples(), judged=True)
    assert (counts.n_correct, counts.n_incorrect, counts.tp, counts.tn) == (4, 6, 3, 4)
    assert (counts.step_hits, counts.reason_hits, counts.review) == (3, 2, 3)
    # fp = 6 - 4 = 2, fn = 4 - 3 = 1: MCC = (3*4 - 2*1) / sqrt((3+2)(3+1)(4+2)(4+1)) = 10 / sqrt(600)
    parts = mr_parts(counts)
    assert parts.mcc == pytest.approx(10 / math.sqrt(600)) == pytest.approx(0.4082483)
    assert parts.step_accuracy == pytest.approx(3 / 6) and parts.reason_accuracy == pytest.approx(2 / 6)
    assert parts.score == pytest.approx(0.2 * 10 / math.sqrt(600) + 0.3 * 0.5 + 0.5 * 2 / 6) == pytest.approx(0.3983163)


def test_mcc_edges_and_the_max_with_zero():
    assert mcc(0, 0, 0, 0) == 0.0 and mcc(5, 0, 0, 0) == 0.0  # zero denominator: 0 (Mr-Ben's MCC_score)
    assert mcc(0, 0, 3, 2) == pytest.approx(-1.0)  # every verdict wrong
    flipped = mr_parts(MRCounts(n_correct=2, n_incorrect=3, tp=0, tn=0, step_hits=0, reason_hits=0))
    assert flipped.mcc == pytest.approx(-1.0) and flipped.score == 0.0  # max(0, MCC): a negative MCC adds nothing
    only_correct = mr_parts(MRCounts(n_correct=3, n_incorrect=0, tp=3))
    assert only_correct.step_accuracy is None and only_correct.score is None  # no incorrect solution: undefined


def test_without_a_judge_the_reason_and_the_score_are_not_measured():
    counts = tally(hand_samples(), judged=False)
    assert counts.reason_hits is None and counts.step_hits == 3
    parts = mr_parts(counts)
    assert parts.reason_accuracy is None and parts.score is None and parts.step_accuracy == 0.5


def test_coding_step_and_reason_are_the_judges():
    samples = [MRSample(INC, INC, "    x = 1", "y = 2", step_by_judge=True, reason_ok=True),
               MRSample(INC, INC, "    x = 1", "    x = 1", step_by_judge=True, reason_ok=False),
               MRSample(INC, COR, "    x = 1", None, step_by_judge=True), MRSample(COR, COR, step_by_judge=True)]
    judged = tally(samples, judged=True)
    # Mr-Ben calculate_mr_score: for coding a right reason counts for task 2 and task 3, a line match alone nothing
    assert (judged.tn, judged.review, judged.step_hits, judged.reason_hits) == (2, 2, 1, 1)
    unjudged = tally(samples, judged=False)
    assert unjudged.step_hits is None and unjudged.reason_hits is None and mr_parts(unjudged).step_accuracy is None


def test_mr_gsm8k_hard_coded_totals_reproduce_the_upstream_score():
    """calculate_mr_score.py's construct_eval_stats(correct_sol_num=1427, incorrect_sol_num=1573) + mr_score on
    the counts of the metamath_70B per-item file (t1-tp 0, t1-tn 22, t2 22, t3 human 6, t3 auto 7) returned
    (0.006102987921169739, 0.00642085187539733) when run on that file."""
    for reason_hits, upstream in ((6, 0.006102987921169739), (7, 0.00642085187539733)):
        parts = mr_parts(MRCounts(n_correct=1427, n_incorrect=1573, tp=0, tn=22, step_hits=22, reason_hits=reason_hits))
        assert parts.score == pytest.approx(upstream, rel=1e-12)


def test_mr_gsm8k_per_item_evaluation_file():
    """eval_results/gpt4-grading/metamath_70B_eval_results.json of dvlab-research/MR-GSM8K (trimmed to the fields
    the score reads): upstream's process_eval_results gives t1-tn 22, t2 22, t3 6 (human labels) and 7 (GPT-4's
    Final Decision, one of them written "- Correct")."""
    rows = json.loads((FIXTURES / "mr_gsm8k_eval" / "metamath_70B_eval_results.json").read_text())
    assert len(rows) == 22
    key = "metamath_70B_eval_output"
    by_label = {"human": [], "auto": []}
    for r in rows:
        verdict = gold_verdict(r[key]["correctness_pred"])
        step = read_step(r[key]["error_step_pred"], code=False)
        base = {"gold": gold_verdict(r["model_output_solution_correctness"]), "verdict": verdict,
                "gold_step": gold_step(r["model_output_solution_first_error_step"]), "step": step}
        by_label["human"].append(MRSample(**base, reason_ok=r["error_reason_correctness"] == "correct"))
        decision = parse_decision("Final Decision: " + r["gpt4_error_reason_correctness_analysis"]["Final Decision"])
        by_label["auto"].append(MRSample(**base, reason_ok=decision))
    for label, reason_hits in (("human", 6), ("auto", 7)):
        c = tally(by_label[label], judged=True)
        assert (c.n_correct, c.n_incorrect, c.tp, c.tn, c.step_hits, c.reason_hits) == (0, 22, 0, 22, 22, reason_hits)


def test_upstream_model_responses_parse_as_upstream_read_them():
    """One response per per-item file (Claude, GPT-3.5, Llama-2-70B, MAmmoTH, MetaMath, WizardMath): our parser
    reads the verdict and the first error step their script extracted (over all 851 responses of the six files
    they agree every time; checked when this fixture was made)."""
    item = Item("x", "q", INC, meta={"benchmark": "mr_gsm8k"})
    for r in json.loads((FIXTURES / "mr_gsm8k_eval" / "responses.json").read_text()):
        got = json.loads(parse_mr(r["response"], item).answer)
        assert got["verdict"] == gold_verdict(r["correctness_pred"]), r["file"]
        assert got["step"] == gold_step(r["error_step_pred"]), r["file"]
        assert got["reason"], r["file"]


def test_judge_decisions_read_as_words():
    assert parse_decision("1. Step-by-Step Reasoning: x\n2. Student Error Reason Analysis: y\n"
                          "3. Final Decision: Correct")
    assert parse_decision("Final Decision: - Correct") and parse_decision("**Final Decision:** [Correct]")
    assert parse_decision("Final Decision: Wrong") is False and parse_decision("Final Decision: **Wrong**") is False
    # upstream's `'correct' in text.lower()` would take this one for Correct
    assert parse_decision("Final Decision: Incorrect") is False
    assert parse_decision("The explanation is correct.") is None  # no decision: counted as not correct


# ----------------------------------------------------------------------------------------- the parser

GOOD = """Step-by-step Evaluation: The student multiplies correctly in step 1. In step 2 May is taken as 30 days.

Final Judgement: wrong
First Error Step: Step 2
Error Analysis: May has 31 days, not 30."""


@pytest.mark.parametrize("output, verdict, step, rule", [
    (GOOD, INC, "2", "fields"),
    ("Solution Analysis: fine.\nSolution Correctness: correct\nFirst Error Step: N/A\nError Reason: N/A", COR, "N/A",
     "fields"),
    ("**Solution Correctness:** Incorrect\n**First Error Step:** **Step 3**: the sum\n**Error Reason:** 2+2 is 4",
     INC, "3", "fields"),
    ("## Final Judgement: **correct**\n## First Error Step: N/A\n## Error Analysis: N/A", COR, "N/A", "fields"),
    ("3. Final Judgment: The solution is not correct.\n4. First Error Step: step #4\n5. Error Analysis: x", INC, "4",
     "fields"),
    ("Solution Correctness: incorrect", INC, None, "verdict_field"),
    ("Final Judgement: [Insert only **correct** or **wrong** here]\nFirst Error Step: [Insert either N/A or the step "
     "number where the first error occurs]", None, None, "echo"),
    ("Solution Correctness: correct/incorrect\nFirst Error Step: 2\nError Reason: x", None, "2", "echo"),
    ("Overall, the student's solution is correct and well explained.", COR, None, "prose"),
    ("I'm ready to assist you. What's your next question?", None, None, "none"),
])
def test_parser_reads_the_three_fields(output, verdict, step, rule):
    parsed = parse_mr(output, Item("x", "q", INC, meta={"benchmark": "mr_gsm8k"}))
    got = json.loads(parsed.answer)
    assert (got["verdict"], got["step"], parsed.rule) == (verdict, step, rule)
    assert parsed.followed == (rule == "fields")


def test_parser_coding_steps_are_code_lines():
    item = Item("x", "q", INC, meta={"benchmark": "mr_ben", "step_by_judge": True})
    out = "Solution Correctness: incorrect\nFirst Error Step:\n```python\n    if n % 2 == 0:\n```\nError Reason: odd n"
    got = json.loads(parse_mr(out, item).answer)
    assert got["step"] == "if n % 2 == 0:" and got["reason"] == "odd n"


def test_answers_are_read_from_real_smollm2_outputs():
    """What SmolLM2-135M-Instruct wrote (README.md): mostly no verdict, template echoes and prose verdicts."""
    rows = [json.loads(line) for line in (FIXTURES / "smollm2_135m_instruct.jsonl").read_text().splitlines()]
    assert len(rows) == 19
    for r in rows:
        item = Item("x", "q", r["gold"], meta={"benchmark": r["task"], "step_by_judge": r["subject"] == "coding"})
        parsed = parse_mr(r["output"], item)
        got = json.loads(parsed.answer)
        assert {"verdict": got["verdict"], "step": got["step"], "rule": parsed.rule} == r["expected"], r["output"][:80]
        assert score_output(tasks()["mr_gsm8k"], item, r["output"]).correct == (got["verdict"] == r["gold"])


# ---------------------------------------------------------------------------------------- the data


def test_mr_gsm8k_fixture_loads_with_the_benchmark_fields():
    items = tasks()["mr_gsm8k"].load(n=100, seed=0, data_dir=FIXTURES / "mr_gsm8k")
    assert len(items) == 8 and [it.gold for it in items].count(COR) == 2
    jen = next(it for it in items if "Jen got 3 fish" in it.question)
    assert jen.gold == INC and jen.meta["first_error_step"] == "2" and "31 days" in jen.meta["error_reason"]
    assert jen.meta["question_type"] == "original" and jen.meta["steps_text"].startswith("Step 1: Jen got 3 fish")
    assert {it.meta["question_type"] for it in items} == {"original", "POT", "reversed"}
    assert all(it.meta["first_error_step"] is None for it in items if it.gold == COR)
    assert tasks()["mr_gsm8k"].load(n=3, seed=0, data_dir=FIXTURES / "mr_gsm8k") == \
        tasks()["mr_gsm8k"].load(n=3, seed=0, data_dir=FIXTURES / "mr_gsm8k")
    prompt = tasks()["mr_gsm8k"].render(jen, None, [])
    assert "Student Solution:\nStep 1: Jen got 3 fish" in prompt and "Final Judgement:" in prompt


def test_mr_gsm8k_hub_csv_values_are_normalized():
    """The hub's test.csv holds the steps as a list literal and N/A holes as NaN (a float column)."""
    assert step_list("['Step 1: a = 2', \"Step 2: b's\"]") == ["Step 1: a = 2", "Step 2: b's"]
    assert step_list('["Step 1: x"]') == ["Step 1: x"]
    assert step_list("Step 1: x\n\nStep 2: y") == ["Step 1: x", "Step 2: y"]
    assert gold_step(3) == gold_step(3.0) == gold_step("3") == gold_step("Step 3") == "3"
    assert gold_step(float("nan")) is None and gold_step("N/A") is None
    assert gold_verdict("wrong") == gold_verdict("Incorrect") == INC and gold_verdict("maybe") is None


def test_mr_ben_fixture_split_over_subjects():
    load = tasks()["mr_ben"].load
    items = load(n=100, seed=0, data_dir=FIXTURES / "mr_ben")
    assert len(items) == 12
    assert sorted({it.meta["subject"] for it in items}) == ["biology", "chemistry", "coding", "math", "medicine",
                                                             "physics"]
    six = load(n=6, seed=0, data_dir=FIXTURES / "mr_ben")
    assert sorted(it.meta["subject"] for it in six) == sorted({it.meta["subject"] for it in items})  # one each
    coding = next(it for it in items if it.meta["subject"] == "coding" and it.gold == INC)
    assert coding.meta["step_by_judge"] and coding.meta["first_error_step"].strip()  # a code line
    assert "Code solution:" in tasks()["mr_ben"].render(coding, None, [])
    math_wrong = next(it for it in items if it.meta["subject"] == "math" and it.gold == INC)
    assert math_wrong.meta["first_error_step"].isdigit() and math_wrong.meta["rectified_step"]
    prompt = tasks()["mr_ben"].render(math_wrong, None, [])
    assert "Options: A:" in prompt and "Solution Correctness:" in prompt and "\nStep 1:" in prompt


def test_missing_data_is_named(tmp_path):
    with pytest.raises(DatasetUnavailable, match=r"test\.json"):
        tasks()["mr_gsm8k"].load(n=2, seed=0, data_dir=tmp_path)
    with pytest.raises(DatasetUnavailable, match=r"math\.json"):
        tasks()["mr_ben"].load(n=2, seed=0, data_dir=tmp_path)
    (tmp_path / "test.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(DatasetUnavailable, match="model_output_steps"):
        tasks()["mr_gsm8k"].load(n=2, seed=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="k_shot: 0"):
        tasks()["mr_gsm8k"].exemplars(Item("x", "q", COR, meta={"benchmark": "mr_gsm8k"}), 2, None)


# ------------------------------------------------------------------------------------ cell metrics


def cell(task: str, outputs: dict[str, str]) -> tuple[list[dict], list[Item]]:
    """Samples as the harness writes them, for the fixture items; outputs by gold step (or "ok" for correct)."""
    spec = tasks()[task]
    items = spec.load(n=100, seed=0, data_dir=FIXTURES / task)
    samples = []
    for it in items:
        out = outputs.get(it.meta["first_error_step"] or "ok", outputs.get("*", ""))
        samples.append({"id": it.id, "repeat": 0, "output": out, **score_output(spec, it, out).as_dict()})
    return samples, items


STUDENT = ("Final Judgement: wrong\nFirst Error Step: Step {step}\n"
           "Error Analysis: The student misinterpreted the question and made an error.")


def test_cell_metrics_without_a_judge_say_not_measured():
    samples, items = cell("mr_gsm8k", {"*": STUDENT.format(step=1)})  # always "wrong, step 1"
    m = tasks()["mr_gsm8k"].cell_metrics(samples, items)
    merged = CellMetrics(n=8, accuracy=75.0).merged(m)  # every key is a CellMetrics field
    # 2 correct solutions (called wrong), 6 incorrect (called wrong); gold first error steps 1, 3, 1, 2, 2, 7
    assert (merged.mr_n_correct, merged.mr_n_incorrect, merged.mr_tp, merged.mr_tn) == (2, 6, 0, 6)
    assert merged.mr_step_hits == 2 and merged.mr_step_accuracy == pytest.approx(100 * 2 / 6)
    assert merged.mr_mcc == 0.0 and merged.mr_mcc_raw == 0.0  # tp = fp = 0: zero denominator
    assert merged.mr_reason_accuracy is None and merged.mr_score is None and merged.mr_reason_status == NOT_JUDGED
    others = merged.other_metrics()
    assert {"mr_mcc", "mr_step_accuracy", "mr_tn"} <= others.keys() and "mr_score" not in others
    assert merged.breakdowns["question_type"]["original"] == pytest.approx(100 * 4 / 6)


def test_mr_ben_cell_metrics_average_over_subjects():
    samples, items = cell("mr_ben", {"ok": "Solution Correctness: correct\nFirst Error Step: N/A\nError Reason: N/A",
                                     "*": "Solution Correctness: incorrect\nFirst Error Step: Step 1\nError Reason: x"})
    m = mr_cell_metrics(samples, items, breakdown=("subject",))
    assert m["mr_groups"] == 6 and m["mr_tp"] == 6 and m["mr_tn"] == 6  # every verdict right
    assert m["mr_mcc"] == pytest.approx(100.0) and m["breakdowns"]["subject_mr_mcc"]["coding"] == pytest.approx(100.0)
    steps = m["breakdowns"]["subject_mr_step_accuracy"]
    assert "coding" not in steps  # the judge decides coding's step
    gold = {it.meta["subject"]: it.meta["first_error_step"] for it in items if it.gold == INC}
    assert steps == {s: (100.0 if g == "1" else 0.0) for s, g in gold.items() if s != "coding"}
    assert m["mr_step_accuracy"] == pytest.approx(sum(steps.values()) / len(steps))
    assert m["breakdowns"]["subject"] == dict.fromkeys(sorted(gold), 100.0)


# --------------------------------------------------------------------------------- the reason judge


def grade(content: str) -> str:
    """A deterministic grader: Correct when the student's explanation shares a word of 5+ letters with the ground
    truth error reason."""
    gold = re.search(r"- Ground Truth Error Reasons?: (.*?)\n- ", content, re.DOTALL)
    student = re.search(r"- Student's Explanation of the Error: (.*?)\n\nBased on", content, re.DOTALL)
    if not gold or not student:
        return "I cannot tell."

    def words(text: str) -> set[str]:
        return {w.lower() for w in re.findall(r"[A-Za-z]{5,}", text)}

    decision = "Correct" if words(gold.group(1)) & words(student.group(1)) else "Wrong"
    return f"1. Step-by-Step Reasoning: ...\n2. Student Error Reason Analysis: ...\n3. Final Decision: {decision}"


class MRServer(FakeOpenAI):
    """The fake server plus "mr-judge" (the grader above) and "mr-student" (always STUDENT with step 1)."""

    def _respond(self, body: dict, auth_ok: bool, authorization: str) -> tuple[int, dict | str]:
        model = body.get("model")
        if model not in ("mr-judge", "mr-student") or not auth_ok:
            return super()._respond(body, auth_ok, authorization)
        content = body["messages"][-1]["content"]
        text = grade(content) if model == "mr-judge" else STUDENT.format(step=1)
        return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def server(api_key: str):
    with MRServer(api_key=api_key, lifetime_s=120) as srv:
        yield srv


def judge_spec(server: FakeOpenAI, model: str = "mr-judge", tasks_: object = "all") -> SimpleNamespace:
    return SimpleNamespace(base_url=server.base_url, model=model, api_key_env=KEY_ENV, timeout_s=5.0, max_retries=0,
                           audit=0, max_tokens=8, max_concurrency=2, tasks=tasks_)


def test_judge_grades_only_the_reasons_that_need_it(server):
    samples, items = cell("mr_gsm8k", {"*": STUDENT.format(step=1)})
    hook = tasks()["mr_gsm8k"].cell_metrics.judge
    m = hook(judge_spec(server), "mr_gsm8k", samples, items, 0)
    # reviewed: the two incorrect solutions whose first error is step 1; both gold reasons share "student"/"question"
    assert m["judge_calls"] == server.count("mr-judge") == 2 and m["judge_unparsed"] == 0
    reviewed = [s for s in samples if "mr_reason_verdict" in s]
    assert [s["mr_reason_verdict"] for s in reviewed] == [True, True]
    first = next(it for it in items if it.id == reviewed[0]["id"])
    prompt = grading_prompt(reviewed[0], first)
    assert "- Ground Truth Error Reason: The student fails to understand" in prompt
    assert "- Student's Explanation of the Error: The student misinterpreted the question" in prompt
    merged = CellMetrics(n=8).merged(m)
    assert merged.mr_reason_hits == 2 and merged.mr_reason_accuracy == pytest.approx(100 * 2 / 6)
    # 0.2 * max(0, MCC = 0) + 0.3 * 2/6 + 0.5 * 2/6
    assert merged.mr_score == pytest.approx(100 * (0.3 * 2 / 6 + 0.5 * 2 / 6))
    assert merged.judge_key and merged.mr_reason_status.startswith("judged by mr-judge")
    # not configured for this cell, or no judge: nothing asked, nothing changed
    before = server.count("mr-judge")
    assert hook(judge_spec(server, tasks_=["other"]), "mr_gsm8k", samples, items, 0) == {}
    assert hook(None, "mr_gsm8k", samples, items, 0) == {} and server.count("mr-judge") == before


def test_a_failing_judge_leaves_the_reasons_not_measured(server):
    samples, items = cell("mr_ben", {"*": "Solution Correctness: incorrect\nFirst Error Step: 2\nError Reason: y"})
    m = judge_mr_cell(judge_spec(server, model="no-such-model"), samples, items, 0, ("subject",))
    assert "404" in m["judge_error"] and m["mr_score"] is None and m["mr_reason_accuracy"] is None
    assert m["mr_reason_status"].startswith("not measured: the judge failed") and "judge_key" not in m
    assert not any("mr_reason_verdict" in s for s in samples)


@pytest.mark.slow
def test_study_reports_mr_score_parts_and_judges_on_a_rerun(tmp_path, server):
    """A study (embedded model and a fake API student) without a judge reports MCC and step accuracy, the score not
    measured; the same study rerun with a judge grades the stored outputs (no regeneration) and reports the score."""
    from compress.recipe import load_recipe
    from compress.runner import run_study

    out = tmp_path / "study"
    text = f"""\
model: {{name: embedded:tiny-reasoner}}
tasks:
  - {{name: mr_gsm8k, n: 8, max_new_tokens: 24, data_dir: '{FIXTURES / "mr_gsm8k"}'}}
  - {{name: mr_ben, n: 6, max_new_tokens: 24, data_dir: '{FIXTURES / "mr_ben"}'}}
decoding: {{batch_size: 8}}
profile: {{enabled: false}}
api_models:
  - {{name: student, base_url: '{server.base_url}', model: mr-student, api_key_env: {KEY_ENV}}}
output: {out}
"""
    results = json.loads(run_study(load_recipe(write_recipe(tmp_path, text))).read_text())
    rows = {(r["variant"], r["task"]): r for r in results}
    student = rows[("student", "mr_gsm8k")]
    assert student["value"] == pytest.approx(100 * 6 / 8)  # verdict accuracy: "wrong" every time
    assert student["extra_metrics"]["mr_step_accuracy"] == pytest.approx(100 * 2 / 6)
    assert "mr_score" not in student["extra_metrics"] and "mr_mcc" in rows[("baseline", "mr_ben")]["extra_metrics"]
    asked = server.count("mr-student")

    judge = f"judge: {{base_url: '{server.base_url}', model: mr-judge, api_key_env: {KEY_ENV}}}\n"
    results = json.loads(run_study(load_recipe(write_recipe(tmp_path, text + judge))).read_text())
    rows = {(r["variant"], r["task"]): r for r in results}
    assert server.count("mr-student") == asked  # re-judged from the stored samples
    extra = rows[("student", "mr_gsm8k")]["extra_metrics"]
    assert extra["mr_reason_accuracy"] == pytest.approx(100 * 2 / 6)
    assert extra["mr_score"] == pytest.approx(100 * (0.3 * 2 / 6 + 0.5 * 2 / 6))

    # judged from the start, every row has its score (the baseline too)
    fresh = text.replace(f"output: {out}", f"output: {tmp_path / 'fresh'}") + judge
    results = json.loads(run_study(load_recipe(write_recipe(tmp_path, fresh))).read_text())
    rows = {(r["variant"], r["task"]): r for r in results}
    assert len(rows) == 4 and all("mr_score" in r["extra_metrics"] for r in rows.values())
    assert rows[("student", "mr_gsm8k")]["extra_metrics"]["mr_score"] == pytest.approx(extra["mr_score"])
    report = (tmp_path / "fresh" / "report.md").read_text()
    assert "| mr_gsm8k | mr_score |" in report and "### mr_ben: by subject mr mcc" in report

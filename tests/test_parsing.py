from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.parsing import Parsed, numbers_equal, parse_int_list, parse_letter
from evaluate.scoring import SCORERS, score_output
from evaluate.tasks import TASKS, Item, load_builtin_tasks
from tests.conftest import parser_case_groups


def test_numbers_compare_numerically():
    assert numbers_equal("72.0", "72")
    assert numbers_equal("1,000", "1000")
    assert numbers_equal("0.5", "1/2")
    assert not numbers_equal("7", "72")
    assert not numbers_equal(None, "1")


def test_list_cascade():
    assert parse_int_list("-3, 5, 7, 12").answer == "-3, 5, 7, 12"
    assert parse_int_list("Sorted: [1, 2, 3]").rule == "bracketed"
    p = parse_int_list("The answer is 1, 2, 3.\nThe answer is wrong")
    assert p.rule == "answer_is" and p.answer == "1, 2, 3"
    rambling = parse_int_list("Sure! Sorting 5 and 3 gives 3 then 5 then 9", expected_len=3)
    assert rambling.answer == "3, 5, 9" and not rambling.followed
    assert parse_int_list("no numbers").answer is None


def test_letter_cascade():
    choices = ("12", "45", "7", "30")
    assert parse_letter(" B", choices).answer == "B"
    assert parse_letter("(C) because 7 is smallest", choices).rule == "bare_letter"
    assert parse_letter("A cat? The answer is D.", choices).answer == "D"
    fallback = parse_letter("I think option C is right", choices)
    assert fallback.answer == "C" and not fallback.followed
    assert parse_letter("45", choices).answer == "B"
    assert parse_letter("none of these", choices).answer is None


def test_score_output_tells_format_failure_from_wrong_answer():
    load_builtin_tasks()
    task = TASKS["synth_arith"]
    item = Item("x", "Question: ...", "14", "12 + 2 = 14. The answer is 14.")
    right = score_output(task, item, " 12 + 2 = 14. The answer is 14.")
    wrong = score_output(task, item, " 12 + 3 = 15. The answer is 15.")
    unformatted = score_output(task, item, " 12 + 2 = 14")
    assert right.correct and right.followed
    assert not wrong.correct and wrong.followed
    assert unformatted.correct and not unformatted.followed


def test_the_worked_answers_the_embedded_model_is_trained_on_score_as_correct():
    """The training targets and the answer parser agree: a model that reproduces its target is right."""
    from evaluate.scoring import score_output
    from evaluate.tasks.base import TASKS
    from evaluate.tasks.synthetic import TRAINING_TASKS

    for name in TRAINING_TASKS:
        for item in TASKS[name].load(n=40, seed=3, split="train"):
            s = score_output(TASKS[name], item, " " + item.target)
            assert s.correct and s.followed, (name, item.target, s)


def test_prompts_get_the_tokenizers_bos_once():
    """Plain prompts are encoded with the tokenizer's special tokens (Llama's BOS), as the model was trained
    and as lm-evaluation-harness does; a prompt that already starts with BOS (a chat template) gets no second."""
    from evaluate.generation import encode_prompt
    from evaluate.models import load_tokenizer, resolve_model_source

    tok = load_tokenizer(str(resolve_model_source("embedded:tiny-reasoner").location))
    plain = encode_prompt(tok, "Sort: 3, 1\nAnswer:")
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1
    assert encode_prompt(tok, tok.bos_token + "Sort: 3, 1\nAnswer:") == plain


# ------------------------------------------------------------------ outputs of real instruct models
# Forms modelled on what pretrained instruct LMs write (markdown, prose, code): one golden case per extraction
# form in tests/fixtures/parser_cases.yaml, and 110 real SmolLM2 outputs in tests/fixtures/real_outputs/.


def test_markdown_is_read_through_without_touching_arithmetic_or_hashes():
    from evaluate.parsing import strip_markdown

    assert strip_markdown("**Answer:** *42* and __7__") == "Answer: 42 and 7"
    assert strip_markdown("15 * 38 * 2 = 1140\n#### 1140\n#### None") == "15 * 38 * 2 = 1140\n#### 1140\n#### None"
    assert strip_markdown("## Final Answer\n- 3\n* 5") == "Final Answer\n- 3\n* 5"


def _read(answer_type: str, output: str, gold: str = "", choices: tuple[str, ...] = ()) -> Parsed:
    """The registered answer-type parser, as the study's scoring calls it."""
    return SCORERS[answer_type].parse(output, Item("case", "", gold, choices=choices))


def _golden_cases():
    for group_name, group in parser_case_groups().items():
        for i, (output, answer, rule, followed) in enumerate(group["cases"]):
            yield pytest.param(group, output, (answer, rule, followed), id=f"{group_name}-{i}")


@pytest.mark.parametrize(("group", "output", "expected"), list(_golden_cases()))
def test_parser_reads_each_golden_case(group, output, expected):
    """tests/fixtures/parser_cases.yaml: the answer, the rule and `followed` for every case."""
    parsed = _read(group["answer_type"], output, group.get("gold", ""), tuple(group.get("choices", ())))
    assert (parsed.answer, parsed.rule, parsed.followed) == tuple(expected)


def test_golden_cases_cover_every_answer_type_and_rule_family():
    groups = parser_case_groups()
    assert {g["answer_type"] for g in groups.values()} == {"number", "list", "letter", "math"}
    assert sum(len(g["cases"]) for g in groups.values()) == 66
    rules = {case[2] for g in groups.values() for case in g["cases"]}
    assert {"answer_is", "boxed", "hashes", "bare_letter", "bracketed", "last_number", "none"} <= rules


REAL_OUTPUTS = Path(__file__).parent / "fixtures" / "real_outputs" / "smollm2_135m_instruct.jsonl"


def _parse_fixture_row(row: dict) -> Parsed:
    return _read(row["answer_type"], row["output"], row["gold"], tuple(row["choices"] or ()))


def test_answers_are_read_from_real_smollm2_outputs():
    """110 greedy outputs of SmolLM2-135M-Instruct (tests/fixtures/real_outputs/README.md). (a) An answer is read
    from at least 95% of them (measured: 109 of 110; the one left is a loop that never states a number); (b) on
    the outputs read and labelled by hand, the parser returns the answer the model stated, and where the model
    stated none (a loop cut off by the token limit) it at most guesses, flagged as not following the format."""
    rows = [json.loads(line) for line in REAL_OUTPUTS.read_text().splitlines()]
    parsed = [_parse_fixture_row(r) for r in rows]
    assert len(rows) == 110
    assert sum(p.rule != "none" for p in parsed) >= 0.95 * len(rows)
    labelled = [(r, p) for r, p in zip(rows, parsed, strict=True) if "human_answer" in r]
    stated = [(r, p) for r, p in labelled if r["human_answer"] is not None]
    assert len(stated) >= 25 and {r["answer_type"] for r, _ in stated} == {"number", "list", "letter", "math"}
    assert [(r["id"], p.answer) for r, p in stated] == [(r["id"], r["human_answer"]) for r, _ in stated]
    unstated = [(r["id"], p) for r, p in labelled if r["human_answer"] is None]
    assert unstated and all(p.answer is None or not p.followed for _, p in unstated), unstated

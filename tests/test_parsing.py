from __future__ import annotations

import pytest

from evaluate.parsing import numbers_equal, parse_int_list, parse_letter, parse_number
from evaluate.scoring import score_output
from evaluate.tasks import TASKS, Item, load_builtin_tasks


@pytest.mark.parametrize(
    ("output", "answer", "rule", "followed"),
    [
        (" 12 + 5 = 17. 17 - 3 = 14. The answer is 14.", "14", "answer_is", True),
        ("We get \\boxed{\\frac{3}{4}}... no wait \\boxed{42}", "42", "boxed", True),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", "hashes", True),
        ("1,234.0", "1234", "bare", True),
        ("The answer is $1,200.", "1200", "answer_is", True),
        ("She has 3 apples, then 5, so maybe 8 or 9", "9", "last_number", False),
        ("Question: Tom has 12 apples... Question: Tom has 12 apples", "12", "last_number", False),
        ("I have no idea", None, "none", False),
        ("I don't know", "None", "no_answer_phrase", False),  # GSM-Plus critical thinking counts it
        ("The answer is -0.50", "-1/2", "answer_is", True),
    ],
)
def test_number_cascade(output, answer, rule, followed):
    parsed = parse_number(output)
    assert (parsed.answer, parsed.rule, parsed.followed) == (answer, rule, followed)


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
    from compress.models import load_tokenizer, resolve_model_source
    from evaluate.generation import encode_prompt

    tok = load_tokenizer(str(resolve_model_source("embedded:tiny-reasoner").location))
    plain = encode_prompt(tok, "Sort: 3, 1\nAnswer:")
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1
    assert encode_prompt(tok, tok.bos_token + "Sort: 3, 1\nAnswer:") == plain

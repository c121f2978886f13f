"""torchao int8 weight-only: a method added as one file (compress/methods/torchao_int8.py) with its storage format
(evaluate/formats/torchao.py): registered, validated, built on the shared build path, saved, reloaded with the same
logits, measured at 8 bits per parameter, and described by the kernel that runs it."""

from __future__ import annotations

import pytest
import torch

from compress.build import build
from compress.registry import METHODS, make_step
from evaluate.formats import format_of
from evaluate.memory import measure_footprint, stored_bits_per_param
from evaluate.models import EMBEDDED_ROOT, load_model, load_tokenizer

pytest.importorskip("torchao")
TOY = str(EMBEDDED_ROOT / "tiny-reasoner")


def test_torchao_int8_round_trip_bits_and_backend(tmp_path):
    assert METHODS["torchao_int8"].kind == "quantize" and METHODS["torchao_int8"].unavailable_reason("cpu") is None
    out = tmp_path / "model"
    record = build(TOY, [make_step("torchao_int8")], out, load_tokenizer(TOY))
    assert record.format == "torchao" and format_of(out) == "torchao"
    ids = torch.tensor([[1, 5, 9, 40, 77, 12]])
    fp, quantized = load_model(TOY), load_model(str(out))
    with torch.inference_mode():
        a, b = fp(ids).logits, quantized(ids).logits
    assert 0 < (a - b).abs().max().item() < 0.5  # it quantized something, and stays close to the FP model
    with torch.inference_mode():  # the saved model reloads to the same logits
        assert torch.equal(b, load_model(str(out))(ids).logits)
    footprint = measure_footprint(quantized)
    assert 8.0 <= footprint.bits_per_param < 8.5  # int8 plus one scale per row
    assert 8.0 <= stored_bits_per_param(out, quantized) < 8.5
    described = footprint.backend.describe()
    assert footprint.backend.format == "torchao" and "torchao int8 weight-only (Int8Tensor" in described


def test_torchao_int8_in_a_recipe_validates_its_fields(tmp_path):
    from compress.recipe import RecipeError, load_recipe
    from tests.conftest import write_recipe

    ok = "model: {name: 'embedded:tiny-reasoner'}\nvariants: [{name: t, steps: [{method: torchao_int8}]}]\n" \
         "tasks: [{name: sort8_positive, n: 4}]\n"
    assert load_recipe(write_recipe(tmp_path, ok)).variants[0].steps[0].method == "torchao_int8"
    with pytest.raises(RecipeError, match=r"steps\[0\]\.bits = 4: unknown field"):
        load_recipe(write_recipe(tmp_path, ok.replace("{method: torchao_int8}", "{method: torchao_int8, bits: 4}")))

"""Quantization methods: validation, per-layer overrides, skip reasons, and for every method the
round trip apply -> save -> reload giving the same logits, with measured bits/param."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from compress.calibration import calibration_provider
from compress.recipe import RecipeError, load_recipe
from compress.registry import CalibrationData, StepContext, load_builtin_methods
from evaluate.formats import format_of, save_model
from evaluate.memory import measure_footprint, stored_bits_per_param
from evaluate.models import load_model
from tests.conftest import write_recipe

METHODS = load_builtin_methods()
QUANT_METHODS = ("rtn", "gptq", "awq", "bnb_int8", "bnb_4bit", "quanto", "fp8", "smoothquant_w8a8")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama shaped like the embedded model (hidden 128, GQA 4/2 heads, intermediate 256)
    with a byte-level BPE tokenizer trained on the spot: no hub, no other engineer's files."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    corpus = [f"Sort: {i} {i * 7 % 13} {i * 5 % 11} -> answer {i + 3} the quick brown fox" for i in range(200)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _ctx(model_dir: Path, work: Path) -> StepContext:
    from evaluate.models import load_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    return StepContext(tokenizer=load_tokenizer(str(model_dir)), source_dir=model_dir, workdir=work,
                       calibration=CalibrationData("synthetic", 64, 256, calibration_provider("synthetic", 0)),
                       pristine=True)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # as evaluation and profiling run the model
        return model(input_ids=ids).logits.float().clone()


def _apply(method: str, params: dict, model_dir: Path, tmp: Path):
    spec = METHODS[method]
    ctx = _ctx(model_dir, tmp / "work")
    model = load_model(str(model_dir))
    return spec.apply(model, spec.params.model_validate(params), ctx), ctx


# ---------------------------------------------------------------------------------- listing
def test_compress_methods_lists_every_method_with_parameters():
    from click.testing import CliRunner

    from compress.cli import main

    out = CliRunner().invoke(main, ["methods"]).output
    for name in QUANT_METHODS:
        assert name in out, name
    for param in ("actorder: Literal['static', 'weight', 'none'] = 'static'", "dampening_frac: float = 0.01",
                  "quant_type: Literal['nf4', 'fp4'] = 'nf4'", "weights: Literal['int8', 'int4', 'float8']",
                  "activations: Literal['dynamic', 'static'] = 'dynamic'", "smoothing_strength: float = 0.8",
                  "overrides: list[LayerOverride] = []", "ignore: list[str] = ['lm_head']"):
        assert param in out, param


# ------------------------------------------------------------------------------- validation
STUDY = """\
model: {{name: "{model}"}}
variants:
  - name: v
    steps:
      - {step}
tasks:
  - {{name: sort8_positive, n: 4}}
"""


def _issues(tmp_path: Path, model: Path, step: str) -> list:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, STUDY.format(model=model, step=step)))
    return info.value.issues


def _valid(tmp_path: Path, model: Path, step: str) -> None:
    load_recipe(write_recipe(tmp_path, STUDY.format(model=model, step=step)))


@pytest.mark.parametrize(("step", "field", "needle"), [
    ("{method: gptq, group_size: 256}", "group_size", "does not divide the input width of"),
    ("{method: rtn, bits: 3}", "bits", "supports bits in [4, 8], not 3"),
    ("{method: bnb_4bit, bits: 3}", "bits", "use bnb_int8 for 8 bits, or gptq/rtn for other widths"),
    ("{method: bnb_4bit, bits: 8}", "bits", "use bnb_int8 for 8 bits"),
    ("{method: awq, bits: 8}", "bits", "for 8-bit weights use gptq or rtn"),
    ("{method: gptq, actorder: group}", "actorder", "'static', 'weight' or 'none'"),
    ("{method: fp8, activations: per_tensor}", "activations", "'dynamic' or 'static'"),
    ("{method: smoothquant_w8a8, smoothing_strength: 1.5}", "smoothing_strength", "less than 1"),
    ("{method: quanto, weights: int2}", "weights", "'int8', 'int4' or 'float8'"),
    ("{method: gptq, overrides: [{pattern: 're:.*nothing_here', bits: 8}]}", "overrides", "matches no Linear layer"),
    ("{method: gptq, overrides: [{pattern: 're:.*down_proj', group_size: 512}]}", "group_size", "down_proj"),
    ("{method: rtn, overrides: [{pattern: 're:.*proj', bits: 8}, {pattern: 're:.*down_proj', bits: 4}]}",
     "overrides", "make the patterns disjoint"),
    ("{method: bnb_int8, overrides: [{pattern: 're:.*down_proj', bits: 4}]}", "overrides", "use skip: true"),
    ("{method: rtn, ignore: ['re:(unclosed']}", "ignore", "not a valid regular expression"),
])
def test_impossible_settings_fail_validation_naming_the_fix(tmp_path, tiny_model, step, field, needle):
    issues = _issues(tmp_path, tiny_model, step)
    assert len(issues) == 1, issues
    rendered = issues[0].render("r.yaml")
    assert field in rendered and needle in rendered, rendered
    assert rendered.startswith("r.yaml:5: variants[0].steps[0]"), rendered


def test_unknown_method_suggests_the_nearest(tmp_path, tiny_model):
    (issue,) = _issues(tmp_path, tiny_model, "{method: gptqq, bits: 4}")
    assert "no such method" in issue.message and "did you mean 'gptq'" in issue.message


def test_fitting_settings_validate(tmp_path, tiny_model):
    for step in ("{method: gptq, group_size: 32, actorder: none, dampening_frac: 0.05, n_samples: 8}",
                 "{method: gptq, group_size: -1, bits: 8}", "{method: rtn, group_size: 64}",
                 "{method: rtn, overrides: [{pattern: 're:.*down_proj', bits: 8, group_size: -1}]}",
                 "{method: bnb_int8, overrides: [{pattern: 're:.*down_proj', skip: true}]}",
                 "{method: quanto, weights: int4, overrides: [{pattern: 're:.*down_proj', bits: 8}]}",
                 "{method: fp8, activations: static, n_samples: 4}", "{method: awq, duo_scaling: both}"):
        _valid(tmp_path, tiny_model, step)


# ------------------------------------------------------------------------------ calibration
def test_calibration_size_comes_from_the_recipe_unless_the_step_overrides_it(tmp_path, tiny_model):
    from compress.runner import Study

    text = STUDY.format(model=tiny_model, step="{method: gptq}") + "calibration: {n_samples: 7, seq_len: 99}\n"
    recipe = load_recipe(write_recipe(tmp_path, text))
    ctx = StepContext(tokenizer=None, source_dir=tiny_model, workdir=tmp_path,
                      calibration=Study(recipe, tmp_path / "out").calibration())
    gptq = METHODS["gptq"].params
    assert gptq().calibration_size(ctx) == (7, 99)
    assert gptq(n_samples=3, seq_len=16).calibration_size(ctx) == (3, 16)
    local = tmp_path / "calib.jsonl"
    local.write_text("".join(json.dumps({"text": f"sample {i}"}) + "\n" for i in range(10)))
    texts = calibration_provider(str(local), seed=0)(4, 32)
    assert len(texts) == 4 and all(t.startswith("sample ") for t in texts)
    assert len(calibration_provider("synthetic", seed=0)(5, 64)) == 5


# ----------------------------------------------------------------------- skipping with reasons
def test_method_unavailable_here_is_skipped_with_its_reason(tmp_path, tiny_model, monkeypatch):
    from compress.runner import SkipVariant, Study

    recipe = load_recipe(write_recipe(tmp_path, STUDY.format(model=tiny_model, step="{method: fp8}")))
    study = Study(recipe, tmp_path / "out")
    fp8 = METHODS["fp8"]
    monkeypatch.setitem(METHODS._entries, "fp8", dataclasses.replace(
        fp8, unavailable=lambda device, params: "no FP8 dtype here"))
    steps = recipe.variants[0].steps
    with pytest.raises(SkipVariant, match="'fp8' cannot run here: no FP8 dtype here"):
        study.build_variant("v", steps, "k", tokenizer=None)
    study.run_variant(1, "v", steps, tokenizer=None, cells=[])
    row = study.ledger.variant("v")
    assert row.status == "skipped" and "no FP8 dtype here" in row.reason
    assert fp8.unavailable_reason("cpu") is None  # torch here has float8 dtypes
    cuda_only = dataclasses.replace(METHODS["rtn"], needs_cuda=True)
    assert "needs a CUDA GPU" in cuda_only.unavailable_reason("cpu")


def test_quanto_int4_without_its_kernel_or_a_compiler_is_unavailable(monkeypatch, tmp_path):
    import shutil

    import optimum.quanto.library.extensions.cpp as cpp

    quanto, params = METHODS["quanto"], METHODS["quanto"].params
    monkeypatch.setattr(cpp, "__file__", str(tmp_path / "cpp" / "__init__.py"))  # no built kernel there
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    reason = quanto.unavailable_reason("cpu", params(weights="int4"))
    assert "C++ unpack kernel" in reason and "weights: int8 / float8" in reason
    assert quanto.unavailable_reason("cpu", params(weights="int8")) is None
    over = params(weights="int8", overrides=[{"pattern": "re:.*down_proj", "bits": 4}])
    assert quanto.unavailable_reason("cpu", over) is not None


# ------------------------------------------------------------------------------- overrides
def test_overrides_reach_each_backend(tmp_path, tiny_model):
    override = {"pattern": "re:.*down_proj", "bits": 8, "group_size": -1}
    model, _ = _apply("rtn", {"bits": 4, "group_size": 128, "overrides": [override]}, tiny_model, tmp_path / "rtn")
    schemes = {n: m.quantization_scheme.weights for n, m in model.named_modules()
               if getattr(m, "quantization_scheme", None) is not None}
    assert schemes["model.layers.0.mlp.down_proj"].num_bits == 8
    assert schemes["model.layers.0.mlp.down_proj"].strategy == "channel"
    assert schemes["model.layers.1.mlp.up_proj"].num_bits == 4 and "lm_head" not in schemes

    skip = {"overrides": [{"pattern": "re:.*down_proj", "skip": True}]}
    model, _ = _apply("bnb_int8", skip, tiny_model, tmp_path / "bnb")
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.endswith(("_proj", "lm_head"))}
    assert kinds["model.layers.1.mlp.down_proj"] == "Linear" and kinds["lm_head"] == "Linear"
    assert kinds["model.layers.1.mlp.up_proj"] == "Linear8bitLt"

    model, _ = _apply("quanto", {"weights": "int4", "overrides": [{"pattern": "re:.*down_proj", "bits": 8}]},
                      tiny_model, tmp_path / "quanto")
    qtypes = {n: m.weight_qtype.name for n, m in model.named_modules() if hasattr(m, "weight_qtype")}
    assert qtypes["model.layers.0.mlp.down_proj"] == "qint8" and qtypes["model.layers.0.self_attn.q_proj"] == "qint4"
    assert "lm_head" not in qtypes


# ------------------------------------------------------- round trip: logits and measured bits
CAL = {"n_samples": 4, "seq_len": 48}
# (method, params, in-memory bits/param range after reload, stored bits/param range, backend words, logit tol)
ROUND_TRIPS = [
    ("rtn", {"bits": 4, "group_size": 128}, (32, 33), (4.1, 4.35), ("int4 g128", "decompressed", "offload wrapper"),
     1e-4),
    ("gptq", {"bits": 4, "group_size": 128, **CAL}, (32, 33), (4.1, 4.35), ("int4 g128", "dense matmul"), 1e-4),
    ("gptq", {"bits": 8, "group_size": -1, "actorder": "none", **CAL}, (32, 33), (8.0, 8.4),
     ("int8 per-channel",), 1e-4),
    ("awq", {"n_grid": 4, **CAL}, (32, 33), (4.1, 4.4), ("int4 g128",), 1e-4),
    ("fp8", {"activations": "dynamic"}, (32, 33), (8.0, 8.4), ("fp8 per-channel", "fp8 per-token dynamic",
                                                                "matmul emulated"), 1e-4),
    ("fp8", {"activations": "static", **CAL}, (32, 33), (8.0, 8.1), ("fp8 per-tensor", "matmul emulated"), 1e-4),
    ("smoothquant_w8a8", {"smoothing_strength": 0.5, "weights": "rtn", **CAL}, (32, 33), (8.0, 8.4),
     ("int8 per-channel", "int8 per-token dynamic", "matmul emulated"), 1e-4),
    ("bnb_int8", {"threshold": 6.0}, (8.0, 8.5), (8.0, 8.5), ("Linear8bitLt",), 1e-4),
    ("bnb_4bit", {"quant_type": "nf4", "double_quant": True}, (4.0, 4.8), (4.0, 4.8), ("nf4",), 1e-4),
    ("bnb_4bit", {"quant_type": "fp4", "double_quant": False}, (4.0, 4.6), (4.0, 4.6), ("fp4",), 1e-4),
    ("quanto", {"weights": "int8"}, (8.0, 8.4), (8.0, 8.4), ("qint8",), 1e-5),
    ("quanto", {"weights": "int4"}, (4.0, 4.8), (4.0, 4.8), ("qint4",), 1e-5),
    ("quanto", {"weights": "float8"}, (8.0, 8.4), (8.0, 8.4), ("qfloat8",), 1e-5),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "params", "mem_bits", "disk_bits", "backend", "tol"), ROUND_TRIPS,
                         ids=[f"{m}-{'-'.join(str(v) for v in p.values())}" for m, p, *_ in ROUND_TRIPS])
def test_saved_variant_reloads_with_same_logits_and_measured_bits(tmp_path, tiny_model, method, params, mem_bits,
                                                                  disk_bits, backend, tol):
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(0))
    fp = _logits(load_model(str(tiny_model)), ids)
    model, ctx = _apply(method, params, tiny_model, tmp_path)
    spec = METHODS[method]
    out = tmp_path / "saved"
    # saved before any forward, as the runner does: bitsandbytes 0.50 repacks Linear4bit weights for
    # its CPU kernel on the first forward, and saving after that corrupts the absmax scales
    save_model(model, ctx.tokenizer, out, spec.produces)
    before = _logits(model, ids)
    assert format_of(out) == spec.produces  # the directory names its format; load_model reads it
    if spec.produces == "compressed-tensors":  # what vLLM and transformers read
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == "compressed-tensors" and qc["ignore"] == ["lm_head"]
        if method in ("gptq", "rtn", "awq") and params.get("bits", 4) == 4:
            assert qc["format"] == "pack-quantized"
            weights = qc["config_groups"]["group_0"]["weights"]
            assert (weights["num_bits"], weights["group_size"]) == (4, 128)
            assert weights["actorder"] == ("static" if method == "gptq" else None)
    reloaded = load_model(str(out))
    after = _logits(reloaded, ids)
    assert (after - before).abs().max().item() <= tol, (after - before).abs().max().item()
    assert (before - fp).abs().max().item() > 1e-4  # it did quantize something

    footprint = measure_footprint(reloaded)
    assert mem_bits[0] <= footprint.bits_per_param <= mem_bits[1], footprint
    stored = stored_bits_per_param(out, reloaded)
    assert disk_bits[0] <= stored <= disk_bits[1], stored
    described = footprint.backend.describe()
    for word in backend:
        assert word in described, described
    assert "unstructured" not in described  # zeros of a quantization grid are not pruning
    if footprint.bits_per_param >= 16:  # a decompressing runtime must not claim a saving
        assert "no memory saving" in described

"""Pruning (magnitude / Wanda / SparseGPT, N:M, width, depth) and distillation: measured sparsity,
exact masks, smaller reloadable models, and the validation errors a recipe gets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from compress.calibration import calibration_provider
from compress.recipe import RecipeError, load_recipe
from compress.registry import CalibrationData, StepContext, load_builtin_methods
from tests.conftest import write_recipe

METHODS = load_builtin_methods()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and the 2 shared cores stay usable for others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _char_tokenizer():
    """A character-level tokenizer built on the spot (no hub): enough for the synthetic texts."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(i) for i in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer Llama (GQA: 4 heads, 2 KV heads) saved with its tokenizer: the FP source."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _load(path: Path):
    from evaluate.models import load_model

    return load_model(str(path))


def _ctx(tiny_dir: Path, tmp_path: Path, pristine: bool = False) -> StepContext:
    from evaluate.models import load_tokenizer

    return StepContext(tokenizer=load_tokenizer(str(tiny_dir)), source_dir=tiny_dir, workdir=tmp_path,
                       calibration=CalibrationData("synthetic", 64, 256, calibration_provider("synthetic", 0)),
                       pristine=pristine)


def _apply(method: str, model, ctx: StepContext, **params):
    spec = METHODS[method]
    return spec.apply(model, spec.params.model_validate(params), ctx)


def _ids(tiny_dir: Path) -> dict:
    from evaluate.models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    return dict(tok(["Sort these numbers: 3, 1, 2\nAnswer:", "Question: 2 + 2?\nAnswer: 4"], return_tensors="pt",
                    padding=True))


# --- validation -----------------------------------------------------------------------------------

def _issues(tmp_path: Path, model_dir: Path, steps: str) -> str:
    text = (f"model: {{name: '{model_dir}'}}\nvariants:\n  - name: v\n    steps: {steps}\n"
            "tasks: [{name: sort8_positive}]\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    return str(err.value)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.2])
def test_sparsity_outside_open_interval_fails_validation(tmp_path, config_only_model, method, sparsity):
    msg = _issues(tmp_path, config_only_model, f"[{{method: {method}, sparsity: {sparsity}}}]")
    assert f"steps[0].sparsity = {sparsity}" in msg and "strictly between 0 and 1" in msg


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_needs_half_sparsity(tmp_path, config_only_model, pattern):
    msg = _issues(tmp_path, config_only_model, f"[{{method: wanda, pattern: '{pattern}', sparsity: 0.6}}]")
    assert "sparsity = 0.6" in msg and "set sparsity: 0.5 or pattern: unstructured" in msg
    load_recipe(write_recipe(tmp_path, f"model: {{name: '{config_only_model}'}}\nvariants:\n  - name: v\n"
                                       f"    steps: [{{method: sparsegpt, pattern: '{pattern}', sparsity: 0.5}}]\n"
                                       "tasks: [{name: sort8_positive}]\n"))


def test_width_validation_against_the_model_config(tmp_path, config_only_model):
    # config_only_model: 4 attention heads sharing 2 KV heads (groups of 2), intermediate 384
    msg = _issues(tmp_path, config_only_model, "[{method: prune_width, heads: 4}]")
    assert "heads = 4" in msg and "has 4 attention heads" in msg and "at most 2" in msg
    msg = _issues(tmp_path, config_only_model, "[{method: prune_width, heads: 1}]")
    assert "heads = 1" in msg and "multiple of 2" in msg
    msg = _issues(tmp_path, config_only_model, "[{method: prune_width, mlp_ratio: 1.0}]")
    assert "mlp_ratio = 1.0" in msg and "[0, 1)" in msg
    assert "remove nothing" in _issues(tmp_path, config_only_model, "[{method: prune_width}]")


def test_depth_validation_against_the_model_config(tmp_path, config_only_model):
    # config_only_model has 2 decoder layers
    msg = _issues(tmp_path, config_only_model, "[{method: prune_depth, layers: [0, 5]}]")
    assert "layers = [0, 5]" in msg and "out of range" in msg and "indices 0..1" in msg
    msg = _issues(tmp_path, config_only_model, "[{method: prune_depth, n_layers: 2}]")
    assert "n_layers = 2" in msg and "leaving none" in msg and "at most 1" in msg
    assert "exactly one of n_layers, ratio or layers" in _issues(
        tmp_path, config_only_model, "[{method: prune_depth, n_layers: 1, layers: [1]}]")
    assert "twice" in _issues(tmp_path, config_only_model, "[{method: prune_depth, layers: [1, 1]}]")


def test_distill_after_quantization_only_as_qlora_on_bitsandbytes(tmp_path, config_only_model):
    msg = _issues(tmp_path, config_only_model,
                  "[{method: rtn, bits: 8, group_size: 64}, {method: distill, lora: true}]")
    assert "comes after 'rtn'" in msg and "bitsandbytes" in msg and "put 'distill' before 'rtn'" in msg
    msg = _issues(tmp_path, config_only_model, "[{method: bnb_4bit}, {method: distill}]")
    assert "set lora: true" in msg
    load_recipe(write_recipe(tmp_path, f"model: {{name: '{config_only_model}'}}\nvariants:\n  - name: v\n"
                                       "    steps: [{method: bnb_4bit}, {method: distill, lora: true}]\n"
                                       "tasks: [{name: sort8_positive}]\n"))
    assert "nothing to train on" in _issues(tmp_path, config_only_model, "[{method: distill, kl_weight: 0}]")


# --- unstructured and N:M ---------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_magnitude_unstructured_hits_the_target_per_layer(tiny_dir, tmp_path, sparsity):
    from evaluate.memory import measure_footprint

    model = _apply("magnitude", _load(tiny_dir), _ctx(tiny_dir, tmp_path), sparsity=sparsity)
    fp = measure_footprint(model)
    assert fp.sparsity == pytest.approx(sparsity, abs=1e-3)
    assert set(fp.sparsity_per_layer) == {f"layers.{i}" for i in range(4)}
    assert all(v == pytest.approx(sparsity, abs=1e-3) for v in fp.sparsity_per_layer.values())
    assert (model.lm_head.weight != 0).all()  # the output embedding is left dense
    assert "unstructured" in fp.backend.describe() and "dense kernel, zeros not skipped" in fp.backend.describe()


@pytest.mark.parametrize("pattern,m", [("2:4", 4), ("4:8", 8)])
def test_magnitude_nm_keeps_the_largest_n_of_every_m(tiny_dir, tmp_path, pattern, m):
    from evaluate.sparsity import detect_pattern

    dense = _load(tiny_dir)
    w0 = dense.model.layers[0].mlp.up_proj.weight.detach().clone()
    model = _apply("magnitude", dense, _ctx(tiny_dir, tmp_path), pattern=pattern, sparsity=0.5)
    w = model.model.layers[0].mlp.up_proj.weight.detach()
    groups = (w.view(w.shape[0], -1, m) != 0).sum(-1)
    assert (groups == m // 2).all()
    kept_min = w0.abs().view(w.shape[0], -1, m).where(w.view(w.shape[0], -1, m) != 0, torch.inf).min(-1).values
    dropped_max = w0.abs().view(w.shape[0], -1, m).where(w.view(w.shape[0], -1, m) == 0, -torch.inf).max(-1).values
    assert (kept_min >= dropped_max).all()
    assert detect_pattern(model) == pattern


@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4")])
def test_llm_compressor_scorers_reach_the_sparsity(tiny_dir, tmp_path, method, pattern):
    from evaluate.memory import measure_footprint

    model = _apply(method, _load(tiny_dir), _ctx(tiny_dir, tmp_path), pattern=pattern, sparsity=0.5,
                   n_samples=4, seq_len=64)
    fp = measure_footprint(model)
    assert fp.sparsity == pytest.approx(0.5, abs=2e-3)
    assert (model.lm_head.weight != 0).all()
    if pattern == "2:4":
        assert "2:4" in fp.backend.describe()


# --- structured ------------------------------------------------------------------------------------

@torch.no_grad()
def test_width_pruning_removes_the_dead_kv_group_and_channels_exactly(tiny_dir, tmp_path):
    from evaluate.memory import measure_footprint

    model = _load(tiny_dir)
    n_before = measure_footprint(model).n_params
    for layer in model.model.layers:  # KV group 1 (query heads 2, 3) and channels 0..63 contribute nothing
        layer.self_attn.o_proj.weight[:, 32:] = 0
        layer.mlp.down_proj.weight[:, :64] = 0
    ids = _ids(tiny_dir)
    ref = model(**ids).logits
    pruned = _apply("prune_width", model, _ctx(tiny_dir, tmp_path), heads=2, mlp_ratio=0.5, n_samples=8, seq_len=64)
    c = pruned.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (2, 1, 64, 16)
    attn = pruned.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (32, 64) and attn.k_proj.weight.shape == (16, 64)
    assert pruned.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
    torch.testing.assert_close(pruned(**ids).logits, ref, atol=1e-5, rtol=1e-5)
    pruned.save_pretrained(tmp_path / "w")
    reloaded = _load(tmp_path / "w")
    torch.testing.assert_close(reloaded(**ids).logits, ref, atol=1e-5, rtol=1e-5)
    n_after = measure_footprint(reloaded).n_params
    # per layer: q/o lose 2 heads x 16 x 64 x 2, k/v one group 16 x 64 x 2, MLP 64 channels x 64 x 3
    assert n_before - n_after == 4 * (2 * 2 * 16 * 64 + 2 * 16 * 64 + 3 * 64 * 64)


@torch.no_grad()
def test_depth_pruning_drops_the_identity_layer_and_reloads(tiny_dir, tmp_path):
    model = _load(tiny_dir)
    model.model.layers[2].self_attn.o_proj.weight.zero_()  # layer 2 now returns its input: influence 0
    model.model.layers[2].mlp.down_proj.weight.zero_()
    ids = _ids(tiny_dir)
    ref = model(**ids).logits
    gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    pruned = _apply("prune_depth", model, _ctx(tiny_dir, tmp_path), n_layers=1, n_samples=8, seq_len=64)
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    torch.testing.assert_close(pruned(**ids).logits, ref, atol=1e-5, rtol=1e-5)
    pruned.save_pretrained(tmp_path / "d")
    reloaded = _load(tmp_path / "d")
    assert torch.equal(reloaded.generate(**ids, max_new_tokens=6, do_sample=False), gen)


def test_depth_pruning_by_explicit_indices(tiny_dir, tmp_path):
    model = _load(tiny_dir)
    kept = [model.model.layers[i].mlp.up_proj.weight.clone() for i in (1, 3)]
    pruned = _apply("prune_depth", model, _ctx(tiny_dir, tmp_path), layers=[2, 0])
    assert pruned.config.num_hidden_layers == 2
    assert all(torch.equal(pruned.model.layers[i].mlp.up_proj.weight, kept[i]) for i in range(2))


def test_structured_pruning_rejects_settings_beyond_the_model_at_apply(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="leaving none"):
        _apply("prune_depth", _load(tiny_dir), _ctx(tiny_dir, tmp_path), n_layers=4)
    with pytest.raises(ValueError, match="leaves none"):
        _apply("prune_width", _load(tiny_dir), _ctx(tiny_dir, tmp_path), heads=4)


# --- distillation ----------------------------------------------------------------------------------

def _kl_to_teacher(student, teacher, ids) -> float:
    with torch.no_grad():
        s = torch.log_softmax(student(**ids).logits, -1)
        t = torch.log_softmax(teacher(**ids).logits, -1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


@pytest.mark.parametrize("lora", [False, True])
def test_distill_keeps_zeros_exactly_and_moves_toward_the_teacher(tiny_dir, tmp_path, lora):
    from compress.methods._sparsity import nonzero_masks

    teacher = _load(tiny_dir)
    ctx = _ctx(tiny_dir, tmp_path)
    pruned = _apply("magnitude", _load(tiny_dir), ctx, sparsity=0.5)
    masks = nonzero_masks(pruned)
    assert len(masks) == 28  # 4 layers x 7 Linear
    before = copy.deepcopy(pruned.state_dict())
    ids = _ids(tiny_dir)
    kl_before = _kl_to_teacher(pruned, teacher, ids)
    out = _apply("distill", pruned, ctx, steps=25, batch_size=4, n_samples=32, seq_len=96, lr=3e-3,
                 lora=lora, lora_r=4, hidden_weight=0.5, completion_only=False)
    assert type(out).__name__ == "LlamaForCausalLM"  # LoRA merged back into a plain dense model
    after = nonzero_masks(out)
    assert after.keys() == masks.keys()
    assert all(torch.equal(after[k], masks[k]) for k in masks)  # zeros stay zero, nothing else becomes zero
    changed = [k for k, v in out.state_dict().items() if not torch.equal(v, before[k])]
    assert any("mlp.up_proj" in k for k in changed)
    assert _kl_to_teacher(out, teacher, ids) < kl_before


def test_distill_loss_terms():
    from types import SimpleNamespace

    from compress.methods.distill import DistillParams, distill_loss

    torch.manual_seed(0)
    logits, hidden = torch.randn(2, 5, 11), tuple(torch.randn(2, 5, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    same = SimpleNamespace(logits=logits, hidden_states=hidden, loss=torch.tensor(2.5))
    params = DistillParams(ce_weight=0.4, hidden_weight=1.0)
    losses = distill_loss(same, same, mask, params)
    assert losses["kl"].item() == pytest.approx(0.0, abs=1e-6) and losses["hidden"].item() == pytest.approx(0.0)
    assert losses["total"].item() == pytest.approx(0.4 * 2.5)
    other = SimpleNamespace(logits=logits.flip(-1), hidden_states=hidden, loss=torch.tensor(2.5))
    padded_only = logits.clone()
    padded_only[0, 3:] += 100.0  # differences at padded positions must not count
    assert distill_loss(other, same, mask, params)["kl"].item() > 0
    assert distill_loss(SimpleNamespace(logits=padded_only, hidden_states=hidden, loss=torch.tensor(0.0)), same,
                        mask, params)["kl"].item() == pytest.approx(0.0, abs=1e-6)


def test_qlora_on_a_bnb_4bit_base_saves_and_reloads(tiny_dir, tmp_path):
    from evaluate.formats import save_model
    from evaluate.memory import measure_footprint
    from evaluate.models import load_tokenizer

    ctx = _ctx(tiny_dir, tmp_path, pristine=True)
    base = _apply("bnb_4bit", _load(tiny_dir), ctx)
    out = _apply("distill", base, ctx, steps=5, batch_size=4, n_samples=16, seq_len=64, lora=True, lora_r=4,
                 lr=1e-2)
    ids = _ids(tiny_dir)
    with torch.no_grad():
        ref = out(**ids).logits
    save_model(out, load_tokenizer(str(tiny_dir)), tmp_path / "q")
    assert {"config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "q").iterdir()}
    reloaded = _load(tmp_path / "q")
    b = reloaded.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert b.abs().sum() > 0  # the trained adapter, not a fresh zero-initialized one
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, ref, atol=1e-4, rtol=1e-4)
    fp = measure_footprint(reloaded)
    assert fp.sparsity is None and "Linear4bit" in fp.backend.describe() and "LoRA adapters" in fp.backend.describe()


# --- the pruning table -----------------------------------------------------------------------------

def test_pruning_table_reads_before_and_after_recovery_from_the_ledger(tmp_path):
    from benchmarks.pruning_table import pruning_rows, render
    from evaluate.ledger import Ledger
    from evaluate.records import Backend, BatchProfile, CellMetrics, Footprint, Profile

    ledger = Ledger(tmp_path / "results.sqlite")
    prof = lambda tps: Profile(backend=Backend(), batches=[BatchProfile(batch_size=1, tokens_per_s=tps)])  # noqa: E731
    footprint = lambda sparsity, backend: Footprint(  # noqa: E731
        weight_bytes=4000, quantized_layer_bytes=4000, quantized_layer_params=1000, bits_per_param=32.0,
        n_params=1000, sparsity=sparsity, backend=backend)
    ledger.upsert_variant("baseline", "k0", position=0, steps=[], footprint=footprint(0.0, Backend()),
                          profile=prof(100.0))
    steps = [{"method": "wanda", "sparsity": 0.5}, {"method": "distill"}, {"method": "rtn"}]
    ledger.upsert_variant("w", "k1", position=1, steps=steps, profile=prof(90.0),
                          footprint=footprint(0.5, Backend(kernels=["dense"])))
    for cell, base, final, pruned, recovered in (("a", 80, 60, 40, 70), ("b", 60, 50, 20, 50)):
        ledger.put_cell("baseline", cell, cell, "c", CellMetrics(n=10, accuracy=base))
        ledger.put_cell("w", cell, cell, "c", CellMetrics(n=10, accuracy=final))
        ledger.put_stage("w", 0, "wanda", cell, "s", CellMetrics(n=10, accuracy=pruned), None)
        ledger.put_stage("w", 1, "distill", cell, "s", CellMetrics(n=10, accuracy=recovered), None)
    (row,) = pruning_rows(ledger)
    assert (row["method"], row["ratio"], row["sparsity"]) == ("wanda", "50%", 0.5)
    assert row["fp_baseline"] == 70 and row["accuracy_before_recovery"] == 30
    assert row["accuracy_after_recovery"] == 60 and row["accuracy_final"] == 55
    assert row["recovered_share"] == pytest.approx(0.75) and row["speedup"] == pytest.approx(0.9)
    table = render([row], ["a", "b"], "t")
    assert ("| wanda (wanda -> distill -> rtn) | 50% | 1,000 | 50.0% | 30.0 | 60.0 | 55.0 | 75% | 70.0 | "
            "90 (0.90x) |") in table


def test_distill_trains_on_the_completion_tokens_only(tiny_dir):
    from compress.methods.distill import encode
    from evaluate.models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    batch = encode(tok, [("Q: 1+1\nAnswer:", " 2</s>"), ("", "abc")], 32, "cpu")
    labels = batch["labels"]
    assert tok.decode(labels[0][labels[0] != -100]) == " 2</s>"
    assert tok.decode(labels[1][labels[1] != -100]) == "abc"  # no prompt: the whole text
    # the position before each trained token predicts it
    assert batch["pred_mask"][0].tolist() == [int(x != -100) for x in labels[0][1:].tolist()] + [0]


@pytest.mark.slow
def test_study_prune_distill_chain_records_each_stage_and_the_table(tiny_dir, tmp_path):
    from benchmarks.pruning_table import pruning_rows
    from compress.runner import Study
    from evaluate.ledger import Ledger

    recipe = load_recipe(write_recipe(tmp_path, f"""\
model: {{name: '{tiny_dir}'}}
variants:
  - name: wanda-2of4
    eval_stages: true
    steps: [{{method: wanda, pattern: '2:4', sparsity: 0.5}},
            {{method: distill, steps: 4, batch_size: 4, n_samples: 8}}]
  - name: depth
    eval_stages: true
    steps: [{{method: prune_depth, layers: [1]}}, {{method: distill, steps: 4, batch_size: 4, n_samples: 8}}]
tasks: [{{name: sort8_positive, n: 4}}]
decoding: {{batch_size: 4}}
profile: {{prompt_tokens: 8, new_tokens: 4, repeats: 1, warmup: 0}}
calibration: {{n_samples: 4, seq_len: 64}}
"""))
    Study(recipe, tmp_path / "out").run()
    ledger = Ledger(tmp_path / "out" / "results.sqlite")
    assert {(s.variant, s.stage, s.method) for s in ledger.stages()} == {
        ("wanda-2of4", 0, "wanda"), ("depth", 0, "prune_depth")}
    wanda = ledger.variant("wanda-2of4")
    assert wanda.status == "ok" and wanda.footprint.sparsity == pytest.approx(0.5)
    assert set(wanda.footprint.sparsity_per_layer.values()) == {0.5}
    assert "2:4 50% zeros (dense kernel, zeros not skipped)" in wanda.footprint.backend.describe()
    rows = {r["variant"]: r for r in pruning_rows(ledger)}
    assert rows["depth"]["ratio"] == "-1 of 4 layers" and rows["depth"]["params_vs_fp"] < 0.9
    assert all(r["accuracy_before_recovery"] is not None and r["tokens_per_s"] > 0 for r in rows.values())


def test_distill_batches_cut_long_prompts_not_completions(tiny_dir):
    """Too-long texts lose their start: the answer tokens (the only ones trained on) stay in the batch."""
    from compress.methods.distill import encode
    from evaluate.models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    side = tok.truncation_side
    pairs = [("x" * 200, "42"), ("short ", "7")]
    batch = encode(tok, pairs, seq_len=16, device="cpu")
    assert batch["input_ids"].shape[1] == 16
    assert batch["pred_mask"].sum().item() == 3  # "42" and "7": each predicted from the token before it
    kept = tok.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert kept == "42"
    assert tok.truncation_side == side  # the tokenizer is left as it was

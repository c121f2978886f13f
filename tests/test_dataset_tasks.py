"""Dataset tasks (GSM8K, GSM-Plus, MATH, MathQA, ARC, CommonsenseQA, OpenBookQA, HellaSwag) on the
fixtures in tests/fixtures/datasets (hub field layout), their parsing and scoring on real-looking
outputs, and log-likelihood multiple choice on a tiny random model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluate.api_model import APIModel
from evaluate.backends import HFBackend
from evaluate.harness import breakdown_by, build_prompt_set, summarize
from evaluate.parsing import NO_ANSWER, math_equal, parse_letter, parse_math, parse_number
from evaluate.prompts import PromptConfig
from evaluate.scoring import score_output
from evaluate.tasks import TASKS, load_builtin_tasks
from evaluate.tasks import sources as _hf
from evaluate.tasks.math_tasks import mathqa_options
from tests.conftest import parser_case_groups

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
DATASET_TASKS = {  # task -> fixture folder
    "gsm8k": "gsm8k", "gsm_plus": "gsm_plus", "gsm_plus_mini": "gsm_plus", "math": "math", "math500": "math500",
    "mathqa": "mathqa", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
    "commonsense_qa": "commonsense_qa", "openbookqa": "openbookqa", "hellaswag": "hellaswag",
}


def load(task: str, n: int = 100, seed: int = 0, split: str = "test", data_dir: Path | None = None):
    load_builtin_tasks()
    return TASKS[task].load(n=n, seed=seed, split=split, data_dir=str(data_dir or FIXTURES / DATASET_TASKS[task]))


def fixture_rows(folder: str, name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / folder / name).read_text().splitlines()]


def score(task: str, item, output: str):
    return score_output(TASKS[task], item, output)


# ------------------------------------------------------------------------------ loading fixtures


@pytest.mark.parametrize("task", sorted(DATASET_TASKS))
def test_every_task_loads_both_splits_from_data_dir(task):
    test, train = load(task), load(task, split="train")
    assert test and train
    assert len({it.id for it in test}) == len(test)
    spec = TASKS[task]
    # hub datasets; GSM8K and MATH-500 also ship their test split, so they run offline
    assert spec.offline == (spec.name in ("gsm8k", "math500")) and spec.family in ("math", "multiple_choice")
    for it in test:
        assert it.question.startswith("Question: ") and it.gold and it.target
        if spec.answer_type == "letter":
            assert it.gold in "ABCDEFGHIJ"[: len(it.choices)]
            for i, choice in enumerate(it.choices):
                assert f"\n{'ABCDEFGHIJ'[i]}. {choice}" in it.question


def test_gsm8k_fields_gold_and_worked_solution():
    items = {it.question: it for it in load("gsm8k")}
    jake = next(it for q, it in items.items() if "Jake" in q)
    assert jake.gold == "1080"  # '#### 1,080'
    assert "<<" not in jake.target and "\n" not in jake.target
    assert jake.target.endswith("The answer is 1080.")
    tank = next(it for q, it in items.items() if "tank" in q)
    assert tank.target.startswith("A day has 24 hours, so it leaks 2.5 * 24 = 60 liters.")


def test_gsm_plus_keeps_perturbation_and_none_gold():
    items = load("gsm_plus")
    rows = fixture_rows("gsm_plus", "test.jsonl")
    assert len(items) == len(rows) == 11
    by_q = {it.question: it for it in items}
    for row in rows:
        it = by_q["Question: " + row["question"]]
        assert it.meta["perturbation"] == row["perturbation_type"]
        assert it.meta["seed_question"] == row["seed_question"]
        assert it.gold == row["answer"].replace(",", "")
    assert sum(it.gold == NO_ANSWER for it in items) == 2
    assert [it.meta["perturbation"] for it in load("gsm_plus_mini")] == [
        "numerical substitution", "reversing operation", "critical thinking"]
    # GSM-Plus has no train split: exemplars come from GSM8K's layout
    shots = load("gsm_plus", split="train")
    assert all(it.meta == {} and it.target.endswith(f"The answer is {it.gold}.") for it in shots)


def test_math_gold_is_last_boxed_and_meta_levels():
    items = {it.meta["type"] + it.gold: it for it in load("math")}
    assert set(it.gold for it in items.values()) == {
        "\\frac{7}{8}", "120^\\circ", "6", "(5,1)", "5\\sqrt{2}", "\\dfrac{3}{28}", "\\text{Tuesday}"}
    assert all(it.meta["level"].startswith("Level ") for it in items.values())
    m500 = load("math500")
    assert [it.meta["level"] for it in m500] == ["Level 1", "Level 2", "Level 1", "Level 2"]  # int levels on the hub
    assert m500[0].meta["type"] == "Prealgebra"


def test_mathqa_options_letters_and_rationale():
    items = {it.question.split("\n")[0]: it for it in load("mathqa")}
    train = load("mathqa", split="train")
    assert all(len(it.choices) == 5 for it in list(items.values()) + train)
    shop = next(it for q, it in items.items() if "shopkeeper" in q)
    assert shop.choices == ("rs . 1 , 000", "rs . 960", "rs . 1 , 050", "rs . 980", "none of these")
    assert shop.gold == "A" and "\nA. rs . 1 , 000\nB. rs . 960" in shop.question
    coin = next(it for q, it in items.items() if "coin" in q)  # list-like options string
    assert coin.choices == ("1 / 2", "1 / 3", "2 / 3", "3 / 4", "1 / 4") and coin.gold == "D"
    train_item = next(it for it in load("mathqa", split="train") if it.question.startswith("Question: what is 15 %"))
    assert train_item.target == "15 / 100 * 240 = 36 . answer : b The answer is B."
    assert mathqa_options("a ) 2 ( a + b ) , b ) 3 , c ) 4") == ["2 ( a + b )", "3", "4"]


def test_arc_numeric_labels_become_letters():
    items = {it.meta["source_id"]: it for it in load("arc_easy")}
    balance = items["NYSEDREGENTS_2015_4_12"]
    assert balance.meta["labels"] == ["1", "2", "3", "4"]
    assert balance.gold == "B" and balance.choices[1] == "balance"
    assert balance.question.endswith("\nA. ruler\nB. balance\nC. thermometer\nD. graduated cylinder")
    assert len(items["MCAS_2004_5_9"].choices) == 3 and items["MCAS_2004_5_9"].gold == "B"
    assert len(items["Mercury_SC_401122"].choices) == 5 and items["Mercury_SC_401122"].gold == "C"
    challenge = {it.meta["source_id"]: it for it in load("arc_challenge")}
    assert challenge["NYSEDREGENTS_2008_8_15"].gold == "B"


def test_commonsense_openbook_hellaswag_fields():
    csqa = load("commonsense_qa")  # evaluation comes from validation.jsonl (hub test has no answers)
    assert {it.gold for it in csqa} == {"A", "B", "C"} and all(len(it.choices) == 5 for it in csqa)
    assert any(it.meta["concept"] == "revolving door" for it in csqa)
    obqa = {it.meta["source_id"]: it for it in load("openbookqa")}
    assert obqa["880"].question.startswith("Question: When a seed germinates") and obqa["880"].gold == "B"
    hs = {it.meta["source_id"]: it for it in load("hellaswag")}
    assert hs["24"].gold == "D" and "Roof shingle removal: A man is sitting on a roof. He" in hs["24"].question
    wikihow = hs["106"]  # [header]/[title]/[step] markup removed the way lm-eval does
    assert "[" not in wikihow.question and "How to clean a cast iron pan. Rinse the pan" in wikihow.question
    assert wikihow.gold == "A"
    assert wikihow.choices[0] == "Scrub off food with a stiff brush, then dry the pan completely."


def test_local_parquet_and_hub_shard_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_rows("arc_easy", "test.jsonl")
    (tmp_path / "ARC-Easy").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ARC-Easy" / "test-00000-of-00001.parquet")
    from_parquet = load("arc_easy", data_dir=tmp_path)
    from_jsonl = load("arc_easy")
    assert [(it.id, it.gold, it.choices) for it in from_parquet] == [(it.id, it.gold, it.choices) for it in from_jsonl]
    (tmp_path / "test.json").write_text(json.dumps(rows[:2]))  # a top-level .json list wins over shards
    assert len(load("arc_easy", data_dir=tmp_path)) == 2


# ------------------------------------------------------------------------- errors and determinism


def test_missing_field_and_missing_file_errors_name_the_fix(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(_hf.DatasetUnavailable, match=r"lacks field\(s\) \['answer'\]"):
        load("gsm8k", data_dir=tmp_path)
    with pytest.raises(_hf.DatasetUnavailable, match=r"no file for split 'validation'.*validation\.jsonl"):
        load("hellaswag", data_dir=tmp_path)
    with pytest.raises(_hf.DatasetUnavailable, match="not a directory"):
        load("gsm8k", data_dir=tmp_path / "nope")


def test_no_network_and_no_data_dir_names_data_dir_and_file(monkeypatch):
    def offline(*_args, **_kwargs):
        raise ConnectionError("Couldn't reach 'qintongli/GSM-Plus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(_hf, "_hub_rows", offline)
    load_builtin_tasks()
    with pytest.raises(_hf.DatasetUnavailable) as err:
        TASKS["gsm_plus"].load(n=5, seed=0, split="test", data_dir=None)
    msg = str(err.value)
    assert "qintongli/GSM-Plus" in msg and "data_dir" in msg and "test.jsonl" in msg
    assert "['question', 'solution', 'answer', 'perturbation_type', 'seed_question']" in msg
    with pytest.raises(_hf.DatasetUnavailable, match=r"validation\.jsonl"):
        TASKS["hellaswag"].load(n=5, seed=0, split="test", data_dir=None)


def test_packaged_gsm8k_and_math500_load_with_no_network_and_no_data_dir(monkeypatch):
    """GSM8K test/train and MATH-500 test ship with slimlab: the hub is never asked for them."""
    def offline(*_args, **_kwargs):
        raise AssertionError("the hub must not be asked for a packaged split")

    monkeypatch.setattr(_hf, "_hub_rows", offline)
    load_builtin_tasks()
    test = TASKS["gsm8k"].load(n=5000, seed=0, split="test", data_dir=None)
    assert len(test) == 1319 and all(it.question.startswith("Question: ") for it in test)
    assert test[0].gold == "18" and test[0].target.endswith("The answer is 18.")  # Janet's ducks, #### 18
    assert len(TASKS["gsm8k"].load(n=10**5, seed=0, split="train", data_dir=None)) > 7400
    math500 = TASKS["math500"].load(n=1000, seed=0, split="test", data_dir=None)
    assert len(math500) == 500 and {it.meta["level"] for it in math500} == {f"Level {i}" for i in range(1, 6)}
    assert "packaged copy evaluate/data/gsm8k/test.jsonl" in _hf.data_origin(TASKS["gsm8k"].dataset, "test")
    assert _hf.data_origin(TASKS["gsm8k"].dataset, "test", "/d") == "data_dir /d"


def test_real_datasets_call_offline_gives_the_same_message():
    """The real hub path (datasets.load_dataset), with the hub switched off so it fails fast."""
    code = ("from evaluate.tasks import TASKS, load_builtin_tasks\nload_builtin_tasks()\n"
            "try:\n    TASKS['arc_easy'].load(n=2, seed=0)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("DatasetUnavailable arc_easy: could not load allenai/ai2_arc (config ARC-Easy)")
    assert "set data_dir" in out and "test.jsonl" in out


def test_seeded_subsample_is_deterministic_and_nested():
    a, b = load("gsm_plus", n=5, seed=3), load("gsm_plus", n=5, seed=3)
    assert [it.id for it in a] == [it.id for it in b] and len(a) == 5
    assert [it.id for it in load("gsm_plus", n=5, seed=4)] != [it.id for it in a]
    small, large = load("gsm_plus", n=3, seed=3), load("gsm_plus", n=8, seed=3)
    assert {it.id for it in small} <= {it.id for it in large}
    order = [it.id for it in load("gsm_plus")]  # subsamples keep dataset order
    assert [i for i in order if i in {it.id for it in a}] == [it.id for it in a]
    assert len(load("gsm_plus", n=1000)) == 11  # n above the data: every row


def test_k_shot_exemplars_never_overlap_evaluation_items(tmp_path):
    for seed in range(5):
        pset = build_prompt_set("gsm8k", "gsm8k", 4, seed, PromptConfig("cot", k_shot=3),
                                data_dir=str(FIXTURES / "gsm8k"))
        assert len(pset.exemplar_ids) == 3 and not set(pset.exemplar_ids) & {it.id for it in pset.items}
        assert pset.prompts[0].count("The answer is") == 3 and pset.prompts[0].endswith("\nAnswer:")
    # a train file that (wrongly) contains every test question: those rows are never shots
    shutil.copy(FIXTURES / "gsm8k" / "test.jsonl", tmp_path / "test.jsonl")
    leaky = (FIXTURES / "gsm8k" / "test.jsonl").read_text() + (FIXTURES / "gsm8k" / "train.jsonl").read_text()
    (tmp_path / "train.jsonl").write_text(leaky)
    test_questions = {it.question for it in load("gsm8k", data_dir=tmp_path)}
    for seed in range(5):
        pset = build_prompt_set("gsm8k", "gsm8k", 6, seed, PromptConfig("direct", k_shot=4), data_dir=str(tmp_path))
        shots = pset.prompts[0].split("\n\n")[:-1]
        assert len(shots) == 4 and not any(s.split("\nAnswer:")[0] in test_questions for s in shots)


def test_recipe_validation_checks_data_dir(tmp_path, config_only_model):
    from compress.recipe import RecipeError, load_recipe

    (tmp_path / "only-test").mkdir()
    shutil.copy(FIXTURES / "gsm8k" / "test.jsonl", tmp_path / "only-test" / "test.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {config_only_model}}}\ntasks:\n"
                      f"  - {{name: arc_easy, data_dir: {tmp_path / 'missing'}}}\n"
                      f"  - {{name: gsm8k, k_shot: 2, data_dir: {tmp_path / 'only-test'}}}\n"
                      f"  - {{name: hellaswag, data_dir: {FIXTURES / 'hellaswag'}}}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    text = str(err.value)
    assert "tasks[0].data_dir" in text and "not a directory" in text
    assert "tasks[1].data_dir" in text and "train.jsonl" in text and "k_shot: 0" in text
    assert "tasks[2]" not in text


def test_compress_tasks_lists_every_task():
    from click.testing import CliRunner

    from compress.cli import main

    out = CliRunner().invoke(main, ["tasks"]).output
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(DATASET_TASKS) | {"synth_arith", "synth_mc", "sort8_mixed"} <= listed
    assert all(name in listed for name in load_builtin_tasks())


# ------------------------------------------------------------------ parsing on real-looking outputs


def _item(task: str, needle: str):
    return next(it for it in load(task) if needle in it.question)


@pytest.mark.parametrize(
    ("output", "correct", "rule", "followed"),
    [
        (" Jake earns 15 * 38 = $570 a week. In 4 weeks he earns 570 * 4 = $2,280. After paying $1,200 rent he has "
         "2280 - 1200 = $1,080 left. The answer is $1,080.", True, "answer_is", True),
        (" 15 * 38 = 570. 570 * 4 = 2280. 2280 - 1200 = 1080.\n#### 1080", True, "hashes", True),
        (" 1080.0", True, "bare", True),
        # rambles into a new exemplar with its own answer: the continuation is cut off
        (" 570 * 4 = 2280 and 2280 - 1200 = 1080. The answer is 1080.\nQuestion: Tom has 3 cats. The answer is 3.",
         True, "answer_is", True),
        # repeats the question, then several numbers: only a guess, flagged as not following the format
        (" Question: Jake earns $15 an hour and works 38 hours a week. His rent is $1,200 a month. 15, 38, 1200",
         False, "last_number", False),
        (" He has 2280 - 1200 = 1080 dollars", True, "last_number", False),
        (" The answer is 2280. He then pays rent.", False, "answer_is", True),
    ],
)
def test_gsm8k_scoring_on_real_looking_outputs(output, correct, rule, followed):
    s = score("gsm8k", _item("gsm8k", "Jake"), output)
    assert (s.correct, s.rule, s.followed) == (correct, rule, followed)


@pytest.mark.parametrize(
    ("needle", "output", "correct"),
    [
        ("some muffins. She sells 18 of them and gives 2 to her neighbour. How many muffins does she have left",
         " We don't know how many muffins Maria baked.\n#### None", True),
        ("some muffins. She sells 18 of them and gives 2 to her neighbour. How many muffins does she have left",
         " The problem does not say how many muffins she baked, so it cannot be determined.", True),
        ("some muffins. She sells 18 of them and gives 2 to her neighbour. How many muffins does she have left",
         " 24 - 18 - 2 = 4. The answer is 4.", False),
        ("2.5 muffins' worth", " 24 * 3/4 = 18. 24 - 18 - 2.5 = 3.5. The answer is 3.50.", True),
        ("1,500 cows", " 1,500 * 8 = 12,000 liters a day, 12,000 * 7 = 84,000. The answer is 84,000 liters.", True),
        ("1,500 cows", " The answer is None.", False),
    ],
)
def test_gsm_plus_scoring_including_critical_thinking(needle, output, correct):
    assert score("gsm_plus", _item("gsm_plus", needle), output).correct is correct


def test_gsm_plus_breakdown_by_perturbation():
    items = load("gsm_plus")
    right = {"numerical substitution", "digit expansion", "critical thinking"}  # answered right; others wrong
    samples = []
    for it in items:
        output = (f" The answer is {it.gold}." if it.meta["perturbation"] in right else " The answer is 99999.")
        samples.append({"id": it.id, "repeat": 0, "meta": it.meta, **score("gsm_plus", it, output).as_dict()})
    metrics = summarize(samples, 1, TASKS["gsm_plus"].breakdown)
    assert metrics.accuracy == pytest.approx(100 * 5 / 11)
    assert metrics.breakdowns["perturbation"] == {
        "adding operation": 0.0, "critical thinking": 100.0, "digit expansion": 100.0, "distraction insertion": 0.0,
        "integer-decimal-fraction conversion": 0.0, "numerical substitution": 100.0, "problem understanding": 0.0,
        "reversing operation": 0.0}
    counts = metrics.breakdown_counts["perturbation"]
    assert counts["critical thinking"] == 2 and sum(counts.values()) == 11
    assert "perturbation" not in summarize(samples, 1).breakdowns  # only tasks that ask for it


def test_breakdown_explodes_list_values_and_skips_missing():
    samples = [{"score": 1.0, "meta": {"cat": ["a", "b"]}}, {"score": 0.0, "meta": {"cat": "a"}},
               {"score": 1.0, "meta": {}}]
    assert breakdown_by(samples, "cat") == ({"a": 50.0, "b": 100.0}, {"a": 2, "b": 1})


@pytest.mark.parametrize(
    ("needle", "output", "correct", "rule"),
    [
        ("\\frac{3}{4} + \\frac{1}{8}", " We get $\\frac{6}{8}+\\frac{1}{8} = \\boxed{\\dfrac{7}{8}}$.", True, "boxed"),
        ("\\frac{3}{4} + \\frac{1}{8}", " The answer is $0.875$.", True, "answer_is"),
        ("\\frac{3}{4} + \\frac{1}{8}", " $\\frac{3}{4}+\\frac{1}{8}=\\frac{4}{12}$, so \\boxed{\\frac{1}{3}}",
         False, "boxed"),
        ("regular hexagon", " Each angle is $720/6 = 120$ degrees, so the answer is $\\boxed{120^{\\circ}}$.",
         True, "boxed"),
        ("regular hexagon", " \\boxed{120 \\text{ degrees}}", True, "boxed"),
        ("midpoint", " The midpoint is $\\left( 5, 1 \\right)$. The final answer is $(5, 1)$.", True, "answer_is"),
        ("Simplify", " $\\sqrt{50}=\\boxed{5\\sqrt2}$", True, "boxed"),
        ("probability", " \\boxed{\\frac{3}{28}}", True, "boxed"),
        ("100 days", " 100 = 14 * 7 + 2, so it is \\boxed{\\text{Tuesday}}.", True, "boxed"),
        ("Solve for", " 2x = 12, x = 6", True, "last_number"),
    ],
)
def test_math_scoring_on_latex_outputs(needle, output, correct, rule):
    s = score("math", _item("math", needle), output)
    assert (s.correct, s.rule) == (correct, rule)


def test_math_equal_normalisation():
    assert math_equal("\\dfrac{1}{2}", "0.5") and math_equal("\\frac12", "\\frac{1}{2}")
    assert math_equal("\\$18.50", "18.5") and math_equal("x = 5", "5") and math_equal("25\\%", "25")
    assert math_equal("1,000", "1000") and math_equal("-\\frac{1}{3}", "-1/3")
    assert not math_equal("\\frac{1}{2}", "\\frac{1}{3}") and not math_equal(None, "1")
    assert math_equal("10\\text{cm}", "10") and math_equal("5 cm^2", "5") and not math_equal("3x", "3")
    assert parse_math("So x^2+1 is it. The answer is $x^2+1$.").answer == "x^2+1"


@pytest.mark.parametrize(("task", "needle"), [("mathqa", "train 120 m long"), ("arc_easy", "mass of a rock")])
def test_letter_golden_cases_score_against_their_fixture_item(task, needle):
    """The golden letter cases of tests/fixtures/parser_cases.yaml name this fixture item's options and gold: the
    task's own scoring reads each the same way, and marks it correct exactly when it reads the gold."""
    it, group = _item(task, needle), parser_case_groups()[task]
    assert tuple(group["choices"]) == it.choices and len(group["cases"]) >= 6
    for output, answer, rule, followed in group["cases"]:
        s = score(task, it, output)
        assert (s.parsed, s.rule, s.followed, s.correct) == (answer, rule, followed, answer == it.gold), output


def test_hellaswag_output_that_writes_the_ending():
    it = _item("hellaswag", "Roof shingle removal")
    parsed = parse_letter(" starts pulling up roofing on a roof.", it.choices)
    assert (parsed.answer, parsed.rule) == ("D", "choice_text")
    assert parse_letter(" E", it.choices).answer is None  # only 4 endings: E is no option... and no letter


def test_number_parse_keeps_old_behaviour_for_plain_outputs():
    assert parse_number("The answer is 14.").answer == "14"
    assert parse_number("#### 1,234").answer == "1234"


# ------------------------------------------------------------------------ log-likelihood scoring


@pytest.fixture(scope="module")
def tiny_lm():
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on the spot (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    files = [p for folder in ("arc_easy", "hellaswag", "mathqa") for p in sorted((FIXTURES / folder).glob("*.jsonl"))]
    corpus = [line for path in files for line in path.read_text().splitlines()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=fast.pad_token_id, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval(), fast


def _direct(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log-probability computed the plain way: one unpadded sequence, full logits."""
    from evaluate.loglikelihood import encode_pair

    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_continuation_logprobs_match_direct_computation(tiny_lm):
    from evaluate.loglikelihood import continuation_logprobs

    model, tok = tiny_lm
    pairs = [("Question: Which organ pumps blood?\nAnswer:", " heart"),
             ("Question: What do magnets attract?\nA. wood\nB. iron\nAnswer:", " iron"),
             ("Q:", " a much longer continuation with several tokens in it"),
             ("Question: Which organ pumps blood?\nAnswer:", " B"),
             ("Short ", "answer")]  # the trailing space moves into the continuation
    got = continuation_logprobs(model, tok, pairs, batch_size=3)  # mixed lengths share padded batches
    for (ctx, cont), (value, n_tokens) in zip(pairs, got, strict=True):
        assert n_tokens >= 1
        assert value == pytest.approx(_direct(model, tok, ctx, cont), abs=1e-4)


def test_loglik_picks_the_most_probable_choice(tiny_lm):
    from evaluate.loglikelihood import encode_pair, score_choices

    model, tok = tiny_lm
    items = load("arc_easy")
    prompts = [it.question + "\nAnswer:" for it in items]
    records = score_choices(HFBackend(model, tok), prompts, items, batch_size=4)
    for it, prompt, rec in zip(items, prompts, records, strict=True):
        direct = [_direct(model, tok, prompt, " " + c) for c in it.choices]
        assert rec["logprob"] == pytest.approx(direct, abs=1e-4)
        assert rec["pick"] == "ABCDE"[max(range(len(direct)), key=direct.__getitem__)]
        norm = [d / len((" " + c).encode()) for d, c in zip(direct, it.choices, strict=True)]
        assert rec["pick_norm"] == "ABCDE"[max(range(len(norm)), key=norm.__getitem__)]
    # a case with a known answer: push up the logits of the tokens only option C ("wind") uses
    item, prompt = items[0], prompts[0]
    token_sets = [set(encode_pair(tok, prompt, " " + c)[1]) for c in item.choices]
    favoured = sorted(token_sets[2] - set().union(*(s for i, s in enumerate(token_sets) if i != 2)))
    letter_b = encode_pair(tok, prompt, " B")[1][-1]  # the letter's own token (a space token may precede it)
    assert favoured and all(letter_b not in s for s in token_sets)

    def boost(_module, _inputs, output):
        output = output.clone()
        output[..., favoured] += 30.0
        output[..., letter_b] += 30.0
        return output

    handle = model.lm_head.register_forward_hook(boost)
    try:
        rec = score_choices(HFBackend(model, tok), [prompt], [item])[0]
    finally:
        handle.remove()
    assert rec["pick"] == "C" and rec["pick_letter"] == "B"
    assert sorted(rec["letter_logprob"])[-1] - sorted(rec["letter_logprob"])[-2] > 20.0


def test_apply_loglik_fills_samples_and_metrics(tiny_lm):
    from evaluate.loglikelihood import apply_loglik

    model, tok = tiny_lm
    pset = build_prompt_set("arc_easy", "arc_easy", 5, 0, PromptConfig(), data_dir=str(FIXTURES / "arc_easy"))
    samples = [{"id": it.id, "repeat": r, "parsed": "B"} for r in range(2) for it in pset.items]
    metrics = apply_loglik(HFBackend(model, tok), pset, samples, batch_size=8)
    picks = [s["loglik_choice"]["pick"] for s in samples[:5]]
    golds = [it.gold for it in pset.items]
    assert metrics["accuracy_loglik"] == pytest.approx(100 * sum(p == g for p, g in zip(picks, golds, strict=True)) / 5)
    assert metrics["loglik_agreement"] == pytest.approx(100 * picks.count("B") / 5)
    assert {"accuracy_loglik_norm", "accuracy_loglik_letter"} <= set(metrics)
    assert samples[0]["loglik_choice"] is samples[5]["loglik_choice"]  # same item, every repeat
    gsm = build_prompt_set("gsm8k", "gsm8k", 2, 0, PromptConfig(), data_dir=str(FIXTURES / "gsm8k"))
    assert apply_loglik(HFBackend(model, tok), gsm, [], 8) == {}  # not multiple choice
    no_logprobs = APIModel("api", None)  # a chat API scores no given continuation
    assert apply_loglik(no_logprobs, pset, samples, 8) == {}


@pytest.mark.slow
def test_study_records_loglik_and_perturbation_breakdown(tiny_lm, tmp_path):
    """End to end through compress.runner.Study: a saved tiny model, an MC task and GSM-Plus."""
    from compress.recipe import load_recipe
    from compress.runner import Study

    model, tok = tiny_lm
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"""
model: {{name: {model_dir}}}
tasks:
  - {{name: arc_easy, n: 5, data_dir: {FIXTURES / 'arc_easy'}}}
  - {{name: gsm_plus, n: 11, max_new_tokens: 6, data_dir: {FIXTURES / 'gsm_plus'}}}
decoding: {{batch_size: 8}}
profile: {{enabled: false}}
output: {tmp_path / 'out'}
""")
    study = Study(load_recipe(recipe_path), tmp_path / "out")
    study.run()
    cells = {c.cell: c.metrics for c in study.ledger.cells()}
    arc, plus = cells["arc_easy"], cells["gsm_plus"]
    assert None not in (arc.accuracy, arc.accuracy_loglik, arc.accuracy_loglik_norm, arc.accuracy_loglik_letter)
    assert plus.accuracy_loglik is None
    assert sum(plus.breakdown_counts["perturbation"].values()) == 11 and len(plus.breakdowns["perturbation"]) == 8
    sample_file = tmp_path / "out" / "samples" / "baseline" / "arc_easy.jsonl"
    samples = [json.loads(x) for x in sample_file.read_text().splitlines()]
    assert len(samples) == 5 and all(len(s["loglik_choice"]["logprob"]) == len(s["loglik_choice"]["logprob_norm"])
                                     for s in samples)
    assert "baseline/arc_easy" in study.computed
    again = Study(load_recipe(recipe_path), tmp_path / "out")
    again.run()  # resume: no cell recomputed
    assert not [c for c in again.computed if c.startswith("baseline/")]

from __future__ import annotations

from pathlib import Path

import pytest

from compress.recipe import RecipeError, load_recipe
from tests.conftest import write_recipe

GOOD = """\
model:
  name: {model}
variants:
  - name: int8
    steps:
      - method: bnb_int8
        threshold: 6.0
tasks:
  - name: sort8_positive
    n: 5
"""


def errors_of(tmp_path: Path, text: str) -> list:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    return info.value.issues


def test_good_recipe_gets_defaults(tmp_path, config_only_model):
    recipe = load_recipe(write_recipe(tmp_path, GOOD.format(model=config_only_model)))
    assert [s.written() for s in recipe.variants[0].steps] == [{"method": "bnb_int8", "threshold": 6.0}]
    assert recipe.tasks[0].prompt_style == "direct"
    assert recipe.output == "runs/recipe"
    assert recipe.decoding.do_sample is False


def test_unknown_method_names_line_value_and_suggestion(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace("bnb_int8", "bnb_int9")
    (issue,) = errors_of(tmp_path, text)
    assert issue.loc == ("variants", 0, "steps", 0, "method")
    assert issue.value == "bnb_int9"
    assert issue.line == 6
    rendered = issue.render("r.yaml")
    assert rendered.startswith("r.yaml:6: variants[0].steps[0].method = 'bnb_int9'")
    assert "did you mean 'bnb_int8'" in rendered


def test_bad_param_value_and_unknown_param(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace("threshold: 6.0", "threshold: -1\n        tresh: 2")
    issues = errors_of(tmp_path, text)
    by_field = {i.loc[-1]: i for i in issues}
    assert by_field["threshold"].value == -1 and "greater than or equal to 0" in by_field["threshold"].message
    assert by_field["tresh"].line == 8 and "unknown field" in by_field["tresh"].message


def test_group_size_must_divide_layers_of_this_model(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace(
        "method: bnb_int8\n        threshold: 6.0", "method: rtn\n        bits: 4\n        group_size: 128")
    (issue,) = errors_of(tmp_path, text)
    assert issue.loc[-1] == "group_size" and issue.value == 128
    assert "does not divide" in issue.message and "[32, 64, -1]" in issue.message


def test_group_size_not_power_of_two(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace(
        "method: bnb_int8\n        threshold: 6.0", "method: rtn\n        group_size: 100")
    (issue,) = errors_of(tmp_path, text)
    assert "power of two" in issue.message


def test_unknown_task_and_style(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace("name: sort8_positive\n    n: 5",
                                                        "name: sort8_positve\n    prompt_style: verbose")
    issues = errors_of(tmp_path, text)
    assert any(i.loc == ("tasks", 0, "prompt_style") and i.value == "verbose" for i in issues)
    # the structural error is reported first; the task name is checked once the structure is right
    text = GOOD.format(model=config_only_model).replace("sort8_positive", "sort8_positve")
    (issue,) = errors_of(tmp_path, text)
    assert issue.loc == ("tasks", 0, "name") and "did you mean 'sort8_positive'" in issue.message


def test_missing_model_and_bad_hub_id(tmp_path):
    (issue,) = errors_of(tmp_path, GOOD.format(model="./no/such/dir"))
    assert issue.loc == ("model", "name") and "neither an embedded model" in issue.message
    (issue,) = errors_of(tmp_path, GOOD.format(model="embedded:huge"))
    assert "embedded:tiny-reasoner" in issue.message


def test_duplicate_variant_and_reserved_name(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model) + "  - name: sort8_positive\n"
    text = text.replace("variants:\n", "variants:\n  - name: baseline\n    steps: [{method: bnb_int8}]\n")
    issues = errors_of(tmp_path, text)
    assert any(i.loc == ("variants", 0, "name") and "always evaluated" in i.message for i in issues)


def test_step_after_finalizing_format(tmp_path, config_only_model):
    text = GOOD.format(model=config_only_model).replace(
        "threshold: 6.0", "threshold: 6.0\n      - method: rtn\n        group_size: 64")
    (issue,) = errors_of(tmp_path, text)
    assert issue.loc == ("variants", 0, "steps", 1, "method") and "put 'rtn' before it" in issue.message


def test_invalid_yaml_reports_line(tmp_path):
    (issue,) = errors_of(tmp_path, "model:\n  name: [unclosed\ntasks: []\n")
    assert issue.line is not None and "not valid YAML" in issue.message


def test_cli_validate_exit_code_and_message(tmp_path, config_only_model):
    from click.testing import CliRunner

    from compress.cli import main

    path = write_recipe(tmp_path, GOOD.format(model=config_only_model).replace("n: 5", "n: 0"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "tasks[0].n = 0" in result.output and "greater than or equal to 1" in result.output


def test_console_entry_keeps_exit_codes_output_and_exit_handlers(tmp_path, config_only_model):
    """The `compress` executable skips the interpreter's teardown: exit codes, piped output and atexit
    handlers must survive that."""
    import subprocess
    import sys

    entry = ("import atexit; atexit.register(lambda: print('exit handler ran', flush=True)); "
             "from compress.cli import console_main; console_main()")
    bad = write_recipe(tmp_path, GOOD.format(model=config_only_model).replace("n: 5", "n: 0"))
    failed = subprocess.run([sys.executable, "-c", entry, "validate", str(bad)], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "tasks[0].n = 0" in failed.stderr
    assert "exit handler ran" in failed.stdout
    listed = subprocess.run([sys.executable, "-c", entry, "tasks"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "sort16_mixed" in listed.stdout and "gsm8k" in listed.stdout
    assert listed.stdout.rstrip().endswith("exit handler ran")


# ------------------------------------------------------------------------------- hostile input
# Every case of the recipe-fuzzing issue: a clean error naming the line, the field, the value and the fix,
# fast, never a traceback or a hang (tests/test_recipe_fuzz.py runs the seeded generator).

BASE = GOOD.format(model="embedded:tiny-reasoner")


def rejected(tmp_path: Path, data: str | bytes, limit_s: float = 2.0) -> list:
    import time

    path = tmp_path / "recipe.yaml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert time.perf_counter() - t0 < limit_s
    for issue in info.value.issues:
        assert len(issue.render("recipe.yaml")) < 2000
    return info.value.issues


def bomb(levels: int = 9) -> str:
    chain = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    chain += [f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, levels + 1)]
    return "[" + ", ".join(chain) + "]"


@pytest.mark.parametrize("where", ["top", "unknown_key", "step_param", "seed"])
def test_alias_bombs_are_refused_wherever_they_sit(tmp_path, where):
    text = {"top": BASE + f"lol: {bomb()}\n",
            "unknown_key": BASE + f"decoding: {{batch_size: 4, lol: {bomb()}}}\n",
            "step_param": BASE.replace("threshold: 6.0", f"threshold: {bomb()}"),
            "seed": f"defs: {bomb()}\nseed: *a9\n" + BASE}[where]
    (issue,) = rejected(tmp_path, text)
    assert "aliases expand to more than 10,000 values" in issue.message and "write the values out" in issue.message
    assert issue.line is not None


def test_recursive_alias_and_deep_nesting(tmp_path):
    (issue,) = rejected(tmp_path, BASE.replace("threshold: 6.0", "threshold: &r [*r]"))
    assert issue.loc == ("variants", 0, "steps", 0, "threshold", 0) and "recursive" in issue.message
    block = "".join(" " * i + f"k{i}:\n" for i in range(1000)) + " " * 1000 + "v: 1\n"
    (issue,) = rejected(tmp_path, BASE + block)
    assert "nested more than 32 levels deep" in issue.message and issue.line == 43 and len(issue.loc) == 32


def test_duplicate_keys_name_both_lines(tmp_path):
    (issue,) = rejected(tmp_path, BASE + "seed: 3\ndecoding: {batch_size: 4}\nseed: 4\n")
    assert issue.loc == ("seed",) and issue.line == 13
    assert "duplicate key 'seed' (first at line 11, again at line 13)" in issue.message
    (issue,) = rejected(tmp_path, BASE + "tasks: [{name: synth_mc}]\n")
    assert issue.render("r.yaml").startswith("r.yaml:11: tasks: duplicate key 'tasks' (first at line 8")


def test_files_that_are_not_utf8_or_too_large(tmp_path):
    (issue,) = rejected(tmp_path, BASE.encode("utf-16"))
    assert "UTF-16" in issue.message and "save the file as UTF-8" in issue.message
    (issue,) = rejected(tmp_path, (BASE + "# café\n").encode("latin-1"))
    assert issue.line == 11 and "byte 0xe9 at line 11, column 6" in issue.message and "Latin-1" in issue.message
    (issue,) = rejected(tmp_path, bytes(range(256)) * 4)
    assert "binary" in issue.message
    (issue,) = rejected(tmp_path, BASE + "# " + "x" * 10_000_000 + "\n")
    assert "(10.0 MB); a recipe is at most 1,000,000 bytes" in issue.message
    load_recipe(write_recipe(tmp_path, "\ufeff" + BASE.replace("\n", "\r\n")), check_model=False)  # BOM, CRLF: fine
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe(tmp_path)


def test_numbers_and_booleans_are_not_coerced(tmp_path):
    (issue,) = rejected(tmp_path, BASE.replace("n: 5", 'n: "20"'))
    assert issue.render("r.yaml") == ("r.yaml:10: tasks[0].n = '20': a number is expected, not text; "
                                      "write 20 without quotes")
    (issue,) = rejected(tmp_path, BASE.replace("n: 5", "n: true"))
    assert issue.value is True and "not true/false; write a whole number" in issue.message
    (issue,) = rejected(tmp_path, BASE.replace("threshold: 6.0", 'threshold: "6.0"'))
    assert issue.loc[-1] == "threshold" and "without quotes" in issue.message
    (issue,) = rejected(tmp_path, BASE.replace("n: 5", "n: 100000000"))
    assert "less than or equal to 100000" in issue.message and "lower n" in issue.message
    (issue,) = rejected(tmp_path, BASE + "decoding: {temperature: .nan}\n")
    assert issue.loc == ("decoding", "temperature") and "not a finite number" in issue.message
    recipe = load_recipe(write_recipe(tmp_path, BASE.replace("threshold: 6.0", "threshold: 6")))
    assert recipe.variants[0].steps[0].threshold == 6  # an int where a float is meant is fine


def test_names_must_be_short_safe_strings(tmp_path):
    (issue,) = rejected(tmp_path, BASE.replace("name: int8", "name: [a, b]"))
    assert issue.loc == ("variants", 0, "name") and "text is expected, not a list" in issue.message
    (issue,) = rejected(tmp_path, BASE.replace("method: bnb_int8", "method: {a: 1}"))
    assert issue.loc[-1] == "method" and "a method name (text) is expected, not a mapping" in issue.message
    (issue,) = rejected(tmp_path, BASE.replace("name: int8", "name: " + "v" * 300))
    rendered = issue.render("r.yaml")
    assert f"= '{'v' * 60}'… (300 characters): 300 characters; at most 100" in rendered
    (issue,) = rejected(tmp_path, BASE.replace("name: int8", "name: a/b"))
    assert "use only letters, digits, '_', '.' and '-'" in issue.message
    long = "n" * 100_000
    text = BASE.replace("name: int8", f"name: &long {long}").replace("n: 5", "n: 5\n    label: *long")
    text = text.replace("tasks:", "".join("  - {name: *long, steps: [{method: rtn}]}\n" for _ in range(8)) + "tasks:")
    issues = rejected(tmp_path, text)
    assert len(issues) == 10 and len(str(RecipeError(issues, "r.yaml"))) < 3000


def test_list_lengths_are_bounded(tmp_path):
    many = "".join(f"  - {{name: v{i}, steps: [{{method: rtn}}]}}\n" for i in range(1001))
    (issue,) = rejected(tmp_path, BASE.replace("variants:\n", "variants:\n" + many))
    assert issue.loc == ("variants",) and "1002 entries; at most 1000" in issue.message
    assert "(a list of 1002 items)" in issue.render("r.yaml")
    steps = "[" + ", ".join(["{method: rtn}"] * 33) + "]"
    (issue,) = rejected(tmp_path, BASE.replace("variants:\n", f"variants:\n  - {{name: v2, steps: {steps}}}\n"))
    assert issue.loc == ("variants", 0, "steps") and "33 entries; at most 32" in issue.message


def test_section_left_empty_by_bad_indentation(tmp_path):
    issues = rejected(tmp_path, BASE + "judge:\nbase_url: http://127.0.0.1:9/v1\n")
    assert issues[0].loc == ("judge",) and issues[0].line == 11
    assert "nothing is indented under 'judge:'; indent its fields under it" in issues[0].message
    assert issues[1].loc == ("base_url",) and "unknown field" in issues[1].message


def test_cuda_requested_on_a_machine_without_it(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (issue,) = rejected(tmp_path, BASE.replace("name: embedded:tiny-reasoner", "name: embedded:tiny-reasoner\n"
                                                                                "  device: cuda"))
    assert issue.loc == ("model", "device") and issue.value == "cuda" and "use device: cpu" in issue.message


def test_calibration_source_must_exist(tmp_path):
    (issue,) = rejected(tmp_path, BASE + "calibration: {source: ./missing.jsonl}\n")
    assert issue.loc == ("calibration", "source") and issue.line == 11 and "no such file" in issue.message
    (issue,) = rejected(tmp_path, BASE + "calibration: {source: wikitext}\n")
    assert "did you mean 'wikitext2'" in issue.message
    (tmp_path / "calib.txt").write_text("some text\n\nmore text\n")
    load_recipe(write_recipe(tmp_path, BASE + f"calibration: {{source: {tmp_path / 'calib.txt'}}}\n"))


def test_output_must_be_a_usable_directory(tmp_path):
    (tmp_path / "afile").write_text("x")
    (issue,) = rejected(tmp_path, BASE + f"output: {tmp_path / 'afile'}\n")
    assert issue.loc == ("output",) and "is a file, not a directory" in issue.message
    (issue,) = rejected(tmp_path, BASE + f"output: {tmp_path / 'afile' / 'runs'}\n")
    assert "is a file, so" in issue.message and "cannot be created under it" in issue.message
    (issue,) = rejected(tmp_path, BASE + 'output: "runs/a\\0b"\n')
    assert "NUL" in issue.message
    (issue,) = rejected(tmp_path, BASE + "output: runs/" + "o" * 300 + "\n")
    assert "component of 300 bytes" in issue.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "recipe.yaml"]  # nothing created


def test_relative_model_path_that_does_not_exist_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for ref in ("./models/x", "models/x", "../nope/x"):
        (issue,) = rejected(tmp_path, GOOD.format(model=ref))
        assert issue.loc == ("model", "name") and f"'{ref}': no such directory" in issue.message


def test_hub_id_is_checked_offline_within_two_seconds(tmp_path, monkeypatch):
    import socket
    import time

    from evaluate import model_checks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (issue,) = rejected(tmp_path, GOOD.format(model="some-org/no-such-model"))
    assert "not in the local cache" in issue.message and "HF_HUB_OFFLINE is set" in issue.message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(model_checks, "_HUB_PROBE", {})
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))  # a network that never answers
    (issue,) = rejected(tmp_path, GOOD.format(model="some-org/no-such-model"))
    assert "no answer from" in issue.message and "set HF_HUB_OFFLINE=1" in issue.message


def tiny_checkpoint(path: Path, damage: str = "") -> Path:
    import json

    from tests.recipe_fuzz import TINY_CONFIG, TINY_WEIGHTS, _safetensors

    path.mkdir(parents=True, exist_ok=True)
    config = dict(TINY_CONFIG)
    if damage == "remote_code":
        config.update(model_type="mystery", auto_map={"AutoModelForCausalLM": "modeling_mystery.Mystery"})
    (path / "config.json").write_text(json.dumps(config))
    weights = _safetensors(TINY_WEIGHTS)
    (path / "model.safetensors").write_bytes({"truncated": weights[:1000], "empty": b""}.get(damage, weights))
    return path


def test_checkpoint_files_are_checked_at_validation(tmp_path):
    ok = tiny_checkpoint(tmp_path / "ok")
    load_recipe(write_recipe(tmp_path, GOOD.format(model=ok)))
    (issue,) = rejected(tmp_path, GOOD.format(model=tiny_checkpoint(tmp_path / "cut", "truncated")))
    assert issue.loc == ("model", "name") and "model.safetensors is truncated: its header describes" in issue.message
    assert "re-download or re-save it" in issue.message
    (issue,) = rejected(tmp_path, GOOD.format(model=tiny_checkpoint(tmp_path / "empty", "empty")))
    assert "model.safetensors is empty (0 bytes)" in issue.message
    index = tmp_path / "ok" / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}')
    (issue,) = rejected(tmp_path, GOOD.format(model=ok))
    assert "lists model-00002-of-00002.safetensors, which is missing" in issue.message


def test_remote_code_needs_the_opt_in(tmp_path):
    model = tiny_checkpoint(tmp_path / "custom", "remote_code")
    (issue,) = rejected(tmp_path, GOOD.format(model=model))
    assert issue.loc == ("model", "trust_remote_code") and issue.value is False
    assert "needs the model's own Python code" in issue.message and "model.trust_remote_code: true" in issue.message


def test_cli_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, config_only_model):
    from click.testing import CliRunner

    from compress.cli import main

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    result = CliRunner().invoke(main, ["validate", str(binary)])
    assert result.exit_code == 2 and "binary" in result.output and "Traceback" not in result.output
    (tmp_path / "afile").write_text("x")
    good = write_recipe(tmp_path, BASE)
    result = CliRunner().invoke(main, ["run", str(good), "--out", str(tmp_path / "afile" / "out")])
    assert result.exit_code == 2 and "--out" in result.output and "cannot be created under it" in result.output
    config_only = write_recipe(tmp_path, GOOD.format(model=config_only_model) + f"output: {tmp_path / 'out'}\n")
    result = CliRunner().invoke(main, ["run", str(config_only)])
    assert result.exit_code == 2 and "holds no weights" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()

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
    assert recipe.variants[0].steps == [{"method": "bnb_int8", "threshold": 6.0}]
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

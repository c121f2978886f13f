from __future__ import annotations

from click.testing import CliRunner

from compress.cli import main
from compress.registry import METHODS, load_builtin_methods
from evaluate.tasks import TASKS, load_builtin_tasks


def test_methods_registered_with_params():
    methods = load_builtin_methods()
    assert {"bnb_int8", "bnb_4bit", "rtn"} <= set(methods)
    table = dict((name, default) for name, _, default in methods["rtn"].parameter_table())
    assert table["group_size"] == "128" and table["ignore"] == "['lm_head']"
    assert METHODS is methods


def test_tasks_registered():
    tasks = load_builtin_tasks()
    for name in ("sort8_positive", "sort8_mixed", "sort16_positive", "sort16_mixed", "sort32_positive",
                 "sort32_mixed", "synth_arith", "synth_mc"):
        assert name in tasks, name
    assert TASKS["synth_mc"].answer_type == "letter"


def test_cli_lists_methods_and_tasks():
    runner = CliRunner()
    out = runner.invoke(main, ["methods"]).output
    assert "bnb_int8" in out and "threshold: float = 6.0" in out
    out = runner.invoke(main, ["tasks"]).output
    assert "sort16_mixed" in out and "synth_arith" in out

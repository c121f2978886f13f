"""benchmarks/study_results.py: a study's runs, wall time and per-variant seconds, read from its ledger."""

from __future__ import annotations

from benchmarks.study_results import render, run_rows, time_breakdown
from evaluate.ledger import Ledger
from evaluate.records import Build, CellMetrics, Host, StepTiming


def test_runs_and_seconds_come_from_the_ledger(tmp_path):
    ledger = Ledger(tmp_path / "results.sqlite")
    killed = ledger.start_run({})
    resumed = ledger.start_run({})
    ledger.finish_run(resumed)
    ledger.upsert_variant("gptq", "k", build=Build(timings=[StepTiming(method="gptq", seconds=42.0)]))
    ledger.put_cell("gptq", "gsm8k", "gsm8k", "c", CellMetrics(n=4, accuracy=25.0, eval_s=30.5))
    runs, times = run_rows(ledger.runs()), time_breakdown(ledger)
    assert [r["id"] for r in runs] == [killed, resumed]
    assert runs[0]["wall_s"] is None and runs[1]["wall_s"] >= 0
    assert times == {"gptq": {"build:gptq": 42.0, "eval:gsm8k": 30.5}}
    page = render(tmp_path, Host(cpu="Test CPU", cpu_cores=2), runs, times, "# report\n![plot](p.png)\ntext")
    assert "| gptq | 42 | 30 | 72 |" in page and "— (killed)" in page
    assert "## report" in page and "p.png" not in page

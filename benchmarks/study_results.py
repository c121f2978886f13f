"""A finished study as a committed benchmark result: `python -m benchmarks.study_results runs/smollm2
--out benchmarks/results/smollm2_cpu` writes OUT.md (machine, every run's wall time, where the time went, then the
study's own report) and OUT.json (the same figures and results.json's rows), all read from the study's ledger."""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from evaluate.ledger import Ledger
from evaluate.profiling import host_description
from evaluate.records import Host, RunRecord

_IMAGE = re.compile(r"^!\[.*\]\(.*\)\s*$")


def run_rows(runs: list[RunRecord]) -> list[dict]:
    """Each run of the study (a killed or interrupted run, then the resumes): its status, wall time, work done."""
    return [{"id": r.id, "status": r.status, "started_at": r.started_at, "finished_at": r.finished_at,
             "wall_s": (r.finished_at - r.started_at) if r.finished_at else None, "computed": len(r.computed)}
            for r in runs]


def time_breakdown(ledger: Ledger) -> dict[str, dict[str, float]]:
    """Seconds per variant spent building (per step), evaluating (per task) and loading for the profile."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for v in ledger.variants():
        for t in (v.build.timings if v.build else []):
            out[v.variant][f"build:{t.method}"] = out[v.variant].get(f"build:{t.method}", 0.0) + t.seconds
    for c in ledger.cells():
        if c.metrics.eval_s is not None:
            out[c.variant][f"eval:{c.cell}"] = c.metrics.eval_s
    return dict(out)


def render(study: Path, host: Host, runs: list[dict], times: dict[str, dict[str, float]], report: str) -> str:
    total = sum(r["wall_s"] or 0.0 for r in runs)
    gpu = f", {host.gpu}" if host.gpu else ", no GPU"
    lines = [f"# Study `{study.name}`: measured on {host.cpu} ({host.cpu_cores} cores){gpu}",
             "", f"torch {host.torch}. Runs of the study (a killed run is resumed by the next; finished work is "
             "not redone):", "", "| run | status | wall (min) | work items finished |", "|---|---|---|---|"]
    for r in runs:
        wall = f"{r['wall_s'] / 60:.1f}" if r["wall_s"] is not None else "— (killed)"
        lines.append(f"| {r['id']} | {r['status']} | {wall} | {r['computed']} |")
    lines += ["", f"Wall time of the finished runs together: {total / 60:.1f} min (killed runs have no end time and "
              "are not counted).", "", "## Where the time went (seconds, from the ledger)", ""]
    keys = sorted({k for t in times.values() for k in t}, key=lambda k: (not k.startswith("build"), k))
    lines += ["| variant | " + " | ".join(keys) + " | total |", "|---" * (len(keys) + 2) + "|"]
    for variant, t in times.items():
        lines.append(f"| {variant} | " + " | ".join(f"{t[k]:.0f}" if k in t else "—" for k in keys)
                     + f" | {sum(t.values()):.0f} |")
    body = [ln for ln in report.splitlines() if not _IMAGE.match(ln)]  # plots live in the study directory
    body = ["#" + ln if ln.startswith("#") else ln for ln in body]  # the report's sections below this page's title
    return "\n".join([*lines, "", "## The study's report (plots omitted)", "", *body]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("study", type=Path, help="a finished study's output directory")
    parser.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.json are written")
    args = parser.parse_args()
    ledger = Ledger(args.study / "results.sqlite")
    host = host_description()
    runs, times = run_rows(ledger.runs()), time_breakdown(ledger)
    report = (args.study / "report.md").read_text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(render(args.study, host, runs, times, report))
    results = json.loads((args.study / "results.json").read_text())
    args.out.with_suffix(".json").write_text(json.dumps(
        {"study": args.study.name, "host": host.model_dump(), "runs": runs, "seconds": times, "results": results},
        indent=1))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

"""Recipe fuzzing campaign: the seeded generator's cases (tests/recipe_fuzz.py) through the validator.

Every case runs in-process (load_recipe under a SIGALRM watchdog, its files in a fresh directory that is
the working directory) and is classified: clean error (RecipeError), accepted, traceback, hang. A handful
also run through the real command line, `compress validate` (and `compress run` for the run-time cases),
as subprocesses: exit code 2, no traceback on stderr, nothing written beside the case's own files.

    python -m benchmarks.recipe_fuzz_campaign            # 1,000 cases, seed 0
    python -m benchmarks.recipe_fuzz_campaign --n 200 --seed 3 --out /tmp/fuzz

Writes benchmarks/results/recipe_fuzz_campaign.{json,md} (or --out PATH.{json,md})."""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import recipe_fuzz  # noqa: E402

WATCHDOG_S = 10.0
LIMIT_S = 2.0
CLI_KINDS = ["alias_bomb_top", "alias_bomb_step_param", "huge_comment", "many_tasks", "encoding", "binary",
             "unhashable_name", "long_name", "deep_nesting", "anchor_long_name", "duplicate_key", "coerced_number",
             "hub_id", "missing_calibration", "output_path", "model_files", "missing_model_path", "cuda_device"]
ENTRY = "from compress.cli import console_main; console_main()"


def machine() -> dict:
    import pydantic
    import torch
    import yaml

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "pyyaml": yaml.__version__, "libyaml": bool(yaml.__with_libyaml__), "pydantic": pydantic.VERSION,
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_process(n: int, seed: int, workdir: Path) -> tuple[list[dict], float]:
    import torch

    cuda = torch.cuda.is_available()
    warm = recipe_fuzz.warm_up(workdir)
    rows = []
    for fc in recipe_fuzz.cases(n, seed):
        before = maxrss_mib()
        out = recipe_fuzz.run_case(fc, workdir, limit_s=WATCHDOG_S, cuda=cuda)
        row = {"index": out.index, "kind": out.kind, "status": out.status, "seconds": round(out.seconds, 4),
               "problems": out.problems, "first_issue": (out.issues or [""])[0][:160],
               "rss_growth_mib": round(maxrss_mib() - before, 1)}
        rows.append({**row, "detail": out.detail[-2000:]} if out.detail else row)
    return rows, warm


def run_cli(seed: int, n: int, workdir: Path) -> list[dict]:
    """The first case of each CLI kind through `compress validate`; the run-time kinds also through `run`."""
    picks: dict[str, recipe_fuzz.FuzzCase] = {}
    for fc in recipe_fuzz.cases(min(n, 3 * len(recipe_fuzz.KINDS)), seed):
        if fc.kind in CLI_KINDS and fc.kind not in picks:
            picks[fc.kind] = fc
    rows = []
    for kind in CLI_KINDS:
        fc = picks.get(kind)
        if fc is None:
            continue
        commands = [["validate", "recipe.yaml"]]
        if kind in ("output_path", "model_files", "missing_model_path", "missing_calibration"):
            commands.append(["run", "recipe.yaml"])
        for args in commands:
            directory = workdir / f"cli{fc.index:04d}-{args[0]}"
            recipe_fuzz.write_case(fc, directory)
            before = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
            env = {**os.environ, **fc.env, "PYTHONPATH": str(ROOT)}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=directory, env=env, capture_output=True,
                                  text=True, timeout=300)
            seconds = time.perf_counter() - t0
            after = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
            stderr = proc.stderr.strip()
            lines = stderr.splitlines()
            ok = proc.returncode == 2 and "Traceback" not in proc.stderr and bool(lines) and before == after
            rows.append({"index": fc.index, "kind": kind, "command": f"compress {' '.join(args)}",
                         "exit_code": proc.returncode, "traceback": "Traceback" in proc.stderr,
                         "stderr_lines": len(lines), "message": (lines[1] if len(lines) > 1 else stderr)[:300],
                         "wrote_files": [p for p in after if p not in before][:5], "seconds": round(seconds, 2),
                         "ok": ok})
            shutil.rmtree(directory, ignore_errors=True)
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def summarize(rows: list[dict]) -> dict:
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for r in rows:
        label = {"error": "clean_error"}.get(r["status"], r["status"])
        kinds[r["kind"]][label] += 1
        kinds[r["kind"]]["wrong_outcome_or_message"] += bool(r["problems"])
        times[r["kind"]].append(r["seconds"])
    seconds = [r["seconds"] for r in rows]
    total = collections.Counter({"error": "clean_error"}.get(r["status"], r["status"]) for r in rows)
    return {
        "cases": len(rows), "clean_error": total["clean_error"], "accepted": total["accepted"],
        "traceback": total["traceback"], "hang": total["hang"],
        "wrong_outcome_or_message": sum(bool(r["problems"]) for r in rows),
        "over_2s": sum(s > LIMIT_S for s in seconds), "max_s": max(seconds, default=0.0),
        "p99_s": percentile(seconds, 0.99), "median_s": percentile(seconds, 0.5), "total_s": sum(seconds),
        "max_rss_growth_mib": max((r["rss_growth_mib"] for r in rows), default=0.0),
        "per_kind": {k: {**{s: c[s] for s in ("clean_error", "accepted", "traceback", "hang",
                                              "wrong_outcome_or_message")},
                         "median_s": round(percentile(times[k], 0.5), 4), "max_s": round(max(times[k]), 4)}
                     for k, c in sorted(kinds.items())},
    }


def render_markdown(result: dict) -> str:
    s, m = result["summary"], result["machine"]
    lines = [
        f"# Recipe fuzzing campaign ({s['cases']} seeded cases, seed {result['seed']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, PyYAML {m['pyyaml']} "
        f"(libyaml {'yes' if m['libyaml'] else 'no'}), pydantic {m['pydantic']}, torch {m['torch']} "
        f"(CUDA {'available' if m['cuda'] else 'not available'}). Measured {result['date']}.",
        "",
        "Each case: load_recipe in-process, its files in a fresh working directory, a 10 s watchdog; the "
        f"imports are warmed first ({result['warm_up_s']:.1f} s, not counted).",
        "",
        f"**{s['clean_error']} clean errors, {s['accepted']} accepted, {s['traceback']} tracebacks, {s['hang']} "
        f"hangs**; {s['wrong_outcome_or_message']} cases with a wrong outcome (an input that must be rejected "
        "accepted, a valid one rejected) or an error not naming its field or line; "
        f"{s['over_2s']} cases over {LIMIT_S:g} s. Time per case: median {s['median_s'] * 1000:.1f} ms, "
        f"p99 {s['p99_s'] * 1000:.1f} ms, max {s['max_s'] * 1000:.1f} ms; all {s['cases']} in "
        f"{s['total_s']:.1f} s. Largest peak-RSS growth during one case: {s['max_rss_growth_mib']:.1f} MiB.",
        "",
        "| mutation kind | clean error | accepted | traceback | hang | wrong | median ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, k in s["per_kind"].items():
        lines.append(f"| {kind} | {k['clean_error']} | {k['accepted']} | {k['traceback']} | {k['hang']} | "
                     f"{k['wrong_outcome_or_message']} | {k['median_s'] * 1000:.1f} | {k['max_s'] * 1000:.1f} |")
    lines += ["", "`wrong`: a case whose input must be rejected was accepted, a valid one was rejected, or an error "
              "did not name its field (or, for a file-level problem, the file and line). Accepted cases are valid "
              "rewrites that must pass (`valid_style`, `utf8_bom_crlf`, `local_model_ok`, a good calibration file, "
              "unicode in a comment or the title) or generic damage that left a valid recipe (deleted optional "
              "fields, which take their defaults; a truncation that leaves whole fields; a type swap into a valid "
              "value, such as `name: ~` or `output: 1e3`, a string).", ""]
    cli = result["cli"]
    if cli:
        good = sum(r["ok"] for r in cli)
        lines += [f"## Through the command line ({good}/{len(cli)} as required)", "",
                  "Exit code 2, no traceback, one message per problem, nothing written beside the case's files. "
                  "`process s` is the whole subprocess, interpreter start and imports (torch, when the recipe gets "
                  "that far) included.", "",
                  "| case | command | exit | traceback | process s | message (first) |", "|---|---|---|---|---|---|"]
        for r in cli:
            message = r["message"].replace("|", "\\|")
            lines.append(f"| #{r['index']} {r['kind']} | `{r['command']}` | {r['exit_code']} | "
                         f"{'yes' if r['traceback'] else 'no'} | {r['seconds']:.1f} | {message} |")
        lines.append("")
    bad = [r for r in result["cases"] if r["status"] in ("traceback", "hang") or r["problems"]]
    if bad:
        lines += ["## Failures", ""] + [f"- #{r['index']} {r['kind']}: {r['status']} {r['problems']}" for r in bad[:50]]
        lines.append("")
    lines += [f"Reproduce: `python -m benchmarks.recipe_fuzz_campaign --n {s['cases']} --seed {result['seed']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line subprocesses")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recipe_fuzz_campaign"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slimlab-fuzz-"))
    try:
        rows, warm = run_in_process(args.n, args.seed, workdir)
        cli = [] if args.no_cli else run_cli(args.seed, args.n, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"seed": args.seed, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "warm_up_s": warm,
              "summary": summarize(rows), "cli": cli, "cases": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1)[:-2]  # one case per line below
    cases = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in rows)
    out.with_suffix(".json").write_text(f'{head},\n "cases": [\n  {cases}\n ]\n}}\n')
    out.with_suffix(".md").write_text(render_markdown(result))
    s = result["summary"]
    print(f"{s['cases']} cases: {s['clean_error']} clean errors, {s['accepted']} accepted, "
          f"{s['traceback']} tracebacks, {s['hang']} hangs, {s['wrong_outcome_or_message']} wrong; "
          f"max {s['max_s']:.3f} s, p99 {s['p99_s']:.3f} s; CLI {sum(r['ok'] for r in cli)}/{len(cli)} ok "
          f"-> {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

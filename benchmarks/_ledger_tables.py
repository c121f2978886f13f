"""What the benchmark tables share: reading a finished study's ledger, re-measuring tokens/s fairly on a
shared CPU, and writing OUT.md + OUT.json."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from compress.ledger import Ledger

BASELINE = "baseline"


def table_parser(doc: str, title: str) -> argparse.ArgumentParser:
    """The arguments every table takes: the study directory, OUT, a title and --reprofile."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("study", type=Path, help="a study's output directory (holding results.sqlite)")
    p.add_argument("--out", type=Path, help="write OUT.md and OUT.json (default: print the table)")
    p.add_argument("--title", default=title)
    p.add_argument("--reprofile", type=int, default=0, metavar="ROUNDS",
                   help="re-measure tokens/s in ROUNDS interleaved rounds (fresh process per model)")
    p.add_argument("--profile-from", type=Path, metavar="JSON",
                   help="re-render with the tokens/s of an earlier OUT.json (no new measurement)")
    return p


SPEED_KEYS = ("tokens_per_s", "speed", "fp_tokens_per_s")  # the row keys a --reprofile run fills


def reuse_profile(rows: list[dict], earlier_json: Path) -> dict | None:
    """Speed columns (every tokens/s and speed-up key) and backends of an earlier --reprofile run copied into
    `rows`; returns that run's profiling info."""
    earlier = json.loads(earlier_json.read_text())
    before = {r["variant"]: r for r in earlier["rows"]}
    for r in rows:
        old = before.get(r["variant"], {})
        r.update({k: v for k, v in old.items() if k.startswith(SPEED_KEYS) or k == "backend"})
        if isinstance(r.get("tokens_per_s_by_batch"), dict):  # JSON turned the batch sizes into strings
            r["tokens_per_s_by_batch"] = {int(b): v for b, v in r["tokens_per_s_by_batch"].items()}
    return earlier.get("reprofile")


def baseline_tasks(cells: list[dict]) -> list[str]:
    """The task cells the FP baseline was evaluated on, sorted: the table's accuracy columns."""
    return sorted({c["cell"] for c in cells if c["variant"] == BASELINE})


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fmt(x: Any, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def batch1_tokens_per_s(variant: dict) -> float | None:
    """Decode tokens/s at batch 1 from the study's own profile of a variant."""
    rows = (variant.get("profile") or {}).get("batches") or []
    b1 = next((r for r in rows if r["batch_size"] == 1), rows[0] if rows else None)
    return b1.get("tokens_per_s") if b1 else None


PROFILE_REPEATS = 10  # timed generations per model and round: the recipes' 3 are too few for a table


def reprofile(ledger: Ledger, names: list[str], rounds: int, repeats: int = PROFILE_REPEATS,
              batch_sizes: tuple[int, ...] = (1,)) -> tuple[dict[str, dict[int, float]], dict[str, list[dict]], dict]:
    """Decode tokens/s again with the study's profiler (a fresh process per model), interleaved over
    `rounds` rounds; the median per model and batch size, leaving out samples taken while the process was
    paused. On a shared CPU the load drifts during a long study: interleaving spreads the drift over all
    models alike. Prompt and generation lengths come from the recipe; `repeats` timed runs per model,
    round and batch size. Returns (median per model and batch size, every sample per model, what was
    measured and where)."""
    from evaluate.profiling import ProfileConfig, profile_in_subprocess

    recipe = json.loads((ledger.last_run() or {}).get("recipe") or "{}")
    p, m = recipe.get("profile", {}), recipe.get("model", {})
    config = ProfileConfig(p.get("prompt_tokens", 64), p.get("new_tokens", 32), p.get("warmup", 1), repeats,
                           tuple(batch_sizes))
    dirs = {n: (ledger.variant(n) or {}).get("model_dir") for n in names}
    samples: dict[str, list[dict]] = {n: [] for n in names}
    backends: dict[str, str] = {}
    device = None
    for _ in range(rounds):
        for n in names:
            result = profile_in_subprocess(dirs[n], m.get("dtype", "float32"), m.get("device", "cpu"), config,
                                           m.get("trust_remote_code", False))
            device = result.get("device", device)
            backends[n] = result["footprint"]["backend"]  # what ran in the process that was timed
            for row in result["batches"]:
                samples[n].append({"batch_size": row["batch_size"], "tokens_per_s": row["tokens_per_s"],
                                   "load_avg_1m": result.get("load_avg_1m_after"),
                                   "paused": bool(row.get("paused_during_timing"))})
    medians = {n: {b: statistics.median([x["tokens_per_s"] for x in v if x["batch_size"] == b and not x["paused"]
                                         and x["tokens_per_s"]] or [float("nan")]) for b in batch_sizes}
               for n, v in samples.items()}
    return medians, samples, {"rounds": rounds, "config": config.__dict__, "device": device, "backends": backends}


def use_timed_backends(rows: list[dict], info: dict) -> None:
    """The backend column from the processes that were just timed (a label fixed since the study ran shows)."""
    for r in rows:
        r["backend"] = info.get("backends", {}).get(r["variant"], r["backend"])


def reprofile_note(info: dict) -> str:
    c = info["config"]
    return (f"\nTokens/s re-measured with the study's profiler (prompt {c['prompt_tokens']}, {c['new_tokens']} new "
            f"tokens, batch {', '.join(map(str, c['batch_sizes']))}, median of {c['repeats']} timed runs) on "
            f"{info['device']}: {info['rounds']} "
            "interleaved rounds over all models, a fresh process each, median per model (samples taken while a "
            "process was paused are dropped), so that load drift on the shared CPU affects all models alike; every "
            "sample and the 1-minute load average are in the .json.\n")


def write_table(out: Path | None, text: str, payload: dict) -> None:
    """OUT.md (the table) and OUT.json (every figure behind it); without OUT, print the table."""
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))

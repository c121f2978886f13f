"""From the ledger to files a person opens: results.json (one row per variant x task) and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.ledger import Ledger

BASELINE = "baseline"


def _batch1(profile: dict | None) -> dict:
    if not profile:
        return {}
    rows = profile.get("batches", [])
    return next((r for r in rows if r["batch_size"] == 1), rows[0] if rows else {})


def peak_memory(profile: dict | None) -> int | None:
    """Peak bytes of the device the model ran on: CUDA allocator peak on GPU, process RSS on CPU."""
    if not profile:
        return None
    b1 = _batch1(profile)
    if "cuda_max_memory_allocated" in b1:
        return b1["cuda_max_memory_allocated"]
    return profile.get("peak_rss_bytes")


def result_rows(ledger: Ledger) -> list[dict[str, Any]]:
    variants = ledger.variants()
    cells = ledger.cells()
    base = {c["cell"]: c for c in cells if c["variant"] == BASELINE}
    task_cells = list(dict.fromkeys(c["cell"] for c in cells if c["variant"] == BASELINE))
    rows = []
    for v in variants:
        fp = v.get("footprint") or {}
        prof = v.get("profile")
        b1 = _batch1(prof)
        mine = {c["cell"]: c for c in cells if c["variant"] == v["variant"]}
        for cell in task_cells or list(mine):
            c = mine.get(cell)
            value = c["accuracy"] if c else None
            b = base.get(cell)
            rows.append({
                "variant": v["variant"],
                "task": cell,
                "metric": (c or b or {}).get("metric", "accuracy"),
                "value": value,
                "n": int(c["n"]) if c else None,
                "delta_vs_baseline": (value - b["accuracy"]) if (c and b) else None,
                "instruction_following": c.get("instruction_following") if c else None,
                "accuracy_std": c.get("accuracy_std") if c else None,
                "weight_bytes": fp.get("weight_bytes"),
                "bits_per_param": fp.get("bits_per_param"),
                "n_params": fp.get("n_params"),
                "disk_bytes": v.get("disk_bytes"),
                "peak_memory_bytes": peak_memory(prof),
                "load_rss_delta_bytes": prof.get("load_rss_delta_bytes") if prof else None,
                "latency_ms_per_token": b1.get("latency_ms_per_token"),
                "ttft_ms": b1.get("ttft_ms"),
                "tokens_per_s": b1.get("tokens_per_s"),
                "backend": fp.get("backend"),
                "steps": " -> ".join(s["method"] for s in (v.get("steps") or [])) or "FP",
                "status": v.get("status") or "pending",
                "reason": v.get("reason"),
            })
    return rows


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _mib(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:.2f}"


def render_markdown(rows: list[dict], ledger: Ledger, title: str) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r["variant"], r["task"]): r for r in rows}
    first = {v: next(r for r in rows if r["variant"] == v) for v in variants}
    out = [f"# slimlab study: {title}", ""]
    out += ["Accuracy in percent on identical prompts and decoding; Δ is the change against the FP "
            "baseline in points. Memory and latency are measured on the format that ran (backend column).", ""]
    out += ["## Accuracy", ""]
    out.append("| variant | steps | " + " | ".join(tasks) + " | mean Δ |")
    out.append("|---|---|" + "---|" * len(tasks) + "---|")
    for v in variants:
        cells, deltas = [], []
        for t in tasks:
            r = by.get((v, t))
            if r is None or r["value"] is None:
                cells.append("—")
                continue
            d = r["delta_vs_baseline"]
            cells.append(f"{r['value']:.1f}" + ("" if v == BASELINE or d is None else f" ({d:+.1f})"))
            if d is not None:
                deltas.append(d)
        mean_delta = "" if v == BASELINE else (f"{sum(deltas) / len(deltas):+.1f}" if deltas else "—")
        out.append(f"| {v} | {first[v]['steps']} | " + " | ".join(cells) + f" | {mean_delta} |")
    out += ["", "## Instruction following (% of outputs in the requested answer format)", ""]
    out.append("| variant | " + " | ".join(tasks) + " |")
    out.append("|---|" + "---|" * len(tasks))
    for v in variants:
        out.append(f"| {v} | " + " | ".join(_fmt((by.get((v, t)) or {}).get("instruction_following"))
                                          for t in tasks) + " |")
    out += ["", "## Efficiency (measured)", ""]
    out.append("| variant | weights in memory (MiB) | bits/param | params | disk (MiB) | peak RSS/GPU (MiB) "
               "| ms/token | tokens/s | TTFT (ms) | backend |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        r = first[v]
        out.append(f"| {v} | {_mib(r['weight_bytes'])} | {_fmt(r['bits_per_param'], '.2f')} | "
                   f"{_fmt(r['n_params'], ',')} | {_mib(r['disk_bytes'])} | {_mib(r['peak_memory_bytes'])} | "
                   f"{_fmt(r['latency_ms_per_token'], '.2f')} | {_fmt(r['tokens_per_s'], '.1f')} | "
                   f"{_fmt(r['ttft_ms'], '.1f')} | {r['backend'] or '—'} |")
    problems = [r for r in first.values() if r["status"] in ("failed", "skipped")]
    if problems:
        out += ["", "## Variants that did not run", ""]
        out += [f"- **{r['variant']}** ({r['status']}): {r['reason']}" for r in problems]
    stages = ledger.stages()
    if stages:
        out += ["", "## Accuracy after each step of a chain", ""]
        out.append("| variant | after step | task | accuracy |")
        out.append("|---|---|---|---|")
        for s in stages:
            out.append(f"| {s['variant']} | {s['stage'] + 1}: {s['method']} | {s['cell']} | "
                       f"{s['metrics']['accuracy']:.1f} |")
    out += ["", "Peak memory on CPU is the profiling process's peak RSS (interpreter and libraries "
            "included); weights in memory counts every tensor storage the loaded model holds.", ""]
    return "\n".join(out)


def write_outputs(ledger: Ledger, out_dir: Path, recipe: Any = None) -> Path:
    rows = result_rows(ledger)
    path = out_dir / "results.json"
    path.write_text(json.dumps(rows, indent=2))
    title = getattr(recipe, "name", None) or out_dir.name
    (out_dir / "report.md").write_text(render_markdown(rows, ledger, title))
    return path

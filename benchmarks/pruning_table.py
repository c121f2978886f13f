"""The pruning table, from a finished study's ledger: how much each pruning method costs in accuracy,
how much distillation gives back, and what it buys in parameters and measured CPU tokens/s.

    python benchmarks/pruning_table.py runs/pruning --out benchmarks/results/pruning_embedded_cpu

Accuracy is the mean over the study's tasks (percent). "before recovery" is the stage evaluated right
after the step preceding `distill` (the variant needs `eval_stages: true`); "after recovery" the stage
after `distill` (or the variant itself when distill is its last step). Tokens/s is the study's profiler
at batch 1, measured on the saved variant in a fresh process; the backend column says what ran."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from compress.ledger import Ledger

BASELINE = "baseline"
PRUNERS = ("magnitude", "wanda", "sparsegpt", "prune_width", "prune_depth")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _num_layers(model_dir: str | None) -> int | None:
    path = Path(model_dir or "") / "config.json"
    return json.loads(path.read_text()).get("num_hidden_layers") if path.is_file() else None


def describe_ratio(step: dict, base_layers: int | None, layers: int | None) -> str:
    method = step["method"]
    if method in ("magnitude", "wanda", "sparsegpt"):
        pattern = step.get("pattern", "unstructured")
        return f"{step.get('sparsity', 0.5):.0%}" + ("" if pattern == "unstructured" else f" {pattern}")
    if method == "prune_width":
        parts = []
        if step.get("heads"):
            parts.append(f"-{step['heads']} heads/layer")
        if step.get("mlp_ratio"):
            parts.append(f"-{step['mlp_ratio']:.0%} MLP")
        return ", ".join(parts)
    if method == "prune_depth" and base_layers and layers is not None:
        return f"-{base_layers - layers} of {base_layers} layers"
    return "—"


def pruning_rows(ledger: Ledger) -> list[dict[str, Any]]:
    cells = ledger.cells()
    stages = ledger.stages()
    variants = {v["variant"]: v for v in ledger.variants()}
    base = variants.get(BASELINE) or {}
    base_acc = _mean([c["accuracy"] for c in cells if c["variant"] == BASELINE])
    base_tps = _tokens_per_s(base)
    base_layers = _num_layers(base.get("model_dir"))
    rows = []
    for name, v in variants.items():
        steps = v.get("steps") or []
        methods = [s["method"] for s in steps]
        prune_at = next((i for i, m in enumerate(methods) if m in PRUNERS), None)
        if name == BASELINE or prune_at is None:
            continue
        distill_at = next((i for i, m in enumerate(methods) if m == "distill" and i > prune_at), None)
        final = _mean([c["accuracy"] for c in cells if c["variant"] == name])
        last = len(methods) - 1
        before = _stage_acc(stages, name, distill_at - 1 if distill_at is not None else last, last, final)
        after = _stage_acc(stages, name, distill_at, last, final)
        fp = v.get("footprint") or {}
        tps = _tokens_per_s(v)
        recovered = None
        if None not in (before, after, base_acc) and base_acc - before > 0:
            recovered = (after - before) / (base_acc - before)
        rows.append({
            "variant": name,
            "steps": " -> ".join(methods),
            "method": methods[prune_at] + ("" if steps[prune_at].get("pattern", "unstructured") == "unstructured"
                                           else f" {steps[prune_at]['pattern']}"),
            "ratio": describe_ratio(steps[prune_at], base_layers, _num_layers(v.get("model_dir"))),
            "params": fp.get("n_params"),
            "params_vs_fp": fp["n_params"] / base["footprint"]["n_params"]
            if fp.get("n_params") and (base.get("footprint") or {}).get("n_params") else None,
            "sparsity": fp.get("sparsity"),
            "accuracy_before_recovery": before,
            "accuracy_after_recovery": after,
            "accuracy_final": final,
            "recovered_share": recovered,
            "fp_baseline": base_acc,
            "tokens_per_s": tps,
            "fp_tokens_per_s": base_tps,
            "speedup": tps / base_tps if tps and base_tps else None,
            "backend": fp.get("backend"),
            "status": v.get("status"),
        })
    return rows


def _stage_acc(stages: list[dict], variant: str, i: int | None, last: int, final: float | None) -> float | None:
    """Mean accuracy after step i: the variant itself after its last step, else the evaluated stage."""
    if i is None:
        return None
    if i == last:
        return final
    return _mean([s["metrics"]["accuracy"] for s in stages if s["variant"] == variant and s["stage"] == i])


def _tokens_per_s(variant: dict) -> float | None:
    rows = (variant.get("profile") or {}).get("batches") or []
    b1 = next((r for r in rows if r["batch_size"] == 1), rows[0] if rows else None)
    return b1.get("tokens_per_s") if b1 else None


def _f(x: Any, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def render(rows: list[dict], tasks: list[str], title: str) -> str:
    chained = any(r["steps"].split(" -> ")[-1] != "distill" for r in rows)
    head = ["method", "ratio", "params", "sparsity", "acc. before recovery", "acc. after recovery"]
    head += ["acc. final (all steps)"] if chained else []
    head += ["recovered share", "FP baseline", "CPU tokens/s (x FP)", "backend"]
    out = [f"# {title}", "", f"Accuracy: mean over {', '.join(tasks)} (percent, identical prompts, greedy). "
           "Recovered share = (after - before) / (FP - before). Tokens/s: batch 1, measured by the study's "
           "profiler on the saved variant.", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        plain = len(r["steps"].split(" -> ")) == 2 and r["steps"].endswith("distill")
        method = r["method"] if plain else f"{r['method']} ({r['steps']})"
        cells = [method, r["ratio"], _f(r["params"], ","), _f(r["sparsity"], ".1%"),
                 _f(r["accuracy_before_recovery"], ".1f"), _f(r["accuracy_after_recovery"], ".1f")]
        cells += [_f(r["accuracy_final"], ".1f")] if chained else []
        tps = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f} ({_f(r['speedup'], '.2f')}x)"
        cells += [_f(r["recovered_share"], ".0%"), _f(r["fp_baseline"], ".1f"), tps, r["backend"] or "—"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def reprofile(ledger: Ledger, rows: list[dict], rounds: int) -> dict:
    """Profile the baseline and every pruned variant again with the study's profiler (a fresh process per
    model), interleaved over `rounds` rounds, and keep each model's median tokens/s: on a shared machine
    the load drifts, and interleaving spreads the drift over all models alike."""
    from evaluate.profiling import ProfileConfig, profile_in_subprocess

    recipe = json.loads((ledger.last_run() or {}).get("recipe") or "{}")
    p, m = recipe.get("profile", {}), recipe.get("model", {})
    config = ProfileConfig(p.get("prompt_tokens", 64), p.get("new_tokens", 32), p.get("warmup", 1),
                           p.get("repeats", 5), (1,))
    names = [BASELINE] + [r["variant"] for r in rows]
    dirs = {n: (ledger.variant(n) or {}).get("model_dir") for n in names}
    samples: dict[str, list[dict]] = {n: [] for n in names}
    device = None
    for _ in range(rounds):
        for n in names:
            result = profile_in_subprocess(dirs[n], m.get("dtype", "float32"), m.get("device", "cpu"), config,
                                           m.get("trust_remote_code", False))
            b1 = result["batches"][0]
            device = result.get("device", device)
            samples[n].append({"tokens_per_s": b1["tokens_per_s"], "load_avg_1m": result.get("load_avg_1m_after"),
                               "paused": bool(b1.get("paused_during_timing"))})
    medians = {n: statistics.median([x["tokens_per_s"] for x in v if not x["paused"]] or [float("nan")])
               for n, v in samples.items()}
    for r in rows:
        r["tokens_per_s"], r["fp_tokens_per_s"] = medians[r["variant"]], medians[BASELINE]
        r["speedup"] = medians[r["variant"]] / medians[BASELINE]
        r["tokens_per_s_samples"] = samples[r["variant"]]
    return {"rounds": rounds, "config": config.__dict__, "device": device, "baseline_samples": samples[BASELINE]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="a study's output directory (holding results.sqlite)")
    p.add_argument("--out", type=Path, help="write OUT.md and OUT.json (default: print the table)")
    p.add_argument("--title", default="Pruning and recovery")
    p.add_argument("--reprofile", type=int, default=0, metavar="ROUNDS",
                   help="re-measure tokens/s in ROUNDS interleaved rounds (fresh process per model)")
    a = p.parse_args(argv)
    ledger = Ledger(a.study / "results.sqlite")
    rows = pruning_rows(ledger)
    tasks = sorted({c["cell"] for c in ledger.cells() if c["variant"] == BASELINE})
    profiling = reprofile(ledger, rows, a.reprofile) if a.reprofile else None
    text = render(rows, tasks, a.title)
    if profiling:
        text += (f"\nTokens/s re-measured with the study's profiler (prompt {profiling['config']['prompt_tokens']}, "
                 f"{profiling['config']['new_tokens']} new tokens, batch 1) on {profiling['device']}: "
                 f"{a.reprofile} interleaved rounds over all models, a fresh process each, median per model "
                 "(samples taken while a process was paused are dropped), so that load drift on the shared CPU "
                 "affects all models alike; every sample and the 1-minute load average are in the .json.\n")
    if a.out is None:
        print(text)
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps({"study": str(a.study), "tasks": tasks, "rows": rows,
                                                      "reprofile": profiling}, indent=2))


if __name__ == "__main__":
    main()

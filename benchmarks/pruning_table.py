"""The pruning table, from a finished study's ledger: how much each pruning method costs in accuracy,
how much distillation gives back, and what it buys in parameters and measured CPU tokens/s.

    python -m benchmarks.pruning_table runs/pruning --reprofile 5 --out benchmarks/results/pruning_embedded_cpu

Accuracy is the mean over the study's tasks (percent). "before recovery" is the stage evaluated right
after the step preceding `distill` (the variant needs `eval_stages: true`); "after recovery" the stage
after `distill` (or the variant itself when distill is its last step). Tokens/s is the study's profiler
at batch 1, measured on the saved variant in a fresh process; the backend column says what ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._ledger_tables import (
    BASELINE,
    baseline_tasks,
    batch1_tokens_per_s,
    mean,
    reprofile,
    reprofile_note,
    reuse_profile,
    table_parser,
    use_timed_backends,
    write_table,
)
from benchmarks._ledger_tables import fmt as _f
from compress.ledger import Ledger

PRUNERS = ("magnitude", "wanda", "sparsegpt", "prune_width", "prune_depth")


# Below this drop (accuracy points) a recovered share divides noise by noise: left blank.
MIN_DROP_FOR_SHARE = 2.0

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
    base_acc = mean([c["accuracy"] for c in cells if c["variant"] == BASELINE])
    base_tps = batch1_tokens_per_s(base)
    base_layers = _num_layers(base.get("model_dir"))
    rows = []
    for name, v in variants.items():
        steps = v.get("steps") or []
        methods = [s["method"] for s in steps]
        prune_at = next((i for i, m in enumerate(methods) if m in PRUNERS), None)
        if name == BASELINE or prune_at is None:
            continue
        distill_at = next((i for i, m in enumerate(methods) if m == "distill" and i > prune_at), None)
        final = mean([c["accuracy"] for c in cells if c["variant"] == name])
        last = len(methods) - 1
        before = _stage_acc(stages, name, distill_at - 1 if distill_at is not None else last, last, final)
        after = _stage_acc(stages, name, distill_at, last, final)
        fp = v.get("footprint") or {}
        tps = batch1_tokens_per_s(v)
        recovered = None
        if None not in (before, after, base_acc) and base_acc - before >= MIN_DROP_FOR_SHARE:
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
    return mean([s["metrics"]["accuracy"] for s in stages if s["variant"] == variant and s["stage"] == i])


def _noise_band(rows: list[dict]) -> str:
    """The speed band of the rows whose zeros run on the dense kernel: the same matmuls as FP, so their
    spread is what this machine's noise looks like, and only a speed-up outside it is the pruning's."""
    same = [v["speedup"] for r in rows if "zeros not skipped" in (r.get("backend") or "")
            for v in (r.get("tokens_per_s_by_batch") or {}).values() if v.get("speedup")]
    if not same:
        return ""
    return (f" Rows whose zeros run on the dense kernel do FP's matmuls and measure {min(same):.2f}x-{max(same):.2f}x "
            "FP: that band is this machine's noise, and only speed-ups outside it come from the pruning.")


def render(rows: list[dict], tasks: list[str], title: str) -> str:
    chained = any(r["steps"].split(" -> ")[-1] != "distill" for r in rows)
    head = ["method", "ratio", "params", "sparsity", "acc. before recovery", "acc. after recovery"]
    head += ["acc. final (all steps)"] if chained else []
    batches = sorted({int(b) for r in rows for b in (r.get("tokens_per_s_by_batch") or {})} - {1})
    head += ["recovered share", "FP baseline", "CPU tokens/s b=1 (x FP)"]
    head += [f"b={b} (x FP)" for b in batches] + ["backend"]
    out = [f"# {title}", "", f"Accuracy: mean over {', '.join(tasks)} (percent, identical prompts, greedy). "
           "Recovered share = (after - before) / (FP - before), shown where pruning cost at least "
           f"{MIN_DROP_FOR_SHARE:g} points (a smaller drop is within sampling noise). "
           "Tokens/s: decode, measured by the study's profiler on the saved variant." + _noise_band(rows), ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        plain = len(r["steps"].split(" -> ")) == 2 and r["steps"].endswith("distill")
        method = r["method"] if plain else f"{r['method']} ({r['steps']})"
        cells = [method, r["ratio"], _f(r["params"], ","), _f(r["sparsity"], ".1%"),
                 _f(r["accuracy_before_recovery"], ".1f"), _f(r["accuracy_after_recovery"], ".1f")]
        cells += [_f(r["accuracy_final"], ".1f")] if chained else []
        tps = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f} ({_f(r['speedup'], '.2f')}x)"
        cells += [_f(r["recovered_share"], ".0%"), _f(r["fp_baseline"], ".1f"), tps]
        for b in batches:
            m = (r.get("tokens_per_s_by_batch") or {}).get(b)
            cells.append("—" if not m else f"{m['tokens_per_s']:.0f} ({m['speedup']:.2f}x)")
        cells.append(r["backend"] or "—")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def reprofile_rows(ledger: Ledger, rows: list[dict], rounds: int, batch_sizes: tuple[int, ...]) -> dict:
    medians, samples, info = reprofile(ledger, [BASELINE] + [r["variant"] for r in rows], rounds,
                                       batch_sizes=batch_sizes)
    for r in rows:
        mine, fp = medians[r["variant"]], medians[BASELINE]
        r["tokens_per_s"], r["fp_tokens_per_s"], r["speedup"] = mine[1], fp[1], mine[1] / fp[1]
        r["tokens_per_s_by_batch"] = {b: {"tokens_per_s": mine[b], "fp": fp[b], "speedup": mine[b] / fp[b]}
                                      for b in batch_sizes}
        r["tokens_per_s_samples"] = samples[r["variant"]]
    use_timed_backends(rows, info)
    return {**info, "baseline_samples": samples[BASELINE]}


def main(argv: list[str] | None = None) -> None:
    p = table_parser(__doc__, "Pruning and recovery")
    p.add_argument("--batch-sizes", default="1,32", help="batch sizes to re-measure (1 must be among them)")
    a = p.parse_args(argv)
    ledger = Ledger(a.study / "results.sqlite")
    rows = pruning_rows(ledger)
    tasks = baseline_tasks(ledger.cells())
    batch_sizes = tuple(int(b) for b in a.batch_sizes.split(","))
    profiling = reprofile_rows(ledger, rows, a.reprofile, batch_sizes) if a.reprofile else None
    if a.profile_from:
        profiling = reuse_profile(rows, a.profile_from)
    text = render(rows, tasks, a.title) + (reprofile_note(profiling) if profiling else "")
    write_table(a.out, text, {"study": str(a.study), "tasks": tasks, "rows": rows, "reprofile": profiling})


if __name__ == "__main__":
    main()

"""The pruning table, from a finished study's ledger: how much each pruning method costs in accuracy,
how much distillation gives back, and what it buys in parameters and measured CPU tokens/s.

    python -m benchmarks.pruning_table runs/pruning --reprofile 5 --out benchmarks/results/pruning_embedded_cpu

A row is a variant with a pruning step (a registered method of kind "prune"); its recovery is the first
training step after it (kind "train": distill). Accuracy is the mean over the study's tasks (percent).
"before recovery" is the stage evaluated right after the step preceding the recovery (the variant needs
`eval_stages: true`); "after recovery" the stage after the recovery (or the variant itself when recovery is
its last step). Tokens/s is the study's profiler at batch 1, measured on the saved variant in a fresh
process; the backend column says what ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._ledger_tables import (
    BASELINE,
    Step,
    accuracy_by_cell,
    backend_text,
    baseline_tasks,
    batch1_tokens_per_s,
    mean,
    reprofile,
    reprofile_note,
    reuse_profile,
    table_parser,
    typed_steps,
    use_timed_backends,
    write_table,
)
from benchmarks._ledger_tables import fmt as _f
from evaluate.ledger import Ledger
from evaluate.records import StageRecord

# Below this drop (accuracy points) a recovered share divides noise by noise: left blank.
MIN_DROP_FOR_SHARE = 2.0


def _num_layers(model_dir: str | None) -> int | None:
    path = Path(model_dir or "") / "config.json"
    return json.loads(path.read_text()).get("num_hidden_layers") if path.is_file() else None


def describe_ratio(step: Step, base_layers: int | None, layers: int | None) -> str:
    """The pruning step's own label ("50%", "50% 2:4", "-25% MLP"); a model that lost decoder layers says how
    many of how many ("-1 of 4 layers"), which only the two models' configs know."""
    if base_layers and layers is not None and layers != base_layers:
        return f"-{base_layers - layers} of {base_layers} layers"
    return step.setting or "—"


def pruning_rows(ledger: Ledger) -> list[dict[str, Any]]:
    cells = ledger.cells()
    stages = ledger.stages()
    variants = {v.variant: v for v in ledger.variants()}
    base = variants.get(BASELINE)
    base_acc = mean(list(accuracy_by_cell(cells, BASELINE).values()))
    base_tps = batch1_tokens_per_s(base)
    base_layers = _num_layers(base.model_dir if base else None)
    base_params = base.footprint.n_params if base is not None and base.footprint is not None else None
    rows = []
    for name, v in variants.items():
        steps = typed_steps(v)
        prune_at = next((i for i, s in enumerate(steps) if s.kind == "prune"), None)
        if name == BASELINE or prune_at is None:
            continue
        # recovery: the first training step after the pruning
        distill_at = next((i for i, s in enumerate(steps) if s.kind == "train" and i > prune_at), None)
        final = mean(list(accuracy_by_cell(cells, name).values()))
        last = len(steps) - 1
        before = _stage_acc(stages, name, distill_at - 1 if distill_at is not None else last, last, final)
        after = _stage_acc(stages, name, distill_at, last, final)
        fp = v.footprint
        tps = batch1_tokens_per_s(v)
        recovered = None
        if None not in (before, after, base_acc) and base_acc - before >= MIN_DROP_FOR_SHARE:
            recovered = (after - before) / (base_acc - before)
        pruner = steps[prune_at]
        pattern = getattr(pruner.params, "pattern", "unstructured")  # N:M sparsity names its pattern
        rows.append({
            "variant": name,
            "steps": " -> ".join(s.method for s in steps),
            "kinds": [s.kind for s in steps],
            "method": pruner.method + ("" if pattern == "unstructured" else f" {pattern}"),
            "ratio": describe_ratio(pruner, base_layers, _num_layers(v.model_dir)),
            "params": fp.n_params if fp else None,
            "params_vs_fp": fp.n_params / base_params if fp and fp.n_params and base_params else None,
            "sparsity": fp.sparsity if fp else None,
            "accuracy_before_recovery": before,
            "accuracy_after_recovery": after,
            "accuracy_final": final,
            "recovered_share": recovered,
            "fp_baseline": base_acc,
            "tokens_per_s": tps,
            "fp_tokens_per_s": base_tps,
            "speedup": tps / base_tps if tps and base_tps else None,
            "backend": backend_text(v),
            "status": v.status,
        })
    return rows


def _stage_acc(stages: list[StageRecord], variant: str, i: int | None, last: int, final: float | None) -> float | None:
    """Mean accuracy after step i: the variant itself after its last step, else the evaluated stage."""
    if i is None:
        return None
    if i == last:
        return final
    return mean([s.metrics.accuracy for s in stages
                 if s.variant == variant and s.stage == i and s.metrics.accuracy is not None])


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
    chained = any(r["kinds"][-1] != "train" for r in rows)  # some variant has steps after its recovery
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
        plain = r["kinds"] == ["prune", "train"]
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

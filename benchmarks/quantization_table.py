"""The quantization table, from a finished study's ledger: what each method costs in accuracy against
the FP baseline, and what it really holds in memory, on disk and at what speed, with what ran.

    compress run recipes/quantization.yaml
    python -m benchmarks.quantization_table runs/quantization --reprofile 5 \
        --out benchmarks/results/quantization_embedded_cpu

Every figure comes from the study (nothing recomputed here): accuracy is the mean over the study's
tasks (percent, identical prompts, greedy); "bits/param in memory" is measure_footprint on the model
reloaded from disk, after the runtime settled (compressed-tensors decompresses at load on CPU: the
figure shows it); "stored bits/param" counts the safetensors bytes under the quantized Linear layers
(scales and zero points included); tokens/s is the profiler at batch 1 on the saved variant in a fresh
process. Skipped or failed variants are listed with their reason."""

from __future__ import annotations

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
    study_settings,
    table_parser,
    typed_steps,
    use_timed_backends,
    weight_bits,
    write_table,
)
from benchmarks._ledger_tables import fmt as _f
from evaluate.ledger import Ledger
from evaluate.records import Host

NOISE_POINTS = 1.0  # accuracy differences below this (a few items of a few hundred) are not called a win


def quantization_rows(ledger: Ledger) -> tuple[list[dict[str, Any]], list[str]]:
    cells = ledger.cells()
    tasks = baseline_tasks(cells)
    base_acc = mean(list(accuracy_by_cell(cells, BASELINE).values()))
    variants = ledger.variants()
    base_tps = batch1_tokens_per_s(next((v for v in variants if v.variant == BASELINE), None))
    fp_label = "FP " + study_settings(ledger)[0].dtype
    rows = []
    for v in variants:
        steps = typed_steps(v)
        by_task = accuracy_by_cell(cells, v.variant)
        acc = mean([by_task[t] for t in tasks if t in by_task]) if len(by_task) == len(tasks) else None
        fp = v.footprint
        tps = batch1_tokens_per_s(v)
        bits = weight_bits(steps)
        rows.append({
            "variant": v.variant,
            "config": fp_label if v.variant == BASELINE else " -> ".join(s.label for s in steps),
            "weight_bits": bits,
            "eight_bit": bits == 8,
            "comparable": _comparable(steps),
            "status": v.status,
            "reason": v.reason,
            "accuracy": acc,
            "accuracy_by_task": by_task,
            "delta_points": None if acc is None or base_acc is None else acc - base_acc,
            "weight_bytes_in_memory": fp.weight_bytes if fp else None,
            "bits_per_param_in_memory": fp.bits_per_param if fp else None,
            "stored_bits_per_param": fp.stored_bits_per_param if fp else None,
            "disk_bytes": v.disk_bytes,
            "tokens_per_s": tps,
            "speed_vs_fp": tps / base_tps if tps and base_tps else None,
            "backend": backend_text(v),
            "build_seconds": (sum(t.seconds for t in v.build.timings) or None) if v.build else None,
        })
    return rows, tasks


def _comparable(steps: list[Step]) -> dict[str, str] | None:
    """A one-step quantization as {method, setting}: variants of different methods with the same setting label
    (same bits, group and every other parameter shared by name) are compared head to head in the findings."""
    if len(steps) != 1 or steps[0].kind != "quantize":
        return None
    return {"method": steps[0].method, "setting": steps[0].setting}


def _mib(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:.2f}"


def findings(rows: list[dict]) -> list[str]:
    """The issue's claims, checked against the rows (stated, not asserted)."""
    out = []
    eight = [r for r in rows if r["eight_bit"] and r["delta_points"] is not None]
    if eight:
        worst = min(eight, key=lambda r: r["delta_points"])
        verdict = "all within 2 points" if worst["delta_points"] >= -2 else "NOT all within 2 points"
        out.append(f"8-bit variants: {verdict} of the baseline (worst: {worst['variant']} "
                   f"{worst['delta_points']:+.1f}).")
    for g, r in head_to_head(rows, "gptq", "rtn"):
        diff = g["accuracy"] - r["accuracy"]
        rel = "is level with" if abs(diff) < NOISE_POINTS else "beats" if diff > 0 else "loses to"
        setting = g["comparable"]["setting"]
        out.append(f"GPTQ {setting} ({g['accuracy']:.1f}) {rel} RTN {setting} ({r['accuracy']:.1f})"
                   + (f": {diff:+.1f} points is within sampling noise here" if abs(diff) < NOISE_POINTS else "") + ".")
    four = [x for x in rows if x["delta_points"] is not None and x["weight_bits"] is not None and x["weight_bits"] <= 4]
    if four:
        out.append("4-bit cost (points vs FP): " + ", ".join(
            f"{x['variant']} {x['delta_points']:+.1f}" for x in sorted(four, key=lambda x: -x["delta_points"])) + ".")
    same_kernel = [x["speed_vs_fp"] for x in rows if x["speed_vs_fp"] and "dense matmul" in (x["backend"] or "")
                   and "no memory saving" in (x["backend"] or "")]
    if same_kernel:
        wrapped = all("offload wrapper" in (x["backend"] or "") for x in rows if x["speed_vs_fp"] in same_kernel)
        out.append(f"The compressed-tensors weight-only rows run the baseline's dense float32 matmuls (decompressed "
                   f"at load) and measure {min(same_kernel):.2f}x-{max(same_kernel):.2f}x the baseline: "
                   + ("every layer also passes compressed-tensors' offload wrapper on each call, and at batch 1 a "
                      "model this small is bound by per-call overhead; the spread inside that band is load noise."
                      if wrapped else "the same kernels, so the spread inside that band is load noise."))
    skipped = [x for x in rows if x["status"] in ("skipped", "failed")]
    for x in skipped:
        out.append(f"{x['variant']} {x['status']}: {x['reason']}")
    return out


def head_to_head(rows: list[dict], method: str, other: str) -> list[tuple[dict, dict]]:
    """(row of `method`, row of `other`) for each setting both were run at alone (same label: same bits,
    group size and other parameters), with accuracy for both; in the order of `method`'s rows. The first
    variant of each method at a setting is the one compared."""
    def by_setting(name: str) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for r in rows:
            c = r.get("comparable")
            if c and c["method"] == name and r["accuracy"] is not None:
                found.setdefault(c["setting"], r)
        return found

    mine, theirs = by_setting(method), by_setting(other)
    return [(r, theirs[setting]) for setting, r in mine.items() if setting in theirs]


def render(rows: list[dict], tasks: list[str], title: str, host: str) -> str:
    head = ["variant", "configuration", "accuracy", "Δ vs FP (pts)", "bits/param in memory", "stored bits/param",
            "weights in memory (MiB)", "disk (MiB)", "tokens/s b=1 (x FP)", "backend / kernel that ran"]
    out = [f"# {title}", "",
           "Produced by `compress run recipes/quantization.yaml` then `python -m benchmarks.quantization_table "
           "runs/quantization --reprofile 5 --out benchmarks/results/quantization_embedded_cpu` (every figure from "
           "the study's "
           "ledger; each variant saved, reloaded from disk, evaluated and profiled as it runs).", "",
           f"Host: {host}. Accuracy: mean over {', '.join(tasks)} (percent; identical prompts, greedy). "
           "Bits/param over the decoder's Linear layers (lm_head and embeddings stay FP); in memory = "
           "every tensor storage of the model reloaded from disk as it runs; stored = safetensors bytes. "
           "Tokens/s: the study's profiler, batch 1, fresh process per variant; a shared 2-core CPU, so "
           "speed differences under ~15% are noise.", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        if r["status"] in ("skipped", "failed"):
            out.append(f"| {r['variant']} | {r['config']} | {r['status']}: {r['reason']} |" + " |" * 7)
            continue
        tps = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f} ({_f(r['speed_vs_fp'], '.2f')}x)"
        delta = "—" if r["variant"] == BASELINE else _f(r["delta_points"], "+.1f")
        out.append("| " + " | ".join([
            r["variant"], r["config"], _f(r["accuracy"], ".1f"), delta, _f(r["bits_per_param_in_memory"], ".2f"),
            _f(r["stored_bits_per_param"], ".2f"), _mib(r["weight_bytes_in_memory"]), _mib(r["disk_bytes"]), tps,
            r["backend"] or "—"]) + " |")
    per_task = ["", "Accuracy per task:", "", "| variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in rows:
        if r["accuracy_by_task"]:
            per_task.append(f"| {r['variant']} | " + " | ".join(_f(r["accuracy_by_task"].get(t), ".1f")
                                                               for t in tasks) + " |")
    notes = ["", "Findings:", ""] + [f"- {line}" for line in findings(rows)]
    return "\n".join(out + per_task + notes) + "\n"


def reprofile_rows(ledger: Ledger, rows: list[dict], rounds: int) -> dict:
    medians, samples, info = reprofile(ledger, [r["variant"] for r in rows if r["status"] == "ok"], rounds)
    for r in rows:
        if r["variant"] in medians:
            r["tokens_per_s"], r["tokens_per_s_samples"] = medians[r["variant"]][1], samples[r["variant"]]
            r["speed_vs_fp"] = medians[r["variant"]][1] / medians[BASELINE][1]
    use_timed_backends(rows, info)
    return info


def describe_host(host: Host | None) -> str:
    """"cpu AMD EPYC, cpu_cores 2, torch_threads 2, torch 2.13.0+cpu, load_avg_1m 1.02": the fields that are set."""
    if host is None:
        return "unknown"
    parts = [f"{k} {', '.join(f'{n}={x}' for n, x in v.items()) if isinstance(v, dict) else v}"
             for k, v in host.model_dump().items() if v not in (None, "", {})]
    return ", ".join(parts) or "unknown"


def main(argv: list[str] | None = None) -> None:
    p = table_parser(__doc__, "Quantization methods on the embedded model (CPU)")
    a = p.parse_args(argv)
    ledger = Ledger(a.study / "results.sqlite")
    rows, tasks = quantization_rows(ledger)
    profiling = reprofile_rows(ledger, rows, a.reprofile) if a.reprofile else None
    if a.profile_from:
        profiling = reuse_profile(rows, a.profile_from)
    base = ledger.variant(BASELINE)
    host_info = base.profile.host if base is not None and base.profile is not None else None
    host = describe_host(host_info)
    text = render(rows, tasks, a.title, host) + (reprofile_note(profiling) if profiling else "")
    write_table(a.out, text, {"study": str(a.study), "host": host_info.model_dump() if host_info else {},
                              "tasks": tasks, "rows": rows, "findings": findings(rows), "reprofile": profiling})


if __name__ == "__main__":
    main()

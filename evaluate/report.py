"""From the ledger to files a person opens: results.json (one row per variant x task), report.md with
its plots in plots/, and report.html, the same report self-contained (plots embedded as data URIs).

The report ends in a decision: the recipe's `select:` block (or its defaults) picks the variant to
deploy, or says that none qualifies, and why."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from evaluate.ledger import Ledger
from evaluate.pareto import (
    FRONT_OBJECTIVES,
    Selection,
    SelectSpec,
    VariantSummary,
    pareto_front,
    select_variant,
    summarize_variants,
)
from evaluate.plots import accuracy_vs_cost, batch_sweep, data_uri, delta_heatmap
from evaluate.records import CellMetrics, ResultRow, VariantRecord
from evaluate.sni import write_sni_outputs

BASELINE = "baseline"
log = logging.getLogger("slimlab")


def _breakdowns(c: CellMetrics) -> dict[str, dict[str, float]]:
    """Per-group accuracies and counts as results.json shows them: by_<key> and by_<key>_n."""
    out: dict[str, dict[str, float]] = {}
    for key, values in c.breakdowns.items():
        out[f"by_{key}"] = values
        if key in c.breakdown_counts:
            out[f"by_{key}_n"] = c.breakdown_counts[key]
    return out


def result_row(v: VariantRecord, cell: str, c: CellMetrics | None, b: CellMetrics | None) -> ResultRow:
    """One variant on one task cell with the variant's costs: a row of results.json."""
    fp, prof = v.footprint, v.profile
    b1 = prof.batch(1) if prof is not None else None
    value = c.value() if c else None
    base_value = b.value() if b else None
    backend = fp.backend.describe() if fp else (prof.backend.describe() if prof else None)
    return ResultRow(
        variant=v.variant, task=cell, metric=(c or b).metric if (c or b) else "accuracy", value=value,
        n=int(c.n) if c else None,
        delta_vs_baseline=(value - base_value) if (value is not None and base_value is not None) else None,
        higher_is_better=(c or b).higher_is_better if (c or b) else True,
        truncated=c.truncated if c else None, rules=c.rules if c and c.rules else None,
        instruction_following=c.instruction_following if c else None,
        accuracy_std=c.accuracy_std if c else None,
        weight_bytes=fp.weight_bytes if fp else None, bits_per_param=fp.bits_per_param if fp else None,
        n_params=fp.n_params if fp else None, disk_bytes=v.disk_bytes,
        peak_memory_bytes=prof.peak_memory() if prof else None,
        load_rss_delta_bytes=prof.load_rss_delta_bytes if prof else None,
        latency_ms_per_token=b1.latency_ms_per_token if b1 else None, ttft_ms=b1.ttft_ms if b1 else None,
        tokens_per_s=b1.tokens_per_s if b1 else None, backend=backend,
        device=prof.device if prof else None, dtype=prof.dtype if prof else None,
        steps=v.steps_text, status=v.status or "pending", reason=v.reason,
        extra_metrics=c.other_metrics() if c else {}, breakdowns=_breakdowns(c) if c else {},
        kl_mean=c.kl_mean if c else None,
    )


def result_rows(ledger: Ledger) -> list[ResultRow]:
    cells = ledger.cells()
    base = {c.cell: c.metrics for c in cells if c.variant == BASELINE}
    task_cells = list(dict.fromkeys(c.cell for c in cells if c.variant == BASELINE))
    rows = []
    for v in ledger.variants():
        mine = {c.cell: c.metrics for c in cells if c.variant == v.variant}
        rows += [result_row(v, cell, mine.get(cell), base.get(cell)) for cell in task_cells or list(mine)]
    return rows


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _mib(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:.2f}"


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return "—" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table followed by a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# study metadata and the selection policy


def study_recipe(ledger: Ledger, recipe: Any = None) -> dict:
    """The recipe as a dict: the one given, else the last run's copy in the ledger (for `compress report`)."""
    if recipe is not None:
        return recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    last = ledger.last_run()
    return dict(last.recipe) if last else {}


def select_policy(recipe: dict) -> tuple[SelectSpec, bool]:
    """(SelectSpec, whether the recipe set it)."""
    block = recipe.get("select")
    return (SelectSpec.model_validate(block), True) if block else (SelectSpec(), False)


# ---------------------------------------------------------------------------------------------
# sections


def _recommendation(selection: Selection, explicit: bool) -> list[str]:
    out = ["## Recommendation", ""]
    if selection.chosen is None:
        out.append("**No variant qualifies.** " + selection.reason)
    else:
        out.append(f"**Deploy {selection.chosen}.** " + selection.reason)
    out += ["", f"Policy: {selection.policy}."
            + ("" if explicit else " (Default policy: add a `select:` block to the recipe to change it, e.g. "
               "`select: {max_accuracy_drop: 1.0, minimize: memory}`.)")]
    if selection.rejected:
        out += ["", "Left out:", ""]
        out += [f"- **{v}**: {_cell(why)}" for v, why in selection.rejected.items()]
    out.append("")
    return out


def _accuracy(rows: list[ResultRow], variants: list[str], tasks: list[str], by: dict, first: dict) -> list[str]:
    body = []
    for v in variants:
        cells, deltas = [], []
        for t in tasks:
            r = by.get((v, t))
            if r is None or r.value is None:
                cells.append("—")
                continue
            d = r.delta_vs_baseline
            std = f" ± {r.accuracy_std:.1f}" if r.accuracy_std is not None else ""
            digits = ".1f" if r.higher_is_better else ".3f"
            cells.append(f"{r.value:{digits}}{std}" + ("" if v == BASELINE or d is None else f" ({d:+{digits}})"))
            if d is not None and r.higher_is_better:
                deltas.append(d)
        mean_delta = "" if v == BASELINE else (f"{sum(deltas) / len(deltas):+.1f}" if deltas else "—")
        body.append([v, _cell(first[v].steps), *cells, mean_delta])
    metric_names = {t: next((r.metric for r in rows if r.task == t), "accuracy") for t in tasks}
    header = ["variant", "steps"] + [t if metric_names[t] == "accuracy" else f"{t} ({metric_names[t]})"
                                     for t in tasks] + ["mean Δ"]
    out = ["## Accuracy", "", "Per task: score (Δ vs baseline, points); ± is the spread over sampled repeats. "
           "Perplexity (lower is better) is shown with its Δ but stays out of mean Δ.", ""]
    return out + _table(header, body)


def _fidelity(variants: list[str], tasks: list[str], cells: dict[tuple[str, str], CellMetrics]) -> list[str]:
    """Perplexity cells: perplexity and its change, and the variant's agreement with the FP model's
    next-token distribution on the same windows (KL per token, top-1 agreement), as llama.cpp reports."""
    out: list[str] = []
    for t in tasks:
        got = {v: c for v in variants if (c := cells.get((v, t))) is not None and c.perplexity is not None}
        if not got:
            continue
        base = got.get(BASELINE)
        sample = next(iter(got.values()))
        out += [f"## Fidelity to the FP model: {t}", "",
                f"{int(sample.n)} windows of {int(sample.seq_len or 0)} tokens "
                f"({int(sample.n_tokens or 0):,} predicted tokens; tokenizer {sample.tokenizer or '?'}). "
                "KL = KL(FP || variant) of the next-token distribution per token; top-1 = share of positions "
                "where both models' most likely next token is the same.", ""]
        body = []
        for v, c in got.items():
            ratio = c.perplexity / base.perplexity if base is not None else None
            body.append([v, f"{c.perplexity:.3f}", "" if v == BASELINE else _fmt(ratio, ".4f"),
                         "0" if v == BASELINE else _fmt(c.kl_mean, ".5f"),
                         _fmt(c.kl_p50, ".5f"), _fmt(c.kl_p90, ".5f"), _fmt(c.kl_p99, ".4f"), _fmt(c.kl_max, ".3f"),
                         "100" if v == BASELINE else _fmt(c.top1_agreement, ".2f")])
        out += _table(["variant", "perplexity", "× FP", "mean KL", "KL p50", "KL p90", "KL p99", "KL max",
                       "top-1 agreement (%)"], body)
    return out


def _extraction(variants: list[str], tasks: list[str], cells: dict[tuple[str, str], CellMetrics]) -> list[str]:
    """How each answer was read (the parser's rule per output) and how many outputs ran out of tokens."""
    body = []
    for t in tasks:
        for v in variants:
            c = cells.get((v, t))
            if c is None or not c.rules:
                continue
            n = sum(c.rules.values())
            rules = ", ".join(f"{rule} {count}" for rule, count in c.rules.items())
            body.append([t, v, str(n), f"{int(c.truncated or 0)}", f"{int(c.repeat_loops or 0)}",
                         f"{100 * c.rules.get('none', 0) / n:.1f}", _cell(rules)])
    if not body:
        return []
    return ["## Answer extraction", "",
            "Which rule of the parser read each output's answer (guessing rules such as last_number do not "
            "count as following the format), how many outputs hit max_new_tokens before ending (truncated: their "
            "answer may never have come; raise max_new_tokens), and how many were ended in a repetition loop (the "
            "same 16 tokens for the 4th time: greedy decoding never leaves such a loop, more tokens would not help).",
            "", *_table(["task", "variant", "outputs", "truncated", "repetition loops", "no answer (%)", "rules"],
                        body)]


def _model_note(ledger: Ledger) -> list[str]:
    """Where the baseline's weights came from, when that matters for reading the results (a GGUF file)."""
    base = ledger.variant(BASELINE)
    source = base.build.source if base is not None and base.build is not None else None
    if source is None:
        return []
    types = ", ".join(f"{n} {t}" for t, n in source.tensor_types.items())
    quantized = [t for t in source.tensor_types if t not in ("F32", "F16", "BF16")]
    out = [f"**Baseline weights.** The FP baseline is `{Path(source.gguf_file).name}` dequantized to "
           f"{source.dtype} (tensors: {types}; sha256 {source.sha256[:12]}…)."]
    if quantized:
        out.append(f"Its weights already lie on the {'/'.join(quantized)} grid, so re-quantizing them to 4 bits "
                   "loses less than it would from a bf16 checkpoint: 4-bit variants may look kinder here than on "
                   "the original model, and 8-bit ones nearly free.")
    return [" ".join(out), ""]


def _instruction_following(variants: list[str], tasks: list[str], by: dict) -> list[str]:
    out = ["## Instruction following (% of outputs in the requested answer format)", ""]
    body = [[v] + [_fmt(r.instruction_following if (r := by.get((v, t))) else None) for t in tasks]
            for v in variants]
    return out + _table(["variant", *tasks], body)


def _other_metrics(rows: list[ResultRow], variants: list[str], tasks: list[str], by: dict) -> list[str]:
    """Every extra number a task or the judge recorded (accuracy_loglik, judge_agreement, ...), and the
    per-group breakdowns (by_perturbation, ...), each with its Δ vs the baseline when both exist."""
    out: list[str] = []
    names = list(dict.fromkeys(k for r in rows for k in r.extra_metrics))

    def extra(v: str, t: str) -> dict[str, float]:
        return r.extra_metrics if (r := by.get((v, t))) else {}

    def breakdowns(v: str, t: str) -> dict[str, dict[str, float]]:
        return r.breakdowns if (r := by.get((v, t))) else {}

    if names:
        out += ["## Other metrics", ""]
        body = []
        for t in tasks:
            for name in names:
                vals = [extra(v, t).get(name) for v in variants]
                if all(x is None for x in vals):
                    continue
                base = extra(BASELINE, t).get(name)
                shown = [_fmt(x, ".3g") if x is None or base is None or v == BASELINE
                         else f"{x:.3g} ({x - base:+.3g})" for v, x in zip(variants, vals, strict=True)]
                body.append([t, name, *shown])
        out += _table(["task", "metric", *variants], body)
    for t in tasks:
        kinds = list(dict.fromkeys(k for v in variants for k in breakdowns(v, t)))
        for kind in kinds:
            groups = list(dict.fromkeys(g for v in variants for g in breakdowns(v, t).get(kind, {})))
            base = breakdowns(BASELINE, t).get(kind, {})
            body = []
            for v in variants:
                got = breakdowns(v, t).get(kind)
                if not got:
                    continue
                body.append([v] + [_fmt(got.get(g)) + ("" if v == BASELINE or g not in base or g not in got
                                                         else f" ({got[g] - base[g]:+.1f})") for g in groups])
            if body:
                out += [f"### {t}: {kind.replace('_', ' ')}", "", *_table(["variant", *groups], body)]
    return out


def _pareto(summaries: list[VariantSummary], chosen: str | None, figures: dict[str, bytes]) -> list[str]:
    front = set(pareto_front(summaries, FRONT_OBJECTIVES))
    out = ["## Accuracy against cost", "",
           "Mean accuracy over tasks against weights in memory and against decode latency at batch 1. "
           "Red points are on the Pareto front of that plot (nothing else is both as accurate and cheaper); "
           "the ringed ★ point is the recommendation.", ""]
    for name, cost, label, scale in (("accuracy_vs_memory", "weight_bytes", "weights in memory (MiB)", 2**20),
                                     ("accuracy_vs_latency", "latency_ms_per_token", "ms/token at batch 1", 1.0)):
        png = accuracy_vs_cost(summaries, cost, label, scale, chosen)
        if png is not None:
            figures[name] = png
            out += [f"![{name.replace('_', ' ')}](plots/{name}.png)", ""]
    body = [[s.variant, _fmt(s.mean_accuracy), "" if s.variant == BASELINE else _fmt(s.mean_delta, "+.1f"),
             _mib(s.weight_bytes), _mib(s.peak_memory_bytes), _fmt(s.latency_ms_per_token, ".2f"),
             _fmt(s.tokens_per_s, ".1f"), "yes" if s.variant in front else ""] for s in summaries]
    out += _table(["variant", "mean accuracy", "mean Δ", "weights (MiB)", "peak (MiB)", "ms/token", "tokens/s",
                   "Pareto (acc, memory, latency)"], body)
    return out


def _heatmap(summaries: list[VariantSummary], tasks: list[str], figures: dict[str, bytes]) -> list[str]:
    png = delta_heatmap(summaries, tasks)
    if png is None:
        return []
    figures["delta_heatmap"] = png
    return ["## Per-task Δ vs baseline", "", "![per-task delta heatmap](plots/delta_heatmap.png)", ""]


def _efficiency(variants: list[str], first: dict) -> list[str]:
    out = ["## Efficiency (measured)", ""]
    body = [[v, _mib(r.weight_bytes), _fmt(r.bits_per_param, ".2f"), _fmt(r.n_params, ","),
             _mib(r.disk_bytes), _mib(r.peak_memory_bytes), _fmt(r.latency_ms_per_token, ".2f"),
             _fmt(r.tokens_per_s, ".1f"), _fmt(r.ttft_ms, ".1f"), _cell(r.backend)]
            for v in variants for r in [first[v]]]
    return out + _table(["variant", "weights in memory (MiB)", "bits/param", "params", "disk (MiB)",
                         "peak RSS/GPU (MiB)", "ms/token", "tokens/s", "TTFT (ms)", "backend"], body)


def _profiles(ledger: Ledger, figures: dict[str, bytes]) -> list[str]:
    """Load vs generation memory, and latency per batch size, each row naming device, dtype and kernel."""
    profs = {v.variant: v.profile for v in ledger.variants() if v.profile is not None}
    if not profs:
        return []
    out = ["## Load and generation, per batch size", "",
           "Load: time and RSS of loading (ru_maxrss just after loading is the load peak). Generation: "
           "RSS polled during untimed warm-up runs (CPU) or allocator peaks reset after loading (CUDA); "
           "timings are the median of the timed repeats. KV cache = bytes the cache holds at the end of "
           "generation (prompt + new tokens - 1).", ""]
    body = []
    for v, p in profs.items():
        nvml = p.nvml_after_load.process_bytes if p.nvml_after_load else None
        body.append([v, _fmt(p.load_s, ".2f"), _mib(p.load_rss_delta_bytes), _mib(p.load_peak_rss_bytes),
                     _mib(p.generation_peak_rss_bytes), _mib(p.cuda_load_max_memory_allocated),
                     _mib(nvml), _cell(p.device), _cell(p.dtype)])
    out += _table(["variant", "load (s)", "load RSS Δ (MiB)", "load peak RSS (MiB)", "generation peak RSS (MiB)",
                   "CUDA load peak (MiB)", "NVML process (MiB)", "device", "dtype"], body)
    body = []
    for v, p in profs.items():
        for r in p.batches:
            gen_peak = r.cuda_max_memory_allocated if r.cuda_max_memory_allocated is not None \
                else r.generation_peak_rss_bytes
            tokens = r.kv_cache_tokens if r.kv_cache_tokens is not None else "—"
            body.append([v, str(r.batch_size), _fmt(r.ttft_ms, ".1f"), _fmt(r.end_to_end_ms, ".1f"),
                         _fmt(r.latency_ms_per_token, ".2f"), _fmt(r.per_token_p50_ms, ".2f"),
                         _fmt(r.per_token_p90_ms, ".2f"), _fmt(r.tokens_per_s, ".1f"),
                         f"{_mib(r.kv_cache_bytes)} ({tokens} tok)", _mib(gen_peak),
                         _cell(p.backend.kernel if p.kind == "local" else p.backend.describe()), _cell(r.timer)])
    out += _table(["variant", "batch", "TTFT (ms)", "end-to-end (ms)", "ms/token", "p50 (ms)", "p90 (ms)", "tokens/s",
                   "KV cache (MiB)", "generation peak (MiB)", "kernel", "timer"], body)
    png = batch_sweep({v: p.batches for v, p in profs.items()})
    if png is not None:
        figures["batch_sweep"] = png
        out += ["![batch-size sweep](plots/batch_sweep.png)", ""]
    return out


def _served(ledger: Ledger, recipe: dict) -> list[str]:
    """Rows served by vLLM (`<variant>@vllm`): start, memory as vLLM reports it and as the server's processes hold
    it, streamed latency at batch 1 and at the study's decoding batch size, and what served it."""
    rows = [v for v in ledger.variants() if v.serves is not None]
    if not rows:
        return []
    batch = ((recipe.get("decoding") or {}).get("batch_size")) or 1
    out = ["## Served by vLLM", "",
           "Each model's checkpoint served by `vllm serve` from its own environment and evaluated through the "
           "completions API on the same frozen prompts and decoding (rows `<variant>@vllm`; token-window tasks "
           "are not served). Start: launch to /health answering. Weights (GPU) and non-KV memory (CPU: the "
           "worker's RSS before its KV cache, weights included) and the KV cache pool are vLLM's own figures; "
           "server RSS is the server's process tree right after start, summed (PSS counts shared pages once); "
           "NVML on GPU. TTFT and decode tokens/s: streamed requests of random prompts sent at once, median of "
           f"the timed rounds (request wall time: HTTP and scheduling included); b{batch} is decoding.batch_size.",
           ""]
    body = []
    for v in rows:
        p = v.profile
        info = p.served if p is not None else None
        if info is None:
            status = v.status or "pending"
            reason = _cell((v.reason or "")[:300] + ("…" if v.reason and len(v.reason) > 300 else ""))
            body.append([v.variant, f"**{status}**" + (f": {reason}" if v.reason else "")] + ["—"] * 10)
            continue
        b1, bb = p.batch(1), next((r for r in p.batches if r.batch_size == batch), None)
        kv = (f"{_mib(info.kv_cache_bytes)} ({info.kv_cache_tokens:,} tok)" if info.kv_cache_tokens
              else _mib(info.kv_cache_bytes))
        rss = f"{_mib(info.server_rss_bytes)} ({_mib(info.server_pss_bytes)})"
        body.append([v.variant, v.status or "pending", _fmt(info.start_s, ".1f"), _cell(info.compilation),
                     _mib(info.weights_bytes), _mib(info.non_kv_bytes), kv, rss, _mib(info.nvml_bytes),
                     _fmt(b1.ttft_ms if b1 else None, ".1f"), _fmt(b1.tokens_per_s if b1 else None, ".1f"),
                     _fmt(bb.tokens_per_s if bb else None, ".1f"), _cell(p.backend.describe())])
    return out + _table(["served row", "status", "start (s)", "compilation", "weights (MiB, vLLM)",
                         "non-KV (MiB, vLLM)", "KV cache (MiB, vLLM)", "server RSS (PSS) MiB", "NVML (MiB)",
                         "TTFT b1 (ms)", "tok/s b1", f"tok/s b{batch}", "backend"], body)


AGREEMENT_IDS_SHOWN = 10


def _agreement(ledger: Ledger, tasks: list[str]) -> list[str]:
    """Each served row against its HF row, item for item (figures stored with the served cells)."""
    cells = {(c.variant, c.cell): c.metrics for c in ledger.cells()}
    body = []
    for v in ledger.variants():
        if v.serves is None:
            continue
        for t in tasks:
            c, hf = cells.get((v.variant, t)), cells.get((v.serves, t))
            if c is None or c.hf_vllm_n is None:
                continue
            n = c.hf_vllm_n
            flips = set(c.hf_vllm_verdict_differs or [])
            ids = c.hf_vllm_differing or []
            differing = n - (c.hf_vllm_identical or 0)
            shown = ", ".join(i + ("†" if i in flips else "") for i in ids[:AGREEMENT_IDS_SHOWN])
            more = differing - min(len(ids), AGREEMENT_IDS_SHOWN)
            shown = (shown + (f" … (+{more} more)" if more > 0 else "")) or "—"
            loglik = f"{c.hf_vllm_same_loglik}/{n}" if c.hf_vllm_same_loglik is not None else "—"
            body.append([v.serves, t, f"{c.hf_vllm_identical}/{n}", f"{c.hf_vllm_same_verdict}/{n}", loglik,
                         _fmt(hf.value() if hf else None), _fmt(c.value()), _cell(shown)])
    if not body:
        return []
    return ["## HF / vLLM agreement", "",
            "Item for item, on the same frozen prompts and decoding: outputs with identical text, outputs scored the "
            "same (same verdict), and for multiple choice the same option picked by log-likelihood (vLLM's prompt "
            "logprobs). Greedy decoding through other kernels (another dtype's matmuls, a quantized kernel instead of "
            "decompressed weights) may part after some tokens. Differing items: ids whose text differs, † where the "
            f"verdict differs too (the first {AGREEMENT_IDS_SHOWN}).", "",
            *_table(["variant", "task", "identical", "same verdict", "same log-lik pick", "HF", "vLLM",
                     "differing items"], body)]


def _mr_status(ledger: Ledger) -> list[str]:
    """MR-Score cells: the score, or why it is absent (a None mr_score would otherwise just be missing)."""
    lines = [f"- **{c.variant}** / {c.cell}: MR-Score {_fmt(c.metrics.mr_score)}; {_cell(c.metrics.mr_reason_status)}"
             for c in ledger.cells() if c.metrics.mr_reason_status is not None]
    return ["## MR-Score", "", *lines, ""] if lines else []


def _stages(ledger: Ledger) -> list[str]:
    stages = ledger.stages()
    if not stages:
        return []
    out = ["## Accuracy after each step of a chain", "", "| variant | after step | task | accuracy |",
           "|---|---|---|---|"]
    for s in stages:
        out.append(f"| {s.variant} | {s.stage + 1}: {s.method} | {s.cell} | "
                   f"{_fmt(s.metrics.value(), '.1f' if s.metrics.higher_is_better else '.3f')} |")
    out.append("")
    return out


def _sni_section(ledger: Ledger, out_dir: Path | None) -> list[str]:
    """The SNI three-tier view (evaluate.sni, another module's job): writes sni_three_tier.json and returns
    its markdown section; nothing when the study has no SNI cell or the module is absent."""
    if out_dir is None:
        return []
    try:
        text = write_sni_outputs(out_dir, ledger)
    except Exception as exc:  # the rest of the report must not depend on one section
        log.warning("SNI section not rendered: %s", exc)
        return [f"_SNI section not rendered: {_cell(exc)}_", ""]
    return [text, ""] if text else []


def render_markdown(rows: list[ResultRow], ledger: Ledger, title: str, recipe: dict | None = None,
                    figures: dict[str, bytes] | None = None, out_dir: Path | None = None) -> str:
    """The report; figures (name -> PNG) are filled in and referenced as plots/<name>.png."""
    figures = {} if figures is None else figures
    variants = list(dict.fromkeys(r.variant for r in rows))
    tasks = list(dict.fromkeys(r.task for r in rows))
    by = {(r.variant, r.task): r for r in rows}
    first = {v: next(r for r in rows if r.variant == v) for v in variants}
    summaries = summarize_variants(rows)
    spec, explicit = select_policy(recipe or {})
    selection = select_variant(summaries, spec)
    model = ((recipe or {}).get("model") or {}).get("name")
    out = [f"# slimlab study: {title}", ""]
    out += [(f"Model `{model}`. " if model else "") + "Accuracy in percent on identical prompts and decoding; "
            "Δ is the change against the FP baseline in points. Memory and latency are measured on the format "
            "that ran (backend column).", ""]
    out += _model_note(ledger)
    out += _recommendation(selection, explicit)
    out += _accuracy(rows, variants, tasks, by, first)
    cells = {(c.variant, c.cell): c.metrics for c in ledger.cells()}
    out += _fidelity(variants, tasks, cells)
    out += _pareto(summaries, selection.chosen, figures)
    out += _heatmap(summaries, tasks, figures)
    out += _instruction_following(variants, [t for t in tasks if (r := by.get((BASELINE, t))) is None
                                             or r.higher_is_better], by)
    out += _extraction(variants, tasks, cells)
    out += _other_metrics(rows, variants, tasks, by)
    out += _efficiency(variants, first)
    out += _profiles(ledger, figures)
    out += _served(ledger, recipe or {})
    out += _agreement(ledger, tasks)
    out += _mr_status(ledger)
    problems = [r for r in first.values() if r.status in ("failed", "skipped")]
    if problems:
        out += ["## Variants that did not run", ""]
        out += [f"- **{r.variant}** ({r.status}): {_cell(r.reason)}" for r in problems]
        out.append("")
    out += _stages(ledger)
    out += _sni_section(ledger, out_dir)
    out += ["Peak memory on CPU is the profiling process's peak RSS (interpreter and libraries "
            "included); weights in memory counts every tensor storage the loaded model holds.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f4f4f4;padding:0 .2em}h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;
margin-top:1.6em}"""


def render_html(title: str, markdown_text: str, figures: dict[str, bytes]) -> str:
    """The markdown report as one self-contained HTML file: markdown-it renders it (raw HTML in the
    text is escaped), and each plots/<name>.png reference becomes an embedded data URI."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    for name, png in figures.items():
        body = body.replace(f'src="plots/{name}.png"', f'src="{data_uri(png)}"')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>\n{body}</body></html>\n")


def write_figures(figures: dict[str, bytes], out_dir: Path) -> None:
    if figures:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            (out_dir / "plots" / f"{name}.png").write_bytes(png)


def write_outputs(ledger: Ledger, out_dir: Path, recipe: Any = None) -> Path:
    rows = result_rows(ledger)
    path = out_dir / "results.json"
    path.write_text(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
    recipe_dict = study_recipe(ledger, recipe)
    title = recipe_dict.get("name") or out_dir.name
    figures: dict[str, bytes] = {}
    text = render_markdown(rows, ledger, title, recipe_dict, figures, out_dir)
    write_figures(figures, out_dir)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(render_html(f"slimlab study: {title}", text, figures))
    return path

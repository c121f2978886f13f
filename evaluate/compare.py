"""`compress compare DIR1 DIR2`: two studies side by side (e.g. the same variants on two models, or
one model on two machines), rebuilt from their ledgers: per-variant accuracy, memory and latency in
adjacent columns, per-task scores of the tasks both ran, and one accuracy-vs-memory plot of both."""

from __future__ import annotations

from pathlib import Path

from evaluate.ledger import Ledger
from evaluate.pareto import VariantSummary, summarize_variants
from evaluate.plots import new_figure, to_png
from evaluate.records import ResultRow
from evaluate.report import _cell, _fmt, _mib, _table, render_html, result_rows, study_recipe, write_figures


def load_study(directory: Path) -> tuple[str, dict, list[ResultRow], list[VariantSummary]]:
    path = Path(directory) / "results.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a study output directory?")
    ledger = Ledger(path)
    try:
        recipe = study_recipe(ledger)
        rows = result_rows(ledger)
    finally:
        ledger.close()
    return recipe.get("name") or Path(directory).name, recipe, rows, summarize_variants(rows)


def _combined_plot(studies: list[tuple[str, list[VariantSummary]]]) -> bytes | None:
    fig = new_figure((6.4, 4.2))
    ax = fig.subplots()
    drawn = False
    for (label, summaries), marker in zip(studies, ("o", "s"), strict=False):
        pts = [s for s in summaries if s.mean_accuracy is not None and s.weight_bytes is not None]
        if not pts:
            continue
        drawn = True
        ax.scatter([s.weight_bytes / 2**20 for s in pts], [s.mean_accuracy for s in pts], marker=marker, s=50,
                   label=label)
        for s in pts:
            ax.annotate(s.variant, (s.weight_bytes / 2**20, s.mean_accuracy), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    if not drawn:
        return None
    ax.set_xlabel("weights in memory (MiB)")
    ax.set_ylabel("mean accuracy over tasks (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def render_compare(dir_a: Path, dir_b: Path, figures: dict[str, bytes]) -> str:
    (name_a, rec_a, rows_a, sum_a), (name_b, rec_b, rows_b, sum_b) = load_study(dir_a), load_study(dir_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} ({Path(dir_a).name})", f"{name_b} ({Path(dir_b).name})"
    model = {name_a: (rec_a.get("model") or {}).get("name"), name_b: (rec_b.get("model") or {}).get("name")}
    out = [f"# slimlab comparison: {name_a} vs {name_b}", "",
           f"- **A** = {name_a}: `{dir_a}`, model `{model[name_a]}`",
           f"- **B** = {name_b}: `{dir_b}`, model `{model[name_b]}`", ""]
    a, b = {s.variant: s for s in sum_a}, {s.variant: s for s in sum_b}
    names = list(dict.fromkeys([*a, *b]))
    body = []
    for v in names:
        sa, sb = a.get(v), b.get(v)

        def pair(attr: str, fmt: str = ".1f", sa: VariantSummary | None = sa, sb: VariantSummary | None = sb) -> list:
            return [_fmt(getattr(s, attr), fmt) if s else "·" for s in (sa, sb)]

        body.append([v, *pair("mean_accuracy"), *pair("mean_delta", "+.1f"),
                     *[_mib(s.weight_bytes) if s else "·" for s in (sa, sb)],
                     *[_mib(s.peak_memory_bytes) if s else "·" for s in (sa, sb)],
                     *pair("latency_ms_per_token", ".2f"), *pair("tokens_per_s")])
    out += ["## Variants", "", "· = the variant is not in that study.", ""]
    out += _table(["variant", "acc A", "acc B", "mean Δ A", "mean Δ B", "weights A (MiB)", "weights B (MiB)",
                   "peak A (MiB)", "peak B (MiB)", "ms/token A", "ms/token B", "tokens/s A", "tokens/s B"], body)
    tasks_a = list(dict.fromkeys(r.task for r in rows_a))
    tasks_b = {r.task for r in rows_b}
    common = [t for t in tasks_a if t in tasks_b]
    if common:
        by_a = {(r.variant, r.task): r.value for r in rows_a}
        by_b = {(r.variant, r.task): r.value for r in rows_b}
        body = [[v, *[f"{_fmt(by_a.get((v, t)))} / {_fmt(by_b.get((v, t)))}" for t in common]] for v in names]
        out += ["## Tasks both studies ran (A / B)", "", *_table(["variant", *common], body)]
    only = sorted(set(tasks_a) ^ tasks_b)
    if only:
        out += [f"Tasks in one study only: {', '.join(only)}.", ""]
    backends = [[v, _cell(a[v].backend if v in a else None), _cell(b[v].backend if v in b else None)] for v in names]
    out += ["## Backends", "", *_table(["variant", "A", "B"], backends)]
    png = _combined_plot([(f"A: {name_a}", sum_a), (f"B: {name_b}", sum_b)])
    if png is not None:
        figures["compare_accuracy_vs_memory"] = png
        out += ["![accuracy vs memory, both studies](plots/compare_accuracy_vs_memory.png)", ""]
    return "\n".join(out)


def write_compare(dir_a: Path, dir_b: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {}
    text = render_compare(dir_a, dir_b, figures)
    write_figures(figures, out_dir)
    (out_dir / "compare.md").write_text(text)
    (out_dir / "compare.html").write_text(render_html(text.splitlines()[0].lstrip("# "), text, figures))
    return out_dir / "compare.md"

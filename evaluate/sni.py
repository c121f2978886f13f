"""Three-tier SNI results (arXiv 2406.11402): BERTScore recall x100 per task type, top-level domain and
reasoning type, next to the overall mean, with the best of the prompt styles per entity.

An item with several labels counts in each label's group (explode, then mean). Each SNI cell of a
study is one prompt style (its label, e.g. ``sni-k4-def``); a sample's ``score`` is its recall in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluate.harness import breakdown_by
from evaluate.ledger import Ledger
from evaluate.tasks import TASKS

BASELINE = "baseline"
TIERS: tuple[tuple[str, str, str], ...] = (  # (tier, meta key, heading)
    ("task_type", "categories", "Task type"),
    ("domain", "domains", "Domain (top level)"),
    ("reasoning", "reasoning", "Reasoning type"),
)
METRIC = "BERTScore recall x100 (first reference)"


def style_summary(samples: list[dict]) -> dict[str, Any]:
    """One prompt style: overall mean and, per tier, {entity: {"mean", "n"}} (multi-label exploded)."""
    tiers: dict[str, dict[str, dict[str, float]]] = {}
    for tier, key, _ in TIERS:
        means, counts = breakdown_by(samples, key)
        tiers[tier] = {label: {"mean": means[label], "n": counts[label]} for label in means}
    overall = 100.0 * sum(s["score"] for s in samples) / len(samples) if samples else None
    return {"overall": overall, "n": len(samples), "tiers": tiers}


def _best(values: dict[str, float | None]) -> tuple[str | None, float | None]:
    """The highest value and its style; ties go to the style listed first."""
    best_style, best = None, None
    for style, value in values.items():
        if value is not None and (best is None or value > best):
            best_style, best = style, value
    return best_style, best


def three_tier(samples_by_style: dict[str, list[dict]]) -> dict[str, Any]:
    """One model's three-tier result over its prompt styles (dict order = style order)."""
    per_style = {style: style_summary(samples) for style, samples in samples_by_style.items()}
    overall = {style: s["overall"] for style, s in per_style.items()}
    best_style, best = _best(overall)
    tiers: dict[str, dict[str, dict[str, Any]]] = {}
    for tier, _, _ in TIERS:
        labels = list(dict.fromkeys(lab for s in per_style.values() for lab in s["tiers"][tier]))
        rows = {}
        for label in sorted(labels):
            by_style = {st: s["tiers"][tier][label]["mean"] for st, s in per_style.items() if label in s["tiers"][tier]}
            n = max(s["tiers"][tier][label]["n"] for s in per_style.values() if label in s["tiers"][tier])
            style, value = _best(by_style)
            rows[label] = {"n": n, "by_style": by_style, "best_style": style, "best": value}
        tiers[tier] = rows
    return {"overall": overall, "best_style": best_style, "best": best,
            "n": max((s["n"] for s in per_style.values()), default=0), "tiers": tiers}


def three_tier_study(samples: dict[str, dict[str, list[dict]]]) -> dict[str, Any]:
    """{variant: {style: samples}} -> the JSON written to sni_three_tier.json."""
    styles = list(dict.fromkeys(st for by_style in samples.values() for st in by_style))
    return {"metric": METRIC, "styles": styles,
            "variants": {v: three_tier(by_style) for v, by_style in samples.items()}}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def render_sni_markdown(result: dict[str, Any] | None = None, *, ledger: Any = None,
                        out_dir: Path | None = None) -> str:
    """Markdown section: overall mean per style, then one best-of-styles table per tier (Δ vs baseline).
    Give ``result`` (from :func:`three_tier_study`), or ``ledger`` and ``out_dir`` to read a study's samples;
    "" when there is nothing to show."""
    if result is None:
        result = sni_result(out_dir, ledger) if (ledger is not None and out_dir is not None) else None
    if not result or not result["variants"]:
        return ""
    variants, styles = list(result["variants"]), result["styles"]
    base = result["variants"].get(BASELINE)
    out = ["", "## Super-Natural Instructions: three-tier evaluation", "",
           f"{METRIC}, mean over instances; an instance with several labels counts in each. Per entity "
           f"the best of the {len(styles)} prompt styles, named after the value; Δ is against the baseline's "
           "best in points.", "", "### Overall mean per prompt style", ""]
    out.append("| variant | " + " | ".join(styles) + " | best |")
    out.append("|---|" + "---|" * (len(styles) + 1))
    for v in variants:
        r = result["variants"][v]
        out.append(f"| {v} | " + " | ".join(_fmt(r["overall"].get(st)) for st in styles)
                   + f" | {_fmt(r['best'])} ({r['best_style'] or '—'}) |")
    for tier, _, heading in TIERS:
        labels = sorted({lab for r in result["variants"].values() for lab in r["tiers"][tier]})
        out += ["", f"### {heading}", "", "| " + heading.lower() + " | n | " + " | ".join(variants) + " |",
                "|---|---|" + "---|" * len(variants)]
        for label in labels:
            n = max(r["tiers"][tier][label]["n"] for r in result["variants"].values() if label in r["tiers"][tier])
            cells = []
            for v in variants:
                row = result["variants"][v]["tiers"][tier].get(label)
                if row is None or row["best"] is None:
                    cells.append("—")
                    continue
                b = (base or {}).get("tiers", {}).get(tier, {}).get(label) if v != BASELINE else None
                delta = f" ({row['best'] - b['best']:+.1f})" if b and b["best"] is not None else ""
                cells.append(f"{row['best']:.1f}{delta} · {row['best_style']}")
            out.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _sni_cells(ledger: Ledger) -> list[tuple[str, str]]:
    """(variant, cell) of every finished SNI cell, styles in the recipe's task order when known."""
    cells = [(c.variant, c.cell) for c in ledger.cells() if c.task in TASKS and TASKS[c.task].family == "sni"]
    run = ledger.last_run()
    try:
        order = [t.get("label") or t["name"] for t in (run.recipe if run else {}).get("tasks", [])]
    except (TypeError, AttributeError, KeyError):
        order = []
    rank = {cell: i for i, cell in enumerate(order)}
    variant_rank = {v.variant: i for i, v in enumerate(ledger.variants())}
    return sorted(cells, key=lambda vc: (variant_rank.get(vc[0], len(variant_rank)), rank.get(vc[1], len(rank)), vc[1]))


def sni_result(out_dir: Path, ledger: Ledger) -> dict[str, Any] | None:
    """The three-tier result of a study from samples/<variant>/<cell>.jsonl of its SNI cells; None if none."""
    samples: dict[str, dict[str, list[dict]]] = {}
    for variant, cell in _sni_cells(ledger):
        path = Path(out_dir) / "samples" / variant / f"{cell}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            samples.setdefault(variant, {})[cell] = rows
    return three_tier_study(samples) if samples else None


def write_sni_outputs(out_dir: Path, ledger: Ledger) -> str | None:
    """Write ``sni_three_tier.json`` into the study directory and return the Markdown section for
    report.md; None (and no file) when the study has no finished SNI cell."""
    result = sni_result(out_dir, ledger)
    if result is None:
        return None
    (Path(out_dir) / "sni_three_tier.json").write_text(json.dumps(result, indent=2))
    return render_sni_markdown(result)

"""The report's figures as PNG bytes (matplotlib, Agg canvas, no pyplot global state): accuracy vs
memory and vs latency with the Pareto front marked, the per-task Δ heatmap, and the batch-size sweep.
`data_uri` turns them into what a self-contained HTML file embeds."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evaluate.pareto import VariantSummary, pareto_front
from evaluate.records import BatchProfile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def new_figure(figsize: tuple[float, float]) -> Figure:
    """matplotlib is imported here, when a figure is really drawn: its import costs a quarter of a second,
    which a study with nothing to plot (a lone baseline) need not pay."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def accuracy_vs_cost(summaries: Sequence[VariantSummary], cost: str, xlabel: str, scale: float = 1.0,
                     chosen: str | None = None) -> bytes | None:
    """Scatter of mean accuracy against one cost, every point labelled, the 2-D Pareto front drawn as
    a step line and ringed; None when fewer than two variants have both numbers (one point compares nothing)."""
    pts = [s for s in summaries if s.mean_accuracy is not None and getattr(s, cost) is not None]
    if len(pts) < 2:
        return None
    front = set(pareto_front(pts, (("mean_accuracy", "max"), (cost, "min"))))
    fig = new_figure((6.4, 4.2))
    ax = fig.subplots()
    xs = [getattr(s, cost) / scale for s in pts]
    ys = [s.mean_accuracy for s in pts]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for s, x, y in zip(pts, xs, ys, strict=True):
        on = s.variant in front
        ax.scatter([x], [y], s=70 if on else 40, color="tab:red" if on else "tab:gray", zorder=3,
                   edgecolors="black" if s.variant == chosen else "none", linewidths=2)
        # points that (nearly) coincide get their labels stacked instead of printed over each other
        near = sum(abs(x - px) / span_x < 0.06 and abs(y - py) / span_y < 0.06 for px, py in placed)
        placed.append((x, y))
        ax.annotate(s.variant + (" ★" if s.variant == chosen else ""), (x, y), textcoords="offset points",
                    xytext=(6, 5 - 11 * near), fontsize=8)
    line = sorted((getattr(s, cost) / scale, s.mean_accuracy) for s in pts if s.variant in front)
    if len(line) > 1:
        ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="tab:red", alpha=0.6,
                label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean accuracy over tasks (%)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    return to_png(fig)


def delta_heatmap(summaries: Sequence[VariantSummary], tasks: Sequence[str]) -> bytes | None:
    """Variants x tasks, colour = Δ points vs baseline (diverging, centred on 0), value written in each cell."""
    rows = [s for s in summaries if s.variant != "baseline" and any(d is not None for d in s.task_deltas.values())]
    if not rows or not tasks:
        return None
    import numpy as np

    grid = np.array([[s.task_deltas.get(t) if s.task_deltas.get(t) is not None else np.nan for t in tasks]
                     for s in rows], dtype=float)
    finite = grid[np.isfinite(grid)]
    lim = max(float(np.abs(finite).max()) if finite.size else 1.0, 1.0)
    fig = new_figure((max(4.0, 1.1 * len(tasks) + 2.5), max(2.0, 0.45 * len(rows) + 1.4)))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(tasks)), labels=list(tasks), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=[s.variant for s in rows], fontsize=8)
    for i in range(len(rows)):
        for j in range(len(tasks)):
            v = grid[i, j]
            ax.text(j, i, "—" if not np.isfinite(v) else f"{v:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="Δ vs baseline (points)")
    return to_png(fig)


def batch_sweep(profiles: dict[str, list[BatchProfile]]) -> bytes | None:
    """Decode tokens/s and ms/token against batch size, one line per variant; None with a single batch size."""
    usable = {v: sorted((r for r in rows if r.tokens_per_s and r.latency_ms_per_token), key=lambda r: r.batch_size)
              for v, rows in profiles.items()}
    usable = {v: rows for v, rows in usable.items() if rows}
    if len({r.batch_size for rows in usable.values() for r in rows}) < 2:
        return None
    fig = new_figure((9.0, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for v, rows in usable.items():
        b = [r.batch_size for r in rows]
        ax1.plot(b, [r.tokens_per_s for r in rows], marker="o", label=v)
        ax2.plot(b, [r.latency_ms_per_token for r in rows], marker="o", label=v)
    for ax, label in ((ax1, "decode tokens/s (all sequences)"), (ax2, "ms per decoding step")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    return to_png(fig)

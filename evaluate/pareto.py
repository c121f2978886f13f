"""From per-(variant, task) rows to a choice: each variant's accuracy and costs, the Pareto front over
(accuracy up, memory down, latency down) and the pick made by the recipe's `select:` block.

Written by hand: a dominance check over a handful of points needs no library."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluate.records import ResultRow

BASELINE = "baseline"

# what `select.minimize` names -> the VariantSummary field it minimizes, with its unit for messages
MINIMIZE: dict[str, tuple[str, str]] = {
    "memory": ("weight_bytes", "weights in memory"),
    "peak_memory": ("peak_memory_bytes", "peak memory"),
    "latency": ("latency_ms_per_token", "decode latency at batch 1"),
    "ttft": ("ttft_ms", "time to first token"),
    "disk": ("disk_bytes", "weights on disk"),
}


class SelectSpec(BaseModel):
    """How the report picks the variant to deploy: the accuracy budget, then the cost to minimize (the recipe's
    `select:` block)."""

    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop: float = Field(1.0, ge=0)  # points below the baseline (mean over tasks, or each task)
    per_task: bool = False  # apply max_accuracy_drop to every task, not to the mean
    minimize: Literal["memory", "peak_memory", "latency", "ttft", "disk"] = "memory"
    require_status: Literal["ok"] = "ok"
    include_baseline: bool = True  # the FP model is a candidate too (it may win on latency)
    max_memory_mib: float | None = Field(None, gt=0)  # optional hard caps on weights in memory / ms per token
    max_latency_ms_per_token: float | None = Field(None, gt=0)
    # fidelity cap: mean KL(FP || variant) per token on the study's perplexity windows. On a model too small to
    # score on reasoning tasks (a 135M one gets 1 of 40 GSM8K items), fidelity is where damage shows
    max_kl: float | None = Field(None, gt=0)


@dataclass
class VariantSummary:
    variant: str
    steps: str = "FP"
    status: str = "pending"
    reason: str | None = None
    mean_accuracy: float | None = None  # mean over tasks of the task's headline metric (0-100)
    mean_delta: float | None = None  # mean over tasks of (variant - baseline), points
    task_values: dict[str, float | None] = field(default_factory=dict)
    task_deltas: dict[str, float | None] = field(default_factory=dict)
    missing_tasks: list[str] = field(default_factory=list)
    weight_bytes: int | None = None
    peak_memory_bytes: int | None = None
    disk_bytes: int | None = None
    latency_ms_per_token: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    backend: str | None = None
    kl_mean: float | None = None  # worst mean KL vs FP over the study's fidelity (windows) tasks

    def cost(self, name: str) -> float | None:
        return getattr(self, MINIMIZE[name][0])


def summarize_variants(rows: Sequence[ResultRow]) -> list[VariantSummary]:
    """One summary per variant, in row order; a task without a value counts as missing, not as zero.
    Tasks scored lower-is-better (perplexity) have their own report section and stay out of the means."""
    tasks = list(dict.fromkeys(r.task for r in rows if r.higher_is_better))
    out = []
    for name in dict.fromkeys(r.variant for r in rows):
        mine = {r.task: r for r in rows if r.variant == name}
        first = next(iter(mine.values()))
        values = {t: (mine[t].value if t in mine else None) for t in tasks}
        deltas = {t: (mine[t].delta_vs_baseline if t in mine else None) for t in tasks}
        present = [v for v in values.values() if v is not None]
        missing = [t for t, v in values.items() if v is None]
        if name == BASELINE:
            deltas = {t: (0.0 if v is not None else None) for t, v in values.items()}
        known_deltas = [d for d in deltas.values() if d is not None]
        kls = [r.kl_mean for r in mine.values() if r.kl_mean is not None]
        out.append(VariantSummary(
            variant=name, steps=first.steps or "FP", status=first.status or "pending", reason=first.reason,
            mean_accuracy=statistics.fmean(present) if present and not missing else None,
            mean_delta=statistics.fmean(known_deltas) if known_deltas and not missing else None,
            task_values=values, task_deltas=deltas, missing_tasks=missing,
            weight_bytes=first.weight_bytes, peak_memory_bytes=first.peak_memory_bytes, disk_bytes=first.disk_bytes,
            latency_ms_per_token=first.latency_ms_per_token, ttft_ms=first.ttft_ms, tokens_per_s=first.tokens_per_s,
            backend=first.backend, kl_mean=max(kls) if kls else (0.0 if name == BASELINE else None),
        ))
    return out


Objective = tuple[str, Literal["max", "min"]]


def pareto_front(items: Sequence[VariantSummary], objectives: Sequence[Objective]) -> list[str]:
    """Names of the items no other item dominates (at least as good on every objective, better on one).
    Items missing any objective are left out: an unmeasured cost cannot be compared."""
    points = []
    for it in items:
        vals = [getattr(it, attr) for attr, _ in objectives]
        if any(v is None for v in vals):
            continue
        points.append((it.variant, [v if sense == "max" else -v for v, (_, sense) in zip(vals, objectives,
                                                                                          strict=True)]))

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))

    return [name for name, p in points if not any(dominates(q, p) for other, q in points if other != name)]


FRONT_OBJECTIVES: tuple[Objective, ...] = (("mean_accuracy", "max"), ("weight_bytes", "min"),
                                           ("latency_ms_per_token", "min"))


@dataclass
class Selection:
    chosen: str | None
    reason: str  # one paragraph a person reads
    qualified: list[str]
    rejected: dict[str, str]  # variant -> why it does not qualify
    minimize: str
    policy: str  # the select block, in words


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def _fmt_cost(name: str, value: float) -> str:
    if name in ("memory", "peak_memory", "disk"):
        return f"{value / 2**20:.2f} MiB"
    return f"{value:.2f} ms" + ("/token" if name == "latency" else "")


def _why_not(s: VariantSummary, spec: SelectSpec) -> str | None:
    if s.status != spec.require_status and not (s.variant == BASELINE and s.missing_tasks == []):
        return f"status {s.status}" + (f": {s.reason}" if s.reason else "")
    if s.missing_tasks:
        return f"no result on {', '.join(s.missing_tasks)}"
    if spec.per_task:
        worst = min((d for d in s.task_deltas.values() if d is not None), default=0.0)
        if -worst > spec.max_accuracy_drop:
            task = min(s.task_deltas, key=lambda t: s.task_deltas[t] if s.task_deltas[t] is not None else 0.0)
            return f"drops {-worst:.1f} points on {task} (budget {_points(spec.max_accuracy_drop)} per task)"
    elif s.mean_delta is not None and -s.mean_delta > spec.max_accuracy_drop:
        return f"mean drop {-s.mean_delta:.1f} points (budget {_points(spec.max_accuracy_drop)})"
    if spec.max_kl is not None and s.variant != BASELINE:
        if s.kl_mean is None:
            return "no KL to the FP model measured (max_kl needs a perplexity task)"
        if s.kl_mean > spec.max_kl:
            return f"mean KL to the FP model {s.kl_mean:.4g} (cap {spec.max_kl:g})"
    if s.cost(spec.minimize) is None:
        return f"{MINIMIZE[spec.minimize][1]} not measured"
    if spec.max_memory_mib is not None and (s.weight_bytes is None or s.weight_bytes > spec.max_memory_mib * 2**20):
        return f"weights in memory above {spec.max_memory_mib:g} MiB"
    if spec.max_latency_ms_per_token is not None and (
            s.latency_ms_per_token is None or s.latency_ms_per_token > spec.max_latency_ms_per_token):
        return f"latency above {spec.max_latency_ms_per_token:g} ms/token"
    return None


def describe_policy(spec: SelectSpec) -> str:
    scope = "on every task" if spec.per_task else "on the mean over tasks"
    words = [f"at most {_points(spec.max_accuracy_drop)} below the baseline {scope}",
             f"status {spec.require_status}"]
    if spec.max_memory_mib is not None:
        words.append(f"weights in memory ≤ {spec.max_memory_mib:g} MiB")
    if spec.max_latency_ms_per_token is not None:
        words.append(f"≤ {spec.max_latency_ms_per_token:g} ms/token")
    if spec.max_kl is not None:
        words.append(f"mean KL to the FP model ≤ {spec.max_kl:g}")
    pool = "baseline included" if spec.include_baseline else "compressed variants only"
    return f"{', '.join(words)}; then the lowest {MINIMIZE[spec.minimize][1]} ({pool})"


def select_variant(summaries: Sequence[VariantSummary], spec: SelectSpec) -> Selection:
    """Apply the `select:` block: filter by the accuracy budget and caps, minimize the named cost,
    break ties by higher accuracy. Says why each variant was left out."""
    pool = [s for s in summaries if spec.include_baseline or s.variant != BASELINE]
    rejected: dict[str, str] = {}
    qualified: list[VariantSummary] = []
    for s in pool:
        why = _why_not(s, spec)
        if why is None:
            qualified.append(s)
        else:
            rejected[s.variant] = why
    policy = describe_policy(spec)
    if not qualified:
        return Selection(None, f"No variant qualifies under the policy ({policy}).", [], rejected,
                         spec.minimize, policy)
    qualified.sort(key=lambda s: (s.cost(spec.minimize), -(s.mean_accuracy or 0.0)))
    best = qualified[0]
    label = MINIMIZE[spec.minimize][1]
    parts = [f"{best.variant} ({best.steps}) has the lowest {label} among {len(qualified)} qualifying "
             f"variant{'s' * (len(qualified) > 1)}: {_fmt_cost(spec.minimize, best.cost(spec.minimize))}"]
    base = next((s for s in summaries if s.variant == BASELINE), None)
    if base is not None and best.variant != BASELINE and base.cost(spec.minimize):
        ratio = base.cost(spec.minimize) / best.cost(spec.minimize)
        parts.append(f"vs {_fmt_cost(spec.minimize, base.cost(spec.minimize))} for the baseline ({ratio:.2f}x)")
    if best.mean_delta is not None and best.variant != BASELINE:
        worst = min((d for d in best.task_deltas.values() if d is not None), default=0.0)
        parts.append(f"accuracy {best.mean_delta:+.1f} points on the mean (worst task {worst:+.1f})")
    if base is not None and best.variant != BASELINE:  # the price paid on the cost not minimized
        other = "latency" if spec.minimize != "latency" else "memory"
        mine, theirs = best.cost(other), base.cost(other)
        if mine and theirs:
            word = ("slower" if mine > theirs else "faster") if other == "latency" else \
                ("larger" if mine > theirs else "smaller")
            parts.append(f"{MINIMIZE[other][1]} {_fmt_cost(other, mine)} vs {_fmt_cost(other, theirs)} for the "
                         f"baseline ({max(mine, theirs) / min(mine, theirs):.2f}x {word})")
    if len(qualified) > 1:
        runner = qualified[1]
        parts.append(f"runner-up {runner.variant} at {_fmt_cost(spec.minimize, runner.cost(spec.minimize))}")
    if best.variant == BASELINE:
        parts.append("no compressed variant is both within the accuracy budget and cheaper: keep the FP model")
    if best.backend:
        parts.append(f"measured on {best.backend}")
    return Selection(best.variant, "; ".join(parts) + ".", [s.variant for s in qualified], rejected,
                     spec.minimize, policy)

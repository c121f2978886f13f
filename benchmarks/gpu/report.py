"""The GPU pass's bookkeeping, kept free of torch so it is tested fast: a deadline that decides which part may
still start, each part timed and recorded (ok, failed, skipped, cut), and the results rewritten to $OUT after
every part (gpu_results.json + gpu_results.md), so a run cut short still returns everything it finished."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "slimlab-gpu-results/1"
RESULTS_JSON = "gpu_results.json"
RESULTS_MD = "gpu_results.md"
SAMPLES_JSONL = "gpu_samples.jsonl"
MiB = 2**20


class PartSkipped(Exception):
    """A part that cannot run here (a CUDA-only kernel on CPU, weights that are not there): recorded, not fatal."""


@dataclass
class Budget:
    """No part starts unless its estimate fits before `deadline_at` (epoch seconds). An estimate is the longest
    time a part of the same kind and key took so far in this run, else `defaults[kind]` (a guess)."""

    deadline_at: float
    defaults: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    observed: dict[tuple[str, str], float] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline_at - self.clock()

    def estimate(self, kind: str, key: str) -> float:
        return self.observed.get((kind, key), self.defaults.get(kind, 0.0))

    def refuse(self, kind: str, key: str) -> str | None:
        """Why a part may not start now (None: it may)."""
        left, need = self.left(), self.estimate(kind, key)
        if left < need or left <= 0:
            return f"deadline: {max(left, 0):.0f} s left before the deadline, a {kind} part needs ~{need:.0f} s"
        return None

    def record(self, kind: str, key: str, seconds: float) -> None:
        self.observed[(kind, key)] = max(seconds, self.observed.get((kind, key), 0.0))



def _who(r: dict) -> str:
    """The first three cells of every table's row: which model, dtype and variant it measures."""
    return f"| {r['model']} | {r['dtype']} | {r['variant']} | "

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Results:
    """Everything the run measured, as one JSON document and its Markdown rendering, rewritten after every part."""

    def __init__(self, out_dir: Path, meta: dict[str, Any], clock: Callable[[], float] = time.time,
                 started: float | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.started = clock() if started is None else started  # elapsed_s counts from here
        self.data: dict[str, Any] = {"schema": SCHEMA, "status": "running", "started_at": self.started,
                                     "elapsed_s": 0.0, **meta, "parts": [], "rows": []}
        (self.out_dir / SAMPLES_JSONL).write_text("")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    def part(self, name: str, kind: str, status: str, seconds: float, reason: str | None = None) -> None:
        self.data["parts"].append({"name": name, "kind": kind, "status": status, "seconds": round(seconds, 2),
                                   "reason": reason})

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Add a row, or update the row of the same model, dtype and variant (parts fill one row in turn)."""
        key = (row["model"], row["dtype"], row["variant"])
        for existing in self.rows:
            if (existing["model"], existing["dtype"], existing["variant"]) == key:
                existing.update(row)
                return existing
        self.rows.append(row)
        return row

    def samples(self, lines: list[dict[str, Any]]) -> None:
        with (self.out_dir / SAMPLES_JSONL).open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)

    def write(self, status: str | None = None) -> None:
        if status is not None:
            self.data["status"] = status
        self.data["elapsed_s"] = round(self.clock() - self.started, 2)
        _atomic_write(self.out_dir / RESULTS_JSON, json.dumps(self.data, indent=1, default=str))
        _atomic_write(self.out_dir / RESULTS_MD, render_markdown(self.data))


def run_part(results: Results, budget: Budget, name: str, kind: str, key: str, fn: Callable[[], Any],
             on_skip: Callable[[str], None] | None = None) -> tuple[str, Any]:
    """Run one timed part unless the deadline refuses it: ("ok", value), ("skipped" | "failed", reason). A
    KeyboardInterrupt (the hard deadline's SIGTERM, turned into one) records the part as cut, then propagates.
    The results are written after the part whatever happened, so a cut run still returns them."""
    refused = budget.refuse(kind, key)
    if refused is not None:
        results.part(name, kind, "skipped", 0.0, refused)
        if on_skip is not None:
            on_skip(refused)
        results.write()
        print(f"[skip] {name}: {refused}", flush=True)
        return "skipped", refused
    print(f"[part] {name} ({budget.left():.0f} s left before the deadline)", flush=True)
    t0 = budget.clock()
    try:
        value = fn()
    except KeyboardInterrupt:
        seconds = budget.clock() - t0
        results.part(name, kind, "cut", seconds, f"stopped by the hard deadline after {seconds:.0f} s")
        results.write()
        raise
    except PartSkipped as exc:
        seconds = budget.clock() - t0
        results.part(name, kind, "skipped", seconds, str(exc))
        if on_skip is not None:
            on_skip(str(exc))
        results.write()
        print(f"[skip] {name}: {exc}", flush=True)
        return "skipped", str(exc)
    except Exception as exc:  # one part failing must not lose the others
        seconds = budget.clock() - t0
        reason = f"{type(exc).__name__}: {str(exc)[:600]}"
        results.part(name, kind, "failed", seconds, reason + "\n" + traceback.format_exc(limit=6)[-1500:])
        if on_skip is not None:
            on_skip(reason)
        results.write()
        print(f"[fail] {name}: {reason}", flush=True)
        return "failed", reason
    seconds = budget.clock() - t0
    budget.record(kind, key, seconds)
    results.part(name, kind, "ok", seconds)
    results.write()
    print(f"[done] {name}: {seconds:.1f} s", flush=True)
    return "ok", value


# ------------------------------------------------------------------------------------------ Markdown


def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x / MiB:,.1f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _delta(x: float | None, base: float | None) -> str:
    if x is None or base is None or base == 0:
        return "—"
    return f"{x / base:.2f}x"


def _batch(row: dict[str, Any], size: int) -> dict[str, Any] | None:
    return next((b for b in row.get("batches") or [] if b.get("batch_size") == size), None)


def _baseline(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == row["model"] and r["dtype"] == row["dtype"]
                 and r.get("method") is None and r.get("status") == "ok"), None)


def render_markdown(data: dict[str, Any]) -> str:
    rows = data.get("rows", [])
    env = data.get("env") or {}
    bw = data.get("bandwidth") or {}
    s = data.get("settings") or {}
    out = [f"# slimlab GPU figures ({data.get('mode', '?')})", ""]
    status = data.get("status")
    out.append(f"- status: **{status}** after {data.get('elapsed_s', 0):.0f} s "
               f"(deadline {data.get('deadline_s', '—')} s from the start of run.sh)")
    out.append(f"- device: {env.get('device', '—')}; torch {env.get('torch', '—')} (CUDA {env.get('cuda', '—')}), "
               f"driver {env.get('driver', '—')}; transformers {env.get('transformers', '—')}, compressed-tensors "
               f"{env.get('compressed_tensors', '—')}, llmcompressor {env.get('llmcompressor', '—')}, bitsandbytes "
               f"{env.get('bitsandbytes', '—')}")
    if bw:
        out.append(f"- copy bandwidth measured here: {_num(bw.get('bytes_per_s', 0) / 1e12, '.3f')} TB/s "
                   f"(read + write, {bw.get('method', '')})")
    if s:
        out.append(f"- latency: prompt {s.get('prompt_tokens')} tokens, {s.get('new_tokens')} new tokens, warm-up "
                   f"{s.get('warmup')}, median of {s.get('repeats')} repeats ({s.get('timer', '')}); batch sizes "
                   f"{s.get('batch_sizes')}; ms/token = (median end-to-end - median TTFT) / (new tokens - 1)")
        out.append(f"- accuracy: {s.get('accuracy', '—')}")
    for m in data.get("models", []):
        out.append(f"- model `{m['key']}`: {m['weights']}")
    ok = [r for r in rows if r.get("status") == "ok"]
    out += ["", "## Memory", "",
            "| model | dtype | variant | runs | weights in memory (MiB) | Δ vs FP | bits/param (stored) | CUDA load "
            "peak alloc / reserved (MiB) | CUDA generation peak alloc / reserved at the largest batch (MiB) | NVML "
            "process after load (MiB) | kernel |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        base = _baseline(rows, r)
        big = max(r.get("batches") or [{}], key=lambda b: b.get("batch_size", 0))
        nv = r.get("nvml_after_load_bytes")
        nv_delta = r.get("nvml_load_delta_bytes")
        nv_text = f"{_mib(nv)}{'' if nv_delta is None else f' (+{_mib(nv_delta)})'}"
        if nv is None and (r.get("nvml_after_load") or {}).get("device_used_bytes") is not None:
            nv_text = f"— (device used {_mib(r['nvml_after_load']['device_used_bytes'])})"
        stored = r.get("stored_bits_per_param")
        shrink = _delta(r.get("weight_bytes"), base and base.get("weight_bytes"))
        out.append(
            _who(r) + f"{r.get('execution', '—')} | "
            f"{_mib(r.get('weight_bytes'))} | {shrink} | {_num(r.get('bits_per_param'))}"
            f"{'' if stored is None else f' ({stored:.2f})'} | {_mib(r.get('cuda_load_max_allocated'))} / "
            f"{_mib(r.get('cuda_load_max_reserved'))} | {_mib(big.get('cuda_max_allocated'))} / "
            f"{_mib(big.get('cuda_max_reserved'))} | {nv_text} | {r.get('kernel', '—')} |")
    out += ["", "## Latency", "",
            "| model | dtype | variant | batch | TTFT (ms) | decode ms/token | Δ vs FP | tokens/s | CUDA peak alloc "
            "(MiB) | NVML process (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        base = _baseline(rows, r)
        for b in r.get("batches") or []:
            bb = _batch(base, b["batch_size"]) if base else None
            speed = _delta(b.get("ms_per_token"), bb and bb.get("ms_per_token"))
            out.append(_who(r) + f"{b['batch_size']} | {_num(b.get('ttft_ms'))} "
                       f"| {_num(b.get('ms_per_token'))} | {speed} | {_num(b.get('tokens_per_s'), '.1f')} | "
                       f"{_mib(b.get('cuda_max_allocated'))} | {_mib(b.get('nvml_process_bytes'))} |")
    out += ["", "## Bandwidth bound (batch 1)", "",
            "Bytes read per decode step = the weights in memory (a tied embedding counted once: lm_head reads it "
            "whole); the KV cache is left out. Bound = those bytes / the measured copy bandwidth.", "",
            "| model | dtype | variant | bytes/step (MiB) | decode ms/token | achieved GB/s | bound ms/token | "
            "share of copy bandwidth |", "|---|---|---|---|---|---|---|---|"]
    for r in ok:
        b = r.get("bandwidth") or {}
        out.append(_who(r) + f"{_mib(b.get('bytes_per_step'))} | "
                   f"{_num(b.get('ms_per_token'))} | {_num((b.get('achieved_bytes_per_s') or 0) / 1e9, '.1f')} | "
                   f"{_num(b.get('bound_ms_per_token'), '.3f')} | {_pct(b.get('fraction_of_copy'))} |")
    out += ["", "## Accuracy", "",
            "| model | dtype | variant | GSM8K CoT acc (n) | Δ vs FP (points) | format followed | cut by budget | "
            "perplexity | KL mean / p99 vs FP | top-1 agreement |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        acc = r.get("accuracy")
        if not isinstance(acc, dict):
            out.append(_who(r) + f"{acc or 'not measured'} | | | | | | |")
            continue
        base = _baseline(rows, r)
        g, p = acc.get("gsm8k") or {}, acc.get("perplexity") or {}
        bg = ((base or {}).get("accuracy") or {}) if isinstance((base or {}).get("accuracy"), dict) else {}
        bacc = (bg.get("gsm8k") or {}).get("accuracy")
        d = "—" if g.get("accuracy") is None or bacc is None or r.get("method") is None else \
            f"{g['accuracy'] - bacc:+.1f}"
        kl = "—" if p.get("kl_mean") is None else f"{p['kl_mean']:.4f} / {p.get('kl_p99', 0):.4f}"
        out.append(_who(r) + f"{_num(g.get('accuracy'), '.1f')} "
                   f"({_num(g.get('n'), '.0f')}) | {d} | {_num(g.get('instruction_following'), '.0f')}% | "
                   f"{_num(g.get('truncated'), '.0f')} | {_num(p.get('perplexity'), '.3f')} | {kl} | "
                   f"{_num(p.get('top1_agreement'), '.1f')}% |")
    out += ["", "## Variants", "", "| model | dtype | variant | setting | runs | how |", "|---|---|---|---|---|---|"]
    for r in rows:
        how = "; ".join(x for x in (r.get("execution_detail"), r.get("built_with")) if x)
        out.append(_who(r) + f"{r.get('setting') or 'FP'} | "
                   f"{r.get('execution') or r.get('status')} | {how.replace('|', '/')} |")
    kinds: dict[str, list[float]] = {}
    for p in data.get("parts", []):
        kinds.setdefault(p["kind"], []).append(p["seconds"])
    out += ["", "## Time by kind of part", "", "| kind | parts | seconds | longest |", "|---|---|---|---|"]
    out += [f"| {k} | {len(v)} | {sum(v):.1f} | {max(v):.1f} |" for k, v in kinds.items()]
    out += ["", "## Parts and their time", "", "| part | status | seconds | reason |", "|---|---|---|---|"]
    for p in data.get("parts", []):
        reason = (p.get("reason") or "").split("\n")[0].replace("|", "/")
        out.append(f"| {p['name']} | {p['status']} | {p['seconds']:.1f} | {reason} |")
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad:
        out += ["", "## Not measured", ""]
        out += [f"- **{r['model']} {r['dtype']} {r['variant']}** ({r.get('status')}): {r.get('reason')}" for r in bad]
    return "\n".join(out) + "\n"


def summary_table(data: dict[str, Any]) -> str:
    """A few columns per row, printed last (the device tool returns the end of the output)."""
    lines = [f"{'model':<24} {'dtype':<9} {'variant':<20} {'status':<8} {'runs':<13} {'MiB':>8} {'b1 ms/tok':>9} "
             f"{'bmax tok/s':>10} {'GSM8K':>6} {'KL':>8}"]
    for r in data.get("rows", []):
        b1, big = _batch(r, 1) or {}, max(r.get("batches") or [{}], key=lambda b: b.get("batch_size", 0))
        acc = r.get("accuracy") if isinstance(r.get("accuracy"), dict) else {}
        g, p = acc.get("gsm8k") or {}, acc.get("perplexity") or {}
        lines.append(f"{r['model'][:24]:<24} {r['dtype'][:9]:<9} {r['variant'][:20]:<20} {r.get('status', ''):<8} "
                     f"{(r.get('execution') or '—')[:13]:<13} {_mib(r.get('weight_bytes')):>8} "
                     f"{_num(b1.get('ms_per_token')):>9} {_num(big.get('tokens_per_s'), '.0f'):>10} "
                     f"{_num(g.get('accuracy'), '.1f'):>6} {_num(p.get('kl_mean'), '.4f'):>8}")
    return "\n".join(lines)

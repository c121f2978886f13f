"""What the benchmark tables share: reading a finished study's ledger (typed records, evaluate/records.py) with
each step's method metadata from the registry (kind, weight bits, its own label), re-measuring tokens/s fairly on
a shared CPU, and writing OUT.md + OUT.json."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.recipe import ModelSpec, ProfileSpec
from compress.registry import METHODS, MethodKind, MethodParams, MethodSpec, make_step
from evaluate.ledger import Ledger
from evaluate.records import CellRecord, VariantRecord

BASELINE = "baseline"


@dataclass(frozen=True)
class Step:
    """One step of a variant as the tables read it: the method's registered metadata (kind, weight bits, label)
    with its typed parameters. `spec` is None for what is no registered method (an API model's "api:<model>")."""

    method: str
    spec: MethodSpec | None
    params: MethodParams | None

    @property
    def kind(self) -> MethodKind | None:
        return self.spec.kind if self.spec else None

    @property
    def weight_bits(self) -> float | None:
        return self.params.weight_bits() if self.params is not None else None

    @property
    def setting(self) -> str:
        """The method's own short label of this setting ("W4 g128", "50% 2:4"); "" when it has none."""
        return self.params.describe() if self.params is not None else ""

    @property
    def label(self) -> str:
        """"gptq W4 g128 actorder=none": the method and its setting."""
        return f"{self.method} {self.setting}".rstrip()


def typed_steps(variant: VariantRecord) -> list[Step]:
    """A variant's steps with their methods' metadata; a registered method's parameters validated into its
    model (every parameter is stored, so the label shows what ran, defaults included)."""
    out = []
    for step in variant.steps:
        method = str(step.get("method"))
        spec = METHODS.find(method)
        params = make_step(method, **{k: v for k, v in step.items() if k != "method"}) if spec else None
        out.append(Step(method, spec, params))
    return out


def weight_bits(steps: list[Step]) -> float | None:
    """Bits of the weights after the chain: the last step that sets them (None: the FP weights)."""
    return next((b for s in reversed(steps) if (b := s.weight_bits) is not None), None)


def study_settings(ledger: Ledger) -> tuple[ModelSpec, ProfileSpec]:
    """The model and profile blocks of the recipe the study last ran with (defaults if it never ran)."""
    run = ledger.last_run()
    recipe = run.recipe if run else {}
    return ModelSpec.model_validate(recipe.get("model") or {}), ProfileSpec.model_validate(recipe.get("profile") or {})


def table_parser(doc: str, title: str) -> argparse.ArgumentParser:
    """The arguments every table takes: the study directory, OUT, a title and --reprofile."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("study", type=Path, help="a study's output directory (holding results.sqlite)")
    p.add_argument("--out", type=Path, help="write OUT.md and OUT.json (default: print the table)")
    p.add_argument("--title", default=title)
    p.add_argument("--reprofile", type=int, default=0, metavar="ROUNDS",
                   help="re-measure tokens/s in ROUNDS interleaved rounds (fresh process per model)")
    p.add_argument("--profile-from", type=Path, metavar="JSON",
                   help="re-render with the tokens/s of an earlier OUT.json (no new measurement)")
    return p


SPEED_KEYS = ("tokens_per_s", "speed", "fp_tokens_per_s")  # the row keys a --reprofile run fills


def reuse_profile(rows: list[dict], earlier_json: Path) -> dict | None:
    """Speed columns (every tokens/s and speed-up key) and backends of an earlier --reprofile run copied into
    `rows`; returns that run's profiling info."""
    earlier = json.loads(earlier_json.read_text())
    before = {r["variant"]: r for r in earlier["rows"]}
    for r in rows:
        old = before.get(r["variant"], {})
        r.update({k: v for k, v in old.items() if k.startswith(SPEED_KEYS) or k == "backend"})
        if isinstance(r.get("tokens_per_s_by_batch"), dict):  # JSON turned the batch sizes into strings
            r["tokens_per_s_by_batch"] = {int(b): v for b, v in r["tokens_per_s_by_batch"].items()}
    return earlier.get("reprofile")


def baseline_tasks(cells: list[CellRecord]) -> list[str]:
    """The task cells the FP baseline was evaluated on, sorted: the table's accuracy columns."""
    return sorted({c.cell for c in cells if c.variant == BASELINE})


def accuracy_by_cell(cells: list[CellRecord], variant: str) -> dict[str, float]:
    """Accuracy (percent) of a variant per task cell, cells without one (perplexity) left out."""
    return {c.cell: c.metrics.accuracy for c in cells if c.variant == variant and c.metrics.accuracy is not None}


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fmt(x: Any, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def batch1_tokens_per_s(variant: VariantRecord | None) -> float | None:
    """Decode tokens/s at batch 1 from the study's own profile of a variant."""
    b1 = variant.profile.batch(1) if variant is not None and variant.profile is not None else None
    return b1.tokens_per_s if b1 is not None else None


def backend_text(variant: VariantRecord | None) -> str | None:
    """What ran the variant, for people: its footprint's backend (layers' kernels; device)."""
    return variant.footprint.backend.describe() if variant is not None and variant.footprint is not None else None


PROFILE_REPEATS = 10  # timed generations per model and round: the recipes' 3 are too few for a table


def reprofile(ledger: Ledger, names: list[str], rounds: int, repeats: int = PROFILE_REPEATS,
              batch_sizes: tuple[int, ...] = (1,)) -> tuple[dict[str, dict[int, float]], dict[str, list[dict]], dict]:
    """Decode tokens/s again with the study's profiler (a fresh process per model), interleaved over
    `rounds` rounds; the median per model and batch size, leaving out samples taken while the process was
    paused. On a shared CPU the load drifts during a long study: interleaving spreads the drift over all
    models alike. Prompt and generation lengths come from the recipe; `repeats` timed runs per model,
    round and batch size. Returns (median per model and batch size, every sample per model, what was
    measured and where)."""
    from evaluate.profiling import ProfileConfig, profile_in_subprocess

    model, prof = study_settings(ledger)
    config = ProfileConfig(prof.prompt_tokens, prof.new_tokens, prof.warmup, repeats, tuple(batch_sizes))
    dirs = {n: v.model_dir if (v := ledger.variant(n)) is not None else None for n in names}
    samples: dict[str, list[dict]] = {n: [] for n in names}
    backends: dict[str, str] = {}
    device = None
    for _ in range(rounds):
        for n in names:
            result = profile_in_subprocess(dirs[n], model.dtype, model.device, config, model.trust_remote_code)
            device = result.device
            # what ran in the process that was timed
            backends[n] = (result.footprint.backend if result.footprint else result.backend).describe()
            for row in result.batches:
                samples[n].append({"batch_size": row.batch_size, "tokens_per_s": row.tokens_per_s,
                                   "load_avg_1m": result.load_avg_1m_after, "paused": row.paused_during_timing})
    medians = {n: {b: statistics.median([x["tokens_per_s"] for x in v if x["batch_size"] == b and not x["paused"]
                                         and x["tokens_per_s"]] or [float("nan")]) for b in batch_sizes}
               for n, v in samples.items()}
    return medians, samples, {"rounds": rounds, "config": config.__dict__, "device": device, "backends": backends}


def use_timed_backends(rows: list[dict], info: dict) -> None:
    """The backend column from the processes that were just timed (a label fixed since the study ran shows)."""
    for r in rows:
        r["backend"] = info.get("backends", {}).get(r["variant"], r["backend"])


def reprofile_note(info: dict) -> str:
    c = info["config"]
    return (f"\nTokens/s re-measured with the study's profiler (prompt {c['prompt_tokens']}, {c['new_tokens']} new "
            f"tokens, batch {', '.join(map(str, c['batch_sizes']))}, median of {c['repeats']} timed runs) on "
            f"{info['device']}: {info['rounds']} "
            "interleaved rounds over all models, a fresh process each, median per model (samples taken while a "
            "process was paused are dropped), so that load drift on the shared CPU affects all models alike; every "
            "sample and the 1-minute load average are in the .json.\n")


def write_table(out: Path | None, text: str, payload: dict) -> None:
    """OUT.md (the table) and OUT.json (every figure behind it); without OUT, print the table."""
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))

"""The study runner: baseline once, then each variant built, saved, reloaded from disk, evaluated on
the frozen prompts and profiled. Everything finished is in the ledger; reruns skip it."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.calibration import calibration_provider, resolve_source
from compress.ledger import Ledger
from compress.models import (
    disk_bytes,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model_source,
    save_model,
    source_info,
)
from compress.recipe import BASELINE, Recipe, TaskEntry
from compress.registry import StepContext, load_builtin_methods
from evaluate.fidelity import evaluate_windows
from evaluate.generation import DecodingConfig
from evaluate.harness import PromptSet, build_prompt_set, evaluate_cell, load_prompt_set, save_prompt_set
from evaluate.memory import measure_footprint, stored_bits_per_param
from evaluate.profiling import ProfileConfig, profile_in_subprocess
from evaluate.prompts import PromptConfig, decoding_for, resolve_chat_template
from evaluate.tasks.perplexity import default_seq_len

log = logging.getLogger("slimlab")


class SkipVariant(Exception):
    """A variant that cannot run here (e.g. a CUDA-only kernel on a CPU machine): reported, not fatal."""


@dataclass
class Cell:
    entry: TaskEntry
    pset: PromptSet
    decoding: DecodingConfig


@dataclass
class Study:
    recipe: Recipe
    out_dir: Path
    computed: list[str] = field(default_factory=list)  # what this run actually (re)computed

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.out_dir / "results.sqlite")
        self.source = resolve_model_source(self.recipe.model.name)
        self.model_config: Any = None  # read once the source is materialized (run())
        self.methods = load_builtin_methods()
        from evaluate.bertscore import configure  # the encoder of bertscore_recall tasks (SNI)

        b, device = self.recipe.bertscore, self.recipe.model.device
        configure(b.model, b.num_layers, b.batch_size, None if device == "auto" else device)

    # keys: a result is reused only while everything that produced it is unchanged -------------
    def baseline_key(self) -> str:
        m = self.recipe.model
        return self.recipe.fingerprint(m.name, m.revision, m.dtype, m.device)

    def variant_key(self, steps: list[dict]) -> str:
        return self.recipe.fingerprint(self.baseline_key(), steps, self.calibration_spec(), self.recipe.seed)

    def calibration_spec(self) -> dict:
        """The calibration a variant was built with, `auto` resolved (recorded with each build)."""
        c = self.recipe.calibration
        return {**c.model_dump(), "source": resolve_source(c.source, self.source.kind)}

    def cell_key(self, variant_key: str, cell: Cell) -> str:
        scorer = [self.recipe.bertscore.model_dump()] if cell.pset.task.metric == "bertscore_recall" else []
        return self.recipe.fingerprint(variant_key, cell.pset.digest, cell.decoding.__dict__, cell.entry.repeats,
                                       *scorer)

    # prompts --------------------------------------------------------------------------------
    def prepare_cells(self, tokenizer: Any) -> list[Cell]:
        cells = []
        for entry in self.recipe.tasks:
            seed = self.recipe.seed if entry.seed is None else entry.seed
            prompt = PromptConfig(entry.prompt_style, entry.k_shot, entry.definition,
                                  resolve_chat_template(entry.chat_template, tokenizer))
            path = self.out_dir / "prompts" / f"{entry.cell}.jsonl"
            meta_path = path.with_suffix(".json")
            spec_key = self.recipe.fingerprint(entry.model_dump(), seed, self.recipe.model.name)
            if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("key") == spec_key:
                pset = load_prompt_set(path, entry.cell, entry.name)
            else:
                pset = build_prompt_set(entry.cell, entry.name, entry.n, seed, prompt, tokenizer, entry.data_dir,
                                        entry.seq_len or default_seq_len(tokenizer, self.model_config))
                save_prompt_set(pset, path)
                meta_path.write_text(json.dumps({"key": spec_key, "digest": pset.digest,
                                                 "exemplars": pset.exemplar_ids}))
            d = self.recipe.decoding
            stop, budget = decoding_for(pset.task, prompt)
            decoding = DecodingConfig(
                max_new_tokens=entry.max_new_tokens or budget,
                stop=tuple(entry.stop) if entry.stop is not None else stop,
                do_sample=d.do_sample, temperature=d.temperature, top_p=d.top_p, seed=seed,
                batch_size=d.batch_size, repeat_count=DecodingConfig.repeat_count if d.stop_repeats else 0,
            )
            cells.append(Cell(entry, pset, decoding))
        return cells

    # evaluation -----------------------------------------------------------------------------
    def evaluate_model(self, variant: str, model: Any, tokenizer: Any, key: str, cells: list[Cell]) -> None:
        reference = _Reference(self.source.location, self.recipe.model) if variant != BASELINE else None
        try:
            for cell in cells:
                ckey = self.cell_key(key, cell)
                if (cached := self.ledger.cell(variant, cell.entry.cell, ckey)) is not None:
                    self.rejudge(variant, cell, ckey, cached)
                    continue
                if cell.pset.task.windows and not isinstance(model, torch.nn.Module):
                    continue  # an API model has no next-token distribution to compare
                sample_dir = self.out_dir / "samples" / variant
                partial = sample_dir / f"{cell.entry.cell}.partial.jsonl"
                log.info("evaluating %s on %s (%d items)", variant, cell.entry.cell, len(cell.pset.items))
                t0 = time.perf_counter()
                metrics, samples = self.evaluate_cell(cell, model, tokenizer, partial, reference)
                metrics = {**metrics, "eval_s": time.perf_counter() - t0, "metric": cell.pset.task.metric}
                final = sample_dir / f"{cell.entry.cell}.jsonl"
                final.write_text("".join(json.dumps(s) + "\n" for s in samples))
                partial.unlink(missing_ok=True)
                self.ledger.put_cell(variant, cell.entry.cell, cell.entry.name, ckey, metrics)
                self.computed.append(f"{variant}/{cell.entry.cell}")
        finally:
            if reference is not None:
                reference.release()

    def evaluate_cell(self, cell: Cell, model: Any, tokenizer: Any, partial: Path, reference: _Reference | None,
                      extras: bool = True) -> tuple[dict, list[dict]]:
        """(metrics, samples) of one model on one cell: generation and scoring, or token windows. `extras`:
        also log-likelihood choices and the judge (not for the intermediate stages of a chain)."""
        from evaluate.loglikelihood import apply_loglik
        from evaluate.metrics import batch_scorer_for

        if cell.pset.task.windows:
            windows = [[int(t) for t in p.split()] for p in cell.pset.prompts]
            metrics, samples = evaluate_windows(model, windows, [it.id for it in cell.pset.items], partial,
                                                reference.load if reference is not None else None)
            return {**metrics, "seq_len": float(len(windows[0])), "tokenizer": _tokenizer_name(tokenizer)}, samples
        result = evaluate_cell(model, tokenizer, cell.pset, cell.decoding, partial, cell.entry.repeats,
                               batch_scorer_for(cell.pset.task))
        metrics = dict(result.metrics)
        if extras:  # multiple choice: also score each option by log-likelihood (samples gain loglik_choice)
            metrics.update(apply_loglik(model, tokenizer, cell.pset, result.samples, cell.decoding.batch_size))
            metrics.update(self.judge(cell, result.samples))
        if result.metrics["truncated"] > 0.05 * len(result.samples):
            log.warning("%s: %d of %d outputs hit max_new_tokens=%d before ending (their answers may be cut); "
                        "raise tasks[].max_new_tokens for %s", cell.entry.cell, result.metrics["truncated"],
                        len(result.samples), cell.decoding.max_new_tokens, cell.entry.cell)
        return metrics, result.samples

    # LLM judge and API models (evaluate/judge.py, evaluate/api_model.py) ---------------------
    def judge(self, cell: Cell, samples: list[dict]) -> dict:
        """Judge metrics for a freshly evaluated cell (samples gain judge_* fields), {} if not judged."""
        from evaluate.api_model import APIError
        from evaluate.judge import judge_applies, judge_cell

        if not judge_applies(self.recipe.judge, cell.entry.cell, cell.pset.task):
            return {}
        try:
            return judge_cell(self.recipe.judge, samples, cell.pset.items, self.recipe.seed)
        except APIError as exc:  # the rule verdicts stand; a rerun retries the judge (no judge_key stored)
            log.error("judge failed on %s: %s", cell.entry.cell, exc)
            return {"judge_error": str(exc)[:500]}

    def rejudge(self, variant: str, cell: Cell, ckey: str, cached: dict) -> None:
        """A finished cell whose judge settings changed is re-judged from its samples, not regenerated."""
        from evaluate.judge import JUDGE_METRICS, judge_applies, judge_key

        spec, path = self.recipe.judge, self.out_dir / "samples" / variant / f"{cell.entry.cell}.jsonl"
        if (not judge_applies(spec, cell.entry.cell, cell.pset.task) or not path.exists()
                or cached.get("judge_key") == judge_key(spec, self.recipe.seed)):
            return
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        metrics = {k: v for k, v in cached.items() if k not in JUDGE_METRICS} | self.judge(cell, samples)
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
        self.ledger.put_cell(variant, cell.entry.cell, cell.entry.name, ckey, metrics)
        self.computed.append(f"{variant}/{cell.entry.cell}/judge")

    def run_api_model(self, position: int, spec: Any, tokenizer: Any, cells: list[Cell]) -> None:
        """An API model as its own row: same frozen prompts and decoding; latency from its measured
        requests; no weights, memory or disk here to measure (null)."""
        from evaluate.api_model import APIModel, client_from_spec

        model = APIModel(spec.name, client_from_spec(spec), spec.max_concurrency)
        key = self.recipe.fingerprint("api", spec.base_url, spec.model)
        self.ledger.upsert_variant(spec.name, key, position=position, steps=[{"method": f"api:{spec.model}"}],
                                   footprint={"backend": model.backend}, model_dir=None)
        try:
            self.evaluate_model(spec.name, model, tokenizer, key, cells)
            if model.requests:
                self.ledger.upsert_variant(spec.name, key, profile=model.latency_profile())
            self.ledger.upsert_variant(spec.name, key, status="ok", reason=None)
        except Exception as exc:  # a failing endpoint must not sink the study; APIError messages hold no key
            log.error("api model %s failed: %s", spec.name, exc)
            self.ledger.upsert_variant(spec.name, key, status="failed", reason=f"{type(exc).__name__}: {exc}"[:2000])

    def cells_pending(self, variant: str, key: str, cells: list[Cell]) -> bool:
        return any(self.ledger.cell(variant, c.entry.cell, self.cell_key(key, c)) is None for c in cells)

    def profile(self, variant: str, location: str) -> None:
        p = self.recipe.profile
        row = self.ledger.variant(variant)
        if not p.enabled or (row and row.get("profile")):
            return
        log.info("profiling %s", variant)
        config = ProfileConfig(p.prompt_tokens, p.new_tokens, p.warmup, p.repeats, tuple(p.batch_sizes))
        m = self.recipe.model
        result = profile_in_subprocess(location, m.dtype, m.device, config, m.trust_remote_code)
        self.ledger.upsert_variant(variant, row["key"], profile=result)
        self.computed.append(f"{variant}/profile")

    def run_baseline(self, tokenizer: Any, cells: list[Cell]) -> None:
        key = self.baseline_key()
        m = self.recipe.model
        self.ledger.upsert_variant(BASELINE, key, position=0, steps=[], model_dir=self.source.location,
                                   build={"source": source_info(self.source.location)})
        if self.cells_pending(BASELINE, key, cells):
            model = load_model(self.source.location, m.dtype, m.device, m.trust_remote_code, m.revision)
            self.ledger.upsert_variant(BASELINE, key, footprint=measure_footprint(model).as_dict(), status="ok")
            self.evaluate_model(BASELINE, model, tokenizer, key, cells)
            del model
            gc.collect()
        if self.source.is_local:
            self.ledger.upsert_variant(BASELINE, key, disk_bytes=_weights_disk_bytes(Path(self.source.location)))
        self.profile(BASELINE, self.source.location)

    # variants -------------------------------------------------------------------------------
    def build_variant(self, name: str, steps: list[dict], key: str, tokenizer: Any) -> Path:
        vdir = self.out_dir / "variants" / name
        model_dir = vdir / "model"
        marker = vdir / "build.json"
        if marker.exists() and json.loads(marker.read_text()).get("key") == key and model_dir.exists():
            return model_dir
        m = self.recipe.model
        for step in steps:
            spec = self.methods[step["method"]]
            params = spec.params.model_validate({k: v for k, v in step.items() if k != "method"})
            reason = spec.unavailable_reason(m.device, params)
            if reason:
                raise SkipVariant(f"method {step['method']!r} cannot run here: {reason}")
        shutil.rmtree(vdir, ignore_errors=True)
        work = vdir / "work"
        work.mkdir(parents=True)
        log.info("building %s: %s", name, " -> ".join(s["method"] for s in steps))
        model = load_model(self.source.location, m.dtype, m.device, m.trust_remote_code, m.revision)
        ctx = StepContext(tokenizer=tokenizer, source_dir=Path(self.source.location), workdir=work,
                          seed=self.recipe.seed, device=m.device, dtype=m.dtype,
                          trust_remote_code=m.trust_remote_code,
                          calibration=calibration_provider(self.calibration_spec()["source"], self.recipe.seed),
                          extras={"recipe": self.recipe})
        timings = []
        for i, step in enumerate(steps):
            spec = self.methods[step["method"]]
            params = spec.params.model_validate({k: v for k, v in step.items() if k != "method"})
            ctx.extras["pristine"] = i == 0
            t0 = time.perf_counter()
            model = spec.apply(model, params, ctx)
            timings.append({"method": spec.name, "seconds": time.perf_counter() - t0})
            if i < len(steps) - 1 and any(v.name == name and v.eval_stages for v in self.recipe.variants):
                self.on_stage(name, key, i, spec.name, model, tokenizer)
        # saved in the format of the last step that produced a non-dense one (a registered saver, if any)
        fmt = next((f for f in (self.methods[s["method"]].produces for s in reversed(steps)) if f != "dense"), "dense")
        save_model(model, tokenizer, model_dir, fmt)
        shutil.rmtree(work, ignore_errors=True)
        del model
        gc.collect()
        uses = [s["method"] for s in steps if self.methods[s["method"]].params.model_validate(
            {k: v for k, v in s.items() if k != "method"}).uses_calibration()]
        calibration = {**self.calibration_spec(), "used_by": uses} if uses else None
        marker.write_text(json.dumps({"key": key, "steps": steps, "timings": timings, "format": fmt,
                                      "calibration": calibration}))
        self.computed.append(f"{name}/build")
        return model_dir

    def on_stage(self, variant: str, key: str, stage: int, method: str, model: Any, tokenizer: Any) -> None:
        """Evaluate an intermediate model of a chain so each step's cost shows in the report."""
        footprint = measure_footprint(model).as_dict()
        reference = _Reference(self.source.location, self.recipe.model)
        try:
            for cell in self._cells:
                skey = self.cell_key(key, cell)
                if self.ledger.stage(variant, stage, cell.entry.cell, skey) is not None:
                    continue
                partial = self.out_dir / "samples" / variant / f"stage{stage}-{cell.entry.cell}.partial.jsonl"
                metrics, _ = self.evaluate_cell(cell, model, tokenizer, partial, reference, extras=False)
                self.ledger.put_stage(variant, stage, method, cell.entry.cell, skey, metrics, footprint)
                self.computed.append(f"{variant}/stage{stage}/{cell.entry.cell}")
        finally:
            reference.release()

    def run_variant(self, position: int, name: str, steps: list[dict], tokenizer: Any, cells: list[Cell]) -> None:
        key = self.variant_key(steps)
        self.ledger.upsert_variant(name, key, position=position, steps=steps)
        row = self.ledger.variant(name)
        if row.get("status") == "skipped":
            return
        m = self.recipe.model
        try:
            model_dir = self.build_variant(name, steps, key, tokenizer)
            marker = json.loads((model_dir.parent / "build.json").read_text())
            self.ledger.upsert_variant(name, key, model_dir=str(model_dir), build=marker,
                                       disk_bytes=_weights_disk_bytes(model_dir))
            if self.cells_pending(name, key, cells):
                model = load_model(str(model_dir), m.dtype, m.device, m.trust_remote_code)
                footprint = {**measure_footprint(model).as_dict(),
                             "stored_bits_per_param": stored_bits_per_param(model_dir, model)}
                self.ledger.upsert_variant(name, key, footprint=footprint)
                self.evaluate_model(name, model, tokenizer, key, cells)
                del model
                gc.collect()
            self.profile(name, str(model_dir))
            self.ledger.upsert_variant(name, key, status="ok", reason=None)
        except SkipVariant as exc:
            log.warning("skipping %s: %s", name, exc)
            self.ledger.upsert_variant(name, key, status="skipped", reason=str(exc))
        except Exception as exc:  # one broken variant must not sink the study
            log.error("variant %s failed: %s", name, exc)
            self.ledger.upsert_variant(name, key, status="failed",
                                       reason=f"{type(exc).__name__}: {exc}"[:2000],
                                       build={"traceback": traceback.format_exc()[-4000:]})

    def run(self) -> Path:
        from evaluate.report import write_outputs

        run_id = self.ledger.start_run(self.recipe.model_dump())
        m = self.recipe.model
        self.source.materialize()  # a GGUF file becomes a checkpoint directory once (cached across studies)
        self.model_config = load_config(self.source.location, m.trust_remote_code, m.revision)
        tokenizer = load_tokenizer(self.source.location, m.trust_remote_code, m.revision)
        cells = self.prepare_cells(tokenizer)
        self._cells = cells
        # what exists now (imported torch/transformers, tokenizer, frozen prompts) lives for the whole run:
        # out of the collector's sight, each gc.collect() after a model scans only what that model made.
        # Unfrozen afterwards, so a process that runs several studies can still collect what is older.
        gc.freeze()
        try:
            self.run_baseline(tokenizer, cells)
            for position, variant in enumerate(self.recipe.variants, start=1):
                self.run_variant(position, variant.name, variant.steps, tokenizer, cells)
            for position, api in enumerate(self.recipe.api_models, start=len(self.recipe.variants) + 1):
                self.run_api_model(position, api, tokenizer, cells)
        finally:
            gc.unfreeze()
        self.ledger.finish_run(run_id, self.computed)
        return write_outputs(self.ledger, self.out_dir, self.recipe)


class _Reference:
    """The FP model, loaded on first use while a variant is evaluated (fidelity windows compare with it)."""

    def __init__(self, location: str, spec: Any) -> None:
        self.location, self.spec, self.model = location, spec, None

    def load(self) -> Any:
        if self.model is None:
            s = self.spec
            self.model = load_model(self.location, s.dtype, s.device, s.trust_remote_code, s.revision)
        return self.model

    def release(self) -> None:
        self.model = None
        gc.collect()


def _tokenizer_name(tokenizer: Any) -> str:
    return f"{type(tokenizer).__name__} {getattr(tokenizer, 'name_or_path', '')} (vocab {len(tokenizer)})"


def _weights_disk_bytes(model_dir: Path) -> int:
    """Bytes of the weight files (what a deployment ships), tokenizer and configs excluded."""
    weights = [p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    return sum(p.stat().st_size for p in weights) if weights else disk_bytes(model_dir)


def run_study(recipe: Recipe, out_dir: str | Path | None = None) -> Path:
    return Study(recipe, Path(out_dir or recipe.output)).run()

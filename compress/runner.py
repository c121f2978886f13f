"""The study runner: baseline once, then each variant built, saved, reloaded from disk, evaluated on the frozen
prompts and profiled. Everything finished is in the ledger as typed records; reruns skip it."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.build import SkipVariant, build
from compress.calibration import calibration_provider, resolve_source
from compress.executors import Executor, LocalExecutor
from compress.recipe import BASELINE, Recipe, TaskEntry
from compress.registry import CalibrationData, MethodParams, MethodSpec
from compress.serving import serve_variant, served_rows
from evaluate.api_model import APIError, APIModel, client_from_spec
from evaluate.backends import GenerationBackend, HFBackend
from evaluate.bertscore import configure as configure_bertscore
from evaluate.fidelity import evaluate_windows
from evaluate.generation import DecodingConfig
from evaluate.harness import PromptSet, build_prompt_set, evaluate_cell, load_prompt_set, save_prompt_set
from evaluate.interrupts import Interrupted, StudyLock
from evaluate.judge import JUDGE_METRICS, judge_applies, judge_cell, judge_key
from evaluate.ledger import Ledger
from evaluate.loglikelihood import apply_loglik
from evaluate.memory import measure_footprint, stored_bits_per_param
from evaluate.models import disk_bytes, load_config, load_model, load_tokenizer, resolve_model_source, source_info
from evaluate.profiling import ProfileConfig, profile_in_subprocess
from evaluate.progress import NullProgress, Progress
from evaluate.prompts import PromptConfig, decoding_for, resolve_chat_template
from evaluate.records import Build, CellMetrics, GgufSource
from evaluate.report import write_outputs
from evaluate.scoring import batch_scorer_for
from evaluate.tasks.perplexity import default_seq_len

log = logging.getLogger("slimlab")

__all__ = ["SkipVariant", "Study", "run_study"]


@dataclass
class Cell:
    entry: TaskEntry
    pset: PromptSet
    decoding: DecodingConfig


@dataclass
class Study:
    recipe: Recipe
    out_dir: Path
    progress: Progress = field(default_factory=NullProgress)
    computed: list[str] = field(default_factory=list)  # what this run actually (re)computed
    # executors (compress/executors.py): a Ray worker runs a Study on a journaled copy of its variant's ledger
    # rows, sends final sample files to the driver, and leaves profiling to the driver's serialized phase
    ledger: Ledger | None = None
    node: str | None = None  # where this process runs, recorded with each build (None: this machine)
    sample_sink: Callable[[str, str, str], None] | None = None
    profile_inline: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.ledger is None:
            self.ledger = Ledger(self.out_dir / "results.sqlite")
        # checkpoints and partial sample files: `storage:` (a path every node sees) or the output directory
        self.work_dir = Path(self.recipe.storage) if self.recipe.storage else self.out_dir
        self.source = resolve_model_source(self.recipe.model.name)
        self.model_config: Any = None  # read once the source is materialized (run())
        self.run_id: int | None = None
        b, device = self.recipe.bertscore, self.recipe.model.device
        configure_bertscore(b.model, b.num_layers, b.batch_size, None if device == "auto" else device)

    def done(self, what: str) -> None:
        """A piece of work finished: recorded at once, so a killed run's ledger says what it did."""
        self.computed.append(what)
        if self.run_id is not None:
            self.ledger.add_computed(self.run_id, what)

    # keys: a result is reused only while everything that produced it is unchanged -------------
    def baseline_key(self) -> str:
        m = self.recipe.model
        return self.recipe.fingerprint(m.name, m.revision, m.dtype, m.device)

    def variant_key(self, steps: list[MethodParams]) -> str:
        return self.recipe.fingerprint(self.baseline_key(), [s.recipe_dict() for s in steps],
                                       self.calibration_spec(), self.recipe.seed)

    def calibration_spec(self) -> dict:
        """The calibration a variant is built with, `auto` resolved (recorded with each build)."""
        c = self.recipe.calibration
        return {**c.model_dump(), "source": resolve_source(c.source, self.source.kind)}

    def calibration(self) -> CalibrationData:
        spec = self.calibration_spec()
        return CalibrationData(spec["source"], spec["n_samples"], spec["seq_len"],
                               calibration_provider(spec["source"], self.recipe.seed))

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
    def evaluate_model(self, variant: str, backend: GenerationBackend, tokenizer: Any, key: str,
                       cells: list[Cell]) -> None:
        reference = _Reference(self.source.location, self.recipe.model) if variant != BASELINE else None
        try:
            for cell in cells:
                ckey = self.cell_key(key, cell)
                if self.ledger.cell(variant, cell.entry.cell, ckey) is not None:
                    continue  # finished (a changed judge is applied by rejudge_all, from the samples)
                if cell.pset.task.windows and not isinstance(backend, HFBackend):
                    continue  # a served model offers no full next-token distribution to compare
                partial = self.work_dir / "samples" / variant / f"{cell.entry.cell}.partial.jsonl"
                log.info("evaluating %s on %s (%d items)", variant, cell.entry.cell, len(cell.pset.items))
                self.progress.cell(variant, cell.entry.cell, len(cell.pset.items) * cell.entry.repeats)
                t0 = time.perf_counter()
                metrics, samples = self.evaluate_cell(cell, backend, tokenizer, partial, reference)
                metrics.eval_s = time.perf_counter() - t0
                self.save_samples(variant, cell.entry.cell, "".join(json.dumps(s) + "\n" for s in samples))
                partial.unlink(missing_ok=True)
                self.ledger.put_cell(variant, cell.entry.cell, cell.entry.name, ckey, metrics)
                self.done(f"{variant}/{cell.entry.cell}")
        finally:
            if reference is not None:
                reference.release()

    def save_samples(self, variant: str, cell: str, text: str) -> None:
        """A finished cell's samples, one JSON object per line, in the output directory (from a Ray worker: sent
        to the driver, which writes them)."""
        if self.sample_sink is not None:
            self.sample_sink(variant, cell, text)
            return
        path = self.out_dir / "samples" / variant / f"{cell}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def evaluate_cell(self, cell: Cell, backend: GenerationBackend, tokenizer: Any, partial: Path,
                      reference: _Reference | None, extras: bool = True) -> tuple[CellMetrics, list[dict]]:
        """(metrics, samples) of one model on one cell: generation and scoring, or token windows. `extras`:
        also log-likelihood choices and the judge (not for the intermediate stages of a chain)."""
        if cell.pset.task.windows:
            windows = [[int(t) for t in p.split()] for p in cell.pset.prompts]
            metrics, samples = evaluate_windows(backend.model, windows, [it.id for it in cell.pset.items], partial,
                                                reference.load if reference is not None else None,
                                                on_window=self.progress.advance)
            return metrics.merged({"tokenizer": _tokenizer_name(tokenizer)}), samples
        result = evaluate_cell(backend, cell.pset, cell.decoding, partial, cell.entry.repeats,
                               batch_scorer_for(cell.pset.task), on_progress=self.progress.advance)
        metrics = result.metrics
        if extras:  # multiple choice: also score each option by log-likelihood (samples gain loglik_choice)
            metrics = metrics.merged(apply_loglik(backend, cell.pset, result.samples, cell.decoding.batch_size))
            metrics = metrics.merged(self.judge(cell, result.samples))
        if (metrics.truncated or 0) > 0.05 * len(result.samples):
            log.warning("%s: %d of %d outputs hit max_new_tokens=%d before ending (their answers may be cut); "
                        "raise tasks[].max_new_tokens for %s", cell.entry.cell, metrics.truncated,
                        len(result.samples), cell.decoding.max_new_tokens, cell.entry.cell)
        return metrics, result.samples

    # LLM judge and API models (evaluate/judge.py, evaluate/api_model.py) ---------------------
    def judge(self, cell: Cell, samples: list[dict]) -> dict:
        """Judge metrics for a freshly evaluated cell (samples gain judge_* fields), {} if not judged."""
        own = getattr(cell.pset.task.cell_metrics, "judge", None)  # a task's own judge hook (MR-Score reasons)
        if own is not None:
            return own(self.recipe.judge, cell.entry.cell, samples, cell.pset.items, self.recipe.seed)
        if not judge_applies(self.recipe.judge, cell.entry.cell, cell.pset.task):
            return {}
        try:
            return judge_cell(self.recipe.judge, samples, cell.pset.items, self.recipe.seed)
        except APIError as exc:  # the rule verdicts stand; a rerun retries the judge (no judge_key stored)
            log.error("judge failed on %s: %s", cell.entry.cell, exc)
            return {"judge_error": str(exc)[:500]}

    def rejudge_all(self, cells: list[Cell]) -> None:
        """Re-judge every finished cell whose judge settings changed (also rows that needed no model this run)."""
        for row in self.ledger.variants():
            for cell in cells:
                ckey = self.cell_key(row.key, cell)
                if (cached := self.ledger.cell(row.variant, cell.entry.cell, ckey)) is not None:
                    self.rejudge(row.variant, cell, ckey, cached)

    def rejudge(self, variant: str, cell: Cell, ckey: str, cached: CellMetrics) -> None:
        """A finished cell whose judge settings changed is re-judged from its samples, not regenerated."""
        spec, path = self.recipe.judge, self.out_dir / "samples" / variant / f"{cell.entry.cell}.jsonl"
        if (not judge_applies(spec, cell.entry.cell, cell.pset.task) or not path.exists()
                or cached.judge_key == judge_key(spec, self.recipe.seed)):
            return
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        cleared = cached.merged(dict.fromkeys(JUDGE_METRICS))
        metrics = cleared.merged(self.judge(cell, samples))
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
        self.ledger.put_cell(variant, cell.entry.cell, cell.entry.name, ckey, metrics)
        self.done(f"{variant}/{cell.entry.cell}/judge")

    def run_api_model(self, position: int, spec: Any, tokenizer: Any, cells: list[Cell]) -> None:
        """An API model as its own row: same frozen prompts and decoding; latency from its measured
        requests; no weights, memory or disk here to measure (null)."""
        model = APIModel(spec.name, client_from_spec(spec), spec.max_concurrency)
        key = self.recipe.fingerprint("api", spec.base_url, spec.model)
        self.ledger.upsert_variant(spec.name, key, position=position, steps=[{"method": f"api:{spec.model}"}],
                                   model_dir=None)
        self.progress.variant(spec.name, "evaluating")
        try:
            self.evaluate_model(spec.name, model, tokenizer, key, cells)
            if model.requests:
                self.ledger.upsert_variant(spec.name, key, profile=model.latency_profile())
            self.ledger.upsert_variant(spec.name, key, status="ok", reason=None)
            self.progress.finished(spec.name, "ok")
        except Exception as exc:  # a failing endpoint must not sink the study; APIError messages hold no key
            log.error("api model %s failed: %s", spec.name, exc)
            self.ledger.upsert_variant(spec.name, key, status="failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
            self.progress.finished(spec.name, "failed")

    def cells_pending(self, variant: str, key: str, cells: list[Cell]) -> bool:
        return any(self.ledger.cell(variant, c.entry.cell, self.cell_key(key, c)) is None for c in cells)

    def profile_pending(self, variant: str) -> bool:
        row = self.ledger.variant(variant)
        return self.recipe.profile.enabled and row is not None and row.profile is None

    def profile_config(self) -> ProfileConfig:
        p = self.recipe.profile
        return ProfileConfig(p.prompt_tokens, p.new_tokens, p.warmup, p.repeats, tuple(p.batch_sizes))

    def profile(self, variant: str, location: str) -> None:
        """Latency and memory in a fresh process. Inline after the variant's evaluation (local executor); a Ray
        run profiles after all evaluation, one variant at a time per node (compress/executors.py)."""
        if not self.profile_inline or not self.profile_pending(variant):
            return
        log.info("profiling %s", variant)
        self.progress.variant(variant, "profiling")
        m = self.recipe.model
        result = profile_in_subprocess(location, m.dtype, m.device, self.profile_config(), m.trust_remote_code)
        self.ledger.upsert_variant(variant, self.ledger.variant(variant).key, profile=result)
        self.done(f"{variant}/profile")

    def run_baseline(self, tokenizer: Any, cells: list[Cell]) -> None:
        key = self.baseline_key()
        m = self.recipe.model
        origin = source_info(self.source.location)
        self.ledger.upsert_variant(BASELINE, key, position=0, steps=[], model_dir=self.source.location,
                                   build=Build(source=GgufSource(**origin) if origin else None))
        self.progress.variant(BASELINE, "evaluating")
        if self.cells_pending(BASELINE, key, cells):
            model = load_model(self.source.location, m.dtype, m.device, m.trust_remote_code, m.revision)
            self.ledger.upsert_variant(BASELINE, key, footprint=measure_footprint(model), status="ok")
            self.evaluate_model(BASELINE, HFBackend(model, tokenizer), tokenizer, key, cells)
            del model
            gc.collect()
        if self.source.is_local:
            self.ledger.upsert_variant(BASELINE, key, disk_bytes=_weights_disk_bytes(Path(self.source.location)))
        self.profile(BASELINE, self.source.location)
        self.progress.finished(BASELINE, "ok")
        serve_variant(self, 0, BASELINE, self.source.location, key, cells, tokenizer)  # backend vllm: baseline@vllm

    # variants -------------------------------------------------------------------------------
    def build_variant(self, name: str, steps: list[MethodParams], key: str, tokenizer: Any) -> Path:
        vdir = self.work_dir / "variants" / name
        model_dir = vdir / "model"
        marker = vdir / "build.json"
        if marker.exists() and model_dir.exists() and Build.model_validate_json(marker.read_text()).key == key:
            return model_dir
        shutil.rmtree(vdir, ignore_errors=True)
        log.info("building %s: %s", name, " -> ".join(s.method for s in steps))
        self.progress.variant(name, "building")
        m = self.recipe.model
        stages = any(v.name == name and v.eval_stages for v in self.recipe.variants)
        record = build(self.source.location, steps, model_dir, tokenizer, dtype=m.dtype, device=m.device,
                       trust_remote_code=m.trust_remote_code, seed=self.recipe.seed, calibration=self.calibration(),
                       on_stage=(lambda i, spec, model: self.on_stage(name, key, i, spec, model, tokenizer))
                       if stages else None)
        record.key, record.node = key, self.node
        marker.write_text(record.model_dump_json())
        self.done(f"{name}/build")
        return model_dir

    def on_stage(self, variant: str, key: str, stage: int, spec: MethodSpec, model: Any, tokenizer: Any) -> None:
        """Evaluate an intermediate model of a chain so each step's cost shows in the report."""
        footprint = measure_footprint(model)
        reference = _Reference(self.source.location, self.recipe.model)
        try:
            for cell in self._cells:
                skey = self.cell_key(key, cell)
                if self.ledger.stage(variant, stage, cell.entry.cell, skey) is not None:
                    continue
                partial = self.work_dir / "samples" / variant / f"stage{stage}-{cell.entry.cell}.partial.jsonl"
                self.progress.cell(variant, f"{cell.entry.cell} (after {spec.name})", len(cell.pset.items))
                metrics, _ = self.evaluate_cell(cell, HFBackend(model, tokenizer), tokenizer, partial, reference,
                                                extras=False)
                self.ledger.put_stage(variant, stage, spec.name, cell.entry.cell, skey, metrics, footprint)
                self.done(f"{variant}/stage{stage}/{cell.entry.cell}")
        finally:
            reference.release()

    def run_variant(self, position: int, name: str, steps: list[MethodParams], tokenizer: Any,
                    cells: list[Cell]) -> None:
        key = self.variant_key(steps)
        self.ledger.upsert_variant(name, key, position=position, steps=[s.recipe_dict() for s in steps])
        if self.ledger.variant(name).status == "skipped":
            self.progress.finished(name, "skipped")
            return
        m = self.recipe.model
        try:
            model_dir = self.build_variant(name, steps, key, tokenizer)
            self.ledger.upsert_variant(name, key, model_dir=str(model_dir),
                                       build=Build.model_validate_json((model_dir.parent / "build.json").read_text()),
                                       disk_bytes=_weights_disk_bytes(model_dir))
            if self.cells_pending(name, key, cells):
                self.progress.variant(name, "evaluating")
                model = load_model(str(model_dir), m.dtype, m.device, m.trust_remote_code)
                footprint = measure_footprint(model)
                footprint.stored_bits_per_param = stored_bits_per_param(model_dir, model)
                self.ledger.upsert_variant(name, key, footprint=footprint)
                self.evaluate_model(name, HFBackend(model, tokenizer), tokenizer, key, cells)
                del model
                gc.collect()
            self.profile(name, str(model_dir))
            self.ledger.upsert_variant(name, key, status="ok", reason=None)
            self.progress.finished(name, "ok")
            serve_variant(self, position, name, model_dir, key, cells, tokenizer)  # backend vllm: <name>@vllm
        except SkipVariant as exc:
            log.warning("skipping %s: %s", name, exc)
            self.ledger.upsert_variant(name, key, status="skipped", reason=str(exc))
            self.progress.finished(name, "skipped")
        except Exception as exc:  # one broken variant must not sink the study
            log.error("variant %s failed: %s", name, exc)
            log.debug("%s", traceback.format_exc())
            self.ledger.upsert_variant(name, key, status="failed", reason=f"{type(exc).__name__}: {exc}"[:2000],
                                       build=Build(traceback=traceback.format_exc()[-4000:]))
            self.progress.finished(name, "failed")

    def run(self, executor: Executor | None = None) -> Path:
        """The whole study, as the one writer of its directory (a second run is refused at once). The executor
        runs the baseline and the variants: in this process (default) or as Ray tasks."""
        executor = executor or LocalExecutor()
        with StudyLock(self.out_dir):
            try:
                executor.connect(self.recipe)  # an unreachable cluster or missing resources fail before heavy work
            except BaseException:
                executor.close()  # a cluster started here (or a connection made) is not left behind
                raise
            self.run_id = self.ledger.start_run(self.recipe.model_dump(mode="json"))
            try:
                return self._run(executor)
            except Interrupted:
                self.ledger.finish_run(self.run_id, "interrupted")
                raise
            except BaseException:
                self.ledger.finish_run(self.run_id, "failed")
                raise

    def load_source(self) -> Any:
        """The base model's checkpoint (a GGUF file becomes one, once, cached across studies) and tokenizer."""
        m = self.recipe.model
        self.source.materialize()
        self.model_config = load_config(self.source.location, m.trust_remote_code, m.revision)
        return load_tokenizer(self.source.location, m.trust_remote_code, m.revision)

    def _run(self, executor: Executor) -> Path:
        tokenizer = self.load_source()
        cells = self.prepare_cells(tokenizer)
        self._cells = cells
        self.progress.study(1 + len(self.recipe.variants) + len(self.recipe.api_models) + served_rows(self.recipe))
        # what exists now (imported torch/transformers, tokenizer, frozen prompts) lives for the whole run:
        # out of the collector's sight, each gc.collect() after a model scans only what that model made.
        # Unfrozen afterwards, so a process that runs several studies can still collect what is older.
        gc.freeze()
        try:
            executor.run(self, tokenizer, cells)
            for position, api in enumerate(self.recipe.api_models, start=len(self.recipe.variants) + 1):
                self.run_api_model(position, api, tokenizer, cells)
            self.rejudge_all(cells)
        finally:
            gc.unfreeze()
            executor.close()
        self.ledger.finish_run(self.run_id)
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


def run_study(recipe: Recipe, out_dir: str | Path | None = None, progress: Progress | None = None,
              executor: Executor | None = None) -> Path:
    return Study(recipe, Path(out_dir or recipe.output), progress or NullProgress()).run(executor)

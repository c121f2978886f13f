"""Served rows: with `backend: {name: vllm, ...}`, each model the study evaluated in process (the baseline from its
source directory, every variant that finished ok from its saved checkpoint) is also served by `vllm serve`
(evaluate/vllm_server.py, from the vLLM environment `backend.python`) and evaluated through the completions API on
the same frozen prompts and decoding, as a ledger row of its own named `<variant>@vllm`: the variant's steps and a
last `serve:vllm` step.

Per served row:
- cells as for any row (resumable: cell keys include the backend settings, so changing them re-evaluates); token
  window cells (perplexity) are left out (a server offers no full next-token distribution); multiple-choice
  log-likelihoods come from vLLM's prompt logprobs;
- agreement with the HF row, item for item, stored in the served cell's metrics when the cell is evaluated
  (`hf_vllm_*`: samples compared, identical text, same verdict, same log-likelihood pick, the differing ids);
- its `profile`: streamed TTFT and decode tokens/s at batch 1 and at decoding.batch_size (and profile.batch_sizes),
  the server's process-tree RSS (CPU) or NVML (GPU), and vLLM's own figures (start time, KV cache, non-KV or
  weights memory, kernels) in `profile.served` (evaluate.records.ServedInfo).

A checkpoint vLLM cannot serve on this device (VLLMUnsupported: a format without a kernel here, bitsandbytes, ...)
makes the row `skipped` with vLLM's reason (not retried while its key holds); any other VLLMError (broken
environment, never healthy, port in use, a server that died) makes it `failed` with the message and the log's
tail, and a rerun retries it. Finished cells stay in the ledger; the study goes on either way."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluate.harness import read_records
from evaluate.records import Profile, ServedInfo
from evaluate.vllm_server import VLLMError, VLLMServer, VLLMUnsupported

if TYPE_CHECKING:  # the runner imports this module
    from compress.runner import Cell, Study

log = logging.getLogger("slimlab")

SERVED_SUFFIX = "@vllm"
SERVE_STEP = "serve:vllm"
CPU_KV_CACHE_BYTES = 1 << 30  # the KV pool a CPU study gives vLLM when the recipe sets neither KV field
IDS_KEPT = 100  # differing item ids stored per cell
# backend fields that change no result: not part of the served rows' key
_KEYLESS = {"port", "host", "start_timeout_s", "request_timeout_s"}

__all__ = ["SERVED_SUFFIX", "agreement", "serve_variant", "served_row", "served_rows"]


def served_row(variant: str) -> str:
    """The ledger row of a variant served by vLLM ('@' is not allowed in recipe names: no clash)."""
    return f"{variant}{SERVED_SUFFIX}"


def served_rows(recipe: Any) -> int:
    """Rows the vLLM backend adds to a study (the baseline and every variant): for the progress total."""
    return 1 + len(recipe.variants) if recipe.backend.name == "vllm" else 0


def _on_gpu(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def server_settings(study: Study) -> dict[str, Any]:
    """What the server is started with beyond the recipe's backend block: the dtype (None: the model's, so HF and
    vLLM rows run the same one), the CPU KV cache default, the study's seed."""
    spec, m = study.recipe.backend, study.recipe.model
    kv = spec.kv_cache_memory_bytes
    if kv is None and spec.gpu_memory_utilization is None and not _on_gpu(m.device):
        kv = CPU_KV_CACHE_BYTES
    return {"dtype": spec.dtype or m.dtype, "kv_cache_memory_bytes": kv, "seed": study.recipe.seed,
            "env": dict(spec.env)}


def served_key(study: Study, key: str, settings: dict[str, Any]) -> str:
    spec = study.recipe.backend.model_dump(mode="json", exclude=_KEYLESS)
    return study.recipe.fingerprint("served", key, spec, settings)


def servable_dir(study: Study, model_dir: str | Path) -> Path:
    """A directory vLLM can load: the checkpoint itself, or a hub model's snapshot in the local cache."""
    path = Path(model_dir)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model_dir), revision=study.recipe.model.revision, local_files_only=True))
    except Exception as exc:
        raise VLLMError(f"no local checkpoint directory for {model_dir} to serve ({type(exc).__name__}: {exc})") \
            from None


def _samples(study: Study, variant: str, cell: str) -> list[dict] | None:
    path = study.out_dir / "samples" / variant / f"{cell}.jsonl"
    return read_records(path) if path.exists() else None


def _verdict(s: dict) -> Any:
    return s["correct"] if "correct" in s else s.get("score")


def agreement(hf: list[dict], served: list[dict]) -> dict[str, Any]:
    """HF against vLLM, item for item (same id and repeat): the hf_vllm_* metrics of the served cell."""
    by_key = {(s["id"], s.get("repeat", 0)): s for s in hf}
    pairs = [(by_key[k], s) for s in served if (k := (s["id"], s.get("repeat", 0))) in by_key]
    differing = [str(b["id"]) for a, b in pairs if a.get("output") != b.get("output")]
    flipped = [str(b["id"]) for a, b in pairs if _verdict(a) != _verdict(b)]
    loglik = [(a["loglik_choice"]["pick"], b["loglik_choice"]["pick"]) for a, b in pairs
              if isinstance(a.get("loglik_choice"), dict) and isinstance(b.get("loglik_choice"), dict)]
    return {
        "hf_vllm_n": len(pairs),
        "hf_vllm_identical": len(pairs) - len(differing),
        "hf_vllm_same_verdict": len(pairs) - len(flipped),
        "hf_vllm_same_loglik": sum(x == y for x, y in loglik) if loglik else None,
        "hf_vllm_differing": list(dict.fromkeys(differing))[:IDS_KEPT],
        "hf_vllm_verdict_differs": list(dict.fromkeys(flipped))[:IDS_KEPT],
    }


def record_agreement(study: Study, name: str, row: str, key: str, cells: list[Cell]) -> None:
    """Each finished served cell without agreement figures gets them, from both rows' sample files."""
    for cell in cells:
        ckey = study.cell_key(key, cell)
        metrics = study.ledger.cell(row, cell.entry.cell, ckey)
        if metrics is None or metrics.hf_vllm_n is not None:
            continue
        hf, served = _samples(study, name, cell.entry.cell), _samples(study, row, cell.entry.cell)
        if hf is None or served is None:
            log.warning("no HF/vLLM agreement for %s on %s: %s samples file missing", name, cell.entry.cell,
                        "the HF row's" if hf is None else "the served row's")
            continue
        study.ledger.put_cell(row, cell.entry.cell, cell.entry.name, ckey, metrics.merged(agreement(hf, served)))


def _measure(study: Study, server: VLLMServer, name: str) -> Profile:
    """The served row's profile: streamed latency at batch 1 and at the study's decoding batch size (and the
    recipe's profile.batch_sizes), the server tree's memory, and vLLM's own figures."""
    p = study.recipe.profile
    if p.enabled:
        sizes = sorted({1, study.recipe.decoding.batch_size, *p.batch_sizes})
        log.info("profiling %s (served, batch sizes %s)", served_row(name), sizes)
        profile = server.served_profile(sizes, p.prompt_tokens, p.new_tokens, p.warmup, p.repeats,
                                        seed=study.recipe.seed)
    else:
        profile = Profile(kind="local", backend=server.backend(), dtype=server.report.dtype,
                          load_s=server.report.start_s)
    profile.served = ServedInfo(**{**server.report.model_dump(), "serves": name})
    return profile


def serve_variant(study: Study, position: int | None, name: str, model_dir: str | Path, key: str,
                  cells: list[Cell], tokenizer: Any = None) -> None:
    """Serve `name`'s checkpoint with vLLM and evaluate it as row `<name>@vllm` (nothing unless backend vllm).
    Never raises for the served row's own failure: it is recorded as skipped or failed."""
    spec = study.recipe.backend
    if spec.name != "vllm":
        return
    row = served_row(name)
    settings = server_settings(study)
    key = served_key(study, key, settings)
    hf = study.ledger.variant(name)
    steps = [*(hf.steps if hf is not None else []), {"method": SERVE_STEP, "dtype": settings["dtype"]}]
    study.ledger.upsert_variant(row, key, position=position, steps=steps, model_dir=str(model_dir))
    current = study.ledger.variant(row)
    if current.status == "skipped":  # vLLM said it cannot serve this checkpoint here; same key, same answer
        study.progress.finished(row, "skipped")
        return
    served_cells = [c for c in cells if not c.pset.task.windows]
    if current.status == "ok" and current.profile is not None and not study.cells_pending(row, key, served_cells):
        record_agreement(study, name, row, key, served_cells)
        study.progress.finished(row, "ok")
        return
    study.progress.variant(row, "starting vLLM")
    t0 = time.perf_counter()
    try:
        server = VLLMServer.from_spec(spec, servable_dir(study, model_dir), log_path=study.out_dir / "vllm" /
                                      f"{row}.log", tokenizer=tokenizer, **settings)
        log.info("serving %s with vLLM (%s)", name, " ".join(server.command()[:4]))
        with server:  # started and healthy here; stopped (its whole process tree) on the way out
            log.info("vLLM serves %s after %.1f s", name, server.report.start_s or 0.0)
            study.progress.variant(row, "evaluating")
            study.evaluate_model(row, server, tokenizer, key, served_cells)
            record_agreement(study, name, row, key, served_cells)
            if study.ledger.variant(row).profile is None:
                study.progress.variant(row, "profiling")
                study.ledger.upsert_variant(row, key, profile=_measure(study, server, name))
                study.done(f"{row}/profile")
        study.ledger.upsert_variant(row, key, status="ok", reason=None)
        study.progress.finished(row, "ok")
        log.info("served row %s finished in %.1f s (server stopped)", row, time.perf_counter() - t0)
    except VLLMUnsupported as exc:
        log.warning("vLLM cannot serve %s (%.1f s after launch): %s", name, time.perf_counter() - t0, exc.reason)
        reason = f"vLLM cannot serve it here: {exc.reason}"[:4000]
        study.ledger.upsert_variant(row, key, status="skipped", reason=reason)
        study.progress.finished(row, "skipped")
    except VLLMError as exc:
        log.error("served row %s failed: %s", row, exc)
        study.ledger.upsert_variant(row, key, status="failed", reason=str(exc)[:4000])
        study.progress.finished(row, "failed")
    except Exception as exc:  # a served row must not sink the study (its HF row is finished)
        log.error("served row %s failed: %s", row, exc)
        log.debug("%s", traceback.format_exc())
        study.ledger.upsert_variant(row, key, status="failed", reason=f"{type(exc).__name__}: {exc}"[:4000])
        study.progress.finished(row, "failed")

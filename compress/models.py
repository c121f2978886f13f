"""Where a model comes from (embedded name, local path, hub id) and how it is loaded and saved."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_ROOT = Path(__file__).parent / "embedded"
EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = ("float32", "bfloat16", "float16")


class ModelSourceError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSource:
    ref: str  # what the recipe said
    kind: str  # embedded | path | hub
    location: str  # a directory, or the hub id

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def embedded_models() -> list[str]:
    if not EMBEDDED_ROOT.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if (p / "config.json").exists())


def resolve_model_source(ref: str) -> ModelSource:
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX) :]
        path = EMBEDDED_ROOT / name
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"no embedded model {name!r}; embedded models: "
                + ", ".join(EMBEDDED_PREFIX + n for n in embedded_models())
            )
        return ModelSource(ref, "embedded", str(path))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"{ref!r} is a local path without config.json; point to a directory written by "
                "save_pretrained"
            )
        return ModelSource(ref, "path", str(path.resolve()))
    if HUB_ID.match(ref):
        return ModelSource(ref, "hub", ref)
    raise ModelSourceError(
        f"{ref!r} is neither an embedded model ('embedded:tiny-reasoner'), an existing directory, "
        "nor a Hugging Face id ('org/name')"
    )


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_config(location: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise ModelSourceError(
            f"cannot read the config of {location!r} ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "without network, use 'embedded:tiny-reasoner' or a local directory"
        ) from exc


def load_tokenizer(location: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    location: str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load a causal LM as it will run: quantized checkpoints keep their own format; a directory saved
    in a registered format (FORMAT_FILE present) is loaded by that format's own loader."""
    from transformers import AutoModelForCausalLM

    marker = Path(location) / FORMAT_FILE
    if marker.is_file():
        fmt = _format_from_marker(marker)
        model = fmt.load(location, dtype, device, trust_remote_code)
        model.eval()
        return model
    model = AutoModelForCausalLM.from_pretrained(
        location,
        dtype=torch_dtype(dtype),
        device_map=device,
        trust_remote_code=trust_remote_code,
        revision=revision,
        **kwargs,
    )
    if hasattr(model, "ct_decompress_hook"):
        # compressed-tensors leaves packed weights in place and decompresses the whole model to dense
        # on the first forward; do it now so memory figures describe the model that actually runs
        model.hf_quantizer.compressor.decompress_model(model)
    model.eval()
    return model


# Storage formats that plain save_pretrained/from_pretrained cannot round-trip (e.g. optimum-quanto).
# A method module registers one for its `produces` name; the runner saves with it, and the saved
# directory's FORMAT_FILE names the module, so any process (profiling too) can load it back.
FORMAT_FILE = "slimlab_format.json"


@dataclass(frozen=True)
class ModelFormat:
    name: str
    save: Callable[[Any, Path], None]  # (model, directory): write the weights and config
    load: Callable[[str, str, str, bool], Any]  # (directory, dtype, device, trust_remote_code) -> model


FORMATS: dict[str, ModelFormat] = {}


def register_format(fmt: ModelFormat) -> ModelFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def _format_from_marker(marker: Path) -> ModelFormat:
    import importlib
    import json

    info = json.loads(marker.read_text())
    importlib.import_module(info["module"])  # registers the format
    if info["format"] not in FORMATS:
        raise ModelSourceError(f"{marker}: module {info['module']!r} registers no format {info['format']!r}")
    return FORMATS[info["format"]]


def save_model(model: Any, tokenizer: Any, directory: Path, fmt: str = "dense") -> None:
    """save_pretrained, or the registered saver of `fmt` (recorded in FORMAT_FILE for load_model)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    if fmt in FORMATS:
        FORMATS[fmt].save(model, directory)
        module = FORMATS[fmt].load.__module__
        (directory / FORMAT_FILE).write_text(json.dumps({"format": fmt, "module": module}))
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

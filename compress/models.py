"""Where a model comes from (embedded name, local path, hub id) and how it is loaded and saved."""

from __future__ import annotations

import re
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
    """Load a causal LM as it will run: quantized checkpoints keep their own format."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        location,
        dtype=torch_dtype(dtype),
        device_map=device,
        trust_remote_code=trust_remote_code,
        revision=revision,
        **kwargs,
    )
    model.eval()
    return model


def save_model(model: Any, tokenizer: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

"""Storage formats: how a variant is saved, loaded back as it really runs, and which kernel runs each of its
layers. One file per format registers a ModelFormat; a saved directory's FORMAT_FILE names its format (a name
looked up here, never a module to import), so any process (profiling too) loads it the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.registry import Registry

FORMAT_FILE = "slimlab_format.json"


@dataclass(frozen=True)
class ModelFormat:
    name: str
    description: str
    # (module) -> a label of the kernel that runs this layer when it is one of this format's layers, else None
    layer_kind: Callable[[Any], str | None]
    # (model, directory) -> None; None: transformers' save_pretrained (quantization_config in config.json)
    save: Callable[[Any, Path], None] | None = None
    # (directory, dtype, device, trust_remote_code) -> model; None: from_pretrained reads config.json
    load: Callable[[str, str, str, bool], Any] | None = None
    held_packed: bool = True  # weights stay in their stored width in memory (not decompressed)


FORMATS: Registry[ModelFormat] = Registry("format", __name__)


def register_format(fmt: ModelFormat) -> ModelFormat:
    return FORMATS.register(fmt.name, fmt)


def format_of(directory: str | Path) -> str | None:
    """The format a saved directory names in FORMAT_FILE (None: an ordinary checkpoint)."""
    marker = Path(directory) / FORMAT_FILE
    if not marker.is_file():
        return None
    name = json.loads(marker.read_text()).get("format")
    if not isinstance(name, str) or name not in FORMATS:
        known = ", ".join(FORMATS.names())
        raise ValueError(f"{marker} names format {name!r}, which this slimlab does not know ({known}); "
                         "save the variant again with this version")
    return name


def save_model(model: Any, tokenizer: Any, directory: Path, fmt: str = "dense") -> None:
    """The format's own saver (else save_pretrained), the tokenizer if any, and FORMAT_FILE naming the format."""
    directory.mkdir(parents=True, exist_ok=True)
    saver = FORMATS.get(fmt).save
    if saver is not None:
        saver(model, directory)
    else:
        model.save_pretrained(directory)
    if tokenizer is not None:  # a random-weights checkpoint (compress profile config:...) has none
        tokenizer.save_pretrained(directory)
    (directory / FORMAT_FILE).write_text(json.dumps({"format": fmt}))


def layer_kinds(model: Any) -> tuple[str, set[str]]:
    """(the format whose layers the model holds, else "dense"; the kernel label of each kind of layer)."""
    kinds: set[str] = set()
    found = "dense"
    for module in model.modules():
        for name, fmt in FORMATS.items():
            kind = fmt.layer_kind(module)
            if kind is not None:
                kinds.add(kind)
                found = name if name != "dense" else found
                break
    return found, kinds

"""BERTScore recall through the bert-score package, as the three-tier SNI study scored it.

Defaults are the study's: roberta-large, bert-score's tuned layer for it (17), no idf, no baseline
rescaling; one recall per (candidate, reference) pair. The encoder is loaded once per process per
setting and cached. ``model`` may be a hub id, a local directory, or ``package:<module>[/<subdir>]``
(a directory inside an installed Python package, for encoders shipped as wheels). The runner calls
``configure()`` with the recipe's ``bertscore`` section.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("slimlab")

DEFAULT_MODEL = "roberta-large"
OFFLINE_HINT = (
    "without network, set bertscore.model in the recipe to a local directory holding the encoder "
    "(config.json, weights and tokenizer files, e.g. a saved copy of roberta-large)"
)


class BertScoreModelError(RuntimeError):
    """The BERTScore encoder cannot be found or loaded; the message says how to fix the recipe."""


@dataclass(frozen=True)
class BertScoreSettings:
    model: str = DEFAULT_MODEL
    num_layers: int | None = None  # None: bert-score's tuned layer for known names, else the last layer
    batch_size: int = 16
    device: str | None = None  # None: cuda when available, else cpu


_settings = BertScoreSettings()
_scorers: dict[tuple, Any] = {}


def configure(model: str = DEFAULT_MODEL, num_layers: int | None = None, batch_size: int = 16,
              device: str | None = None) -> BertScoreSettings:
    """Set the process-wide settings used by :func:`recall` (the runner passes the recipe's section)."""
    global _settings
    _settings = BertScoreSettings(model, num_layers, batch_size, device)
    return _settings


def settings() -> BertScoreSettings:
    return _settings


def resolve_model(name: str) -> str:
    """A location transformers can load: a local directory, or a hub id left as is."""
    if name.startswith("package:"):
        module, _, sub = name.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations:
            raise BertScoreModelError(f"bertscore.model = {name!r}: no installed Python package {module!r}; "
                                      f"pip install it, or {OFFLINE_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.is_dir():
            raise BertScoreModelError(f"bertscore.model = {name!r}: {path} is not a directory")
        return str(path)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise BertScoreModelError(f"bertscore.model = {name!r}: no such directory; {OFFLINE_HINT}")
    return name


def check_model(name: str) -> str | None:
    """Validation-time check (no download): the message for a bad ``bertscore.model``, or None."""
    try:
        resolve_model(name)
    except BertScoreModelError as exc:
        return str(exc).split(": ", 1)[1]
    return None


def resolve_layers(name: str, location: str, num_layers: int | None) -> int:
    if num_layers is not None:
        return num_layers
    from bert_score.utils import model2layers

    for key in (name, Path(location).name):
        if key in model2layers:
            return model2layers[key]
    from transformers import AutoConfig

    layers = int(AutoConfig.from_pretrained(location).num_hidden_layers)
    log.info("bertscore: %s is not in bert-score's tuned-layer table; using its last layer (%d)", name, layers)
    return layers


def get_scorer(config: BertScoreSettings | None = None) -> Any:
    """The cached ``bert_score.BERTScorer`` for ``config`` (default: the configured settings)."""
    s = config or _settings
    key = (s.model, s.num_layers, s.device)
    if key not in _scorers:
        from bert_score import BERTScorer

        location = resolve_model(s.model)
        try:
            layers = resolve_layers(s.model, location, s.num_layers)
            _scorers[key] = BERTScorer(model_type=location, num_layers=layers, idf=False,
                                       rescale_with_baseline=False, device=s.device, batch_size=s.batch_size)
        except (OSError, ValueError) as exc:  # not cached, no network, bad hub id, or a directory without weights
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BertScoreModelError(f"bertscore.model = {s.model!r} could not be loaded ({first}); "
                                      f"{OFFLINE_HINT}") from exc
    return _scorers[key]


def recall(candidates: list[str], references: list[str], config: BertScoreSettings | None = None) -> list[float]:
    """BERTScore recall in [0, 1] per pair (x100 is the study's scale). An empty candidate or reference
    scores 0, bert-score's own rule, applied here because its empty-string path calls a tokenizer method
    transformers 5 removed."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    s = config or _settings
    out = [0.0] * len(candidates)
    keep = [i for i, (c, r) in enumerate(zip(candidates, references, strict=True)) if c.strip() and r.strip()]
    if keep:
        _, rec, _ = get_scorer(s).score([candidates[i] for i in keep], [references[i] for i in keep],
                                        batch_size=s.batch_size)
        for i, value in zip(keep, rec.tolist(), strict=True):
            out[i] = float(value)
    return out


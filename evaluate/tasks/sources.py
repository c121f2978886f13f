"""Rows of a public dataset, from the Hugging Face hub or from local files with the same fields.

Each task's own file says, in a DatasetSpec, where its evaluation items and its k-shot exemplars come
from: hub id, config(s), hub split, and the fields every row must have; this module reads them.

Offline use: put the rows in ``data_dir`` (the recipe's ``tasks[i].data_dir``), one file per hub
split, named after that split and holding the hub's own fields, e.g. for ``gsm8k``::

    data_dir/test.jsonl     {"question": "...", "answer": "... #### 72"}   (evaluation items)
    data_dir/train.jsonl    same fields                                      (k-shot exemplars)

Accepted per split: ``<split>.jsonl``, ``<split>.json`` (a list of rows, or JSON lines),
``<split>.parquet``, or the hub's shard files ``<split>-*.parquet`` (also inside ``<config>/``), so
a clone of the dataset repository works as is.  ``compress tasks`` and the errors name the file.

Packaged data: GSM8K test and train and MATH-500 test ship inside slimlab (``evaluate/data/``, byte-identical
copies of openai/grade-school-math and openai/prm800k, MIT; see evaluate/data/README.md). A split with a
packaged copy is read from it unless ``data_dir`` is given: the same rows as the hub's, with no network and no
waiting on one. Other splits come from the hub.

Subsampling: ``n`` rows are drawn by a permutation seeded by (task, split, seed) whose first ``n``
indices are kept in dataset order, so the same seed gives the same items and a larger ``n`` gives a
superset.  With ``n`` at or above the number of rows, every row is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.tasks.base import Item

log = logging.getLogger("slimlab")


@dataclass(frozen=True)
class Source:
    """Where one split of one task comes from."""

    hf_id: str
    configs: tuple[str | None, ...]  # several configs are concatenated in this order (MATH subjects)
    hf_split: str  # the hub split; also the local file stem
    fields: tuple[str, ...]  # fields every row must have (checked on local files, named in errors)
    packaged: str | None = None  # a copy shipped in evaluate/data/ (path below it), used before the hub


@dataclass(frozen=True)
class DatasetSpec:
    """A task's data: ``test`` gives evaluation items, ``train`` gives k-shot exemplars."""

    task: str
    splits: dict[str, Source]


PACKAGED_ROOT = Path(__file__).resolve().parent.parent / "data"


def same_splits(hf_id: str, config: str | None, fields: tuple[str, ...], test: str = "test",
                train: str = "train") -> dict[str, Source]:
    """test and train from the same hub dataset and config (most tasks)."""
    return {"test": Source(hf_id, (config,), test, fields), "train": Source(hf_id, (config,), train, fields)}


GSM8K_FIELDS = ("question", "answer")
GSM8K_TRAIN = Source("openai/gsm8k", ("main",), "train", GSM8K_FIELDS, "gsm8k/train.jsonl")
MATH_CONFIGS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                "prealgebra", "precalculus")
MATH_FIELDS = ("problem", "solution", "level", "type")
MATH_TRAIN = Source("EleutherAI/hendrycks_math", MATH_CONFIGS, "train", MATH_FIELDS)


class DatasetUnavailable(RuntimeError):
    """Neither the hub nor ``data_dir`` gave the rows; the message says how to provide them."""


def expected_file(spec: DatasetSpec, split: str = "test") -> str:
    """The local file name a task's split is read from (for docs and errors)."""
    return f"{spec.splits[split].hf_split}.jsonl"


# ------------------------------------------------------------------------------------ local files


def _read_file(path: Path) -> list[dict]:
    """Rows of a local .jsonl / .json / .parquet file, read by datasets' own "json" and "parquet" builders. A
    .json file holding {"<name>": [rows]} is read from that field; a malformed file is named with its first
    bad line."""
    import datasets

    options = {} if path.suffix == ".parquet" else {"field": _json_field(path)}
    try:
        ds = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path),
                                   split="train", **options)
    except Exception as exc:  # datasets/pyarrow raise many kinds: one message naming the file and line
        raise DatasetUnavailable(_unreadable(path, exc)) from None
    return ds.to_list()


def _json_field(path: Path) -> str | None:
    """The field of a .json file that wraps its rows ({"data": [...]}), else None (rows or JSON lines)."""
    if path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        return next(iter(data))
    return None


def _unreadable(path: Path, exc: Exception) -> str:
    if path.suffix != ".parquet":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            return f"{path}: not UTF-8 text; save it as UTF-8 JSON lines"
        for lineno, line in enumerate(lines, start=1):
            if line.strip() and path.suffix == ".jsonl":
                try:
                    json.loads(line)
                except json.JSONDecodeError as bad:
                    return f"{path}:{lineno}: not a JSON row ({bad.msg}); fix or remove that line"
    return f"{path}: cannot be read as rows ({type(exc).__name__}: {str(exc)[:200]}); check the file's format"


def _files_in(folder: Path, stem: str) -> list[Path]:
    for name in (f"{stem}.jsonl", f"{stem}.json", f"{stem}.parquet"):
        if (folder / name).is_file():
            return [folder / name]
    return sorted(folder.glob(f"{stem}-*.parquet"))


def _local_files(data_dir: Path, src: Source) -> list[Path]:
    """Files of one split: at the top of data_dir, else one folder per config (concatenated; the hub's
    layout), else ``data/`` (the hub's layout for datasets without configs)."""
    files = _files_in(data_dir, src.hf_split)
    if files:
        return files
    folders = [data_dir / c for c in src.configs if c] or [data_dir / "data"]
    return [f for folder in folders if folder.is_dir() for f in _files_in(folder, src.hf_split)]


def _load_local(task: str, src: Source, data_dir: Path) -> list[dict]:
    if not data_dir.is_dir():
        raise DatasetUnavailable(f"{task}: data_dir {str(data_dir)!r} is not a directory; point data_dir at "
                                 f"a folder holding {src.hf_split}.jsonl with fields {list(src.fields)}")
    files = _local_files(data_dir, src)
    if not files:
        raise DatasetUnavailable(
            f"{task}: data_dir {str(data_dir)!r} has no file for split {src.hf_split!r}; expected "
            f"{data_dir / (src.hf_split + '.jsonl')} (or .json/.parquet, or {src.hf_split}-*.parquet shards) "
            f"with the fields of {src.hf_id}: {list(src.fields)}")
    rows = [row for f in files for row in _read_file(f)]
    for i, row in enumerate(rows):
        missing = [k for k in src.fields if k not in row]
        if missing:
            raise DatasetUnavailable(f"{task}: row {i} of {[str(f) for f in files]} lacks field(s) {missing}; "
                                     f"rows need the fields of {src.hf_id}: {list(src.fields)}")
    return rows


def check_data_dir(spec: DatasetSpec | None, data_dir: str | Path, k_shot: int = 0) -> str | None:
    """Why ``data_dir`` cannot serve a task's dataset (None when it can): used by recipe validation so a missing
    file fails before any model is loaded.  The train split is needed only for k-shot exemplars."""
    if spec is None:
        return None
    folder = Path(data_dir)
    if not folder.is_dir():
        return (f"not a directory; point data_dir at a folder holding {expected_file(spec)} "
                "(or remove data_dir to load from the Hugging Face hub)")
    needed = ["test"] + (["train"] if k_shot else [])
    for split in needed:
        src = spec.splits[split]
        if not _local_files(folder, src):
            why = "evaluation items" if split == "test" else f"k_shot={k_shot} exemplars"
            return (f"has no {src.hf_split}.jsonl (or .json/.parquet) for the {why}; add it with the fields of "
                    f"{src.hf_id} {list(src.fields)}" + (" or set k_shot: 0" if split == "train" else ""))
    return None


# -------------------------------------------------------------------------------------------- hub


def _hub_rows(hf_id: str, config: str | None, split: str) -> list[dict]:
    """Rows of one hub split (datasets caches the download)."""
    import datasets

    ds = datasets.load_dataset(hf_id, config, split=split)
    return [dict(r) for r in ds]


def _load_hub(task: str, src: Source) -> list[dict]:
    rows: list[dict] = []
    for config in src.configs:
        try:
            rows.extend(_hub_rows(src.hf_id, config, src.hf_split))
        except Exception as exc:  # any hub failure gets the same actionable message
            name = src.hf_id + (f" (config {config})" if config else "")
            raise DatasetUnavailable(
                f"{task}: could not load {name} split {src.hf_split!r} from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc)[:200]}). Without network, set data_dir in this task's recipe "
                f"entry to a folder holding {src.hf_split}.jsonl (or .json/.parquet) with the fields "
                f"{list(src.fields)}") from exc
    return rows


# ------------------------------------------------------------------------------------- public API


def load_rows(spec: DatasetSpec, split: str, data_dir: str | Path | None = None) -> list[dict]:
    """Every row of ``split`` ("test" or "train") of a task's dataset: from data_dir when given, else the packaged
    copy when slimlab ships one, else the hub."""
    if split not in spec.splits:
        raise ValueError(f"{spec.task}: split must be one of {sorted(spec.splits)}, got {split!r}")
    src = spec.splits[split]
    if data_dir:
        return _load_local(spec.task, src, Path(data_dir))
    if src.packaged:
        return _read_file(PACKAGED_ROOT / src.packaged)
    return _load_hub(spec.task, src)


def data_origin(spec: DatasetSpec | None, split: str, data_dir: str | Path | None = None) -> str:
    """Where load_rows reads ``split`` of a task's dataset from, in words (for the report)."""
    if spec is None or split not in spec.splits:
        return "generated by slimlab (seeded)"
    src = spec.splits[split]
    if data_dir:
        return f"data_dir {data_dir}"
    if src.packaged:
        return f"packaged copy evaluate/data/{src.packaged} (= {src.hf_id} {src.hf_split})"
    return f"Hugging Face hub {src.hf_id} {src.hf_split}"


def item_id(task: str, question: str, choices: tuple[str, ...] = ()) -> str:
    """Content-based id: the same question gets the same id in every split (so k-shot exemplars can
    be checked against evaluation items), whatever the dataset's own ids."""
    digest = hashlib.sha1("\x00".join((question, *choices)).encode("utf-8")).hexdigest()
    return f"{task}-{digest[:12]}"


def subsample(count: int, n: int, seed: int, key: str) -> list[int]:
    """Indices of ``n`` of ``count`` rows, in dataset order; the first ``n`` of a seeded permutation."""
    if n >= count:
        return list(range(count))
    order = list(range(count))
    random.Random(f"slimlab-dataset:{key}:{seed}").shuffle(order)
    return sorted(order[:n])


def load_items(
    spec: DatasetSpec,
    to_item: Callable[[dict[str, Any], str], Item | None],
    n: int,
    seed: int,
    split: str = "test",
    data_dir: str | Path | None = None,
) -> list[Item]:
    """``n`` items of ``split``: rows converted by ``to_item(row, split)`` (None drops a malformed row),
    duplicates (same question and options) dropped, then a seeded subsample."""
    task = spec.task
    items: list[Item] = []
    seen: set[str] = set()
    dropped = 0
    for row in load_rows(spec, split, data_dir):
        item = to_item(row, split)
        if item is None:
            dropped += 1
            continue
        if item.id in seen:
            continue
        seen.add(item.id)
        items.append(item)
    if dropped:
        log.warning("%s: %d %s row(s) could not be parsed and were skipped", task, dropped, split)
    if not items:
        raise DatasetUnavailable(f"{task}: split {split!r} has no usable rows")
    if n > len(items):
        log.info("%s: n=%d but %s has %d items; using all of them", task, n, split, len(items))
    return [items[i] for i in subsample(len(items), n, seed, f"{task}:{split}")]


def items_loader(dataset: DatasetSpec,
                 to_item: Callable[[dict[str, Any], str], Item | None]) -> Callable[..., list[Item]]:
    """A task's `load(n, seed, split, data_dir)`: rows of its dataset turned into items by `to_item(row, split)`."""
    def load(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
        """``n`` items of ``split`` (test: evaluation, train: exemplars)."""
        return load_items(dataset, to_item, n, seed, split, data_dir)

    return load

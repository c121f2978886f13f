"""What validation checks about a model before any heavy work: the device, the hub (bounded and offline-aware),
the checkpoint's files (safetensors headers and sizes) and whether its config needs code of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evaluate.formats import FORMAT_FILE
from evaluate.models import ModelSource, ModelSourceError, path_problem

HUB_TIMEOUT_S = 1.5  # the whole reachability probe (DNS and TCP connect), not per attempt
_HUB_PROBE: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, why unreachable)
_TRUE = {"1", "on", "yes", "true"}


def device_problem(device: str) -> str | None:
    """Why `device` cannot run here (cuda asked, none present), or None."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible (no driver or GPU, or CUDA_VISIBLE_DEVICES hides it)")
        return f"CUDA was requested but {why}; use device: cpu (or auto: the GPU when there is one)"
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        return (f"this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}; use one of them, "
                "or device: cpu")
    return None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def cached_hub_file(repo_id: str, filename: str = "config.json", revision: str | None = None) -> str | None:
    """The file's path in the local Hugging Face cache, or None (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # a malformed id or revision: simply not cached
        return None
    return found if isinstance(found, str) else None


def _hub_address() -> tuple[str, int]:
    """Host and port a hub request first connects to: the proxy when one is set, else HF_ENDPOINT's host."""
    from urllib.parse import urlsplit

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            parts = urlsplit(os.environ[name] if "://" in os.environ[name] else "http://" + os.environ[name])
            if parts.hostname:
                return parts.hostname, parts.port or 80
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(endpoint)
    return parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


def hub_unreachable(timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached within `timeout` seconds in all (DNS included), or None when a TCP
    connection opens. The answer is kept for a minute: one study validates with one probe."""
    import socket
    import threading
    import time

    host, port = _hub_address()
    when, why = _HUB_PROBE.get((host, port), (0.0, None))
    if time.monotonic() - when < 60:
        return why
    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["error"] = None
        except BaseException as exc:  # reported, never raised
            outcome["error"] = exc

    thread = threading.Thread(target=probe, name="slimlab-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        why = f"no answer from {host}:{port} within {timeout:g} s"
    elif outcome["error"] is not None:
        exc = outcome["error"]
        why = f"{host}:{port}: {getattr(exc, 'strerror', None) or exc}"
    else:
        why = None
    _HUB_PROBE[(host, port)] = (time.monotonic(), why)
    return why


def check_hub(ref: str, revision: str | None = None) -> bool:
    """For a hub id: True when its config is in the local cache (read it with local_files_only), False when
    the hub answers; raises ModelSourceError within about HUB_TIMEOUT_S when neither holds."""
    if cached_hub_file(ref, "config.json", revision) is not None:
        return True
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        cache = "~/.cache/huggingface/hub"
    if hub_offline():
        raise ModelSourceError(
            f"{ref!r} is a Hugging Face hub id that is not in the local cache ({cache}) and HF_HUB_OFFLINE is set; "
            f"download it while online (`hf download {ref}`), or use a local directory written by save_pretrained")
    why = hub_unreachable()
    if why is not None:
        raise ModelSourceError(
            f"{ref!r} looks like a Hugging Face hub id, is not in the local cache ({cache}), and the hub cannot be "
            f"reached ({why}); use a local directory written by save_pretrained (or 'embedded:tiny-reasoner'), "
            f"download it first (`hf download {ref}`), or set HF_HUB_OFFLINE=1 to work offline without waiting")
    return False


def go_offline() -> None:
    """From here on, huggingface_hub and transformers use the local cache only (no request, no retries)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass


_FIX_FILE = "re-download or re-save it (save_pretrained)"


def _read_json(path: Path, limit: int = 50_000_000) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, why not) for a small JSON file of a checkpoint."""
    try:
        size = path.stat().st_size
        if size > limit:
            return None, f"{path} is {size:,} bytes, too large for a JSON file of a checkpoint; {_FIX_FILE}"
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc}); check its permissions"
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text; {_FIX_FILE}"
    except (ValueError, RecursionError) as exc:
        return None, f"{path} is not valid JSON ({str(exc)[:120]}); {_FIX_FILE}"
    return data, None


def safetensors_problem(path: Path) -> tuple[str | None, dict[str, int]]:
    """(why `path` is not a complete safetensors file or None, {tensor: data bytes}) from its header and size."""
    try:
        size = path.stat().st_size
        if size == 0:
            return f"{path} is empty (0 bytes); {_FIX_FILE}", {}
        if size < 8:
            return f"{path} is truncated ({size} bytes, less than a safetensors header); {_FIX_FILE}", {}
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8 or n > 100_000_000:
                return (f"{path} is truncated or not a safetensors file: its header claims {n:,} bytes and the file "
                        f"has {size:,}; {_FIX_FILE}"), {}
            raw = f.read(n)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc}); check its permissions", {}
    try:
        header = json.loads(raw.decode("utf-8"))
        tensors = {name: int(info["data_offsets"][1]) - int(info["data_offsets"][0])
                   for name, info in header.items() if name != "__metadata__"}
        end = max((int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"),
                  default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        return f"{path} has a corrupt safetensors header ({type(exc).__name__}); {_FIX_FILE}", {}
    expected = 8 + n + end
    if size < expected:
        return (f"{path} is truncated: its header describes {expected:,} bytes, the file has {size:,}; "
                f"{_FIX_FILE}"), tensors
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except Exception as exc:  # safetensors' own checks (dtype, shapes vs offsets, overlaps)
        return f"{path} is not a readable safetensors file ({str(exc)[:160]}); {_FIX_FILE}", tensors
    return None, tensors


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def weights_problems(directory: Path, require: bool = False) -> list[str]:
    """Why the weights in a checkpoint directory cannot load (each message names the file): safetensors headers
    parsed and file sizes checked, the shard index against its shards. `require`: no weights at all is a
    problem too (a config-only directory validates a recipe but cannot run it)."""
    directory = Path(directory)
    problems: list[str] = []
    checked: set[Path] = set()
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        index, why = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if why is None and not isinstance(weight_map, dict):
            why = f"{index_path} has no weight_map; {_FIX_FILE}"
        if why is not None:
            return [why]
        total = 0
        for shard in sorted({str(v) for v in weight_map.values()})[:1000]:
            shard_path = directory / shard
            checked.add(shard_path)
            if (bad := path_problem(shard, "shard name")) is not None or not shard_path.is_file():
                problems.append(bad or f"{index_path} lists {shard}, which is missing; {_FIX_FILE}")
                continue
            bad, tensors = safetensors_problem(shard_path)
            if bad is not None:
                problems.append(bad)
                continue
            total += sum(tensors.values())
            absent = [k for k, v in weight_map.items() if v == shard and k not in tensors]
            if absent:
                problems.append(f"{index_path} places {len(absent)} tensor(s) in {shard} that it does not hold "
                                f"(e.g. {absent[0]!r}); {_FIX_FILE}")
        claimed = (index.get("metadata") or {}).get("total_size") if isinstance(index.get("metadata"), dict) else None
        if not problems and isinstance(claimed, int) and total < claimed:
            problems.append(f"{index_path} says the weights hold {claimed:,} bytes, its shards hold {total:,}; "
                            f"a shard is truncated or missing: {_FIX_FILE}")
    for path in sorted(directory.glob("*.safetensors"))[:1000]:
        if path not in checked:
            bad, _ = safetensors_problem(path)
            if bad is not None:
                problems.append(bad)
            checked.add(path)
    for path in sorted(directory.glob("*.bin"))[:1000]:
        checked.add(path)
        if path.stat().st_size == 0:
            problems.append(f"{path} is empty (0 bytes); {_FIX_FILE}")
    if require and not checked and not (directory / FORMAT_FILE).is_file():
        problems.append(f"{directory} holds no weights (no {' / '.join(WEIGHT_FILES)}); point model.name to a "
                        "directory written by save_pretrained")
    return problems


def remote_code_problem(directory: Path, trust_remote_code: bool) -> tuple[str, str] | None:
    """(field, message) when the checkpoint's config cannot load as the recipe says: code of its own needed
    without model.trust_remote_code: true (field 'trust_remote_code'), or an unreadable config (field 'name')."""
    config_path = Path(directory) / "config.json"
    config, why = _read_json(config_path)
    if why is not None:
        return "name", why
    if not isinstance(config, dict):
        return "name", f"{config_path} is not a JSON object; {_FIX_FILE}"
    if trust_remote_code:
        return None
    from transformers import __version__ as tf_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    auto_map = config.get("auto_map")
    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES
    if auto_map and not known:
        names = ", ".join(sorted(str(k) for k in auto_map)) if isinstance(auto_map, dict) else str(auto_map)[:80]
        return "trust_remote_code", (
            f"{config_path} needs the model's own Python code (auto_map: {names}; model_type {model_type!r} is not "
            f"built into transformers {tf_version}); if you trust that code set model.trust_remote_code: true, "
            "else use a model transformers supports natively")
    if not known:
        return "name", (f"{config_path}: model_type {model_type!r} is unknown to transformers {tf_version} and the "
                        "config names no code of its own (auto_map); upgrade transformers or use a supported model")
    tok_config, _ = _read_json(Path(directory) / "tokenizer_config.json") \
        if (Path(directory) / "tokenizer_config.json").is_file() else (None, None)
    if isinstance(tok_config, dict) and tok_config.get("auto_map"):
        import transformers

        cls = str(tok_config.get("tokenizer_class") or "")
        if not cls or not (hasattr(transformers, cls) or hasattr(transformers, cls.removesuffix("Fast"))):
            return "trust_remote_code", (
                f"{Path(directory) / 'tokenizer_config.json'} needs the tokenizer's own Python code (auto_map, "
                f"tokenizer_class {cls or None!r}); if you trust that code set model.trust_remote_code: true, else "
                "use a tokenizer transformers supports natively")
    return None


def checkpoint_problems(source: ModelSource, trust_remote_code: bool) -> list[tuple[str, str]]:
    """(field, message) for a local checkpoint directory: config, remote code, weights; [] for other kinds."""
    if source.kind not in ("path", "embedded"):
        return []
    directory = Path(source.location)
    problems: list[tuple[str, str]] = []
    if (found := remote_code_problem(directory, trust_remote_code)) is not None:
        problems.append(found)
    problems.extend(("name", why) for why in weights_problems(directory))
    return problems



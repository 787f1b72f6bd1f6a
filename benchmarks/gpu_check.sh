#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): fit and validate on a CUDA GPU in bfloat16, compared with the CPU in
# float32, capture throughput against a bare forward, peak GPU memory. About 3 minutes on one GPU for the organism
# and the synthetic capture model; add the real 0.5B model with QWEN=DIR (a local checkpoint folder) and, to skip
# its CPU fit, QWEN_CPU_DIRECTION=FILE.
#
#   bash benchmarks/gpu_check.sh --prepare      # here, with PyPI reachable: wheels of what a bare torch image lacks
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # there, from the repository root (python3 with CUDA torch)
#
# The machine needs python3 with torch (CUDA), transformers 5, accelerate, peft, safetensors, huggingface-hub,
# click, pyyaml, jinja2, sentencepiece and matplotlib; what else steerfold needs comes from .whl/ (--prepare).
# Figures go to benchmarks/README.md with the date and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WANTED="pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0"

if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WANTED
    ls .whl
    exit 0
fi

OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT_DIR" /tmp/site
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
ln -sfn "$PWD/editor" /tmp/site/steerfold  # the repository's editor/ is the package steerfold
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 STEERFOLD_PROGRESS=lines
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt" || true
ARGS=(--out "$OUT_DIR")
[ -n "${QWEN:-}" ] && ARGS+=(--model "$QWEN")
[ -n "${QWEN_CPU_DIRECTION:-}" ] && ARGS+=(--cpu-direction "$QWEN_CPU_DIRECTION")
timeout 450 $PY benchmarks/gpu_check.py "${ARGS[@]}" "${@:2}" 2>&1 | tee "$OUT_DIR/log.txt"

#!/bin/sh
# Runs on a CUDA machine with a binary prebuilt by model/scripts/build-cuda.sh:
#   sh model/scripts/gpu-check.sh [DIST]        (DIST defaults to target-cuda/dist)
# 1. the tiny fixture's logits and loss on the GPU against transformers' (CPU) numbers;
# 2. forward + backward timing of paligemma-3b-pt-224 at batch sizes 1 to 8 (64 text tokens,
#    random weights), one JSON line each with tokens/s and model FLOPs utilisation against
#    PEAK_TFLOPS (default 67: H100 SXM dense FP32 without tensor cores; dfdx's sgemm uses none).
set -u
DIST=${1:-target-cuda/dist}
DIST=$(cd "$DIST" && pwd)
NV=${NV:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)}
export LD_LIBRARY_PATH="$DIST/cuda-lib:$NV/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DFDX_CUDA_INCLUDE_DIR="$DIST/cuda-include"
PEAK_TFLOPS=${PEAK_TFLOPS:-67}
STEPS=${STEPS:-3}
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
if ldd "$DIST/gpu_check" | grep 'not found'; then echo "missing shared libraries"; exit 2; fi
"$DIST/gpu_check" oracle || exit 1
for b in ${BATCHES:-1 2 4 8}; do
  timeout "${TIMEOUT_S:-150}" "$DIST/gpu_check" bench paligemma-3b-pt-224 "$b" 64 "$STEPS" "$PEAK_TFLOPS" \
    || echo "{\"batch\":$b,\"error\":\"failed or timed out (exit $?)\"}"
done

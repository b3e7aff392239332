#!/bin/sh
# The CUDA check, for a GPU machine with binaries prebuilt by model/scripts/build-cuda.sh:
#   sh scripts/gpu-check.sh [DIST]        (DIST defaults to target-cuda/dist)
# CUDA against CPU logits on the tiny fixture, then forward+backward timing of
# paligemma-3b-pt-224 at batch sizes 1 to 8 (tokens/s, model FLOPs utilisation). The check lives
# beside the model crate it tests; model/scripts/gpu-check.sh documents its settings.
exec sh "$(dirname "$0")/../model/scripts/gpu-check.sh" "$@"

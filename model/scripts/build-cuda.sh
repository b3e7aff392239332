#!/usr/bin/env bash
# Builds the model crate's device checks (examples gpu_check and bench) with the `cuda` feature
# on a machine without a GPU, for an H100/H200 machine (sm_90, driver 580 = CUDA 13.0).
#
#   bash model/scripts/build-cuda.sh            # from the repository root
#
# The CUDA 13.0 toolchain comes from pip wheels, libraries are link stubs, and dfdx is built from
# a copy patched at build time (outside the repository) so that its run-time NVRTC kernels find
# their headers on another machine: see ../shared/gpu/README.md, whose recipe this reuses
# ($RECIPE). A user with a CUDA toolkit and a GPU needs none of this:
#   cargo build --release -p model --features cuda --examples
#
# Output: target-cuda/dist/{gpu_check,bench,cuda-include/} (ignored by git; carry it to the GPU
# machine and run model/scripts/gpu-check.sh there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$ROOT/../cuda-build}
RECIPE=${RECIPE:-$ROOT/../shared/gpu/dfdx-cuda-crossbuild.sh}
SM=${SM:-90}
GPU_RPATH=${GPU_RPATH:-'$ORIGIN/cuda-lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib'}
DIST=${DIST:-$ROOT/target-cuda/dist}

if [ ! -d "$WORK/dfdx-patched" ] || [ ! -d "$WORK/cuda-root" ]; then
  env -u CARGO_TARGET_DIR WORK="$WORK" MODE="${MODE:-stub}" REAL_LIBCUDA_CHECK=0 SM="$SM" bash "$RECIPE"
fi
CU="$WORK/cuda/nvidia/cu13"

# A workspace around copies of model/ and the crates it depends on (pipeline, mixtures), so the
# repository's Cargo.lock is not touched by the [patch] of dfdx. Their tests stay behind, except
# model's fixtures, which gpu_check reads.
WS="$WORK/ws"
rm -rf "$WS/model" "$WS/pipeline" "$WS/mixtures" && mkdir -p "$WS"
(cd "$ROOT" && tar --exclude=target -cf - model && tar --exclude=target --exclude=tests -cf - pipeline mixtures) \
  | tar -C "$WS" -ixf -
cp "$ROOT/Cargo.lock" "$WS/Cargo.lock"
# the root's shared dependency versions, without the crates that are not copied
DEPS=$(sed -n '/^\[workspace.dependencies\]/,/^\[/p' "$ROOT/Cargo.toml" | grep -v -e '^\[' -e '^service ')
cat > "$WS/Cargo.toml" <<TOML
[workspace]
members = ["model", "pipeline", "mixtures"]
resolver = "3"

[workspace.dependencies]
$DEPS

[workspace.package]
edition = "2024"
version = "0.1.0"
license = "Apache-2.0"
publish = false

[patch.crates-io]
dfdx = { path = "$WORK/dfdx-patched" }

[profile.release]
debug = "line-tables-only"
TOML

export PATH="$WORK/bin:$CU/bin:$PATH" CUDA_ROOT="$WORK/cuda-root" CUDA_COMPUTE_CAP="$SM"
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--disable-new-dtags,-rpath,$GPU_RPATH"
(cd "$WS" && env -u CARGO_TARGET_DIR cargo build --release -p model --features cuda --examples)

rm -rf "$DIST" && mkdir -p "$DIST/cuda-include"
cp "$WS/target/release/examples/gpu_check" "$WS/target/release/examples/bench" "$DIST/"
# The binaries travel to the GPU machine: without debug info they are ~5 MB instead of ~175 MB
# (symbol names stay, so backtraces still name functions).
strip --strip-debug "$DIST/gpu_check" "$DIST/bench"
cp -r "$CU/include/nv" "$DIST/cuda-include/"
for h in cuda_fp16.h cuda_fp16.hpp vector_types.h vector_functions.h vector_functions.hpp; do
  cp "$CU/include/$h" "$DIST/cuda-include/"
done
# local sanity check of the binary (no GPU here: the CUDA device cannot be created)
readelf -d "$DIST/gpu_check" | grep -E 'NEEDED|RPATH' || true
du -sh "$DIST"
echo "built $DIST; on the GPU machine: sh scripts/gpu-check.sh $DIST"

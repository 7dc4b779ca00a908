#!/usr/bin/env bash
# Builds umup's `cuda` examples (cuda_check, train_lm) on a machine WITHOUT a GPU or CUDA toolkit
# and packs them, with NVRTC 13.0 and the headers dfdx's run-time kernels include, into
# target/cudabundle.tar.gz (about 50 MB) to run on a GPU machine that has no Rust toolchain.
#
#   bash tools/cuda/build.sh                 # WORK (default $HOME/cudabuild) holds the toolkit
#   tar xzf target/cudabundle.tar.gz -C /tmp # on the GPU machine, from the repo root:
#   /tmp/umupbundle/run.sh cuda_check fixtures/public.json
#   /tmp/umupbundle/run.sh train_lm --device cuda
#
# The first run calls recipe.sh (CUDA 13.0 PyPI wheels as a fake toolkit root, a fake
# nvidia-smi, a link-time stub libcuda.so.1; ~616 MB of wheels, about a minute). CUDA 13.0 because
# a R580 driver takes PTX ISA <= 9.0 (see README.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-$HOME/cudabuild}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
[ -x "$WORK/cuda/bin/nvcc" ] && [ -e "$WORK/stub/libcuda.so.1" ] || WORK=$WORK bash "$HERE/recipe.sh"

export PATH="$WORK/cuda/bin:$WORK/fakebin:$PATH"
export CUDA_ROOT="$WORK/cuda" CUDA_COMPUTE_CAP=${CAP:-90}
export RUSTFLAGS="-L native=$WORK/stub -C link-arg=-Wl,-rpath,\$ORIGIN/cudalib"
# A separate target directory: these RUSTFLAGS would otherwise rebuild the normal one.
(cd "$ROOT" && cargo build --release --features cuda --example cuda_check --example train_lm \
    --target-dir "$WORK/target")

B=$WORK/umupbundle
rm -rf "$B"; mkdir -p "$B/cudalib" "$B/include"
for bin in cuda_check train_lm; do strip -o "$B/$bin" "$WORK/target/release/examples/$bin"; done
cp "$WORK/cuda/lib/libnvrtc.so.13" "$WORK/cuda/lib/libnvrtc-builtins.so.13.0" "$B/cudalib/"
cp "$WORK/cuda/include/cuda_fp16.h" "$WORK/cuda/include/cuda_fp16.hpp" "$B/include/"
DFDX_SRC=$(cd "$ROOT" && cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print([os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "dfdx"][0])')
cp "$DFDX_SRC"/src/tensor_ops/utilities/*.cuh "$B/include/"
# dfdx bakes $CUDA_ROOT/include into the binary as an NVRTC include path; run.sh recreates it.
echo "$WORK/cuda/include" > "$B/baked_include_dir.txt"
cp "$HERE/run.sh" "$B/run.sh"; chmod +x "$B/run.sh"
mkdir -p "$ROOT/target"
tar -C "$WORK" -czf "$ROOT/target/cudabundle.tar.gz" umupbundle
du -sh "$ROOT/target/cudabundle.tar.gz"

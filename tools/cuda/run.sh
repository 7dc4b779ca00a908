#!/usr/bin/env bash
# run.sh BIN ARGS...: runs a bundled binary on the GPU machine with the bundled NVRTC 13.0 first
# on the library path and a CUDA 13 cuBLAS (pip nvidia-cublas, e.g. torch's venv, or a CUDA 13
# toolkit; CUBLAS_DIR overrides). Needs the NVIDIA driver (libcuda.so.1, R580 or newer).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
INC=$(cat "$HERE/baked_include_dir.txt")
if [ ! -e "$INC/cuda_fp16.h" ]; then mkdir -p "$(dirname "$INC")"; ln -sfn "$HERE/include" "$INC"; fi
if [ -z "${CUBLAS_DIR:-}" ]; then
  CUBLAS_DIR=$(python3 -c '
import glob, os
try:
    import nvidia
    hits = [c for p in nvidia.__path__ for c in glob.glob(os.path.join(p, "*", "lib", "libcublas.so.13"))]
    print(os.path.dirname(hits[0]) if hits else "")
except ImportError:
    print("")' 2>/dev/null || true)
fi
if [ -z "${CUBLAS_DIR:-}" ]; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libcublas.so.13" ] && CUBLAS_DIR=$d && break
  done
fi
[ -n "${CUBLAS_DIR:-}" ] || { echo "run.sh: libcublas.so.13 not found; set CUBLAS_DIR" >&2; exit 1; }
export LD_LIBRARY_PATH="$HERE/cudalib:$CUBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ $# -ge 1 ] || { echo "usage: run.sh cuda_check|train_lm [ARGS...]" >&2; exit 2; }
BIN=$1; shift
exec "$HERE/$BIN" "$@"

#!/usr/bin/env bash
# Builds umup's `cuda` examples (cuda_check, train_lm) on a machine WITHOUT a GPU or CUDA toolkit
# and packs them, with NVRTC 13.0 and the headers dfdx's run-time kernels include, into
# target/cudabundle.tar.gz (about 50 MB) to run on a GPU machine that has no Rust toolchain.
#
#   bash tools/cuda/build.sh                 # WORK (default $HOME/cudabuild) holds the toolkit
#   tar xzf target/cudabundle.tar.gz -C /tmp # on the GPU machine, from the repo root:
#   /tmp/umupbundle/run.sh cuda_check fixtures/public.json
#   /tmp/umupbundle/run.sh train_lm --device cuda
#   bash tools/cuda/device_check.sh          # all of the above, as one script for a lent GPU
#
# The first run assembles a fake toolkit in WORK (CUDA 13.0 PyPI wheels, ~616 MB, a fake
# nvidia-smi, a link-time stub libcuda.so.1; about a minute); later runs reuse it. CUDA 13.0
# because a R580 driver takes PTX ISA <= 9.0 (see README.md). Needs python3 + pip (PyPI), gcc.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-$HOME/cudabuild}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
CAP=${CAP:-90}                       # sm_90 = H100 / H200

setup_toolkit() {
mkdir -p "$WORK"/{wheels,fakebin,stub}
echo "== 1. download CUDA 13.0 wheels from PyPI"
pip download --no-deps --only-binary=:all: --no-cache-dir -d "$WORK/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 >/dev/null
du -cb "$WORK"/wheels/*.whl | tail -1 | awk '{printf "   wheels: %.1f MB\n", $1/1e6}'

echo "== 2. assemble fake CUDA root $WORK/cuda"
rm -rf "$WORK/cuda" "$WORK/unz"; mkdir "$WORK/unz"
for w in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$w" "$WORK/unz/"; done
mv "$WORK/unz/nvidia/cu13" "$WORK/cuda"; rm -rf "$WORK/unz"
chmod +x "$WORK"/cuda/bin/* "$WORK"/cuda/nvvm/bin/*   # python's zipfile drops the x bits
ln -s lib "$WORK/cuda/lib64"
mkdir -p "$WORK/cuda/targets/x86_64-linux"           # nvcc.profile uses $(TOP)/$(_TARGET_DIR_)/include
ln -s ../../include "$WORK/cuda/targets/x86_64-linux/include"
ln -s ../../lib "$WORK/cuda/targets/x86_64-linux/lib"
for l in cublas cublasLt nvrtc cudart; do ln -s "lib$l.so.13" "$WORK/cuda/lib/lib$l.so"; done
"$WORK/cuda/bin/nvcc" --version | tail -2

echo "== 3. fake nvidia-smi (dfdx build.rs: nvidia-smi --query-gpu=compute_cap --format=csv)"
cat > "$WORK/fakebin/nvidia-smi" <<EOF
#!/bin/sh
echo "compute_cap"
echo "${CAP:0:-1}.${CAP: -1}"
EOF
chmod +x "$WORK/fakebin/nvidia-smi"

CUDARC_SYS=$(cd "$ROOT" && cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "cudarc"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "src/driver/sys.rs"))')
echo "== 5. link-time stub libcuda.so.1 (all cu* symbols declared by cudarc)"
grep -o 'pub fn cu[A-Za-z0-9_]*' "$CUDARC_SYS" | awk '{print $3}' | sort -u > "$WORK/stub/syms.txt"
python3 - "$WORK/stub/syms.txt" > "$WORK/stub/libcuda_stub.c" <<'EOF'
import sys
syms = sorted({l.strip() for l in open(sys.argv[1]) if l.strip()})
special = {"cuInit", "cuGetErrorString", "cuGetErrorName", "cuDriverGetVersion"}
print('''/* link-time stub for libcuda.so.1 -- NEVER ship; the GPU machine uses the driver's libcuda.so.1 */
static const char *s(int e, int n) { switch (e) {
 case 0: return n ? "CUDA_SUCCESS" : "no error";
 case 34: return n ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA driver is a link-time stub";
 case 100: return n ? "CUDA_ERROR_NO_DEVICE" : "no CUDA-capable device is detected (stub libcuda)";
 default: return n ? "CUDA_ERROR_UNKNOWN" : "unknown error (stub libcuda)"; } }
int cuInit(unsigned int f) { (void)f; return 100; }
int cuDriverGetVersion(int *v) { if (v) *v = 0; return 34; }
int cuGetErrorString(int e, const char **p) { if (!p) return 1; *p = s(e, 0); return 0; }
int cuGetErrorName(int e, const char **p) { if (!p) return 1; *p = s(e, 1); return 0; }''')
for x in syms:
    if x not in special:
        print(f"int {x}(void) {{ return 34; }}")
EOF
gcc -O2 -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so.1" "$WORK/stub/libcuda_stub.c"
ln -sf libcuda.so.1 "$WORK/stub/libcuda.so"
echo "   $(wc -l < "$WORK/stub/syms.txt") symbols"

}
[ -x "$WORK/cuda/bin/nvcc" ] && [ -e "$WORK/stub/libcuda.so.1" ] || setup_toolkit

export PATH="$WORK/cuda/bin:$WORK/fakebin:$PATH"
export CUDA_ROOT="$WORK/cuda" CUDA_COMPUTE_CAP="$CAP"
export RUSTFLAGS="-L native=$WORK/stub -C link-arg=-Wl,-rpath,\$ORIGIN/cudalib"
# A separate target directory: these RUSTFLAGS would otherwise rebuild the normal one.
(cd "$ROOT" && cargo build --release --features cuda --example cuda_check --example train_lm \
    --target-dir "$WORK/target")

echo "== 6. umup's run-time kernels compile with cudarc's NVRTC (no GPU needed)"
(cd "$ROOT" && LD_LIBRARY_PATH="$WORK/stub:$WORK/cuda/lib" cargo test --release -p umup-runtime \
    --features cuda --lib ops::cuda --target-dir "$WORK/target")

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
# The reference library and its pure-python dependencies (the GPU machine has PyTorch but no
# network), for tools/reference/bench_step_gpu.py.
pip download --no-deps --only-binary=:all: --no-cache-dir -d "$B/wheels" unit-scaling==0.3.5 \
    einops==0.8.2 tabulate==0.10.0 docstring-parser==0.18.0 >/dev/null
mkdir -p "$ROOT/target"
tar -C "$WORK" -czf "$ROOT/target/cudabundle.tar.gz" umupbundle
du -sh "$ROOT/target/cudabundle.tar.gz"

#!/usr/bin/env bash
# The whole GPU check of a lent device, as one script (run from the repo root on the GPU
# machine, with target/cudabundle.tar.gz from tools/cuda/build.sh carried along). Writes every
# output to ${OUT:-/tmp/umup-device}. About 5 minutes on an H100/H200:
#   1. cuda_check: umup's Cuda kernels vs their generic compositions, conformance (public.json) on
#      Cuda, the LM's loss and gradients Cuda vs Cpu, step times u-μP / SP (batch 8 and 64);
#   2. conformance of the conv1d fixtures on Cuda;
#   3. umup vs the reference library on the same GPU (PyTorch eager and torch.compile),
#      interleaved rounds (tools/reference/bench_step_gpu.py);
#   4. the main job on Cuda (train_lm --device cuda, 400 steps), in f32 and in f16 mixed precision.
# A failing part is reported and the next one still runs; the exit status is 1 if any failed.
set -uo pipefail
OUT=${OUT:-/tmp/umup-device}
mkdir -p "$OUT"
tar xzf target/cudabundle.tar.gz -C /tmp
B=/tmp/umupbundle
status=0
part() { # part NAME CMD...: runs CMD, tees its output to $OUT/NAME.txt
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc, $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
part cuda_check "$B/run.sh" cuda_check fixtures/public.json --steps 10 --rounds 3
part conv1d_on_cuda "$B/run.sh" cuda_check fixtures/conv1d.json --steps 1 --rounds 1 --big-batch 8
pip install --quiet --no-deps --no-index --target /tmp/refpkgs "$B"/wheels/*.whl
part reference_gpu env PYTHONPATH=/tmp/refpkgs python3 tools/reference/bench_step_gpu.py \
    --umup "$B/run.sh cuda_check" --rounds 3 --steps 10
part train_lm "$B/run.sh" train_lm --device cuda --out "$OUT/train_lm"
part train_lm_f16 "$B/run.sh" train_lm --device cuda --precision f16 --out "$OUT/train_lm_f16"
exit $status

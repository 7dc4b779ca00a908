"""umup's training step on `Cuda` against the reference library's on the same GPU, side by side.

Each round runs `cuda_check --steps-only --rounds 1` (umup's u-μP and SP LM steps on `Cuda`, at
batch 8 and `--big-batch`, interleaved step by step) and then the reference LM step
(`unit_scaling.TransformerDecoder(256, 256, 4, 4)`, float32, `uu.optim.AdamW`, the same ids as
`examples/common/bench.rs`) on the GPU, in PyTorch eager and through `torch.compile`, at the
same two batch sizes. Every reference step ends with `torch.cuda.synchronize()`; every umup step
reads its loss back. The reported ratios are medians of the per-round ratios.

    # on the GPU machine, from the repo root, with the bundle of tools/cuda/build.sh unpacked:
    pip install --no-deps --no-index --target /tmp/refpkgs /tmp/umupbundle/wheels/*.whl
    PYTHONPATH=/tmp/refpkgs python3 tools/reference/bench_step_gpu.py \\
        --umup "/tmp/umupbundle/run.sh cuda_check" --rounds 3
"""

import argparse
import re
import shlex
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench_step  # noqa: E402  (the reference models and step of the CPU comparison)


def umup_step_ms(cmd, steps, big_batch):
    """{(variant, batch): ms} from one `cuda_check --steps-only` round."""
    out = subprocess.run(
        shlex.split(cmd)
        + ["--steps-only", "--rounds", "1", "--steps", str(steps), "--big-batch", str(big_batch)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = {}
    for section in re.split(r"^## 3\. ", out, flags=re.M)[1:]:
        batch = int(re.search(r"batch (\d+)×", section).group(1))
        for variant, prefix in [("umup", "u-μP on Cuda"), ("sp", "SP on Cuda")]:
            m = re.search(r"^\| " + re.escape(prefix) + r"[^|]*\| ([0-9.]+) \|", section, re.M)
            if not m:
                raise SystemExit(f"cuda_check printed no row `{prefix}`:\n{out}")
            result[(variant, batch)] = float(m.group(1))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--umup", required=True, help="command running the cuda_check binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    p.add_argument("--big-batch", type=int, default=64)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--device", default="cuda", help="the reference's device (cpu for a dry run)")
    args = p.parse_args()
    batches = [bench_step.BATCH, args.big_batch]
    variants = ["umup", "sp", "eager"] + ([] if args.no_compile else ["compile"])
    rows = []
    for r in range(args.rounds):
        t = umup_step_ms(args.umup, args.steps, args.big_batch)
        for b in batches:
            t[("eager", b)] = bench_step.reference_step_ms(args.steps, 1, args.device, b)
            if not args.no_compile:
                t[("compile", b)] = bench_step.reference_step_ms(
                    args.steps, 1, args.device, b, compile=True
                )
        rows.append(t)
        times = ", ".join(f"{v} b{b} {t[(v, b)]:.2f} ms" for b in batches for v in variants)
        print(f"round {r}: {times}", flush=True)
    name = {
        "umup": "umup u-μP (Cuda)",
        "sp": "umup SP (Cuda, same code, no u-μP scales)",
        "eager": "reference unit-scaling 0.3.5, PyTorch eager",
        "compile": "reference unit-scaling 0.3.5, torch.compile",
    }
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device
    print(f"\n{gpu}, torch {torch.__version__}; {args.rounds} rounds x {args.steps} steps")
    for b in batches:
        print(f"\nbatch {b} × {bench_step.SEQ}:\n")
        print("| step | median ms | vs umup u-μP | vs reference eager |")
        print("|---|---:|---:|---:|")
        for v in variants:
            med = statistics.median(x[(v, b)] for x in rows)
            vs_umup = statistics.median(x[(v, b)] / x[("umup", b)] for x in rows)
            vs_eager = statistics.median(x[(v, b)] / x[("eager", b)] for x in rows)
            print(f"| {name[v]} | {med:.2f} | {vs_umup:.3f} | {vs_eager:.3f} |")
        print(
            f"per-round umup/SP at batch {b}: "
            + ", ".join(f"{x[('umup', b)] / x[('sp', b)]:.3f}" for x in rows)
        )


if __name__ == "__main__":
    main()

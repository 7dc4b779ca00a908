"""umup's training step against the reference library's, on the same machine, side by side.

Each round runs `bench_step --rounds 1` (umup's fused u-μP step and the plain-dfdx baseline,
interleaved step by step) and then the same step in the reference library:
`unit_scaling.TransformerDecoder(256, 256, 4, 4)` (PyTorch eager, float32) with
`uu.optim.AdamW`, on the batch `bench_step` uses (8 × 128 ids, `examples/common/bench.rs`).
The reported ratios are medians of the per-round ratios.

    cargo build --release --example bench_step
    pip install unit-scaling==0.3.5            # brings PyTorch
    python tools/reference/bench_step.py --rounds 5
"""

import argparse
import pathlib
import re
import statistics
import subprocess
import time

import torch
import unit_scaling as uu
import unit_scaling.functional as U

ROOT = pathlib.Path(__file__).resolve().parents[2]
V, D, L, H, SEQ, BATCH = 256, 256, 4, 4, 128, 8


def reference_step_ms(steps, threads):
    """Median ms of `steps` reference training steps after 2 warm-up steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = uu.TransformerDecoder(D, V, L, H)
    opt = uu.optim.AdamW(model.parameters(), lr=2.0**-6)
    n = BATCH * SEQ
    ids = torch.tensor([(i * 37 + 11) % V for i in range(n)]).view(BATCH, SEQ)
    targets = torch.tensor([(((i * 37 + 11) % V) * 5 + 1) % V for i in range(n)])
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = U.cross_entropy(model(ids).flatten(end_dim=-2), targets)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def umup_step_ms(binary, steps):
    """(umup fused step, plain dfdx) medians from one `bench_step` round."""
    out = subprocess.run(
        [binary, "--rounds", "1", "--steps", str(steps)], check=True, capture_output=True, text=True
    ).stdout

    def row(prefix):
        m = re.search(r"^\| " + re.escape(prefix) + r"[^|]*\| ([0-9.]+) \|", out, re.M)
        if not m:
            raise SystemExit(f"bench_step printed no row `{prefix}`:\n{out}")
        return float(m.group(1))

    return row("umup (u-μP, AdamW; fused CPU step)"), row("plain dfdx, default device (baseline)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--bench-step", default=str(ROOT / "target/release/examples/bench_step"))
    args = p.parse_args()
    rows = []
    for r in range(args.rounds):
        umup, plain = umup_step_ms(args.bench_step, args.steps)
        ref = reference_step_ms(args.steps, args.threads)
        rows.append((umup, plain, ref))
        print(f"round {r}: umup {umup:.1f} ms, plain dfdx {plain:.1f} ms, reference (PyTorch) {ref:.1f} ms", flush=True)
    med = lambda i: statistics.median(x[i] for x in rows)  # noqa: E731
    ratio = lambda a, b: statistics.median(x[a] / x[b] for x in rows)  # noqa: E731
    print(f"\ntorch {torch.__version__}, {args.threads} threads; {args.rounds} rounds x {args.steps} steps")
    print("| step | median ms | vs reference |")
    print("|---|---:|---:|")
    print(f"| umup u-μP, fused CPU step | {med(0):.1f} | {ratio(0, 2):.3f} |")
    print(f"| plain dfdx (no scaling) | {med(1):.1f} | {ratio(1, 2):.3f} |")
    print(f"| reference unit-scaling 0.3.5 (PyTorch eager) | {med(2):.1f} | 1.000 |")
    print("per-round umup/reference: " + ", ".join(f"{u / r:.3f}" for u, _, r in rows))
    print("per-round reference/plain dfdx: " + ", ".join(f"{r / p:.3f}" for _, p, r in rows))


if __name__ == "__main__":
    main()

"""umup's training steps against the reference library's, on the same machine, side by side.

Each round runs `bench_step --rounds 1` (umup's u-μP LM and encoder through its ops and the
plain-dfdx baselines, interleaved step by step) and then the same two steps in the reference
library (PyTorch eager, float32, `uu.optim.AdamW`), on the batches `bench_step` uses (8 × 128
ids, `examples/common/bench.rs`):
- the LM: `unit_scaling.TransformerDecoder(256, 256, 4, 4)`;
- the encoder of `examples/common/encoder.rs`, from the library's modules and functional ops:
  token and learned position embeddings, 4 pre-norm layers (`uu.LayerNorm` with gain and bias,
  biased `uu.Linear` q/k/v/o, non-causal `U.scaled_dot_product_attention`, `U.gelu` MLP ×4 with
  biases, `U.residual_split`/`U.residual_add` with the library's τ rule), a final LayerNorm, the
  mean over positions (× √seq) and `uu.LinearReadout` to 16 classes, `U.cross_entropy`.
Each reference model also runs under `torch.compile` (default mode, 5 warm-up steps, which
include the compilation). The reported ratios are medians of the per-round ratios; the last
lines are `ratio LM umup/torch_compile = R`, `ratio encoder umup/torch_compile = R` and the
eager ratios.

    cargo build --release --example bench_step
    pip install unit-scaling==0.3.5            # brings PyTorch
    python tools/reference/bench_step.py --rounds 5
"""

import argparse
import os
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


def reference_step_ms(steps, threads, device="cpu", batch=BATCH, compile=False):
    """Median ms of `steps` reference training steps after 2 warm-up steps (on `device`, with
    `batch` sequences; `compile`: the model through `torch.compile`). On a GPU each step ends
    with a device synchronisation, so it is timed whole."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = uu.TransformerDecoder(D, V, L, H).to(device)
    opt = uu.optim.AdamW(model.parameters(), lr=2.0**-6)
    forward = torch.compile(model) if compile else model
    n = batch * SEQ
    ids = torch.tensor([(i * 37 + 11) % V for i in range(n)], device=device).view(batch, SEQ)
    targets = torch.tensor([(((i * 37 + 11) % V) * 5 + 1) % V for i in range(n)], device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = []
    # torch.compile traces and compiles on the first calls: more warm-up steps.
    warmup = 5 if compile else 2
    for step in range(steps + warmup):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = U.cross_entropy(forward(ids).flatten(end_dim=-2), targets)
        loss.backward()
        opt.step()
        sync()
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class Encoder(torch.nn.Module):
    """The encoder classifier of `examples/common/encoder.rs` in the reference library."""

    def __init__(self, classes=16):
        super().__init__()
        self.tok = uu.Embedding(V, D)
        self.pos = uu.Parameter(torch.randn(SEQ, D), mup_type="weight")
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            self.layers.append(
                torch.nn.ModuleDict(
                    dict(
                        ln1=uu.LayerNorm(D, elementwise_affine=True),
                        q=uu.Linear(D, D, bias=True),
                        k=uu.Linear(D, D, bias=True),
                        v=uu.Linear(D, D, bias=True),
                        o=uu.Linear(D, D, bias=True),
                        ln2=uu.LayerNorm(D, elementwise_affine=True),
                        up=uu.Linear(D, 4 * D, bias=True),
                        down=uu.Linear(4 * D, D, bias=True),
                    )
                )
            )
        self.ln_f = uu.LayerNorm(D, elementwise_affine=True)
        self.head = uu.LinearReadout(D, classes)
        rule = uu.transformer_residual_scaling_rule()
        self.taus = [rule(i, 2 * L) for i in range(2 * L)]

    def forward(self, ids):
        b = ids.shape[0]
        x = U.add(self.tok(ids), self.pos, constraint=None)
        heads = lambda t: t.view(b, SEQ, H, D // H).transpose(1, 2)  # noqa: E731
        for i, l in enumerate(self.layers):
            r, skip = U.residual_split(x, self.taus[2 * i])
            h = l["ln1"](r)
            a = U.scaled_dot_product_attention(heads(l["q"](h)), heads(l["k"](h)), heads(l["v"](h)))
            x = U.residual_add(l["o"](a.transpose(1, 2).reshape(b, SEQ, D)), skip, self.taus[2 * i])
            r, skip = U.residual_split(x, self.taus[2 * i + 1])
            x = U.residual_add(l["down"](U.gelu(l["up"](l["ln2"](r)))), skip, self.taus[2 * i + 1])
        pooled = self.ln_f(x).mean(dim=1) * SEQ**0.5
        return self.head(pooled)


def encoder_step_ms(steps, threads, compile=False):
    """Median ms of `steps` reference encoder training steps after 2 warm-up steps (`compile`:
    the model through `torch.compile`, 5 warm-up steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Encoder()
    opt = uu.optim.AdamW(model.parameters(), lr=2.0**-6)
    forward = torch.compile(model) if compile else model
    warmup = 5 if compile else 2
    n = BATCH * SEQ
    ids = torch.tensor([(i * 37 + 11) % V for i in range(n)]).view(BATCH, SEQ)
    labels = torch.tensor([(b * 7 + 3) % 16 for b in range(BATCH)])
    times = []
    for step in range(steps + warmup):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = U.cross_entropy(forward(ids), labels)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def umup_step_ms(binary, steps):
    """(umup LM, plain dfdx LM, umup encoder, plain dfdx encoder) medians from one `bench_step`
    round."""
    out = subprocess.run(
        [binary, "--rounds", "1", "--steps", str(steps)], check=True, capture_output=True, text=True
    ).stdout

    def row(prefix):
        m = re.search(r"^\| " + re.escape(prefix) + r"[^|]*\| ([0-9.]+) \|", out, re.M)
        if not m:
            raise SystemExit(f"bench_step printed no row `{prefix}`:\n{out}")
        return float(m.group(1))

    return (
        row("umup u-μP LM (ops"),
        row("plain dfdx LM, default device"),
        row("umup u-μP encoder (ops"),
        row("plain dfdx encoder, default device"),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--bench-step", default=str(ROOT / "target/release/examples/bench_step"))
    args = p.parse_args()
    # Per round: umup LM, plain LM, eager LM, compiled LM, umup enc, plain enc, eager enc,
    # compiled enc.
    rows = []
    for r in range(args.rounds):
        umup, plain, umup_enc, plain_enc = umup_step_ms(args.bench_step, args.steps)
        ref = reference_step_ms(args.steps, args.threads)
        ref_c = reference_step_ms(args.steps, args.threads, compile=True)
        ref_enc = encoder_step_ms(args.steps, args.threads)
        ref_enc_c = encoder_step_ms(args.steps, args.threads, compile=True)
        rows.append((umup, plain, ref, ref_c, umup_enc, plain_enc, ref_enc, ref_enc_c))
        print(
            f"round {r}: LM umup {umup:.1f} ms, plain dfdx {plain:.1f} ms, reference eager "
            f"{ref:.1f} ms, torch.compile {ref_c:.1f} ms; encoder umup {umup_enc:.1f} ms, plain "
            f"dfdx {plain_enc:.1f} ms, reference eager {ref_enc:.1f} ms, torch.compile "
            f"{ref_enc_c:.1f} ms",
            flush=True,
        )
    med = lambda i: statistics.median(x[i] for x in rows)  # noqa: E731
    ratio = lambda a, b: statistics.median(x[a] / x[b] for x in rows)  # noqa: E731
    print(
        f"\ntorch {torch.__version__}, {args.threads} threads; {args.rounds} rounds x "
        f"{args.steps} steps; machine: {machine()}"
    )
    print("| step | median ms | vs reference eager | vs reference torch.compile |")
    print("|---|---:|---:|---:|")
    for name, base in (("LM", 0), ("encoder", 4)):
        e, c = base + 2, base + 3
        print(f"| {name}: umup u-μP (ops, Cpu kernels) | {med(base):.1f} | {ratio(base, e):.3f} | {ratio(base, c):.3f} |")
        print(f"| {name}: plain dfdx (no scaling) | {med(base + 1):.1f} | {ratio(base + 1, e):.3f} | {ratio(base + 1, c):.3f} |")
        print(f"| {name}: reference unit-scaling 0.3.5, PyTorch eager | {med(e):.1f} | 1.000 | {ratio(e, c):.3f} |")
        print(f"| {name}: reference unit-scaling 0.3.5, torch.compile | {med(c):.1f} | {ratio(c, e):.3f} | 1.000 |")
    for name, base in (("LM", 0), ("encoder", 4)):
        for peer, i in (("eager", base + 2), ("torch_compile", base + 3)):
            print(f"per-round {name} umup/{peer}: " + ", ".join(f"{x[base] / x[i]:.3f}" for x in rows))
    for name, base in (("LM", 0), ("encoder", 4)):
        print(f"ratio {name} umup/eager = {ratio(base, base + 2):.3f}")
        print(f"ratio {name} umup/torch_compile = {ratio(base, base + 3):.3f}")


def machine():
    """The CPU's model name, its widest SIMD and the CPUs this process may use (Linux), as
    `bench_step` prints it."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        info = ""
    names = [l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")]
    simd = " (AVX-512)" if " avx512f" in info else (" (AVX2)" if " avx2" in info else "")
    return f"{names[0] if names else 'unknown CPU'}{simd}, {len(os.sched_getaffinity(0))} CPUs"


if __name__ == "__main__":
    main()

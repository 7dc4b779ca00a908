"""The reference library's own scale check of umup's masked-byte encoder: gradient RMS vs width.

The same measurement as `cargo run --release --example scale_check -- --model encoder --param
umup`, made on the encoder of `src/models/encoder.rs` rebuilt from the reference library's
modules (unit-scaling 0.3.5, PyTorch, float32, its own unit-normal init):
- `uu.Embedding(257, d)` byte + mask-token embedding and `uu.Embedding(128, d)` learned position
  embedding, combined with `U.add(tok, pos, constraint="to_output_scale")` (umup's
  `ops::add(.., Constraint::ToOutputScale)`);
- 4 pre-norm layers, each branch through `U.residual_split`/`U.residual_add` with the τs of
  `uu.TransformerStack` (`transformer_residual_scaling_rule()` with its default α's, umup's
  `functional::residual_taus`): `uu.LayerNorm(d)` with gain and bias → biased `uu.Linear`
  q, k, v → non-causal `U.scaled_dot_product_attention` with d_head 64 (heads = d / 64) →
  biased `uu.Linear` o; `uu.LayerNorm(d)` → biased `uu.Linear(d, 4d)` → `U.gelu`
  (`to_output_scale`) → biased `uu.Linear(4d, d)`;
- the rows of the masked positions → `uu.LayerNorm(d)` → `uu.LinearReadout(d, 256)` →
  `U.cross_entropy` (mean).
The data are umup's `Task::MaskedBytes { fraction: 0.15 }` batches: 8 windows of 128 bytes from
the training split (the first 90%) of the embedded Shakespeare corpus; each position is chosen
with probability 0.15 (at least one per batch); a chosen byte becomes the mask id 256 with
probability 0.8, a uniformly random byte with 0.1, and stays with 0.1; the targets are the
original bytes at the chosen positions. For each seed: a new init and a new batch, the same batch
at every width. One forward and backward pass at init; each row's RMS is √(mean over seeds of
RMS²), as umup's `--repeats` averages.

    python tools/reference/encoder_scale_check.py --seeds 16 > /tmp/ref_encoder_scale_check.txt

It prints the loss at init per width, a table of gradient RMS per width with the ratio of each
gradient's RMS at the widest width to its RMS at the narrowest and at 128, which fall outside
the acceptance band [0.8, 1.25] (measured from the narrowest width and from 128), and per layer
(q grad / v grad at the widest) / (the same at the narrowest) (also for k), the ratio in which
any per-tensor parametrization factor cancels.
"""

import argparse
import gzip
import importlib.metadata
import math
import pathlib
import time

import torch
import unit_scaling as uu
import unit_scaling.functional as U

ROOT = pathlib.Path(__file__).resolve().parents[2]
MASK = 256
MASK_FRACTION = 0.15


def corpus():
    data = gzip.decompress((ROOT / "data" / "shakespeare.txt.gz").read_bytes())
    return torch.tensor(list(data[: round(len(data) * 0.9)]), dtype=torch.long)


def masked_batch(data, batch, seq, seed):
    """umup's masked-byte batch: (inputs [batch, seq], flat masked positions, targets)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    start = torch.randint(0, len(data) - seq, (batch,), generator=g)
    orig = torch.stack([data[s : s + seq] for s in start.tolist()])
    chosen = torch.rand(batch, seq, generator=g) < MASK_FRACTION
    if not chosen.any():
        chosen[-1, -1] = True  # umup's "at least one per batch"
    r = torch.rand(batch, seq, generator=g)
    rand_bytes = torch.randint(0, 256, (batch, seq), generator=g)
    inputs = orig.clone()
    inputs[chosen & (r < 0.8)] = MASK
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rand_bytes[swap]
    positions = chosen.flatten().nonzero().squeeze(1)
    targets = orig.flatten()[positions]
    return inputs, positions, targets


ALPHAS = {"ffn_act": 1.0, "attn_softmax": 1.0, "res": 1.0, "res_attn_ratio": 1.0, "loss_softmax": 1.0}


class MaskedEncoder(torch.nn.Module):
    """umup's `MaskedEncoder<max_seq, d, 4d, L>` from the reference library's modules.

    `alphas` (keys of `ALPHAS`) go where the reference ops take them: α_res and
    α_res-attn-ratio through `transformer_residual_scaling_rule`, α_attn-softmax as the sdpa
    `mult`, α_ffn-act as the gelu `mult`, α_loss-softmax as the cross entropy `mult`. The layers
    are a `uu.DepthModuleList`, so `uu.optim` gives their parameters depth `layers` (umup's
    `#[depth]`)."""

    def __init__(self, d, layers=4, d_head=64, max_seq=128, alphas=None):
        super().__init__()
        self.d, self.heads = d, d // d_head
        self.alphas = {**ALPHAS, **(alphas or {})}
        self.tok = uu.Embedding(MASK + 1, d)
        self.pos = uu.Embedding(max_seq, d)
        self.layers = uu.DepthModuleList(
            torch.nn.ModuleDict(
                dict(
                    ln1=uu.LayerNorm(d, elementwise_affine=True),
                    q=uu.Linear(d, d, bias=True),
                    k=uu.Linear(d, d, bias=True),
                    v=uu.Linear(d, d, bias=True),
                    o=uu.Linear(d, d, bias=True),
                    ln2=uu.LayerNorm(d, elementwise_affine=True),
                    up=uu.Linear(d, 4 * d, bias=True),
                    down=uu.Linear(4 * d, d, bias=True),
                )
            )
            for _ in range(layers)
        )
        self.ln_f = uu.LayerNorm(d, elementwise_affine=True)
        self.readout = uu.LinearReadout(d, 256)
        # As uu.TransformerStack: mhsa_tau = rule(2i, 2L), mlp_tau = rule(2i + 1, 2L).
        rule = uu.transformer_residual_scaling_rule(
            residual_mult=self.alphas["res"], residual_attn_ratio=self.alphas["res_attn_ratio"]
        )
        self.taus = [rule(i, 2 * layers) for i in range(2 * layers)]

    def loss(self, inputs, positions, targets):
        b, s = inputs.shape
        d, h = self.d, self.heads
        pos_ids = torch.arange(s).expand(b, s)
        x = U.add(self.tok(inputs), self.pos(pos_ids), constraint="to_output_scale")
        split = lambda t: t.view(b, s, h, d // h).transpose(1, 2)  # noqa: E731
        for i, l in enumerate(self.layers):
            r, skip = U.residual_split(x, self.taus[2 * i])
            a_in = l["ln1"](r)
            a = U.scaled_dot_product_attention(
                split(l["q"](a_in)),
                split(l["k"](a_in)),
                split(l["v"](a_in)),
                is_causal=False,
                mult=self.alphas["attn_softmax"],
            )
            out = l["o"](a.transpose(1, 2).reshape(b, s, d))
            x = U.residual_add(out, skip, self.taus[2 * i])
            r, skip = U.residual_split(x, self.taus[2 * i + 1])
            act = U.gelu(l["up"](l["ln2"](r)), mult=self.alphas["ffn_act"], constraint="to_output_scale")
            x = U.residual_add(l["down"](act), skip, self.taus[2 * i + 1])
        rows = x.reshape(b * s, d)[positions]
        logits = self.readout(self.ln_f(rows))
        return U.cross_entropy(logits, targets, mult=self.alphas["loss_softmax"])


def qv_ratio(sums, layer, t, hi, lo, skip=None):
    """(t grad / v grad at `hi`) / (the same at `lo`), leaving out seed `skip`."""

    def r(name, w):
        v = [x for j, x in enumerate(sums[f"layers.{layer}.{name}.weight"][w]) if j != skip]
        return math.sqrt(sum(v) / len(v))

    return (r(t, hi) / r("v", hi)) / (r(t, lo) / r("v", lo))


def jackknife_se(sums, layer, t, hi, lo):
    n = len(sums[f"layers.{layer}.v.weight"][hi])
    if n < 2:
        return float("nan")
    xs = [qv_ratio(sums, layer, t, hi, lo, skip=j) for j in range(n)]
    m = sum(xs) / n
    return math.sqrt((n - 1) / n * sum((x - m) ** 2 for x in xs))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    lo, hi = widths[0], widths[-1]
    data = corpus()
    t0 = time.perf_counter()
    sums, losses, masked = {}, {w: 0.0 for w in widths}, 0
    for seed in range(args.seeds):
        inputs, positions, targets = masked_batch(data, args.batch, args.seq, seed)
        masked += len(positions)
        for width in widths:
            torch.manual_seed(seed)
            model = MaskedEncoder(width, args.layers, max_seq=args.seq)
            loss = model.loss(inputs, positions, targets)
            loss.backward()
            losses[width] += loss.item() / args.seeds
            for name, param in model.named_parameters():
                rms = param.grad.pow(2).mean().sqrt().item()
                sums.setdefault(name, {}).setdefault(width, []).append(rms**2)
    elapsed = time.perf_counter() - t0
    rms = {n: {w: math.sqrt(sum(v) / len(v)) for w, v in per.items()} for n, per in sums.items()}
    print(
        f"reference masked-byte encoder (umup's src/models/encoder.rs from uu modules), "
        f"unit-scaling {importlib.metadata.version('unit-scaling')}, torch {torch.__version__}, "
        f"float32; {args.layers} layers, d_head 64, MLP 4x, batch {args.batch} x {args.seq}, "
        f"{args.seeds} seeds ({masked / args.seeds:.1f} masked positions per batch on average), "
        f"{elapsed:.0f} s"
    )
    taus = MaskedEncoder(lo, args.layers).taus
    print("residual taus (attn, mlp per layer): " + ", ".join(f"{t:.4f}" for t in taus))
    print(f"loss at init (ln 256 = {math.log(256):.4f}): " + ", ".join(f"w{w} {losses[w]:.4f}" for w in widths))
    print()
    head = f"{'gradient':<24}" + "".join(f"{'w=' + str(w):>10}" for w in widths)
    print(f"{head}{'w' + str(hi) + '/w' + str(lo):>11}{'w' + str(hi) + '/w128':>11}  band")
    flagged, flagged_128, zero = [], [], 0
    for name, per in rms.items():
        if all(per[w] < 1e-5 for w in widths):
            # k's bias: q·b_k is the same for every key, which softmax ignores, so its gradient
            # is 0 up to rounding.
            print(f"{name:<24}" + "".join(f"{per[w]:>10.1e}" for w in widths) + f"{'-':>11}{'-':>11}  zero")
            zero += 1
            continue
        r_lo = per[hi] / per[lo]
        r_128 = per[hi] / per[128] if 128 in per else float("nan")
        out_lo = [w for w in widths if not 0.8 <= per[w] / per[lo] <= 1.25]
        out_128 = [w for w in widths if w >= 128 and 128 in per and not 0.8 <= per[w] / per[128] <= 1.25]
        if out_lo:
            flagged.append(f"{name} (w{','.join(map(str, out_lo))})")
        if out_128:
            flagged_128.append(f"{name} (w{','.join(map(str, out_128))})")
        mark = "OUT" if out_lo else ""
        mark += "  OUT-from-128" if out_128 else ""
        print(f"{name:<24}" + "".join(f"{per[w]:>10.5f}" for w in widths) + f"{r_lo:>11.3f}{r_128:>11.3f}  {mark}")
    print()
    print(f"outside [0.8, 1.25]x of width {lo}: {len(flagged)} of {len(rms) - zero} nonzero: {', '.join(flagged) or '-'}")
    print(f"outside [0.8, 1.25]x of width 128: {len(flagged_128)} of {len(rms) - zero} nonzero: {', '.join(flagged_128) or '-'}")
    print()
    print(f"per layer, (X.weight grad / v.weight grad at w{hi}) / (same at w{lo}, and at w128), "
          "± a jackknife standard error over seeds:")
    cols = [(t, w) for t in ("q", "k") for w in (lo, 128) if w in widths]
    print(f"{'layer':<8}" + "".join(f"{t + '/v ' + str(hi) + '/' + str(w):>20}" for t, w in cols))
    for i in range(args.layers):
        print(f"{i:<8}" + "".join(
            f"{qv_ratio(sums, i, t, hi, w):>12.3f} ± {jackknife_se(sums, i, t, hi, w):.3f}" for t, w in cols))


if __name__ == "__main__":
    main()

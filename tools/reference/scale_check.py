"""The reference library's own scale check: weight-gradient RMS of `uu.TransformerDecoder` vs width.

The same measurement as `cargo run --release --example scale_check -- --param umup`, made on
the reference (unit-scaling 0.3.5, PyTorch, float32, its own unit-normal init):
4 layers, d_head 64 (heads = width / 64), one forward and backward pass on a batch of 8 × 128
bytes drawn from the training split of the embedded Shakespeare corpus (the first 90%), for
each seed. Each row's RMS is √(mean over seeds of RMS²), as umup's `--repeats` averages.
The reference's fused q/k/v weight is split into umup's `attn.q`, `attn.k`, `attn.v`.

    python tools/reference/scale_check.py --seeds 16 > docs/reference_scale_check.txt

It prints a table of RMS per width, the ratio of each gradient's RMS at the widest width to its
RMS at the narrowest (and at 128), and which fall outside the acceptance band [0.8, 1.25].
"""

import argparse
import gzip
import importlib.metadata
import math
import pathlib

import torch
import unit_scaling as uu
from lm_fixture import umup_views

ROOT = pathlib.Path(__file__).resolve().parents[2]


def corpus():
    data = gzip.decompress((ROOT / "data" / "shakespeare.txt.gz").read_bytes())
    return torch.tensor(list(data[: round(len(data) * 0.9)]), dtype=torch.long)


def grads(model):
    """RMS of every weight gradient, under umup's names (`lm_fixture.umup_views`)."""
    return {k: v.pow(2).mean().sqrt().item() for k, v in umup_views(model, "grad").items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="64,128,256,512,1024")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    data = corpus()
    sums, losses = {}, {}
    for width in widths:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = uu.TransformerDecoder(width, 256, args.layers, width // 64)
            start = torch.randint(0, len(data) - args.seq - 1, (args.batch,))
            ids = torch.stack([data[s : s + args.seq + 1] for s in start.tolist()])
            loss = model.loss(ids)
            loss.backward()
            losses[width] = losses.get(width, 0.0) + loss.item() / args.seeds
            for name, rms in grads(model).items():
                sums.setdefault(name, {}).setdefault(width, 0.0)
                sums[name][width] += rms**2 / args.seeds
    rms = {n: {w: math.sqrt(v) for w, v in per.items()} for n, per in sums.items()}
    lo, hi = widths[0], widths[-1]
    print(
        f"reference uu.TransformerDecoder, unit-scaling {importlib.metadata.version('unit-scaling')}, "
        f"torch {torch.__version__}, float32; {args.layers} layers, d_head 64, "
        f"batch {args.batch} x {args.seq}, {args.seeds} seeds"
    )
    print("loss at init: " + ", ".join(f"w{w} {losses[w]:.4f}" for w in widths))
    head = f"{'weight gradient':<26}" + "".join(f"{'w=' + str(w):>9}" for w in widths)
    print(f"{head}{'w' + str(hi) + '/w' + str(lo):>11}{'w' + str(hi) + '/w128':>11}  band")
    flagged, flagged_128 = [], []
    for name, per in rms.items():
        r_lo = per[hi] / per[lo]
        r_128 = per[hi] / per[128] if 128 in per else float("nan")
        out_lo = [w for w in widths if not 0.8 <= per[w] / per[lo] <= 1.25]
        out_128 = [w for w in widths if w >= 128 and 128 in per and not 0.8 <= per[w] / per[128] <= 1.25]
        if out_lo:
            flagged.append(name)
        if out_128:
            flagged_128.append(name)
        mark = "OUT" if out_lo else ""
        print(f"{name:<26}" + "".join(f"{per[w]:>9.4f}" for w in widths) + f"{r_lo:>11.3f}{r_128:>11.3f}  {mark}")
    print(
        f"outside [0.8, 1.25]x of width {lo}: {len(flagged)} of {len(rms)}: {', '.join(flagged) or '-'}"
    )
    print(
        f"outside [0.8, 1.25]x of width 128: {len(flagged_128)} of {len(rms)}: {', '.join(flagged_128) or '-'}"
    )


if __name__ == "__main__":
    main()

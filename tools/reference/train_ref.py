"""Trains the reference library's LM the way `train_lm` trains umup's, for side-by-side sweeps.

The model is `unit_scaling.TransformerDecoder(width, 256, depth, heads)` (unit-scaling 0.3.5,
its own init, float32), the one `tests/reference_lm.rs` matches to 4e-15 at a fixed set of
weights. The training loop is `train_lm`'s, in PyTorch:

- data: the embedded Shakespeare corpus (`data/shakespeare.txt.gz`), bytes, the last 10% held
  out; each step draws `--batch` random windows of `--seq + 1` bytes from the training split;
- optimizer: `uu.optim.AdamW` (u-μP's per-parameter LR rules, independent weight decay);
- schedule: linear warm-up over `--warmup` steps (`(t + 1) / warmup`), then a cosine decay to
  `--final-lr-fraction · η` at `--steps` (`LrSchedule::warmup_cosine`);
- final loss: the mean over `--eval-batches` fixed validation batches.

The random streams (init, batches) are PyTorch's, not umup's, so a run matches a `train_lm` run
of the same seed in distribution, not bit for bit: compare means over seeds.

`--freeze-qk LAYERS` keeps the q and k weights of those layers at their initial values (the
rows are restored after each AdamW step, so neither the update nor weight decay moves them): the
intervention that tests whether attention-logit growth is what makes a wide model worse at a
high η (docs/results.md §2f). At the end the RMS of each layer's q and k activations on the
first validation batch is reported.

    pip install unit-scaling==0.3.5
    python tools/reference/train_ref.py --width 256 --lr 4 --seed 0 --device cuda
    python tools/reference/train_ref.py --width 512 --lr 4 --seed 0 --freeze-qk 0 --json out.jsonl

Prints one JSON object per run (and appends it to `--json`). `--summary FILE` prints the tables
of docs/results.md §2f from such a file instead of training:

    python tools/reference/train_ref.py --summary docs/reference_train_h100.jsonl
"""

import argparse
import collections
import gzip
import json
import math
import pathlib
import statistics
import time

import torch
import unit_scaling as uu
import unit_scaling.functional as U

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCAB = 256


def corpus(val_fraction):
    """(train, val) byte tensors: `Corpus::from_gzip`'s split, at round(len · (1 − val_fraction))."""
    data = gzip.decompress((ROOT / "data" / "shakespeare.txt.gz").read_bytes())
    split = math.floor(len(data) * (1.0 - val_fraction) + 0.5)
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return t[:split], t[split:]


def windows(data, batch, seq, gen):
    """`batch` random windows of `seq + 1` bytes: (inputs, targets), each `batch × seq`."""
    starts = torch.randint(0, len(data) - seq, (batch,), generator=gen)
    w = data[starts[:, None] + torch.arange(seq + 1)]
    return w[:, :seq], w[:, 1:]


def lr_factor(step, warmup, total, final):
    """`LrSchedule::warmup_cosine(warmup, total, final).factor(step)`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_of(model, x, y):
    return U.cross_entropy(model(x).flatten(end_dim=-2), y.flatten())


@torch.no_grad()
def evaluate(model, batches):
    return sum(loss_of(model, x, y).item() for x, y in batches) / len(batches)


@torch.no_grad()
def qk_rms(model, x, width):
    """RMS of each layer's q and k activations (the attention logits grow with their product)."""
    out = []

    def record(_module, _inputs, qkv):
        rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
        out.append({"q": rms(qkv[..., :width]), "k": rms(qkv[..., width : 2 * width])})

    hooks = [layer.mhsa.linear_qkv.register_forward_hook(record) for layer in model.layers]
    model(x)
    for h in hooks:
        h.remove()
    return out


def summary(path):
    """Per (η, frozen layers, width): seeds, mean final loss and the median over seeds of each
    layer's RMS(q)·RMS(k); then, per seed, the change from each width to the next."""
    runs = collections.defaultdict(dict)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        runs[(r["lr"], tuple(r["freeze_qk"]), r["width"])][r["seed"]] = r
    print("| η | frozen q/k | width | seeds | mean final loss | RMS(q)·RMS(k) by layer (median) |")
    print("|---|---|---:|---:|---:|---|")
    for (lr, frozen, width), by_seed in sorted(runs.items()):
        rs = list(by_seed.values())
        qk = [statistics.median(r["qk_rms"][i]["q"] * r["qk_rms"][i]["k"] for r in rs)
              for i in range(len(rs[0]["qk_rms"]))]
        mean = statistics.mean(r["final_val_loss"] for r in rs)
        print(f"| {lr:g} | {list(frozen) or '-'} | {width} | {len(rs)} | {mean:.4f} | "
              + " / ".join(f"{v:.2f}" for v in qk) + " |")
    print()
    widths = collections.defaultdict(list)
    for lr, frozen, width in runs:
        widths[(lr, frozen)].append(width)
    for (lr, frozen), ws in sorted(widths.items()):
        ws.sort()
        for a, b in zip(ws, ws[1:]):
            ra, rb = runs[(lr, frozen, a)], runs[(lr, frozen, b)]
            seeds = sorted(set(ra) & set(rb))
            d = [rb[s]["final_val_loss"] - ra[s]["final_val_loss"] for s in seeds]
            print(f"η {lr:g}, frozen {list(frozen) or '-'}: {b} − {a} per seed "
                  + ", ".join(f"{x:+.3f}" for x in d)
                  + f"; mean {statistics.mean(d):+.4f}, worse at {sum(x > 0 for x in d)} of {len(d)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, help="default: width / 64, at least 1 (as train_lm)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--warmup", type=int, help="default: steps / 5 (the reference demo's 20%%)")
    p.add_argument("--final-lr-fraction", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeze-qk", default="", help="comma-separated layer indices")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=pathlib.Path, help="append the result line to this file")
    p.add_argument("--summary", type=pathlib.Path, help="summarise a file of results and exit")
    a = p.parse_args()
    if a.summary:
        summary(a.summary)
        return
    heads = a.heads or max(a.width // 64, 1)
    warmup = a.warmup if a.warmup is not None else max(a.steps // 5, 1)
    frozen = [int(i) for i in a.freeze_qk.split(",") if i.strip()]
    if a.width % heads:
        raise SystemExit(f"--heads {heads} does not divide --width {a.width}")
    if any(not 0 <= i < a.depth for i in frozen):
        raise SystemExit(f"--freeze-qk {a.freeze_qk}: layers are 0..{a.depth - 1}")
    if warmup < 1 or warmup > a.steps:
        raise SystemExit(f"--warmup {warmup} must be in 1..=--steps")

    dev = torch.device(a.device)
    train, val = corpus(a.val_fraction)
    torch.manual_seed(a.seed)
    model = uu.TransformerDecoder(a.width, VOCAB, a.depth, heads).to(dev)
    opt = uu.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup, a.steps, a.final_lr_fraction)
    )
    val_gen = torch.Generator().manual_seed(1_000_003 + a.seed)
    val_batches = [
        tuple(t.to(dev) for t in windows(val, a.batch, a.seq, val_gen)) for _ in range(a.eval_batches)
    ]
    qkv = lambda i: model.layers[i].mhsa.linear_qkv.weight  # noqa: E731
    frozen_init = {i: qkv(i).detach()[: 2 * a.width].clone() for i in frozen}
    gen = torch.Generator().manual_seed(a.seed)
    curve = []
    start = time.perf_counter()
    status = "ok"
    for step in range(a.steps):
        x, y = (t.to(dev, non_blocking=True) for t in windows(train, a.batch, a.seq, gen))
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for i, w0 in frozen_init.items():
                qkv(i)[: 2 * a.width] = w0
        sched.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            v = evaluate(model, val_batches)
            curve.append({"step": step + 1, "train": loss.item(), "val": v})
            if not math.isfinite(v):
                status = "diverged"
                break
    result = {
        "generator": "tools/reference/train_ref.py",
        "reference": f"unit-scaling 0.3.5, torch {torch.__version__}",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "width": a.width,
        "depth": a.depth,
        "heads": heads,
        "steps": a.steps,
        "batch": a.batch,
        "seq": a.seq,
        "lr": a.lr,
        "warmup": warmup,
        "final_lr_fraction": a.final_lr_fraction,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
        "freeze_qk": frozen,
        "status": status,
        "final_val_loss": curve[-1]["val"],
        "curve": curve,
        "qk_rms": qk_rms(model, val_batches[0][0], a.width),
        "seconds": round(time.perf_counter() - start, 1),
    }
    line = json.dumps(result)
    print(line, flush=True)
    if a.json:
        with a.json.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

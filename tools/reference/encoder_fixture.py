"""Model-level fixture from the reference library: umup's masked-byte encoder end to end.

Writes `fixtures/reference_encoder.json` (schema in `fixtures/REFERENCE_ENCODER.md`). Each case
builds the encoder of `src/models/encoder.rs` from the reference library's modules
(`encoder_scale_check.MaskedEncoder`: unit-scaling 0.3.5's `uu.Embedding`, `U.add`,
`uu.LayerNorm`, biased `uu.Linear`, non-causal `U.scaled_dot_product_attention`, `U.gelu`, the
τ rule, `uu.LinearReadout`, `U.cross_entropy`) in float64, fills every parameter (weights,
biases, norm gains and biases) from the SplitMix64 stream of `lm_fixture.py`, and records the
loss, every gradient and the parameters after a few `uu.optim.AdamW` steps on one masked batch.

The key biases are frozen (`requires_grad = False`; umup's `Optimizer::freeze`): softmax
cancels `q·b_k`, so their gradient is zero up to rounding, and Adam would turn that rounding
noise (1e-17) into steps of 1e-9 that differ between any two implementations. Their gradients
are not recorded; the test checks that umup's are zero up to rounding.

The same float64 deviation as `lm_fixture.py`: the reference's `rms` takes its mean square in
float32; here it runs in the input's dtype.

Run (needs `pip install unit-scaling==0.3.5`, which brings PyTorch; CPU is enough):

    python tools/reference/encoder_fixture.py > fixtures/reference_encoder.json
"""

import torch
import unit_scaling as uu
import unit_scaling.functional as U

from encoder_scale_check import MASK, MaskedEncoder
from lm_fixture import alpha_cases, dump, ids, rms_in_input_dtype, splitmix64, summary, uniform_unit


def masked_batch(seed, batch, seq):
    """A masked-byte batch from SplitMix64 (seed `seed`): random bytes; a position is chosen
    when its draw % 100 < 15 (the last one if none is); a chosen byte becomes the mask id
    (draw % 10 < 8), a random byte (== 8) or stays (== 9)."""
    orig = ids(seed, batch * seq)
    g = splitmix64(seed + 1)
    chosen = [next(g) % 100 < 15 for _ in orig]
    if not any(chosen):
        chosen[-1] = True
    inputs = list(orig)
    for i, c in enumerate(chosen):
        r = next(g)
        if c and r % 10 < 8:
            inputs[i] = MASK
        elif c and r % 10 == 8:
            inputs[i] = (r >> 8) % 256
    positions = [i for i, c in enumerate(chosen) if c]
    return inputs, positions, [orig[i] for i in positions]


def run_case(case):
    width, layers, d_head = case["width"], case["layers"], case["d_head"]
    batch, seq = case["batch"], case["seq"]
    torch.manual_seed(0)
    model = MaskedEncoder(
        width, layers, d_head=d_head, max_seq=case["max_seq"], alphas=case["alphas"]
    ).double()
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for i, (_, p) in enumerate(model.named_parameters()):
            p.copy_(torch.tensor(uniform_unit(i + 1, p.numel())).view_as(p))
    for n, p in model.named_parameters():
        p.requires_grad_(not n.endswith(".k.bias"))
    inputs, positions, targets = masked_batch(case["batch_seed"], batch, seq)
    x = torch.tensor(inputs).view(batch, seq)
    pos, tgt = torch.tensor(positions), torch.tensor(targets)

    def summaries(attr):
        return {
            n: summary(getattr(p, attr).detach().reshape(-1).tolist(), i)
            for i, (n, p) in enumerate(model.named_parameters())
            if getattr(p, attr) is not None
        }

    init = summaries("data")
    opt = uu.optim.AdamW(model.parameters(), lr=case["lr"], weight_decay=case["weight_decay"])
    losses, grads = [], None
    for step in range(case["steps"]):
        opt.zero_grad()
        loss = model.loss(x, pos, tgt)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = summaries("grad")
        opt.step()
    return {
        **case,
        "names": names,
        "inputs": inputs,
        "positions": positions,
        "targets": targets,
        "init": init,
        "losses": losses,
        "grads": grads,
        "after": summaries("data"),
    }


def main():
    torch.set_default_dtype(torch.float64)
    U.rms = rms_in_input_dtype
    base = {
        "width": 32,
        "layers": 2,
        "d_head": 16,
        "max_seq": 16,
        "batch": 2,
        "seq": 12,
        "batch_seed": 91,
        "lr": 0.5,
        "weight_decay": 0.1,
        "steps": 3,
    }
    dump("tools/reference/encoder_fixture.py", [run_case(c) for c in alpha_cases(base, "batch_seed", 94)])


if __name__ == "__main__":
    main()

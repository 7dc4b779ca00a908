"""Model-level fixture from the reference library: `uu.TransformerDecoder` end to end.

Writes `fixtures/reference_lm.json` (schema in `fixtures/REFERENCE_LM.md`). Each
case builds the reference `unit_scaling.TransformerDecoder` (unit-scaling 0.3.5) in float64,
fills its weights from a SplitMix64 stream that `tests/reference_lm.rs` reproduces bit for bit,
and records the loss, every weight gradient and the weights after a few `uu.optim.AdamW` steps.

One deviation from the installed library, the same the op fixtures make: the reference's `rms`
(`core/functional.py`) takes the mean square in float32 (`x.float()`) even for float64 input,
which moves the loss by ~4e-9 and the gradients by ~4e-7 (relative). The generator computes it
in the input's dtype when that is wider than float32, so the fixture is float64 throughout.

The reference model plumbs only α_res and α_res-attn-ratio (spec §5, [DIFF]); the other three α
are set where the reference ops take them: `MHSA.mult` (α_attn-softmax), a `U.silu_glu(mult=)`
wrapper (α_ffn-act) and `U.cross_entropy(mult=)` (α_loss-softmax).

Run (needs `pip install unit-scaling==0.3.5`, which brings PyTorch; CPU is enough):

    python tools/reference/lm_fixture.py > fixtures/reference_lm.json
"""

import functools
import json
import math
import sys

import torch
import unit_scaling as uu
import unit_scaling.functional as U
from unit_scaling.core.functional import transformer_residual_scaling_rule

MASK = (1 << 64) - 1


def splitmix64(seed):
    """SplitMix64 (Steele, Lea, Flood 2014): the stream `tests/reference_lm.rs` also uses."""
    state = seed & MASK
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def uniform_unit(seed, n):
    """`n` values, uniform on [-√3, √3) (variance 1): `√3 · (2u − 1)`, `u = (z >> 11) · 2^-53`."""
    g = splitmix64(seed)
    s3 = math.sqrt(3.0)
    return [s3 * (2.0 * ((next(g) >> 11) * 2.0**-53) - 1.0) for _ in range(n)]


def ids(seed, n):
    g = splitmix64(seed)
    return [next(g) % 256 for _ in range(n)]


def probe_seed(index):
    return 1000 + index


def summary(values, index):
    """What the test compares for one tensor: RMS, the dot product with a fixed probe vector
    (uniform, seed 1000 + index: any change to any entry moves it), and the first 4 entries."""
    probe = uniform_unit(probe_seed(index), len(values))
    return {
        "rms": math.sqrt(sum(v * v for v in values) / len(values)),
        "probe_dot": sum(v * p for v, p in zip(values, probe)),
        "head": values[:4],
    }


def umup_views(model, attr="data"):
    """The reference's weights (or, with `attr="grad"`, their gradients) as views under umup's
    names, in umup's order and (out, in) layout; the fused qkv is split into q, k and v. The
    index of a name in this order (+ 1) is its SplitMix64 seed."""
    out = {"embed.weight": getattr(model.embedding.weight, attr)}
    for i, layer in enumerate(model.layers):
        qkv = getattr(layer.mhsa.linear_qkv.weight, attr)
        width = qkv.shape[0] // 3
        for j, name in enumerate(("q", "k", "v")):
            out[f"layers.{i}.attn.{name}.weight"] = qkv[j * width : (j + 1) * width]
        out[f"layers.{i}.attn.o.weight"] = getattr(layer.mhsa.linear_o.weight, attr)
        out[f"layers.{i}.mlp.up.weight"] = getattr(layer.mlp.linear_1.weight, attr)
        out[f"layers.{i}.mlp.gate.weight"] = getattr(layer.mlp.linear_gate.weight, attr)
        out[f"layers.{i}.mlp.down.weight"] = getattr(layer.mlp.linear_2.weight, attr)
    out["readout.weight"] = getattr(model.projection.weight, attr)
    return out


def summaries(model, attr):
    views = umup_views(model, attr).items()
    return {n: summary(v.detach().reshape(-1).tolist(), i) for i, (n, v) in enumerate(views)}


def run_case(case):
    width, layers, heads = case["width"], case["layers"], case["heads"]
    batch, seq = case["batch"], case["seq"]
    alpha = case["alphas"]
    torch.manual_seed(0)
    model = uu.TransformerDecoder(
        width,
        256,
        layers,
        heads,
        residual_scaling=transformer_residual_scaling_rule(
            residual_mult=alpha["res"], residual_attn_ratio=alpha["res_attn_ratio"]
        ),
    ).double()
    for layer in model.layers:
        layer.mhsa.mult = alpha["attn_softmax"]
    # Fill every weight from its SplitMix64 stream (seed: index in umup's order + 1).
    names = list(umup_views(model))
    with torch.no_grad():
        for i, view in enumerate(umup_views(model).values()):
            view.copy_(torch.tensor(uniform_unit(i + 1, view.numel())).view_as(view))
    tokens = torch.tensor(ids(case["ids_seed"], batch * (seq + 1))).view(batch, seq + 1)

    def loss_fn():
        logits = model(tokens[:, :seq])
        return U.cross_entropy(
            logits.flatten(end_dim=-2), tokens[:, 1:].flatten(), mult=alpha["loss_softmax"]
        )

    init = summaries(model, "data")
    opt = uu.optim.AdamW(model.parameters(), lr=case["lr"], weight_decay=case["weight_decay"])
    losses = []
    grads = None
    for step in range(case["steps"]):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = summaries(model, "grad")
        opt.step()
    return {
        **case,
        "names": names,
        "ids": tokens.reshape(-1).tolist(),
        "init": init,
        "losses": losses,
        "grads": grads,
        "after": summaries(model, "data"),
    }


def rms_in_input_dtype(x, dims=None, keepdim=False, eps=0.0):
    """`core.functional.rms` without its float32 cast for float64 input."""
    mean = x.to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean(dims, keepdim=keepdim)
    if eps:
        mean = mean + eps
    return mean.sqrt().to(x.dtype)


def alpha_cases(base, seed_key, other_seed):
    """The two cases of a model fixture: `defaults` (every α 1) and `all_alphas` (all five set,
    each ≠ 1), the second with `base[seed_key]` replaced by `other_seed`."""
    defaults = {"ffn_act": 1.0, "attn_softmax": 1.0, "res": 1.0, "res_attn_ratio": 1.0, "loss_softmax": 1.0}
    alphas = {"ffn_act": 1.5, "attn_softmax": 2.0, "res": 0.5, "res_attn_ratio": 2.0, "loss_softmax": 0.75}
    return [
        {"name": "defaults", **base, "alphas": defaults},
        {"name": "all_alphas", **base, seed_key: other_seed, "alphas": alphas},
    ]


def dump(generator, cases):
    """Writes a fixture file to stdout."""
    json.dump(
        {
            "generator": generator,
            "reference": f"unit-scaling 0.3.5, torch {torch.__version__}, float64",
            "cases": cases,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


def main():
    torch.set_default_dtype(torch.float64)
    U.rms = rms_in_input_dtype  # `U.rms_norm` looks `rms` up in `unit_scaling.functional`.
    silu_glu = U.silu_glu
    base = {
        "width": 16,
        "layers": 2,
        "heads": 2,
        "batch": 2,
        "seq": 12,
        "ids_seed": 77,
        "lr": 0.5,
        "weight_decay": 0.1,
        "steps": 3,
    }
    out = []
    for case in alpha_cases(base, "ids_seed", 78):
        # α_ffn-act: `uu.MLP.forward` calls `U.silu_glu(a, b)` with the default mult.
        U.silu_glu = functools.partial(silu_glu, mult=case["alphas"]["ffn_act"])
        out.append(run_case(case))
    dump("tools/reference/lm_fixture.py", out)


if __name__ == "__main__":
    main()

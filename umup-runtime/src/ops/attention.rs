//! Unit-scaled scaled-dot-product attention (spec §4.12).

use dfdx::prelude::*;

use super::{check_dim, scale::elem, Backend};
use crate::error::{DeviceResultExt, Result};
use crate::scales;

/// Unit-scaled attention over `q, k, v [batch, heads, seq, d_head]` (spec §4.12).
///
/// Logits are `(mult/d_head)·q·kᵀ` (μP's `1/d_head`, not `1/√d_head`); with `is_causal`, query
/// `i` attends to keys `j ≤ i`. `output = s·softmax(logits)·v` with the shared scale
/// `s = 1 / LI(1/(1+4·d_head/mult²), √((causal ? ln S : 1)/S), 1)`, and `q`, `k`, `v` each get
/// `s ×` their true gradient. `mult` is α_attn-softmax. Dropout inside attention is not
/// supported (the reference tests use `dropout_p = 0`).
pub fn scaled_dot_product_attention<
    B: Dim,
    H: Dim,
    S: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    q: Tensor<(B, H, S, K), E, D, T>,
    k: Tensor<(B, H, S, K), E, D, T>,
    v: Tensor<(B, H, S, K), E, D, T>,
    mult: f64,
    is_causal: bool,
) -> Result<Tensor<(B, H, S, K), E, D, T>> {
    let qs = q.shape().concrete();
    check_qkv(&qs, &k.shape().concrete(), &v.shape().concrete())?;
    let (seq, d_head) = (qs[2], qs[3]);
    let s = scales::sdpa(seq, d_head, mult, is_causal, 0.0)?;
    attention_core(q, k, v, mult / d_head as f64, s, is_causal)
}

/// Checks that `k` and `v` have the shape of `q`.
pub(crate) fn check_qkv(q: &[usize; 4], k: &[usize; 4], v: &[usize; 4]) -> Result<()> {
    for (name, t) in [("k", k), ("v", v)] {
        for (axis, (&got, &want)) in t.iter().zip(q.iter()).enumerate() {
            check_dim(
                "scaled_dot_product_attention",
                &format!("{name}.shape[{axis}] vs q.shape[{axis}]"),
                got,
                want,
            )?;
        }
    }
    Ok(())
}

/// `out_scale · softmax(logit_scale · q·kᵀ [+ causal mask]) · v` with true gradients (a plain
/// multiply by `out_scale`). Shapes must already be checked.
pub(crate) fn attention_core<
    B: Dim,
    H: Dim,
    S: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    q: Tensor<(B, H, S, K), E, D, T>,
    k: Tensor<(B, H, S, K), E, D, T>,
    v: Tensor<(B, H, S, K), E, D, T>,
    logit_scale: f64,
    out_scale: f64,
    is_causal: bool,
) -> Result<Tensor<(B, H, S, K), E, D, T>> {
    // Fold the logit multiplier into q and the output scale into v: both are true-gradient
    // multiplies, so q, k and v all receive out_scale × their true gradient.
    let q = q.try_mul(elem::<E>("logit scale", logit_scale)?).dev()?;
    let v = if out_scale == 1.0 {
        v
    } else {
        v.try_mul(elem::<E>("attention scale", out_scale)?).dev()?
    };
    let logits = q
        .try_matmul(k.try_permute::<(B, H, K, S), Axes4<0, 1, 3, 2>>().dev()?)
        .dev()?;
    let logits = if is_causal {
        let shape = *logits.shape();
        let sq = (shape.2, shape.3);
        let mask = logits
            .device()
            .try_upper_tri_like(&sq, elem::<E>("mask", f64::NEG_INFINITY)?, 1)
            .dev()?;
        logits
            .try_add(mask.try_broadcast_like::<_, Axes2<0, 1>>(&shape).dev()?)
            .dev()?
    } else {
        logits
    };
    logits.try_softmax::<Axis<3>>().dev()?.try_matmul(v).dev()
}

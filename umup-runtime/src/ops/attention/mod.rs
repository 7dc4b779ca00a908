//! Unit-scaled scaled-dot-product attention (spec §4.12).

use dfdx::prelude::*;

use super::cpu::{AttnLayout, AttnShape};
use super::{check_dim, scale::elem, Backend};
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales;

pub(crate) mod cpu;

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
    D::attention_kernel(q, k, v, mult / d_head as f64, s, is_causal)
}

/// [`scaled_dot_product_attention`] on `[batch·seq, heads·d_head]` rows — the layout the q, k
/// and v projections produce — so no reshape or permute is needed around it (spec §4.12): row
/// `b·seq + i` holds position `i` of sequence `b`, with head `h` in columns
/// `h·d_head .. (h+1)·d_head`. The output has the same layout. Same scales as the 4-D op.
pub fn multi_head_attention<R: Dim, W: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    q: Tensor<(R, W), E, D, T>,
    k: Tensor<(R, W), E, D, T>,
    v: Tensor<(R, W), E, D, T>,
    seq: usize,
    heads: usize,
    mult: f64,
    is_causal: bool,
) -> Result<Tensor<(R, W), E, D, T>> {
    let shape = rows_shape(&q, &k, &v, seq, heads)?;
    let s = scales::sdpa(seq, shape.d_head, mult, is_causal, 0.0)?;
    D::attention_rows_kernel(q, k, v, shape, mult / shape.d_head as f64, s, is_causal)
}

/// Checks `q`, `k`, `v` of [`multi_head_attention`] against `seq` and `heads` and returns the
/// problem's shape.
pub(crate) fn rows_shape<R: Dim, W: Dim, E: Dtype, D: Backend<E>, T>(
    q: &Tensor<(R, W), E, D, T>,
    k: &Tensor<(R, W), E, D, T>,
    v: &Tensor<(R, W), E, D, T>,
    seq: usize,
    heads: usize,
) -> Result<AttnShape> {
    let op = "multi_head_attention";
    let (rows, width) = (q.shape().0.size(), q.shape().1.size());
    for (name, t) in [("k", k), ("v", v)] {
        check_dim(
            op,
            &format!("{name}.shape[0] vs q.shape[0]"),
            t.shape().0.size(),
            rows,
        )?;
        check_dim(
            op,
            &format!("{name}.shape[1] vs q.shape[1]"),
            t.shape().1.size(),
            width,
        )?;
    }
    let bad = |what: &'static str, value: usize, reason: &'static str| Error::InvalidValue {
        what,
        value: value as f64,
        reason,
    };
    if seq == 0 || rows % seq != 0 {
        return Err(bad(
            "seq",
            seq,
            "the number of rows must be a positive multiple of it",
        ));
    }
    if heads == 0 || width % heads != 0 {
        return Err(bad(
            "heads",
            heads,
            "the width must be a positive multiple of it",
        ));
    }
    Ok(AttnShape {
        batch: rows / seq,
        seq,
        heads,
        d_head: width / heads,
        layout: AttnLayout::Rows,
    })
}

/// The device-generic composition of [`Backend::attention_rows_kernel`]: reshape to
/// `[batch, seq, heads, d_head]`, permute to heads-major, [`attention_generic`], and back.
pub fn attention_rows_generic<R: Dim, W: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    q: Tensor<(R, W), E, D, T>,
    k: Tensor<(R, W), E, D, T>,
    v: Tensor<(R, W), E, D, T>,
    sh: AttnShape,
    logit_scale: f64,
    out_scale: f64,
    is_causal: bool,
) -> Result<Tensor<(R, W), E, D, T>> {
    let rows_shape = *q.shape();
    let split =
        |t: Tensor<(R, W), E, D, T>| -> Result<Tensor<(usize, usize, usize, usize), E, D, T>> {
            t.try_reshape_like(&(sh.batch, sh.seq, sh.heads, sh.d_head))
                .dev()?
                .try_permute::<_, Axes4<0, 2, 1, 3>>()
                .dev()
        };
    let y = attention_generic(
        split(q)?,
        split(k)?,
        split(v)?,
        logit_scale,
        out_scale,
        is_causal,
    )?;
    y.try_permute::<_, Axes4<0, 2, 1, 3>>()
        .dev()?
        .try_reshape_like(&rows_shape)
        .dev()
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

/// The device-generic composition of [`Backend::attention_kernel`]: the logit multiplier folded
/// into `q`, the output scale into `v`, an additive causal mask, dfdx's softmax and matmuls.
pub fn attention_generic<
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

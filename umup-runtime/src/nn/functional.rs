//! The parametrization-aware pieces of a forward pass.
//!
//! A model's forward code calls these with its parametrization type `P`, so one definition runs
//! u-μP (unit-scaled ops with the α hyperparameters of [`Hyper`]) and the μP and SP baselines
//! (plain ops with true gradients).

use dfdx::prelude::*;

use super::{Hyper, Param};
use crate::error::Result;
use crate::ops::{self, Backend, Reduction};
use crate::params::Parametrization;
use crate::scales;

/// Self-attention over `q, k, v [batch, heads, seq, d_head]`.
///
/// u-μP: [`ops::scaled_dot_product_attention`] with `mult = α_attn-softmax` (logits
/// `α·q·kᵀ/d_head`), the output scaled by the rule of `hp.attention` ([`attention_scales`]). μP: logits `α·q·kᵀ/d_head`, plain output. SP: logits
/// `q·kᵀ/√d_head`.
pub fn attention<P: Param, B: Dim, H: Dim, S: Dim, K: Dim, E: Dtype, D: Backend<E>, T>(
    q: Tensor<(B, H, S, K), E, D, T>,
    k: Tensor<(B, H, S, K), E, D, T>,
    v: Tensor<(B, H, S, K), E, D, T>,
    hp: &Hyper,
    is_causal: bool,
) -> Result<Tensor<(B, H, S, K), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let qs = q.shape().concrete();
    ops::attention::check_qkv(&qs, &k.shape().concrete(), &v.shape().concrete())?;
    let (logit, out) = attention_scales::<P>(qs[2], qs[3], hp, is_causal)?;
    D::attention_kernel(q, k, v, logit, out, is_causal)
}

/// [`attention`] on `[batch·seq, heads·d_head]` rows, the layout of the q, k and v projections
/// (see [`ops::multi_head_attention`]): no reshape or permute around it.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention<P: Param, R: Dim, W: Dim, E: Dtype, D: Backend<E>, T>(
    q: Tensor<(R, W), E, D, T>,
    k: Tensor<(R, W), E, D, T>,
    v: Tensor<(R, W), E, D, T>,
    seq: usize,
    heads: usize,
    hp: &Hyper,
    is_causal: bool,
) -> Result<Tensor<(R, W), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let sh = ops::attention::rows_shape(&q, &k, &v, seq, heads)?;
    let (logit, out) = attention_scales::<P>(seq, sh.d_head, hp, is_causal)?;
    D::attention_rows_kernel(q, k, v, sh, logit, out, is_causal)
}

/// [`multi_head_attention`] with simulated precision: `q`, `k`, `v` rounded to the quantiser's
/// forward format and the output gradient to its backward format (the same values, from the
/// same seeds, as three `quantise_fwd` calls and one `quantise_bwd` around the plain op).
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention_quantised<P: Param, R: Dim, W: Dim, E: Dtype, D: Backend<E>, T>(
    q: Tensor<(R, W), E, D, T>,
    k: Tensor<(R, W), E, D, T>,
    v: Tensor<(R, W), E, D, T>,
    seq: usize,
    heads: usize,
    hp: &Hyper,
    is_causal: bool,
    quantiser: &mut ops::MatmulQuantiser,
) -> Result<Tensor<(R, W), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let sh = ops::attention::rows_shape(&q, &k, &v, seq, heads)?;
    let (logit, out) = attention_scales::<P>(seq, sh.d_head, hp, is_causal)?;
    let plan = quantiser.plan::<3>(T::OWNS_TAPE);
    let (y, counts) = D::attention_rows_quantised_kernel(q, k, v, sh, logit, out, is_causal, plan)?;
    quantiser.count(counts);
    Ok(y)
}

/// `(logit scale, output scale)` of [`attention`] for `seq` positions and `d_head` features:
/// u-μP `(α/d_head, s)` with `s` from [`scales::attention_output`] under `hp.attention`
/// (the reference's [`scales::sdpa`], spec §4.12, or the mean's 1); μP `(α/d_head, 1)`;
/// SP `(1/√d_head, 1)`. The output scale is a true-gradient multiply.
pub fn attention_scales<P: Param>(
    seq: usize,
    d_head: usize,
    hp: &Hyper,
    is_causal: bool,
) -> Result<(f64, f64)> {
    let d = d_head as f64;
    let alpha = hp.alpha_attn_softmax;
    match P::parametrization() {
        Parametrization::Umup => Ok((
            alpha / d,
            scales::attention_output(hp.attention, seq, d_head, alpha, is_causal, 0.0)?,
        )),
        Parametrization::Mup { .. } => Ok((alpha / d, 1.0)),
        Parametrization::Sp => Ok((d.powf(-0.5), 1.0)),
    }
}

/// The scale of the SwiGLU core under `P`: u-μP's [`scales::silu_glu`] of α_ffn-act, 1 for
/// μP and SP (a true-gradient multiply either way).
pub fn swiglu_scale<P: Param>(hp: &Hyper) -> Result<f64> {
    match P::parametrization() {
        Parametrization::Umup => scales::silu_glu(hp.alpha_ffn_act),
        _ => Ok(1.0),
    }
}

/// `(a, b)` of a residual branch under `P`: u-μP's [`scales::residual`] of τ (forward
/// `a·f(x) + b·x`, `grad x = b·G + a·G_branch`, branch output gradient unscaled); `(1, 1)` for
/// μP and SP.
pub fn residual_scales<P: Param>(tau: f64) -> Result<(f64, f64)> {
    match P::parametrization() {
        Parametrization::Umup => scales::residual(tau),
        _ => Ok((1.0, 1.0)),
    }
}

/// The coefficient `c` of the logits gradient `c·(softmax(α·x) − onehot)·G` of [`cross_entropy`]
/// (mean over `rows`, `classes` classes): u-μP's [`scales::cross_entropy_grad`] (neither α nor
/// `1/rows` enters it); `α/rows` (the true gradient) for μP and SP.
pub fn cross_entropy_grad_coef<P: Param>(rows: usize, classes: usize, hp: &Hyper) -> Result<f64> {
    match P::parametrization() {
        Parametrization::Umup => scales::cross_entropy_grad(classes),
        _ => Ok(hp.alpha_loss_softmax / rows.max(1) as f64),
    }
}

/// The SwiGLU core `x ⊙ gate·σ(α_ffn_act·gate)`: unit-scaled ([`ops::silu_glu`]) under u-μP,
/// plain otherwise.
pub fn swiglu<P: Param, S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    gate: Tensor<S, E, D, T>,
    hp: &Hyper,
) -> Result<Tensor<S, E, D, T>> {
    let s = swiglu_scale::<P>(hp)?;
    ops::activation::silu_glu_scaled(x, gate, hp.alpha_ffn_act, s)
}

/// A residual branch `x → x + f(x)`: u-μP's [`ops::residual_apply`] with `tau` (from
/// [`residual_taus`]); the baselines add the branch to the skip unscaled.
pub fn residual<P: Param, S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>, F>(
    x: Tensor<S, E, D, T>,
    tau: f64,
    f: F,
) -> Result<Tensor<S, E, D, T>>
where
    F: FnOnce(Tensor<S, E, D, T>) -> Result<Tensor<S, E, D, T>>,
{
    match P::parametrization() {
        Parametrization::Umup => ops::residual_apply(x, tau, f),
        _ => {
            let skip = x.with_empty_tape();
            D::add_kernel(f(x)?, skip, [1.0; 4])
        }
    }
}

/// The τ of every branch of an `n_layers` transformer (attn0, mlp0, attn1, ...) from α_res and
/// α_res-attn-ratio (spec §3.2).
pub fn residual_taus(hp: &Hyper, n_layers: usize) -> Result<Vec<f64>> {
    scales::transformer_residual_taus(hp.alpha_res, hp.alpha_res_attn_ratio, n_layers)
}

/// Mean cross entropy of `α_loss-softmax·logits`: u-μP's [`ops::cross_entropy`] (gradient
/// `V/√(V−1)`-scaled, α and `1/B` forward-only) or the plain loss for the baselines.
pub fn cross_entropy<P: Param, R: Dim, V: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    logits: Tensor<(R, V), E, D, T>,
    targets: &[usize],
    hp: &Hyper,
) -> Result<Tensor<(), E, D, T>> {
    match P::parametrization() {
        Parametrization::Umup => {
            ops::cross_entropy(logits, targets, hp.alpha_loss_softmax, Reduction::Mean)
        }
        _ => ops::cross_entropy_plain(logits, targets, hp.alpha_loss_softmax, Reduction::Mean),
    }
}

//! The parametrization-aware pieces of a forward pass.
//!
//! A model's forward code calls these with its parametrization type `P`, so one definition runs
//! u-μP (unit-scaled ops with the α hyperparameters of [`Hyper`]) and the μP and SP baselines
//! (plain ops with true gradients).

use dfdx::prelude::*;

use super::{Hyper, Param};
use crate::error::{DeviceResultExt, Result};
use crate::ops::{self, Backend, Reduction};
use crate::params::Parametrization;
use crate::scales;

/// Self-attention over `q, k, v [batch, heads, seq, d_head]`.
///
/// u-μP: [`ops::scaled_dot_product_attention`] with `mult = α_attn-softmax` (logits
/// `α·q·kᵀ/d_head`, unit-scaled output). μP: logits `α·q·kᵀ/d_head`, plain output. SP: logits
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
    let d = q.shape().3.size() as f64;
    match P::parametrization() {
        Parametrization::Umup => {
            ops::scaled_dot_product_attention(q, k, v, hp.alpha_attn_softmax, is_causal)
        }
        Parametrization::Mup { .. } => {
            ops::attention::attention_core(q, k, v, hp.alpha_attn_softmax / d, 1.0, is_causal)
        }
        Parametrization::Sp => {
            ops::attention::attention_core(q, k, v, d.powf(-0.5), 1.0, is_causal)
        }
    }
}

/// The SwiGLU core `x ⊙ gate·σ(α_ffn_act·gate)`: unit-scaled ([`ops::silu_glu`]) under u-μP,
/// plain otherwise.
pub fn swiglu<P: Param, S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    gate: Tensor<S, E, D, T>,
    hp: &Hyper,
) -> Result<Tensor<S, E, D, T>> {
    match P::parametrization() {
        Parametrization::Umup => ops::silu_glu(x, gate, hp.alpha_ffn_act),
        _ => {
            let sig = gate
                .with_empty_tape()
                .try_mul(ops::scale::elem::<E>("alpha_ffn_act", hp.alpha_ffn_act)?)
                .dev()?
                .try_sigmoid()
                .dev()?;
            x.try_mul(gate.try_mul(sig).dev()?).dev()
        }
    }
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
            f(x)?.try_add(skip).dev()
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

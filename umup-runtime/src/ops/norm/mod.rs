//! `rms_norm` and `layer_norm` (spec §4.6, §4.7).
//!
//! Neither has a forward or input-gradient scale; their gains and biases get the weight-gradient
//! scale `√(d/numel(x)) = B_tok^-½`.

use dfdx::prelude::*;

use super::{check_dim, scale::elem, scale_grad, Backend};
use crate::error::{check_positive, DeviceResultExt, Result};
use crate::scales;

pub(crate) mod cpu;

/// RMSNorm over the last dim of `x[R, d]` (spec §4.7):
/// `output = x / √(mean_last(x²) + eps) (· weight)`. `grad x` is the true gradient;
/// `grad weight = B_tok^-½ ×` the true gradient. The reference's default has no gain (`None`).
pub fn rms_norm<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    eps: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let shape = *x.shape();
    let gain_scale = norm_gain_scale("rms_norm", &shape, weight, None)?;
    rms_norm_scaled(x, weight, eps, gain_scale)
}

/// RMSNorm with an explicit gain-gradient scale (1 = the plain norm): checks the inputs and
/// runs [`Backend::rms_norm_kernel`].
pub(crate) fn rms_norm_scaled<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    eps: f64,
    gain_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    check_positive("eps", eps)?;
    norm_gain_scale("rms_norm", x.shape(), weight, None)?;
    D::rms_norm_kernel(x, weight, eps, gain_scale)
}

/// The device-generic composition of [`Backend::rms_norm_kernel`]:
/// `x · (mean_last(x²) + eps)^-½ (· gain)`, from dfdx's reductions and broadcasts.
pub fn rms_norm_generic<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    eps: f64,
    gain_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let eps_f = check_positive("eps", eps)?;
    let eps: E = elem("eps", eps_f)?;
    let shape = *x.shape();
    if super::low_precision::<E>() {
        return apply_gain(normalize_bounded(x, eps_f)?, weight, None, gain_scale);
    }
    let inv_rms = x
        .with_empty_tape()
        .try_square()
        .dev()?
        .try_mean::<(R,), Axis<1>>()
        .dev()?
        .try_add(eps)
        .dev()?
        .try_sqrt()
        .dev()?
        .try_recip()
        .dev()?;
    let y = x
        .try_mul(inv_rms.try_broadcast_like::<_, Axis<1>>(&shape).dev()?)
        .dev()?;
    apply_gain(y, weight, None, gain_scale)
}

/// LayerNorm over the last dim of `x[R, d]` with biased variance (spec §4.6):
/// `output = (x−μ)/√(var+eps) (· weight) (+ bias)`. `grad x` is the true gradient; `grad weight`
/// and `grad bias` are `B_tok^-½ ×` the true gradient.
pub fn layer_norm<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    bias: Option<&Tensor<(K,), E, D>>,
    eps: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let shape = *x.shape();
    let gain_scale = norm_gain_scale("layer_norm", &shape, weight, bias)?;
    layer_norm_scaled(x, weight, bias, eps, gain_scale)
}

/// LayerNorm with an explicit gain/bias-gradient scale (1 = the plain norm): checks the inputs
/// and runs [`Backend::layer_norm_kernel`].
pub(crate) fn layer_norm_scaled<
    R: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    bias: Option<&Tensor<(K,), E, D>>,
    eps: f64,
    gain_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    check_positive("eps", eps)?;
    norm_gain_scale("layer_norm", x.shape(), weight, bias)?;
    D::layer_norm_kernel(x, weight, bias, eps, gain_scale)
}

/// The device-generic composition of [`Backend::layer_norm_kernel`]: dfdx's `normalize`, then
/// the gain and bias.
pub fn layer_norm_generic<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    bias: Option<&Tensor<(K,), E, D>>,
    eps: f64,
    gain_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let eps = check_positive("eps", eps)?;
    if super::low_precision::<E>() {
        let shape = *x.shape();
        let mean = x
            .with_empty_tape()
            .try_mean::<(R,), Axis<1>>()
            .dev()?
            .try_broadcast_like::<_, Axis<1>>(&shape)
            .dev()?;
        let y = normalize_bounded(x.try_sub(mean).dev()?, eps)?;
        return apply_gain(y, weight, bias, gain_scale);
    }
    let y = x.try_normalize::<Axis<1>>(eps).dev()?;
    apply_gain(y, weight, bias, gain_scale)
}

/// `c·(mean_last(c²) + eps)^-½` per row, for 16-bit dtypes: squaring overflows f16 once
/// `|c| > 256`, which a trained residual stream reaches, and so do the gradients of a small
/// `1/rms`. With the row's scale `m ≈ rms(c)` held constant (computed without squaring a
/// value above 1: `max|c|·√mean((c/max|c|)²)`), it is `u·(mean(u²) + eps/m²)^-½` for `u = c/m`:
/// the same value for any `m`, so the gradient through `u` alone is the true one, and every
/// intermediate (`|u| ≤ √K`, `mean(u²) ≈ 1`) and its gradient stay in range.
fn normalize_bounded<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    c: Tensor<(R, K), E, D, T>,
    eps: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let shape = *c.shape();
    let (cv, tape) = c.split_tape();
    // max|c| per row (floored, so that a zero row divides by a positive number).
    let max = cv
        .clone()
        .try_abs()
        .dev()?
        .try_max::<(R,), Axis<1>>()
        .dev()?
        .try_add(elem::<E>("norm floor", 2f64.powi(-10))?)
        .dev()?;
    let max_b = max.clone().try_broadcast_like::<_, Axis<1>>(&shape).dev()?;
    // m = max·√mean((c/max)²) (+ the floor) ≥ max/√K: the row's RMS, squaring only values in
    // [−1, 1].
    let inv_m = cv
        .clone()
        .try_div(max_b)
        .dev()?
        .try_square()
        .dev()?
        .try_mean::<(R,), Axis<1>>()
        .dev()?
        .try_sqrt()
        .dev()?
        .try_mul(max)
        .dev()?
        .try_add(elem::<E>("norm floor", 2f64.powi(-10))?)
        .dev()?
        .try_recip()
        .dev()?;
    let eps_term = inv_m
        .clone()
        .try_mul(elem::<E>("eps", eps.sqrt())?)
        .dev()?
        .try_square()
        .dev()?;
    // Constants of the graph: leaves on an empty tape, whose gradients go nowhere.
    let inv_m = inv_m.try_broadcast_like::<_, Axis<1>>(&shape).dev()?;
    let unit = cv.put_tape(tape).try_mul(inv_m.retaped::<T>()).dev()?;
    let inv_rms = unit
        .with_empty_tape()
        .try_square()
        .dev()?
        .try_mean::<(R,), Axis<1>>()
        .dev()?
        .try_add(eps_term.retaped::<T>())
        .dev()?
        .try_sqrt()
        .dev()?
        .try_recip()
        .dev()?;
    unit.try_mul(inv_rms.try_broadcast_like::<_, Axis<1>>(&shape).dev()?)
        .dev()
}

fn norm_gain_scale<R: Dim, K: Dim, E: Dtype, D: Backend<E>>(
    op: &'static str,
    shape: &(R, K),
    weight: Option<&Tensor<(K,), E, D>>,
    bias: Option<&Tensor<(K,), E, D>>,
) -> Result<f64> {
    let (rows, d) = (shape.0.size(), shape.1.size());
    for p in [weight, bias].into_iter().flatten() {
        check_dim(op, "gain/bias length vs x.shape[-1]", p.shape().0.size(), d)?;
    }
    scales::norm_param_grad(d, rows * d)
}

fn apply_gain<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    y: Tensor<(R, K), E, D, T>,
    weight: Option<&Tensor<(K,), E, D>>,
    bias: Option<&Tensor<(K,), E, D>>,
    grad_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let shape = *y.shape();
    let mut y = y;
    if let Some(w) = weight {
        let w = scale_grad(w.retaped::<T>(), 1.0, grad_scale)?;
        y = y
            .try_mul(w.try_broadcast_like::<_, Axis<0>>(&shape).dev()?)
            .dev()?;
    }
    if let Some(b) = bias {
        let b = scale_grad(b.retaped::<T>(), 1.0, grad_scale)?;
        y = y
            .try_add(b.try_broadcast_like::<_, Axis<0>>(&shape).dev()?)
            .dev()?;
    }
    Ok(y)
}

//! Activations, softmax and dropout (spec §4.9–§4.11).
//!
//! `mult` is the u-μP hyperparameter α_ffn-act (gelu, silu, silu_glu) or α_attn-softmax
//! (softmax). Each op computes its scales with [`crate::scales`], then applies
//! `output = o·f(x)` and `grad x = s·f′(x)·G`.

use dfdx::prelude::*;

use super::{check_dim, scale::elem, scale_grad, Backend};
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Result};
use crate::scales;

pub(crate) mod cpu;

/// Unit-scaled GELU (exact erf form) (spec §4.10): `f(x) = gelu(mult·x)/mult = x·Φ(mult·x)`,
/// `(o, s) = constraint(gelu scales)`, `output = o·f(x)`, `grad x = s·f′(x)·G`.
pub fn gelu<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    mult: f64,
    constraint: Constraint,
) -> Result<Tensor<S, E, D, T>> {
    let s = scales::gelu(mult)?.constrained(constraint)?;
    D::gelu_kernel(x, mult, s.output / mult, s.grad_input)
}

/// The device-generic composition of [`Backend::gelu_kernel`]: value
/// `out_scale · gelu(mult·x)`, `grad x = grad_scale · gelu′(mult·x) · G`.
pub fn gelu_generic<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    // z = mult·x in value; the backward ratio grad_scale/out_scale turns
    // out_scale·gelu′(z)·G into grad_scale·gelu′(z)·G.
    let z = scale_grad(x, mult, grad_scale / out_scale)?;
    exact_gelu(z)?
        .try_mul(elem::<E>("gelu scale", out_scale)?)
        .dev()
}

/// `gelu(z) = z·Φ(z)` with the exact derivative `Φ(z) + z·φ(z)`.
///
/// dfdx 0.13's `accurate_gelu` computes the value correctly but its derivative uses
/// `z·e^(−z²/2)/√π` where `z·φ(z) = z·e^(−z²/2)/√(2π)` is right. The difference is the derivative
/// of `h(z) = c·e^(−z²/2)` with `c = 1/√π − 1/√(2π)`, so `accurate_gelu(z) + h(z) − h(z)|detached`
/// has the exact value (the detached difference is exactly 0) and the exact gradient.
fn exact_gelu<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    z: Tensor<S, E, D, T>,
) -> Result<Tensor<S, E, D, T>> {
    use std::f64::consts::{FRAC_2_SQRT_PI, SQRT_2};
    let c = FRAC_2_SQRT_PI / 2.0 * (1.0 - 1.0 / SQRT_2);
    let h = z
        .with_empty_tape()
        .try_square()
        .dev()?
        .try_mul(elem::<E>("gelu correction", -0.5)?)
        .dev()?
        .try_exp()
        .dev()?
        .try_mul(elem::<E>("gelu correction", c)?)
        .dev()?;
    // A new tensor (new id) with h's value and no tape. A `retaped` copy would share h's id, and
    // the subtraction's backward would then cancel h's gradient.
    let h_detached = h.retaped::<NoneTape>().try_mul(E::ONE).dev()?;
    z.try_accurate_gelu()
        .dev()?
        .try_add(h)
        .dev()?
        .try_sub(h_detached)
        .dev()
}

/// Unit-scaled SiLU (spec §4.10): `f(x) = x·σ(mult·x)` (**not** divided by mult),
/// `(o, s) = constraint(silu scales)`, `output = o·f(x)`, `grad x = s·f′(x)·G`.
pub fn silu<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    mult: f64,
    constraint: Constraint,
) -> Result<Tensor<S, E, D, T>> {
    let s = scales::silu(mult)?.constrained(constraint)?;
    D::silu_kernel(x, mult, s.output, s.grad_input)
}

/// The device-generic composition of [`Backend::silu_kernel`]: value `out_scale·x·σ(mult·x)`,
/// `grad x = grad_scale · (σ(mult·x) + mult·x·σ′(mult·x)) · G`.
pub fn silu_generic<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    let x = scale_grad(x, 1.0, grad_scale / out_scale)?;
    let gate = x
        .with_empty_tape()
        .try_mul(elem::<E>("mult", mult)?)
        .dev()?
        .try_sigmoid()
        .dev()?;
    x.try_mul(elem::<E>("silu scale", out_scale)?)
        .dev()?
        .try_mul(gate)
        .dev()
}

/// Unit-scaled SwiGLU core (spec §4.10): `output = s·x·gate·σ(mult·gate)` with
/// `s = LI(1/(1+1/mult²), 2, √2)`; both gradients are `s ×` the true gradient of
/// `x·gate·σ(mult·gate)`. There is no constraint argument (the scales are equal by construction).
pub fn silu_glu<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    gate: Tensor<S, E, D, T>,
    mult: f64,
) -> Result<Tensor<S, E, D, T>> {
    silu_glu_scaled(x, gate, mult, scales::silu_glu(mult)?)
}

/// `scale · x · gate·σ(mult·gate)` with true gradients (a plain multiply by `scale`; 1 skips
/// it): [`silu_glu`] with an explicit scale, and the SwiGLU core of the μP and SP baselines.
/// `x` and `gate` must have the same shape ([`crate::Error::ShapeMismatch`] otherwise).
pub(crate) fn silu_glu_scaled<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    gate: Tensor<S, E, D, T>,
    mult: f64,
    scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    let [xs, gs] = [x.shape().concrete(), gate.shape().concrete()];
    if xs.as_ref() != gs.as_ref() {
        return Err(crate::Error::ShapeMismatch {
            op: "silu_glu",
            detail: format!(
                "x has shape {:?}, gate has shape {:?}",
                xs.as_ref(),
                gs.as_ref()
            ),
        });
    }
    D::silu_glu_kernel(x, gate, mult, scale)
}

/// The device-generic composition of [`Backend::silu_glu_kernel`]:
/// `scale · x · gate·σ(mult·gate)` from dfdx's sigmoid and multiplies.
pub fn silu_glu_generic<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<S, E, D, T>,
    gate: Tensor<S, E, D, T>,
    mult: f64,
    scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    let sig = gate
        .with_empty_tape()
        .try_mul(elem::<E>("mult", mult)?)
        .dev()?
        .try_sigmoid()
        .dev()?;
    let act = gate.try_mul(sig).dev()?;
    let x = if scale == 1.0 {
        x
    } else {
        x.try_mul(elem::<E>("silu_glu scale", scale)?).dev()?
    };
    x.try_mul(act).dev()
}

/// Unit-scaled softmax over the last dim of `x[R, n]` (spec §4.11): `p = softmax(mult·x)`,
/// `(o, s) = constraint(softmax scales)`, `output = o·p`,
/// `grad x = s·mult·p⊙(G − Σ_last(G⊙p))`.
pub fn softmax<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<(R, K), E, D, T>,
    mult: f64,
    constraint: Constraint,
) -> Result<Tensor<(R, K), E, D, T>> {
    let n = x.shape().1.size();
    check_dim("softmax", "non-empty last dim", n.min(1), 1)?;
    let s = scales::softmax(n, mult)?.constrained(constraint)?;
    D::softmax_kernel(x, mult, s.output, s.grad_input)
}

/// The device-generic composition of [`Backend::softmax_kernel`]: value
/// `out_scale · softmax(mult·x)` over the last dim, `grad x = grad_scale·mult·p⊙(G − Σ_last(G⊙p))`.
pub fn softmax_generic<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<(R, K), E, D, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<(R, K), E, D, T>> {
    let z = scale_grad(x, mult, grad_scale * mult / out_scale)?;
    z.try_softmax::<Axis<1>>()
        .dev()?
        .try_mul(elem::<E>("softmax scale", out_scale)?)
        .dev()
}

/// Unit-scaled dropout (spec §4.9): dfdx's dropout (mask and `1/(1−p)` rescale) followed by
/// `√(1−p)` forward and backward. As in the reference, the `√(1−p)` factor also applies when
/// `training` is false (then no mask is drawn).
pub fn dropout<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    p: f64,
    training: bool,
) -> Result<Tensor<S, E, D, T>> {
    let s = scales::dropout(p)?;
    let x = if training && p > 0.0 {
        x.try_dropout(p).dev()?
    } else {
        x
    };
    scale_grad(x, s, s)
}

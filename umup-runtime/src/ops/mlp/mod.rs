//! The input side of an MLP as one op (spec §4.2, §4.9, §4.10): the unit-scaled linear
//! projection(s) of the MLP's input and the activation after them.
//!
//! - `silu_glu_linear(x) = silu_glu(linear(x, W_up), linear(x, W_gate), mult)` (SwiGLU);
//! - `gelu_linear(x) = gelu(linear(x, W, b), mult)`.
//!
//! These are the compositions the reference's MLPs write out. As one op, the `Cpu` kernel keeps
//! the projections in its own buffers (never as tensors with gradient buffers of their own: no
//! copy of them for the activation, no zero-filled gradient buffer for them), copies `x` once
//! for SwiGLU's two projections, and turns the projections' buffers into their gradients in
//! place. The values and gradients are those of the composition, operation for operation.

use dfdx::prelude::*;

use super::activation::silu_glu_scaled;
use super::linear::linear_scales;
use super::{check_dim, Backend};
use crate::constraint::Constraint;
use crate::error::Result;
use crate::scales::{self, LinearScales};

pub(crate) mod cpu;

/// `silu_glu(linear(x, W_up), linear(x, W_gate), mult)` (spec §4.2, §4.9): each projection
/// `x[R, fan_in] → [R, fan_out]` with [`crate::ops::linear`]'s scales under `constraint`, joined
/// by [`crate::ops::silu_glu`] (`scale · up · gate·σ(mult·gate)`, `scale` from
/// [`scales::silu_glu`]). Both weights are `[fan_out, fan_in]`, torch-style.
pub fn silu_glu_linear<
    R: Dim,
    I: Dim,
    O: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    x: Tensor<(R, I), E, D, T>,
    w_up: &Tensor<(O, I), E, D>,
    w_gate: &Tensor<(O, I), E, D>,
    mult: f64,
    constraint: Constraint,
) -> Result<Tensor<(R, O), E, D, T>> {
    let s = [
        linear_scales(false, &x, w_up, None, constraint)?,
        linear_scales(false, &x, w_gate, None, constraint)?,
    ];
    silu_glu_linear_scaled(x, w_up, w_gate, s, mult, scales::silu_glu(mult)?)
}

/// [`silu_glu_linear`] with explicit scales: the projections' `s = [up, gate]` and the gated
/// SiLU's `scale` (1 for the μP and SP baselines, whose SwiGLU is unscaled).
pub(crate) fn silu_glu_linear_scaled<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    w_up: &Tensor<(O, I), E, D>,
    w_gate: &Tensor<(O, I), E, D>,
    s: [LinearScales; 2],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, O), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let fan_in = x.shape().1.size();
    check_dim(
        "silu_glu_linear",
        "W_up fan-in",
        w_up.shape().1.size(),
        fan_in,
    )?;
    check_dim(
        "silu_glu_linear",
        "W_gate fan-in",
        w_gate.shape().1.size(),
        fan_in,
    )?;
    check_dim(
        "silu_glu_linear",
        "W_gate fan-out",
        w_gate.shape().0.size(),
        w_up.shape().0.size(),
    )?;
    D::silu_glu_linear_kernel(x, w_up.retaped(), w_gate.retaped(), s, mult, scale)
}

/// The device-generic composition of [`Backend::silu_glu_linear_kernel`]: the up projection of
/// `x` with its tape left behind, the gate projection, then [`Backend::silu_glu_kernel`]. The
/// tape runs the backward ops in reverse: the gated SiLU, the gate's projection, the up's.
pub fn silu_glu_linear_generic<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    w_up: Tensor<(O, I), E, D, T>,
    w_gate: Tensor<(O, I), E, D, T>,
    [s_up, s_gate]: [LinearScales; 2],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, O), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let up = D::linear_kernel(x.with_empty_tape(), w_up, None, s_up)?;
    let gate = D::linear_kernel(x, w_gate, None, s_gate)?;
    silu_glu_scaled(up, gate, mult, scale)
}

/// `gelu(linear(x, W, b), mult)` (spec §4.2, §4.10): the projection with
/// [`crate::ops::linear`]'s scales under `constraints[0]`, the exact-erf GELU with
/// [`crate::ops::gelu`]'s under `constraints[1]`. `W[fan_out, fan_in]`, torch-style.
pub fn gelu_linear<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    mult: f64,
    constraints: [Constraint; 2],
) -> Result<Tensor<(R, O), E, D, T>> {
    let s = linear_scales(false, &x, weight, bias, constraints[0])?;
    let g = scales::gelu(mult)?.constrained(constraints[1])?;
    gelu_linear_scaled(x, weight, bias, s, [mult, g.output / mult, g.grad_input])
}

/// [`gelu_linear`] with explicit scales: the projection's `s` and the GELU kernel's
/// `[mult, out_scale, grad_scale]` (value `out_scale·gelu(mult·u)`, as
/// [`Backend::gelu_kernel`]). The caller has checked the dims.
pub(crate) fn gelu_linear_scaled<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    s: LinearScales,
    gelu: [f64; 3],
) -> Result<Tensor<(R, O), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    D::gelu_linear_kernel(x, weight.retaped(), bias.map(|b| b.retaped()), s, gelu)
}

/// The device-generic composition of [`Backend::gelu_linear_kernel`]:
/// [`Backend::linear_kernel`], then [`Backend::gelu_kernel`].
pub fn gelu_linear_generic<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    weight: Tensor<(O, I), E, D, T>,
    bias: Option<Tensor<(O,), E, D, T>>,
    s: LinearScales,
    [mult, out_scale, grad_scale]: [f64; 3],
) -> Result<Tensor<(R, O), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let u = D::linear_kernel(x, weight, bias, s)?;
    D::gelu_kernel(u, mult, out_scale, grad_scale)
}

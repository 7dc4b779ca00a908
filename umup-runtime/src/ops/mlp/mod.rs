//! An MLP, or its input side, as one op (spec §4.2, §4.9, §4.10): the unit-scaled linear
//! projections and the activation between them.
//!
//! - `silu_glu_linear(x) = silu_glu(linear(x, W_up), linear(x, W_gate), mult)` (SwiGLU's input
//!   side) and `swiglu_mlp(x) = linear(silu_glu_linear(x), W_down)`;
//! - `gelu_linear(x) = gelu(linear(x, W, b), mult)` and
//!   `gelu_mlp(x) = linear(gelu_linear(x), W_down, b_down)`.
//!
//! These are the compositions the reference's MLPs write out. As one op, the `Cpu` kernel keeps
//! the projections (and, for a whole MLP, the activation) in its own buffers, never as tensors
//! with a copy for the next op and a zero-filled gradient buffer of their own; it copies `x`
//! once for SwiGLU's two projections, and turns each buffer into its own gradient in place. The
//! values and gradients are those of the composition, operation for operation.

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
    check_glu(&x, w_up, w_gate)?;
    D::silu_glu_linear_kernel(x, w_up.retaped(), w_gate.retaped(), s, mult, scale)
}

/// The dims of SwiGLU's two projections: both read `x`'s features and have one fan-out.
fn check_glu<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    x: &Tensor<(R, I), E, D, T>,
    w_up: &Tensor<(O, I), E, D>,
    w_gate: &Tensor<(O, I), E, D>,
) -> Result<()> {
    let (op, fan_in) = ("silu_glu_linear", x.shape().1.size());
    check_dim(op, "W_up fan-in", w_up.shape().1.size(), fan_in)?;
    check_dim(op, "W_gate fan-in", w_gate.shape().1.size(), fan_in)?;
    let fan_out = w_up.shape().0.size();
    check_dim(op, "W_gate fan-out", w_gate.shape().0.size(), fan_out)
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

/// A whole SwiGLU MLP, `linear(silu_glu_linear(x, W_up, W_gate, mult), W_down)` (spec §4.2,
/// §4.9): [`silu_glu_linear`] and a down projection `W_down[fan_out_2, fan_out]` with
/// [`crate::ops::linear`]'s scales, all under `constraint`. On `Cpu` the activation stays in the
/// kernel as well.
pub fn swiglu_mlp<R, I, O, N, E, D, T>(
    x: Tensor<(R, I), E, D, T>,
    w_up: &Tensor<(O, I), E, D>,
    w_gate: &Tensor<(O, I), E, D>,
    w_down: &Tensor<(N, O), E, D>,
    mult: f64,
    constraint: Constraint,
) -> Result<Tensor<(R, N), E, D, T>>
where
    R: Dim,
    I: Dim,
    O: Dim,
    N: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let rows = x.shape().0.size();
    let [fi_2, fo_2] = [w_down.shape().1.size(), w_down.shape().0.size()];
    let s = [
        linear_scales(false, &x, w_up, None, constraint)?,
        linear_scales(false, &x, w_gate, None, constraint)?,
        scales::linear(fi_2, fo_2, rows, constraint)?,
    ];
    swiglu_mlp_scaled(x, [w_up, w_gate], w_down, s, mult, scales::silu_glu(mult)?)
}

/// [`swiglu_mlp`] with explicit scales: the projections' `s = [up, gate, down]` and the gated
/// SiLU's `scale`. Checks the dims.
pub(crate) fn swiglu_mlp_scaled<R: Dim, I: Dim, O: Dim, N: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    [w_up, w_gate]: [&Tensor<(O, I), E, D>; 2],
    w_down: &Tensor<(N, O), E, D>,
    s: [LinearScales; 3],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, N), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    check_glu(&x, w_up, w_gate)?;
    let fan_out = w_up.shape().0.size();
    check_dim(
        "swiglu_mlp",
        "W_down fan-in",
        w_down.shape().1.size(),
        fan_out,
    )?;
    let w = (w_up.retaped(), w_gate.retaped(), w_down.retaped());
    D::swiglu_mlp_kernel(x, w, s, mult, scale)
}

/// The device-generic composition of [`Backend::swiglu_mlp_kernel`]:
/// [`Backend::silu_glu_linear_kernel`], then [`Backend::linear_kernel`].
#[allow(clippy::type_complexity)]
pub fn swiglu_mlp_generic<R: Dim, I: Dim, O: Dim, N: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    (w_up, w_gate, w_down): (
        Tensor<(O, I), E, D, T>,
        Tensor<(O, I), E, D, T>,
        Tensor<(N, O), E, D, T>,
    ),
    s: [LinearScales; 3],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, N), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let a = D::silu_glu_linear_kernel(x, w_up, w_gate, [s[0], s[1]], mult, scale)?;
    D::linear_kernel(a, w_down, None, s[2])
}

/// A linear layer's weight and optional bias, by reference.
pub type LayerRef<'a, O, I, E, D> = (&'a Tensor<(O, I), E, D>, Option<&'a Tensor<(O,), E, D>>);

/// A linear layer's weight and optional bias, taped (a kernel's parameters).
pub type LayerTaped<O, I, E, D, T> = (Tensor<(O, I), E, D, T>, Option<Tensor<(O,), E, D, T>>);

/// A whole GELU MLP, `linear(gelu_linear(x, W_up, b_up, mult), W_down, b_down)` (spec §4.2,
/// §4.10): [`gelu_linear`] and a down projection `W_down[fan_out_2, fan_out]` with
/// [`crate::ops::linear`]'s scales under `constraints[0]` (the GELU's under `constraints[1]`).
/// On `Cpu` the activation stays in the kernel as well.
pub fn gelu_mlp<R, I, O, N, E, D, T>(
    x: Tensor<(R, I), E, D, T>,
    up: LayerRef<'_, O, I, E, D>,
    down: LayerRef<'_, N, O, E, D>,
    mult: f64,
    constraints: [Constraint; 2],
) -> Result<Tensor<(R, N), E, D, T>>
where
    R: Dim,
    I: Dim,
    O: Dim,
    N: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let rows = x.shape().0.size();
    let s_up = linear_scales(false, &x, up.0, up.1, constraints[0])?;
    let [fi_2, fo_2] = [down.0.shape().1.size(), down.0.shape().0.size()];
    let s_down = scales::linear(fi_2, fo_2, rows, constraints[0])?;
    let g = scales::gelu(mult)?.constrained(constraints[1])?;
    let gelu = [mult, g.output / mult, g.grad_input];
    gelu_mlp_scaled(x, up, down, [s_up, s_down], gelu)
}

/// [`gelu_mlp`] with explicit scales: the projections' `s = [up, down]` and the GELU kernel's
/// `[mult, out_scale, grad_scale]`. Checks the dims.
pub(crate) fn gelu_mlp_scaled<R: Dim, I: Dim, O: Dim, N: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    (w_up, b_up): LayerRef<'_, O, I, E, D>,
    (w_down, b_down): LayerRef<'_, N, O, E, D>,
    s: [LinearScales; 2],
    gelu: [f64; 3],
) -> Result<Tensor<(R, N), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let (fi, fo) = (x.shape().1.size(), w_up.shape().0.size());
    check_dim("gelu_mlp", "W_up fan-in", w_up.shape().1.size(), fi)?;
    check_dim("gelu_mlp", "W_down fan-in", w_down.shape().1.size(), fo)?;
    if let Some(b) = b_up {
        check_dim("gelu_mlp", "b_up length", b.shape().0.size(), fo)?;
    }
    if let Some(b) = b_down {
        let fo_2 = w_down.shape().0.size();
        check_dim("gelu_mlp", "b_down length", b.shape().0.size(), fo_2)?;
    }
    let up = (w_up.retaped(), b_up.map(|b| b.retaped()));
    let down = (w_down.retaped(), b_down.map(|b| b.retaped()));
    D::gelu_mlp_kernel(x, up, down, s, gelu)
}

/// The device-generic composition of [`Backend::gelu_mlp_kernel`]:
/// [`Backend::gelu_linear_kernel`], then [`Backend::linear_kernel`].
pub fn gelu_mlp_generic<R: Dim, I: Dim, O: Dim, N: Dim, E: Dtype, D: Backend<E>, T>(
    x: Tensor<(R, I), E, D, T>,
    (w_up, b_up): LayerTaped<O, I, E, D, T>,
    (w_down, b_down): LayerTaped<N, O, E, D, T>,
    [s_up, s_down]: [LinearScales; 2],
    gelu: [f64; 3],
) -> Result<Tensor<(R, N), E, D, T>>
where
    T: Tape<E, D> + Merge<T>,
{
    let a = D::gelu_linear_kernel(x, w_up, b_up, s_up, gelu)?;
    D::linear_kernel(a, w_down, b_down, s_down)
}

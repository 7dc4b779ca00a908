//! The one custom-gradient primitive: `scale_grad(x, fwd, bwd)` (spec §1.1).
//!
//! `scale_grad` returns a tensor whose value is `fwd·x` and whose backward pass sends
//! `bwd·grad_y` to `x`. `scale_fwd(x, s) = scale_grad(x, s, 1)` and
//! `scale_bwd(x, s) = scale_grad(x, 1, s)`.
//!
//! dfdx 0.13 has no public custom-op API (DFDX_NOTES §2). On [`Cpu`] `cpu.rs` registers a real
//! backward op on the tape (`Tape::add_backward_op`): one scalar multiply forward and one fused
//! `grad_x += bwd·grad_y` backward, the same passes as a plain `x * c`. On `Cuda` `cuda.rs` does
//! the same with one dfdx kernel forward and one umup kernel backward. Any other device uses the
//! portable identity `y = bwd·x + (fwd·x − bwd·x)|detached`, built from public tensor ops.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::scales::check_scale;

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use super::backend::Backend;

/// The default of [`Backend::scale_gradient`]: moves the scaled gradient in through a one-op
/// backward pass, so any dfdx device runs it.
pub(crate) fn scale_gradient_generic<S: Shape, E: Dtype, D: Device<E>>(
    grads: &mut Gradients<E, D>,
    param: &Tensor<S, E, D>,
    factor: E,
) -> std::result::Result<(), D::Err> {
    grads.try_alloc_for(param)?;
    let scaled = grads.get(param).try_mul(factor)?;
    super::quantise::set_gradient(grads, param, scaled)
}

/// `y = bwd·x + (fwd·x − bwd·x)|detached`: value exactly `fwd·x` (the detached difference
/// `bwd·x − bwd·x` is exactly 0), gradient `bwd`. Public tensor ops only, so any device runs it.
pub(crate) fn detached_scale<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    fwd: E,
    bwd: E,
) -> std::result::Result<Tensor<S, E, D, T>, D::Err> {
    let (xp, tape) = x.split_tape();
    let y_fwd = xp.clone().try_mul(fwd)?;
    let y_const = xp.clone().try_mul(bwd)?;
    let y_bwd = xp.put_tape(tape).try_mul(bwd)?;
    y_bwd.try_sub(y_const)?.try_add(y_fwd)
}

/// Converts a host scale to the tensor dtype.
/// Errors if `v` is finite but not representable (it would overflow to ±inf, e.g. 1e300 in f32).
pub(crate) fn elem<E: Dtype>(what: &'static str, v: f64) -> Result<E> {
    E::from_f64(v)
        .filter(|e| !v.is_finite() || e.to_f64().is_some_and(f64::is_finite))
        .ok_or(crate::Error::InvalidValue {
            what,
            value: v,
            reason: "not representable in the tensor dtype",
        })
}

/// `scale_grad(x, fwd, bwd)`: value `fwd·x`, gradient `bwd·grad_y` (spec §1.1).
///
/// Returns `x` itself when both scales are 1. Errors on a non-finite scale.
pub fn scale_grad<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    fwd: f64,
    bwd: f64,
) -> Result<Tensor<S, E, D, T>> {
    let fwd = check_scale("forward scale", fwd)?;
    let bwd = check_scale("backward scale", bwd)?;
    if fwd == 1.0 && (bwd == 1.0 || !T::OWNS_TAPE) {
        return Ok(x);
    }
    if !T::OWNS_TAPE || fwd == bwd {
        // Without a tape, or with equal scales, this is an ordinary multiply.
        return x.try_mul(elem::<E>("scale", fwd)?).dev();
    }
    D::scale_grad_kernel(x, elem("forward scale", fwd)?, elem("backward scale", bwd)?).dev()
}

/// `scale_fwd(x, s)`: value `s·x`, gradient passes unchanged (spec §1.1).
pub fn scale_fwd<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    scale_grad(x, scale, 1.0)
}

/// `scale_bwd(x, s)`: value unchanged, gradient multiplied by `s` (spec §1.1).
pub fn scale_bwd<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    scale: f64,
) -> Result<Tensor<S, E, D, T>> {
    scale_grad(x, 1.0, scale)
}

/// The device-generic path of [`scale_grad`] (public-op identity), usable on any device; it is
/// what non-`Cpu` devices run and what the fused `Cpu` kernel is tested against.
pub fn scale_grad_generic<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    fwd: f64,
    bwd: f64,
) -> Result<Tensor<S, E, D, T>> {
    let fwd: E = elem("forward scale", check_scale("forward scale", fwd)?)?;
    let bwd: E = elem("backward scale", check_scale("backward scale", bwd)?)?;
    detached_scale(x, fwd, bwd).dev()
}

//! The one custom-gradient primitive: `scale_grad(x, fwd, bwd)` (spec §1.1).
//!
//! `scale_grad` returns a tensor whose value is `fwd·x` and whose backward pass sends
//! `bwd·grad_y` to `x`. `scale_fwd(x, s) = scale_grad(x, s, 1)` and
//! `scale_bwd(x, s) = scale_grad(x, 1, s)`.
//!
//! dfdx 0.13 has no public custom-op API (DFDX_NOTES §2). On [`Cpu`] this module registers a
//! real backward op on the tape (`Tape::add_backward_op`): one scalar multiply forward and one
//! fused `grad_x += bwd·grad_y` backward, the same passes as a plain `x * c`. Every other device
//! uses the portable identity `y = bwd·x + (fwd·x − bwd·x)|detached`, built from public tensor ops.

use dfdx::prelude::*;

use super::kernels;
use crate::error::{DeviceResultExt, Result};
use crate::scales::check_scale;

/// A dfdx device the umup ops run on: [`Cpu`] with fused kernels, or any other dfdx device
/// (`Cuda`) through the generic default methods.
pub trait Backend<E: Dtype>: Device<E> {
    /// Value `fwd·x`, gradient `bwd·grad_y` (see the module docs). Callers use
    /// [`scale_grad`], which validates the scales and skips the identity.
    fn scale_grad_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        fwd: E,
        bwd: E,
    ) -> std::result::Result<Tensor<S, E, Self, T>, Self::Err> {
        detached_scale(x, fwd, bwd)
    }

    /// Multiplies the gradient of `param` held in `grads` by `factor` in place (gradient
    /// clipping). The default moves the scaled gradient in through a one-op backward pass, so
    /// any dfdx device runs it.
    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<E, Self>,
        param: &Tensor<S, E, Self>,
        factor: E,
    ) -> std::result::Result<(), Self::Err> {
        grads.try_alloc_for(param)?;
        let scaled = grads.get(param).try_mul(factor)?;
        let (mut store, probe) = super::quantise::gradient_buffer(scaled)?;
        std::mem::swap(
            grads.get_or_alloc_mut(param)?,
            store.get_or_alloc_mut(&probe)?,
        );
        Ok(())
    }
}

/// `y = bwd·x + (fwd·x − bwd·x)|detached`: value exactly `fwd·x` (the detached difference
/// `bwd·x − bwd·x` is exactly 0), gradient `bwd`. Public tensor ops only, so any device runs it.
fn detached_scale<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
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

impl<E: Dtype> Backend<E> for Cpu
where
    Cpu: Device<E>,
{
    fn scale_grad_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        fwd: E,
        bwd: E,
    ) -> std::result::Result<Tensor<S, E, Self, T>, Self::Err> {
        let (x, mut tape) = x.split_tape();
        // An untaped scalar multiply: a new tensor (new id) with the same strides as `x`, so the
        // gradient buffers of `x` and `y` line up element for element.
        let y = x.clone().try_mul(fwd)?;
        if T::OWNS_TAPE {
            let (xg, yg) = (x.ghost(), y.ghost());
            tape.add_backward_op(move |grads| {
                grads.try_alloc_for(&xg)?;
                // dfdx 0.13 lends one gradient buffer at a time: move grad_y out (no copy),
                // accumulate into grad_x, and move it back.
                let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
                kernels::axpy(
                    kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?),
                    &gy,
                    bwd,
                );
                kernels::put::<E>(grads.get_or_alloc_mut(&yg)?, gy);
                Ok(())
            });
        }
        Ok(y.put_tape(tape))
    }

    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<E, Self>,
        param: &Tensor<S, E, Self>,
        factor: E,
    ) -> std::result::Result<(), Self::Err> {
        for g in kernels::slice_mut::<E>(grads.get_or_alloc_mut(param)?) {
            *g *= factor;
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl<E: Dtype> Backend<E> for Cuda where Cuda: Device<E> {}

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

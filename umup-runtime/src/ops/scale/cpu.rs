//! The `Cpu` kernel of `scale_grad`: a real backward op on the tape.

use dfdx::prelude::*;

use crate::ops::kernels;
use crate::profile::{time, Part};

/// Value `fwd·x`, gradient `bwd·grad_y`: an untaped scalar multiply forward (a new tensor with
/// the strides of `x`, so the gradient buffers of `x` and `y` line up element for element) and
/// one fused `grad_x += bwd·grad_y` backward.
pub(crate) fn scale_grad<S: Shape, E: Dtype, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    fwd: E,
    bwd: E,
) -> Result<Tensor<S, E, Cpu, T>, CpuError>
where
    Cpu: Device<E>,
{
    let (x, mut tape) = x.split_tape();
    let y = time(Part::Scales, || x.clone().try_mul(fwd))?;
    if T::OWNS_TAPE {
        let (xg, yg, dev) = (x.ghost(), y.ghost(), x.device().clone());
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&xg)?;
            // dfdx 0.13 lends one gradient buffer at a time: move grad_y out (no copy),
            // accumulate into grad_x, and move it back.
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gx = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?);
            time(Part::Scales, || kernels::axpy(gx, &gy, bwd));
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// Multiplies a parameter's gradient by `factor` in place.
pub(crate) fn scale_gradient<S: Shape, E: Dtype>(
    grads: &mut Gradients<E, Cpu>,
    param: &Tensor<S, E, Cpu>,
    factor: E,
) -> Result<(), CpuError>
where
    Cpu: Device<E>,
{
    for g in kernels::slice_mut::<E>(grads.get_or_alloc_mut(param)?) {
        *g *= factor;
    }
    Ok(())
}

//! The `Cuda` kernel of `scale_grad`: one dfdx kernel forward, one umup kernel backward.

use dfdx::prelude::*;

use crate::ops::cuda::{self, CudaElem};

/// Value `fwd·x` (dfdx's scalar multiply, in place when `x` owns its buffer), gradient
/// `grad_x += bwd·grad_y` (one [`cuda::axpy`] launch on the gradient buffers).
pub(crate) fn scale_grad<S: Shape, E: CudaElem, T: Tape<E, Cuda>>(
    x: Tensor<S, E, Cuda, T>,
    fwd: E,
    bwd: E,
) -> Result<Tensor<S, E, Cuda, T>, CudaError>
where
    Cuda: Device<E>,
{
    let (x, mut tape) = x.split_tape();
    let xg = x.ghost();
    let y = x.try_mul(fwd)?;
    if T::OWNS_TAPE {
        let yg = y.ghost();
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&xg)?;
            // dfdx lends one gradient buffer at a time: move grad_y's data out, accumulate into
            // grad_x, and move it back.
            let gy = cuda::take::<E>(grads.get_or_alloc_mut(&yg)?)?;
            cuda::axpy(cuda::slice::<E>(grads.get_or_alloc_mut(&xg)?), &gy, bwd)?;
            cuda::put::<E>(grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// Multiplies a parameter's gradient by `factor` in place (one [`cuda::scal`] launch).
pub(crate) fn scale_gradient<S: Shape, E: CudaElem>(
    grads: &mut Gradients<E, Cuda>,
    param: &Tensor<S, E, Cuda>,
    factor: E,
) -> Result<(), CudaError>
where
    Cuda: Device<E>,
{
    cuda::scal(cuda::slice::<E>(grads.get_or_alloc_mut(param)?), factor)
}

//! The `Cpu` kernel of cross entropy: the loss and the scaled logits gradient in one pass
//! ([`crate::ops::cpu::cross_entropy_fwd_bwd`]); the backward pass only accumulates it.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{cross_entropy_fwd_bwd, Real};
use crate::ops::kernels::{self, accumulate, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// Value `value_scale·Σ_rows(lse(mult·x) − mult·x_t)`; backward
/// `dlogits += grad_coef·(softmax(mult·x) − onehot)·G`.
pub(crate) fn cross_entropy<R: Dim, V: Dim, E: Real, T: Tape<E, Cpu>>(
    logits: Tensor<(R, V), E, Cpu, T>,
    targets: &[usize],
    mult: f64,
    value_scale: f64,
    grad_coef: f64,
) -> Result<Tensor<(), E, Cpu, T>> {
    let (x, mut tape) = kernels::input(logits).dev()?;
    let dev = x.device().clone();
    let classes = x.shape().1.size();
    let xs = Buf::of(&x).dev()?;
    let mut dlogits = Buf::zeros(&dev, xs.len()).dev()?;
    let (mult, grad_coef) = (elem::<E>("scale", mult)?, elem::<E>("scale", grad_coef)?);
    let losses = time(Part::Loss, || {
        cross_entropy_fwd_bwd(&xs, classes, targets, mult, grad_coef, &mut dlogits)
    });
    drop(xs);
    let total: f64 = losses.iter().map(|l| l.to_f64().unwrap_or(f64::NAN)).sum();
    let y = dev.try_tensor(E::of(total * value_scale)).dev()?;
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let g0 = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&yg)?)[0];
            time(Part::Loss, || -> std::result::Result<(), CpuError> {
                accumulate!(grads, xg, &dlogits, g0);
                Ok(())
            })
        });
    }
    Ok(y.put_tape(tape))
}

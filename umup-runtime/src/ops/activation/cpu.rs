//! The `Cpu` kernels of the activations: one pass forward, one pass backward.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{
    gelu_bwd_acc, gelu_fwd, silu_bwd_acc, silu_fwd, softmax_bwd_acc, softmax_fwd, swiglu_bwd_acc,
    swiglu_fwd, Real,
};
use crate::ops::kernels::{self, accumulate, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// `scale · x · gate·σ(mult·gate)` with true gradients.
pub(crate) fn silu_glu<S: Shape, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<S, E, Cpu, T>,
    gate: Tensor<S, E, Cpu, T>,
    mult: f64,
    scale: f64,
) -> Result<Tensor<S, E, Cpu, T>> {
    let (x, tx) = kernels::input(x).dev()?;
    let (g, tg) = kernels::input(gate).dev()?;
    let mut tape = tx.merge(tg);
    let dev = x.device().clone();
    let shape = *x.shape();
    let n = shape.num_elements();
    let (xs, gs) = (Buf::of(&x).dev()?, Buf::of(&g).dev()?);
    let mut y = Buf::zeros(&dev, n).dev()?;
    let (mult, scale) = (elem::<E>("scale", mult)?, elem::<E>("scale", scale)?);
    time(Part::Activations, || {
        swiglu_fwd(&xs, &gs, mult, scale, &mut y)
    });
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, gg_, yg) = (x.ghost(), g.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            // Straight into both gradient buffers, unless x and gate are one tensor (then the
            // second comes out empty: put them back, last taken first, and go through temps).
            let mut gx = kernels::take::<E>(grads.get_or_alloc_mut(&xg)?);
            let mut gg = kernels::take::<E>(grads.get_or_alloc_mut(&gg_)?);
            if gx.len() == n && gg.len() == n {
                time(Part::Activations, || {
                    swiglu_bwd_acc(&xs, &gs, &gy, mult, scale, &mut gx, &mut gg)
                });
                kernels::put::<E>(grads.get_or_alloc_mut(&xg)?, gx);
                kernels::put::<E>(grads.get_or_alloc_mut(&gg_)?, gg);
            } else {
                kernels::put::<E>(grads.get_or_alloc_mut(&gg_)?, gg);
                kernels::put::<E>(grads.get_or_alloc_mut(&xg)?, gx);
                let (mut dx, mut dg) = (Buf::zeros(&dev, n)?, Buf::zeros(&dev, n)?);
                time(
                    Part::Activations,
                    || -> std::result::Result<(), CpuError> {
                        swiglu_bwd_acc(&xs, &gs, &gy, mult, scale, &mut dx, &mut dg);
                        accumulate!(grads, xg, &dx, E::one());
                        accumulate!(grads, gg_, &dg, E::one());
                        Ok(())
                    },
                )?;
            }
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// `out_scale · gelu(mult·x)`; backward `dx += grad_scale · gelu′(mult·x) · G`.
pub(crate) fn gelu<S: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<S, E, Cpu, T>> {
    unary(x, [mult, out_scale, grad_scale], gelu_fwd, gelu_bwd_acc)
}

/// `out_scale · x·σ(mult·x)`; backward `dx += grad_scale · (σ + mult·x·σ·(1 − σ)) · G`.
pub(crate) fn silu<S: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<S, E, Cpu, T>> {
    unary(x, [mult, out_scale, grad_scale], silu_fwd, silu_bwd_acc)
}

/// An elementwise activation as a tape op: `fwd(x, mult, out_scale, y)` forward,
/// `bwd(x, G, mult, grad_scale, dx)` (accumulating) backward.
fn unary<S: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    [mult, out_scale, grad_scale]: [f64; 3],
    fwd: fn(&[E], E, E, &mut [E]),
    bwd: fn(&[E], &[E], E, E, &mut [E]),
) -> Result<Tensor<S, E, Cpu, T>> {
    let (x, mut tape) = kernels::input(x).dev()?;
    let dev = x.device().clone();
    let shape = *x.shape();
    let xs = Buf::of(&x).dev()?;
    let mut y = Buf::zeros(&dev, xs.len()).dev()?;
    let (mult, os, gs) = (
        elem::<E>("scale", mult)?,
        elem::<E>("scale", out_scale)?,
        elem::<E>("scale", grad_scale)?,
    );
    time(Part::Activations, || fwd(&xs, mult, os, &mut y));
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gx = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?);
            time(Part::Activations, || bwd(&xs, &gy, mult, gs, gx));
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// `out_scale · softmax(mult·x)` over the last dim of `x[R, K]`; backward
/// `dx += grad_scale·mult · p ⊙ (G − Σ_row G ⊙ p)`.
pub(crate) fn softmax<R: Dim, K: Dim, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<(R, K), E, Cpu, T>,
    mult: f64,
    out_scale: f64,
    grad_scale: f64,
) -> Result<Tensor<(R, K), E, Cpu, T>> {
    let (x, mut tape) = kernels::input(x).dev()?;
    let dev = x.device().clone();
    let shape = *x.shape();
    let width = shape.1.size();
    let xs = Buf::of(&x).dev()?;
    let mut probs = Buf::zeros(&dev, xs.len()).dev()?;
    let mut y = Buf::zeros(&dev, xs.len()).dev()?;
    let (m, os) = (elem::<E>("scale", mult)?, elem::<E>("scale", out_scale)?);
    let coef = elem::<E>("scale", grad_scale * mult)?;
    time(Part::Activations, || {
        softmax_fwd(&xs, width, m, os, &mut probs, &mut y)
    });
    drop(xs);
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gx = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?);
            time(Part::Activations, || {
                softmax_bwd_acc(&probs, &gy, width, coef, gx)
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

//! The `Cpu` kernels of `silu_glu_linear` and `gelu_linear`: the projections with `gemm` 0.19
//! into the kernel's own buffers, the activation in one pass, and a backward that turns those
//! buffers into the projections' output gradients in place and feeds the matmuls from them.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{gelu_bwd_in_place, gelu_fwd, swiglu_bwd_in_place, swiglu_fwd, Real};
use crate::ops::kernels::{self, Buf};
use crate::ops::linear::cpu::{add_bias, grad_bias, grad_input, grad_weight, project};
use crate::ops::scale::elem;
use crate::profile::{time, Part};
use crate::scales::LinearScales;

/// `y = scale · u · g·σ(mult·g)`, `u = s_up.output·x·W_upᵀ`, `g = s_gate.output·x·W_gateᵀ`.
/// Backward: `du`, `dg` from the gated SiLU (in place of `u` and `g`), then the gate's
/// `dW_gate`, `dx`, then the up's `dW_up`, `dx`: the order in which the tape runs the
/// composition, so `dx` sums its two terms the same way.
pub(crate) fn silu_glu_linear<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    w_up: Tensor<(O, I), E, Cpu, T>,
    w_gate: Tensor<(O, I), E, Cpu, T>,
    [su, sg]: [LinearScales; 2],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, O), E, Cpu, T>> {
    let (x, tape) = kernels::input(x).dev()?;
    let (wu, tu) = kernels::input(w_up).dev()?;
    let (wg, tg) = kernels::input(w_gate).dev()?;
    let mut tape = tape.merge(tu).merge(tg);
    let dev = x.device().clone();
    let (rows, fi, fo) = (x.shape().0.size(), x.shape().1.size(), wu.shape().0.size());
    let dims = [rows, fi, fo];
    let out_shape = (x.shape().0, wu.shape().0);
    let (xs, wus, wgs) = (Buf::of(&x).dev()?, Buf::of(&wu).dev()?, Buf::of(&wg).dev()?);
    let e = |v: f64| elem::<E>("scale", v);
    let (mult, scale) = (e(mult)?, e(scale)?);
    let mut u = Buf::zeros(&dev, rows * fo).dev()?;
    let mut g = Buf::zeros(&dev, rows * fo).dev()?;
    project(&mut u, &xs, &wus, dims, e(su.output)?);
    project(&mut g, &xs, &wgs, dims, e(sg.output)?);
    let mut y = Buf::zeros(&dev, rows * fo).dev()?;
    time(Part::Activations, || {
        swiglu_fwd(&u, &g, mult, scale, &mut y)
    });
    let y = y.into_tensor(&dev, out_shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, wug, wgg, yg) = (x.ghost(), wu.ghost(), wg.ghost(), y.ghost());
        let (swu, sxu, swg, sxg) = (
            e(su.grad_weight)?,
            e(su.grad_input)?,
            e(sg.grad_weight)?,
            e(sg.grad_input)?,
        );
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            // The projections are needed no more: their buffers take their gradients.
            let (mut du, mut dg) = (u, g);
            time(Part::Activations, || {
                swiglu_bwd_in_place(&mut du, &mut dg, &gy, mult, scale)
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            grad_weight(
                kernels::slice_mut(grads.get_or_alloc_mut(&wgg)?),
                &dg,
                &xs,
                dims,
                swg,
            );
            grad_input(
                kernels::slice_mut(grads.get_or_alloc_mut(&xg)?),
                &dg,
                &wgs,
                dims,
                sxg,
            );
            grad_weight(
                kernels::slice_mut(grads.get_or_alloc_mut(&wug)?),
                &du,
                &xs,
                dims,
                swu,
            );
            grad_input(
                kernels::slice_mut(grads.get_or_alloc_mut(&xg)?),
                &du,
                &wus,
                dims,
                sxu,
            );
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// `y = out_scale · gelu(mult · u)`, `u = s.output·(x·Wᵀ + b)`. Backward: `du` from the GELU
/// (`grad_scale`) in place of `u`, then the linear layer's `dW`, `db`, `dx`, as the tape runs
/// the composition.
pub(crate) fn gelu_linear<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    weight: Tensor<(O, I), E, Cpu, T>,
    bias: Option<Tensor<(O,), E, Cpu, T>>,
    s: LinearScales,
    [mult, out_scale, grad_scale]: [f64; 3],
) -> Result<Tensor<(R, O), E, Cpu, T>> {
    let (x, w, b, mut tape) = kernels::layer_inputs(x, weight, bias).dev()?;
    let dev = x.device().clone();
    let (rows, fi, fo) = (x.shape().0.size(), x.shape().1.size(), w.shape().0.size());
    let dims = [rows, fi, fo];
    let out_shape = (x.shape().0, w.shape().0);
    let (xs, ws) = (Buf::of(&x).dev()?, Buf::of(&w).dev()?);
    let e = |v: f64| elem::<E>("scale", v);
    let (o, sw, sx) = (e(s.output)?, e(s.grad_weight)?, e(s.grad_input)?);
    let (mult, os, gs) = (e(mult)?, e(out_scale)?, e(grad_scale)?);
    let mut u = Buf::zeros(&dev, rows * fo).dev()?;
    project(&mut u, &xs, &ws, dims, o);
    if let Some(b) = &b {
        add_bias(&mut u, &Buf::of(b).dev()?, o);
    }
    let mut y = Buf::zeros(&dev, rows * fo).dev()?;
    time(Part::Activations, || gelu_fwd(&u, mult, os, &mut y));
    let y = y.into_tensor(&dev, out_shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (x.ghost(), w.ghost(), b.map(|b| b.ghost()), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            // The projection is needed no more: its buffer takes its gradient.
            let mut du = u;
            time(Part::Activations, || {
                gelu_bwd_in_place(&mut du, &gy, mult, gs)
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            grad_weight(
                kernels::slice_mut(grads.get_or_alloc_mut(&wg)?),
                &du,
                &xs,
                dims,
                sw,
            );
            if let Some(bg) = &bg {
                grad_bias(kernels::slice_mut(grads.get_or_alloc_mut(bg)?), &du, sw);
            }
            grad_input(
                kernels::slice_mut(grads.get_or_alloc_mut(&xg)?),
                &du,
                &ws,
                dims,
                sx,
            );
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

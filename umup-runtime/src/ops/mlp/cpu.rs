//! The `Cpu` kernels of the MLP ops: the projections with `gemm` 0.19 into the kernel's own
//! buffers, the activation in one pass, and a backward that turns those buffers into their own
//! gradients in place and feeds the matmuls from them. Every backward runs the composition's
//! operations in the order the tape would run them, so the values are the composition's.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{gelu_bwd_in_place, gelu_fwd, swiglu_bwd_in_place, swiglu_fwd, Real};
use crate::ops::kernels::{self, Buf};
use crate::ops::linear::cpu::{
    add_bias, grad_bias, grad_input, grad_input_into, grad_weight, project,
};
use crate::ops::scale::elem;
use crate::profile::{time, Part};
use crate::scales::LinearScales;

/// A linear layer's scales as elements: `[output, grad_weight, grad_input]`.
fn scales<E: Real>(s: LinearScales) -> Result<[E; 3]> {
    Ok([
        elem("scale", s.output)?,
        elem("scale", s.grad_weight)?,
        elem("scale", s.grad_input)?,
    ])
}

/// SwiGLU's input side, computed: the copies of `x`, `W_up`, `W_gate`, the projections `u`, `g`
/// and the activation `a = scale · u · g·σ(mult·g)`.
struct Glu<E: Real> {
    x: Buf<E>,
    w: [Buf<E>; 2],
    ug: [Buf<E>; 2],
    s: [[E; 3]; 2],
    dims: [usize; 3],
    mult: E,
    scale: E,
}

impl<E: Real> Glu<E> {
    #[allow(clippy::type_complexity)]
    fn forward<R: Dim, I: Dim, O: Dim>(
        x: &Tensor<(R, I), E, Cpu>,
        w: [&Tensor<(O, I), E, Cpu>; 2],
        s: [LinearScales; 2],
        mult: f64,
        scale: f64,
    ) -> Result<(Self, Buf<E>)> {
        let dev = x.device();
        let (rows, fi, fo) = (
            x.shape().0.size(),
            x.shape().1.size(),
            w[0].shape().0.size(),
        );
        let dims = [rows, fi, fo];
        let xs = Buf::of(x).dev()?;
        let w = [Buf::of(w[0]).dev()?, Buf::of(w[1]).dev()?];
        let s = [scales(s[0])?, scales(s[1])?];
        let mut ug = [
            Buf::zeros(dev, rows * fo).dev()?,
            Buf::zeros(dev, rows * fo).dev()?,
        ];
        for ((p, w), s) in ug.iter_mut().zip(&w).zip(&s) {
            project(p, &xs, w, dims, s[0]);
        }
        let (mult, scale) = (elem("mult", mult)?, elem("scale", scale)?);
        let mut a = Buf::zeros(dev, rows * fo).dev()?;
        time(Part::Activations, || {
            swiglu_fwd(&ug[0], &ug[1], mult, scale, &mut a)
        });
        let glu = Glu {
            x: xs,
            w,
            ug,
            s,
            dims,
            mult,
            scale,
        };
        Ok((glu, a))
    }

    /// From `da`: `du`, `dg` in place of `u` and `g` (then [`glu_projections_backward`]).
    fn activation_backward(&mut self, da: &[E]) {
        let [du, dg] = &mut self.ug;
        let (mult, scale) = (self.mult, self.scale);
        time(Part::Activations, || {
            swiglu_bwd_in_place(du, dg, da, mult, scale)
        });
    }
}

/// SwiGLU's projections backward from `du`, `dg` ([`Glu::activation_backward`]): the gate's
/// `dW_gate`, `dx`, then the up's `dW_up`, `dx` — the tape's order for the composition, so `dx`
/// sums its two terms the same way. Each gradient buffer is borrowed from `grads` in turn.
macro_rules! glu_projections_backward {
    ($grads:expr, $glu:expr, $xg:expr, $wug:expr, $wgg:expr) => {{
        let g = &$glu;
        for (i, wg) in [(1, &$wgg), (0, &$wug)] {
            let (dp, w, s) = (&g.ug[i], &g.w[i], g.s[i]);
            grad_weight(
                kernels::slice_mut($grads.get_or_alloc_mut(wg)?),
                dp,
                &g.x,
                g.dims,
                s[1],
            );
            grad_input(
                kernels::slice_mut($grads.get_or_alloc_mut(&$xg)?),
                dp,
                w,
                g.dims,
                s[2],
            );
        }
    }};
}

/// The GELU MLP's input side, computed: the copies of `x`, `W`, the projection `u = o·(x·Wᵀ + b)`
/// and the activation `a = out_scale · gelu(mult·u)`.
struct Gelu<E: Real> {
    x: Buf<E>,
    w: Buf<E>,
    u: Buf<E>,
    s: [E; 3],
    dims: [usize; 3],
    mult: E,
    grad_scale: E,
}

impl<E: Real> Gelu<E> {
    fn forward<R: Dim, I: Dim, O: Dim>(
        x: &Tensor<(R, I), E, Cpu>,
        w: &Tensor<(O, I), E, Cpu>,
        b: Option<&Tensor<(O,), E, Cpu>>,
        s: LinearScales,
        [mult, out_scale, grad_scale]: [f64; 3],
    ) -> Result<(Self, Buf<E>)> {
        let dev = x.device();
        let (rows, fi, fo) = (x.shape().0.size(), x.shape().1.size(), w.shape().0.size());
        let dims = [rows, fi, fo];
        let (xs, ws) = (Buf::of(x).dev()?, Buf::of(w).dev()?);
        let s = scales(s)?;
        let mut u = Buf::zeros(dev, rows * fo).dev()?;
        project(&mut u, &xs, &ws, dims, s[0]);
        if let Some(b) = b {
            add_bias(&mut u, &Buf::of(b).dev()?, s[0]);
        }
        let (mult, os) = (elem("mult", mult)?, elem("scale", out_scale)?);
        let mut a = Buf::zeros(dev, rows * fo).dev()?;
        time(Part::Activations, || gelu_fwd(&u, mult, os, &mut a));
        let gelu = Gelu {
            x: xs,
            w: ws,
            u,
            s,
            dims,
            mult,
            grad_scale: elem("scale", grad_scale)?,
        };
        Ok((gelu, a))
    }

    /// From `da`: `du` in place of `u` (then [`gelu_projection_backward`]).
    fn activation_backward(&mut self, da: &[E]) {
        let (mult, gs) = (self.mult, self.grad_scale);
        let du = &mut self.u;
        time(Part::Activations, || gelu_bwd_in_place(du, da, mult, gs));
    }
}

/// The GELU MLP's projection backward from `du` ([`Gelu::activation_backward`]): the linear
/// layer's `dW`, `db`, `dx`, each gradient buffer borrowed from `grads` in turn.
macro_rules! gelu_projection_backward {
    ($grads:expr, $gelu:expr, $xg:expr, $wg:expr, $bg:expr) => {{
        let g = &$gelu;
        grad_weight(
            kernels::slice_mut($grads.get_or_alloc_mut(&$wg)?),
            &g.u,
            &g.x,
            g.dims,
            g.s[1],
        );
        if let Some(bg) = &$bg {
            grad_bias(
                kernels::slice_mut($grads.get_or_alloc_mut(bg)?),
                &g.u,
                g.s[1],
            );
        }
        grad_input(
            kernels::slice_mut($grads.get_or_alloc_mut(&$xg)?),
            &g.u,
            &g.w,
            g.dims,
            g.s[2],
        );
    }};
}

/// `y = scale · u · g·σ(mult·g)`, `u = s_up.output·x·W_upᵀ`, `g = s_gate.output·x·W_gateᵀ`, with
/// the gradients of that composition.
pub(crate) fn silu_glu_linear<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    w_up: Tensor<(O, I), E, Cpu, T>,
    w_gate: Tensor<(O, I), E, Cpu, T>,
    s: [LinearScales; 2],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, O), E, Cpu, T>> {
    let (x, wu, _, tape) = kernels::layer_inputs::<_, _, (O,), _, _>(x, w_up, None).dev()?;
    let (wg, tg) = kernels::input(w_gate).dev()?;
    let mut tape = tape.merge(tg);
    let dev = x.device().clone();
    let (glu, a) = Glu::forward(&x, [&wu, &wg], s, mult, scale)?;
    let y = a.into_tensor(&dev, (x.shape().0, wu.shape().0)).dev()?;
    if T::OWNS_TAPE {
        let (xg, wug, wgg, yg) = (x.ghost(), wu.ghost(), wg.ghost(), y.ghost());
        let mut glu = glu;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            glu.activation_backward(&gy);
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            glu_projections_backward!(grads, glu, xg, wug, wgg);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// `y = gelu[1] · gelu(gelu[0] · u)`, `u = s.output·(x·Wᵀ + b)`, with the gradients of that
/// composition.
pub(crate) fn gelu_linear<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    weight: Tensor<(O, I), E, Cpu, T>,
    bias: Option<Tensor<(O,), E, Cpu, T>>,
    s: LinearScales,
    gelu: [f64; 3],
) -> Result<Tensor<(R, O), E, Cpu, T>> {
    let (x, w, b, mut tape) = kernels::layer_inputs(x, weight, bias).dev()?;
    let dev = x.device().clone();
    let (fwd, a) = Gelu::forward(&x, &w, b.as_ref(), s, gelu)?;
    let y = a.into_tensor(&dev, (x.shape().0, w.shape().0)).dev()?;
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (x.ghost(), w.ghost(), b.map(|b| b.ghost()), y.ghost());
        let mut fwd = fwd;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            fwd.activation_backward(&gy);
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            gelu_projection_backward!(grads, fwd, xg, wg, bg);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// An MLP's output projection, computed: the copy of `W_down`, its scales and dims.
struct Down<E: Real> {
    w: Buf<E>,
    s: [E; 3],
    dims: [usize; 3],
}

impl<E: Real> Down<E> {
    /// `y = o·(a·W_downᵀ + b)` from the activation `a[rows, fi]`.
    fn forward<N: Dim, O: Dim>(
        a: &[E],
        w: &Tensor<(N, O), E, Cpu>,
        b: Option<&Tensor<(N,), E, Cpu>>,
        s: LinearScales,
    ) -> Result<(Self, Buf<E>)> {
        let (fo, fi) = (w.shape().0.size(), w.shape().1.size());
        let dims = [a.len() / fi.max(1), fi, fo];
        let ws = Buf::of(w).dev()?;
        let s = scales(s)?;
        let mut y = Buf::zeros(w.device(), dims[0] * fo).dev()?;
        project(&mut y, a, &ws, dims, s[0]);
        if let Some(b) = b {
            add_bias(&mut y, &Buf::of(b).dev()?, s[0]);
        }
        Ok((Down { w: ws, s, dims }, y))
    }
}

/// The output projection's backward from `gy`: `dW_down`, then `da` written over the activation
/// `a` (which `dW_down` has used); each gradient buffer is borrowed from `grads` in turn. (The
/// bias gradient, from `gy` alone, is the caller's.)
macro_rules! down_backward {
    ($grads:expr, $down:expr, $a:expr, $gy:expr, $wg:expr) => {{
        let d = &$down;
        grad_weight(
            kernels::slice_mut($grads.get_or_alloc_mut(&$wg)?),
            $gy,
            &$a,
            d.dims,
            d.s[1],
        );
        grad_input_into(&mut $a, $gy, &d.w, d.dims, d.s[2]);
    }};
}

/// The whole SwiGLU MLP: [`silu_glu_linear`] and the down projection `s[2]`, with the
/// gradients of that composition; the activation never leaves the kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn swiglu_mlp<R: Dim, I: Dim, O: Dim, N: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    w_up: Tensor<(O, I), E, Cpu, T>,
    w_gate: Tensor<(O, I), E, Cpu, T>,
    w_down: Tensor<(N, O), E, Cpu, T>,
    s: [LinearScales; 3],
    mult: f64,
    scale: f64,
) -> Result<Tensor<(R, N), E, Cpu, T>> {
    let (x, wu, _, tape) = kernels::layer_inputs::<_, _, (O,), _, _>(x, w_up, None).dev()?;
    let (wg, tg) = kernels::input(w_gate).dev()?;
    let (wd, td) = kernels::input(w_down).dev()?;
    let mut tape = tape.merge(tg).merge(td);
    let dev = x.device().clone();
    let (glu, mut a) = Glu::forward(&x, [&wu, &wg], [s[0], s[1]], mult, scale)?;
    let (down, y) = Down::forward(&a, &wd, None, s[2])?;
    let y = y.into_tensor(&dev, (x.shape().0, wd.shape().0)).dev()?;
    if T::OWNS_TAPE {
        let (xg, wug, wgg, wdg, yg) = (x.ghost(), wu.ghost(), wg.ghost(), wd.ghost(), y.ghost());
        let mut glu = glu;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            down_backward!(grads, down, a, &gy, wdg);
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            glu.activation_backward(&a);
            drop(a);
            glu_projections_backward!(grads, glu, xg, wug, wgg);
            Ok(())
        });
    } else {
        drop((glu, a));
    }
    Ok(y.put_tape(tape))
}

/// The whole GELU MLP: [`gelu_linear`] and the down projection (`s[1]`, with its bias), with the
/// gradients of that composition; the activation never leaves the kernel.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn gelu_mlp<R: Dim, I: Dim, O: Dim, N: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    (w_up, b_up): (Tensor<(O, I), E, Cpu, T>, Option<Tensor<(O,), E, Cpu, T>>),
    (w_down, b_down): (Tensor<(N, O), E, Cpu, T>, Option<Tensor<(N,), E, Cpu, T>>),
    s: [LinearScales; 2],
    gelu: [f64; 3],
) -> Result<Tensor<(R, N), E, Cpu, T>> {
    let (x, wu, bu, tape) = kernels::layer_inputs(x, w_up, b_up).dev()?;
    let (wd, td) = kernels::input(w_down).dev()?;
    let mut tape = tape.merge(td);
    let bd = match b_down {
        Some(b) => {
            let (b, tb) = kernels::input(b).dev()?;
            tape = tape.merge(tb);
            Some(b)
        }
        None => None,
    };
    let dev = x.device().clone();
    let (fwd, mut a) = Gelu::forward(&x, &wu, bu.as_ref(), s[0], gelu)?;
    let (down, y) = Down::forward(&a, &wd, bd.as_ref(), s[1])?;
    let y = y.into_tensor(&dev, (x.shape().0, wd.shape().0)).dev()?;
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (x.ghost(), wu.ghost(), bu.map(|b| b.ghost()), y.ghost());
        let (wdg, bdg) = (wd.ghost(), bd.map(|b| b.ghost()));
        let mut fwd = fwd;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            down_backward!(grads, down, a, &gy, wdg);
            if let Some(bdg) = &bdg {
                grad_bias(
                    kernels::slice_mut(grads.get_or_alloc_mut(bdg)?),
                    &gy,
                    down.s[1],
                );
            }
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            fwd.activation_backward(&a);
            drop(a);
            gelu_projection_backward!(grads, fwd, xg, wg, bg);
            Ok(())
        });
    } else {
        drop((fwd, a));
    }
    Ok(y.put_tape(tape))
}

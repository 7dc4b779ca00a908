//! The `Cpu` kernels of `linear` and `matmul`: `gemm` 0.19 with every scale in the matmul's
//! `alpha`, parameter gradients accumulated in place in dfdx's gradient buffers (`beta = 1`).

use dfdx::prelude::*;
use rayon::prelude::*;

use std::sync::{Arc, Mutex};

use crate::error::{DeviceResultExt, Result};
use crate::formats::QuantStats;
use crate::ops::cpu::{gemm, rows_per_task, Real, Threads, View, ViewMut};
use crate::ops::kernels::{self, Buf};
use crate::ops::quantise::cpu::{round, rounded_gradient};
use crate::ops::quantise::Quantise;
use crate::ops::scale::elem;
use crate::profile::{time, Part};
use crate::scales::LinearScales;

/// `y = s.output·(x·Wᵀ + b)`; backward `dW += s.grad_weight·Gᵀ·x`, `db += s.grad_weight·Σ G`,
/// `dx += s.grad_input·G·W`.
///
/// The forward reads `W` through a transposed view (gemm packs its operands either way): on the
/// LM's shapes that is as fast as, or faster than, a transposed copy plus a row-major matmul,
/// once the copy is counted (BENCHMARKS.md).
pub(crate) fn linear<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    weight: Tensor<(O, I), E, Cpu, T>,
    bias: Option<Tensor<(O,), E, Cpu, T>>,
    s: LinearScales,
) -> Result<Tensor<(R, O), E, Cpu, T>> {
    let stats = Arc::new(Mutex::new(QuantStats::default()));
    Ok(linear_quantised(x, weight, bias, s, None, None, stats)?.0)
}

/// [`linear`] with simulated precision: the kernel's own copies of `x` and `W` rounded in place
/// by `fwd`, the output gradient by `bwd` before the backward matmuls read it (the same values,
/// from the same seeds, as rounding each through `quantise_kernel` first).
pub(crate) fn linear_quantised<R: Dim, I: Dim, O: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, I), E, Cpu, T>,
    weight: Tensor<(O, I), E, Cpu, T>,
    bias: Option<Tensor<(O,), E, Cpu, T>>,
    s: LinearScales,
    fwd: Option<[Quantise; 2]>,
    bwd: Option<Quantise>,
    stats: Arc<Mutex<QuantStats>>,
) -> Result<(Tensor<(R, O), E, Cpu, T>, QuantStats)> {
    let (x, w, b, mut tape) = kernels::layer_inputs(x, weight, bias).dev()?;
    let dev = x.device().clone();
    let (rows, fi) = (x.shape().0.size(), x.shape().1.size());
    let fo = w.shape().0.size();
    let out_shape = (x.shape().0, w.shape().0);
    let mut xs = Buf::of(&x).dev()?;
    let mut ws = Buf::of(&w).dev()?;
    let mut counts = QuantStats::default();
    if let Some([qx, qw]) = fwd {
        counts.merge(round(&mut xs, qx, qx.seed));
        counts.merge(round(&mut ws, qw, qw.seed));
    }
    let mut y = Buf::zeros(&dev, rows * fo).dev()?;
    let (o, sw, sx) = (
        elem::<E>("scale", s.output)?,
        elem::<E>("scale", s.grad_weight)?,
        elem::<E>("scale", s.grad_input)?,
    );
    project(&mut y, &xs, &ws, [rows, fi, fo], o);
    if let Some(b) = &b {
        add_bias(&mut y, &Buf::of(b).dev()?, o);
    }
    let y = y.into_tensor(&dev, out_shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (x.ghost(), w.ghost(), b.map(|b| b.ghost()), y.ghost());
        tape.add_backward_op(move |grads| {
            let taken = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let (rounded, kept) = rounded_gradient(taken, bwd, &stats);
            let gy = &rounded[..];
            let dims = [rows, fi, fo];
            grad_weight(
                kernels::slice_mut::<E>(grads.get_or_alloc_mut(&wg)?),
                gy,
                &xs,
                dims,
                sw,
            );
            if let Some(bg) = &bg {
                grad_bias(kernels::slice_mut(grads.get_or_alloc_mut(bg)?), gy, sw);
            }
            grad_input(
                kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?),
                gy,
                &ws,
                dims,
                sx,
            );
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, kept.unwrap_or(rounded));
            Ok(())
        });
    }
    Ok((y.put_tape(tape), counts))
}

/// A linear layer's forward matmul: `y[rows, fo] = o·x[rows, fi]·Wᵀ` (`W[fo, fi]`, read
/// through a transposed view).
pub(crate) fn project<E: Real>(y: &mut [E], x: &[E], w: &[E], [rows, fi, fo]: [usize; 3], o: E) {
    time(Part::Matmuls, || {
        gemm(
            ViewMut::rows(y, rows, fo),
            false,
            View::rows(x, rows, fi),
            View::rows(w, fo, fi).t(),
            o,
            Threads::All,
        )
    });
}

/// A linear layer's bias, added to each row of its output after the matmul: `y[r] += o·b`
/// (row blocks in parallel).
pub(crate) fn add_bias<E: Real>(y: &mut [E], b: &[E], o: E) {
    let fo = b.len().max(1);
    time(Part::Matmuls, || {
        y.par_chunks_mut(rows_per_task(fo) * fo).for_each(|rows| {
            for row in rows.chunks_mut(fo) {
                kernels::axpy(row, b, o);
            }
        })
    });
}

/// A linear layer's bias gradient: `grad b += sw·Σ_rows gy` (rows in order).
pub(crate) fn grad_bias<E: Real>(gb: &mut [E], gy: &[E], sw: E) {
    time(Part::Matmuls, || {
        for row in gy.chunks(gb.len().max(1)) {
            kernels::axpy(gb, row, sw);
        }
    });
}

/// A linear layer's weight gradient from its output gradient `gy[rows, fo]`:
/// `grad W[fo, fi] += sw·gyᵀ·x`.
pub(crate) fn grad_weight<E: Real>(
    gw: &mut [E],
    gy: &[E],
    x: &[E],
    [rows, fi, fo]: [usize; 3],
    sw: E,
) {
    time(Part::Matmuls, || {
        gemm(
            ViewMut::rows(gw, fo, fi),
            true,
            View::rows(gy, rows, fo).t(),
            View::rows(x, rows, fi),
            sw,
            Threads::All,
        )
    });
}

/// A linear layer's input gradient from its output gradient `gy[rows, fo]`:
/// `grad x[rows, fi] += sx·gy·W`.
pub(crate) fn grad_input<E: Real>(gx: &mut [E], gy: &[E], w: &[E], dims: [usize; 3], sx: E) {
    input_gradient(gx, true, gy, w, dims, sx);
}

/// [`grad_input`] into a buffer it overwrites: `gx = sx·gy·W` (the same sums as adding to
/// zeros).
pub(crate) fn grad_input_into<E: Real>(gx: &mut [E], gy: &[E], w: &[E], dims: [usize; 3], sx: E) {
    input_gradient(gx, false, gy, w, dims, sx);
}

fn input_gradient<E: Real>(
    gx: &mut [E],
    accumulate: bool,
    gy: &[E],
    w: &[E],
    [rows, fi, fo]: [usize; 3],
    sx: E,
) {
    time(Part::Matmuls, || {
        gemm(
            ViewMut::rows(gx, rows, fi),
            accumulate,
            View::rows(gy, rows, fo),
            View::rows(w, fo, fi),
            sx,
            Threads::All,
        )
    });
}

/// `y = o·left@right`; backward `dleft += s_l·G·rightᵀ`, `dright += s_r·leftᵀ·G`.
pub(crate) fn matmul<M: Dim, K: Dim, N: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    left: Tensor<(M, K), E, Cpu, T>,
    right: Tensor<(K, N), E, Cpu, T>,
    [o, sl, sr]: [f64; 3],
) -> Result<Tensor<(M, N), E, Cpu, T>> {
    let (l, ltape) = kernels::input(left).dev()?;
    let (r, rtape) = kernels::input(right).dev()?;
    let mut tape = ltape.merge(rtape);
    let dev = l.device().clone();
    let (m, k, n) = (l.shape().0.size(), l.shape().1.size(), r.shape().1.size());
    let out_shape = (l.shape().0, r.shape().1);
    let ls = Buf::of(&l).dev()?;
    let rs = Buf::of(&r).dev()?;
    let mut y = Buf::zeros(&dev, m * n).dev()?;
    let o = elem::<E>("scale", o)?;
    time(Part::Matmuls, || {
        gemm(
            ViewMut::rows(&mut y, m, n),
            false,
            View::rows(&ls, m, k),
            View::rows(&rs, k, n),
            o,
            Threads::All,
        )
    });
    let y = y.into_tensor(&dev, out_shape).dev()?;
    if T::OWNS_TAPE {
        let (lg, rg, yg) = (l.ghost(), r.ghost(), y.ghost());
        let (sl, sr) = (elem::<E>("scale", sl)?, elem::<E>("scale", sr)?);
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gl = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&lg)?);
            time(Part::Matmuls, || {
                gemm(
                    ViewMut::rows(gl, m, k),
                    true,
                    View::rows(&gy, m, n),
                    View::rows(&rs, k, n).t(),
                    sl,
                    Threads::All,
                )
            });
            let gr = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&rg)?);
            time(Part::Matmuls, || {
                gemm(
                    ViewMut::rows(gr, k, n),
                    true,
                    View::rows(&ls, m, k).t(),
                    View::rows(&gy, m, n),
                    sr,
                    Threads::All,
                )
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

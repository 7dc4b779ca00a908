//! The `Cpu` kernel of `conv1d`: im2col into a buffer the backward pass reuses, then one `gemm`
//! per batch element and group with the output scale in the matmul's `alpha`; the backward pass
//! accumulates `dW` and `db` in place in dfdx's gradient buffers and scatters `dcols` back into
//! `dx` (col2im).

use dfdx::prelude::*;
use rayon::prelude::*;

use super::Conv1dGeometry;
use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{gemm, Real, Threads, View, ViewMut};
use crate::ops::kernels::{self, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};
use crate::scales::LinearScales;

/// The input index `τ = t·stride + j·dilation − padding` of output position `t` and tap `j`, if
/// it lies inside `[0, len)` (outside it reads the zero padding).
#[inline]
fn tap(geo: &Conv1dGeometry, len: usize, j: usize, t: usize) -> Option<usize> {
    (t * geo.stride + j * geo.dilation)
        .checked_sub(geo.padding)
        .filter(|&tau| tau < len)
}

/// `y = s.output·(conv1d(x, W) + b)`; backward `dW += s.grad_weight·Σ_b G_bg·cols_bgᵀ`,
/// `db += s.grad_weight·Σ_{b,t} G`, `dx += s.grad_input·col2im(W_gᵀ·G_bg)`.
pub(crate) fn conv1d<B, CI, L, O, IG, K, E, T>(
    x: Tensor<(B, CI, L), E, Cpu, T>,
    weight: Tensor<(O, IG, K), E, Cpu, T>,
    bias: Option<Tensor<(O,), E, Cpu, T>>,
    geo: Conv1dGeometry,
    s: LinearScales,
) -> Result<Tensor<(B, O, usize), E, Cpu, T>>
where
    B: Dim,
    CI: Dim,
    L: Dim,
    O: Dim,
    IG: Dim,
    K: Dim,
    E: Real,
    T: Tape<E, Cpu> + Merge<T>,
{
    let (x, w, b, mut tape) = kernels::layer_inputs(x, weight, bias).dev()?;
    let dev = x.device().clone();
    let [nb, ci, len] = x.shape().concrete();
    let [co, ig, k] = w.shape().concrete();
    let g = geo.groups;
    let og = co / g;
    let t_out = geo.output_len(len, k)?;
    let out_shape = (x.shape().0, w.shape().0, t_out);
    let (igk, row) = (ig * k, k * t_out);
    let (o, sw, sx) = (
        elem::<E>("scale", s.output)?,
        elem::<E>("scale", s.grad_weight)?,
        elem::<E>("scale", s.grad_input)?,
    );

    let xs = Buf::of(&x).dev()?;
    let ws = Buf::of(&w).dev()?;
    // cols[b][c][j][t] = x[b][c][τ(j, t)] (0 in the padding): per batch element a row-major
    // [C_in·k, T_out] matrix whose group blocks are contiguous row ranges.
    let mut cols = Buf::zeros(&dev, nb * ci * row).dev()?;
    time(Part::Matmuls, || {
        cols.par_chunks_mut(row.max(1))
            .zip(xs.par_chunks(len.max(1)))
            .for_each(|(dst, src)| {
                for j in 0..k {
                    for t in 0..t_out {
                        if let Some(tau) = tap(&geo, len, j, t) {
                            dst[j * t_out + t] = src[tau];
                        }
                    }
                }
            })
    });
    let mut y = Buf::zeros(&dev, nb * co * t_out).dev()?;
    time(Part::Matmuls, || {
        for bi in 0..nb {
            for gi in 0..g {
                let yo = (bi * co + gi * og) * t_out;
                let c0 = (bi * ci * k + gi * igk) * t_out;
                gemm(
                    ViewMut::rows(&mut y[yo..yo + og * t_out], og, t_out),
                    false,
                    View::rows(&ws[gi * og * igk..(gi + 1) * og * igk], og, igk),
                    View::rows(&cols[c0..c0 + igk * t_out], igk, t_out),
                    o,
                    Threads::All,
                );
            }
        }
    });
    let bs = b.as_ref().map(Buf::of).transpose().dev()?;
    if let Some(bs) = &bs {
        y.par_chunks_mut(t_out.max(1))
            .enumerate()
            .for_each(|(r, yr)| {
                let add = o * bs[r % co];
                yr.iter_mut().for_each(|v| *v += add);
            });
    }
    let y = y.into_tensor(&dev, out_shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (x.ghost(), w.ghost(), b.map(|b| b.ghost()), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gw = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&wg)?);
            time(Part::Matmuls, || {
                for gi in 0..g {
                    let dst = &mut gw[gi * og * igk..(gi + 1) * og * igk];
                    for bi in 0..nb {
                        let yo = (bi * co + gi * og) * t_out;
                        let c0 = (bi * ci * k + gi * igk) * t_out;
                        gemm(
                            ViewMut::rows(dst, og, igk),
                            true,
                            View::rows(&gy[yo..yo + og * t_out], og, t_out),
                            View::rows(&cols[c0..c0 + igk * t_out], igk, t_out).t(),
                            sw,
                            Threads::All,
                        );
                    }
                }
            });
            if let Some(bg) = &bg {
                let gb = kernels::slice_mut::<E>(grads.get_or_alloc_mut(bg)?);
                for (r, gr) in gy.chunks(t_out.max(1)).enumerate() {
                    gb[r % co] += sw * gr.iter().copied().sum::<E>();
                }
            }
            let gx = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?);
            let mut dcols = vec![E::zero(); ci * row];
            time(Part::Matmuls, || {
                for bi in 0..nb {
                    for gi in 0..g {
                        let yo = (bi * co + gi * og) * t_out;
                        let d0 = gi * igk * t_out;
                        gemm(
                            ViewMut::rows(&mut dcols[d0..d0 + igk * t_out], igk, t_out),
                            false,
                            View::rows(&ws[gi * og * igk..(gi + 1) * og * igk], og, igk).t(),
                            View::rows(&gy[yo..yo + og * t_out], og, t_out),
                            sx,
                            Threads::All,
                        );
                    }
                    // col2im: dx[b][c][τ(j, t)] += dcols[c][j][t].
                    gx[bi * ci * len..(bi + 1) * ci * len]
                        .par_chunks_mut(len.max(1))
                        .zip(dcols.par_chunks(row.max(1)))
                        .for_each(|(dst, src)| {
                            for j in 0..k {
                                for t in 0..t_out {
                                    if let Some(tau) = tap(&geo, len, j, t) {
                                        dst[tau] += src[j * t_out + t];
                                    }
                                }
                            }
                        });
                }
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

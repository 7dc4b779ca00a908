//! Row-wise kernels: RMSNorm and LayerNorm (with optional gain and bias), softmax, and cross
//! entropy.

use rayon::prelude::*;

use super::{max_by, rows_per_task, simd, sum_by, sum_by2, Real};

/// RMSNorm (`center = false`, spec §4.7) or LayerNorm (`center = true`, biased variance,
/// spec §4.6) forward over rows of `width`: `mean[r] = center ? mean(x_r) : 0`,
/// `inv[r] = 1/√(mean((x_r − mean[r])²) + eps)`, `y_r = (x_r − mean[r])·inv[r] (⊙ gain) (+ bias)`.
#[allow(clippy::too_many_arguments)]
pub fn norm_fwd<E: Real>(
    x: &[E],
    width: usize,
    eps: E,
    center: bool,
    gain: Option<&[E]>,
    bias: Option<&[E]>,
    y: &mut [E],
    inv: &mut [E],
    mean: &mut [E],
) {
    assert!(
        x.len() == y.len()
            && x.len() == inv.len() * width
            && inv.len() == mean.len()
            && gain.is_none_or(|g| g.len() == width)
            && bias.is_none_or(|b| b.len() == width),
        "norm_fwd lengths"
    );
    let rows = rows_per_task(width);
    let d = E::of(width as f64);
    y.par_chunks_mut(rows * width)
        .zip(inv.par_chunks_mut(rows).zip(mean.par_chunks_mut(rows)))
        .zip(x.par_chunks(rows * width))
        .for_each(|((y, (inv, mean)), x)| {
            simd(
                #[inline(always)]
                || {
                    for (((y, x), inv), mean) in
                        y.chunks_mut(width).zip(x.chunks(width)).zip(inv).zip(mean)
                    {
                        let mu = if center {
                            sum_by(x, |v| v) / d
                        } else {
                            E::zero()
                        };
                        let ms = sum_by(x, |v| (v - mu) * (v - mu)) / d;
                        let r = E::one() / (ms + eps).sqrt();
                        (*inv, *mean) = (r, mu);
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = (x - mu) * r;
                        }
                        if let Some(g) = gain {
                            y.iter_mut().zip(g).for_each(|(y, &g)| *y *= g);
                        }
                        if let Some(b) = bias {
                            y.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
                        }
                    }
                },
            )
        });
}

/// The input gradient of [`norm_fwd`], accumulated: `dx += inv·(dŷ − [center] mean(dŷ) −
/// x̂·mean(dŷ ⊙ x̂))` with `x̂ = (x − mean)·inv` and `dŷ = dy (⊙ gain)`.
#[allow(clippy::too_many_arguments)]
pub fn norm_bwd<E: Real>(
    x: &[E],
    inv: &[E],
    mean: &[E],
    dy: &[E],
    width: usize,
    center: bool,
    gain: Option<&[E]>,
    dx: &mut [E],
) {
    assert!(
        x.len() == dy.len()
            && x.len() == dx.len()
            && x.len() == inv.len() * width
            && inv.len() == mean.len()
            && gain.is_none_or(|g| g.len() == width),
        "norm_bwd lengths"
    );
    let rows = rows_per_task(width);
    let d = E::of(width as f64);
    dx.par_chunks_mut(rows * width)
        .zip(inv.par_chunks(rows).zip(mean.par_chunks(rows)))
        .zip(x.par_chunks(rows * width).zip(dy.par_chunks(rows * width)))
        .for_each(|((dx, (inv, mean)), (x, dy))| {
            simd(
                #[inline(always)]
                || {
                    let mut dyg = vec![E::zero(); if gain.is_some() { width } else { 0 }];
                    for ((((dx, x), dy), &r), &mu) in dx
                        .chunks_mut(width)
                        .zip(x.chunks(width))
                        .zip(dy.chunks(width))
                        .zip(inv)
                        .zip(mean)
                    {
                        let dy: &[E] = match gain {
                            Some(g) => {
                                dyg.iter_mut()
                                    .zip(dy.iter().zip(g))
                                    .for_each(|(o, (&dy, &g))| *o = dy * g);
                                &dyg
                            }
                            None => dy,
                        };
                        let dot = sum_by2(x, dy, |x, g| (x - mu) * g);
                        let c = r * r * r * dot / d;
                        let m = if center {
                            r * sum_by(dy, |g| g) / d
                        } else {
                            E::zero()
                        };
                        for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                            *o += r * g - c * (x - mu) - m;
                        }
                    }
                },
            )
        });
}

/// The gain and bias gradients of [`norm_fwd`], accumulated and scaled:
/// `dgain += scale·Σ_rows dy ⊙ x̂`, `dbias += scale·Σ_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn norm_param_grads<E: Real>(
    x: &[E],
    inv: &[E],
    mean: &[E],
    dy: &[E],
    width: usize,
    scale: E,
    dgain: Option<&mut [E]>,
    dbias: Option<&mut [E]>,
) {
    assert!(
        x.len() == dy.len() && x.len() == inv.len() * width && inv.len() == mean.len(),
        "norm_param_grads lengths"
    );
    let mut sg = vec![E::zero(); width];
    let mut sb = vec![E::zero(); width];
    simd(
        #[inline(always)]
        || {
            for (((x, dy), &r), &mu) in x.chunks(width).zip(dy.chunks(width)).zip(inv).zip(mean) {
                for (((sg, sb), &x), &g) in sg.iter_mut().zip(sb.iter_mut()).zip(x).zip(dy) {
                    *sg += g * (x - mu) * r;
                    *sb += g;
                }
            }
        },
    );
    if let Some(dg) = dgain {
        dg.iter_mut().zip(&sg).for_each(|(o, &s)| *o += scale * s);
    }
    if let Some(db) = dbias {
        db.iter_mut().zip(&sb).for_each(|(o, &s)| *o += scale * s);
    }
}

/// Softmax over rows of `width` (spec §4.11): `probs = softmax(mult·x)` per row and
/// `out = scale · probs`.
pub fn softmax_fwd<E: Real>(
    x: &[E],
    width: usize,
    mult: E,
    scale: E,
    probs: &mut [E],
    out: &mut [E],
) {
    assert!(
        x.len() == probs.len() && x.len() == out.len() && x.len().is_multiple_of(width.max(1)),
        "softmax_fwd lengths"
    );
    let rows = rows_per_task(width);
    probs
        .par_chunks_mut(rows * width)
        .zip(out.par_chunks_mut(rows * width))
        .zip(x.par_chunks(rows * width))
        .for_each(|((p, o), x)| {
            simd(
                #[inline(always)]
                || {
                    for ((p, o), x) in p
                        .chunks_mut(width)
                        .zip(o.chunks_mut(width))
                        .zip(x.chunks(width))
                    {
                        let max = max_by(x, |v| mult * v);
                        for (p, &v) in p.iter_mut().zip(x) {
                            *p = (mult * v - max).exp_v();
                        }
                        let inv = E::one() / sum_by(p, |e| e);
                        for (p, o) in p.iter_mut().zip(o.iter_mut()) {
                            *p *= inv;
                            *o = scale * *p;
                        }
                    }
                },
            )
        });
}

/// Softmax backward from the forward's `probs`, added to `dx`:
/// `dx += coef · p ⊙ (dout − Σ_row(dout ⊙ p))`.
pub fn softmax_bwd_acc<E: Real>(probs: &[E], dout: &[E], width: usize, coef: E, dx: &mut [E]) {
    assert!(
        probs.len() == dout.len()
            && probs.len() == dx.len()
            && probs.len().is_multiple_of(width.max(1)),
        "softmax_bwd lengths"
    );
    let rows = rows_per_task(width);
    dx.par_chunks_mut(rows * width)
        .zip(
            probs
                .par_chunks(rows * width)
                .zip(dout.par_chunks(rows * width)),
        )
        .for_each(|(dx, (p, g))| {
            simd(
                #[inline(always)]
                || {
                    for ((dx, p), g) in dx
                        .chunks_mut(width)
                        .zip(p.chunks(width))
                        .zip(g.chunks(width))
                    {
                        let dot = sum_by2(p, g, |p, g| p * g);
                        for ((dx, &p), &g) in dx.iter_mut().zip(p).zip(g) {
                            *dx += coef * p * (g - dot);
                        }
                    }
                },
            )
        });
}

/// Cross entropy of `mult·logits` (rows of `vocab`) against `targets`, forward and backward in
/// one pass: returns the per-row losses `logsumexp(mult·x) − mult·x_t` and writes
/// `dlogits = grad_coef·(softmax(mult·x) − onehot(t))`.
pub fn cross_entropy_fwd_bwd<E: Real>(
    logits: &[E],
    vocab: usize,
    targets: &[usize],
    mult: E,
    grad_coef: E,
    dlogits: &mut [E],
) -> Vec<E> {
    assert!(
        logits.len() == dlogits.len() && logits.len() == targets.len() * vocab,
        "cross_entropy lengths"
    );
    let mut losses = vec![E::zero(); targets.len()];
    let rows = rows_per_task(vocab);
    dlogits
        .par_chunks_mut(rows * vocab)
        .zip(losses.par_chunks_mut(rows))
        .zip(
            logits
                .par_chunks(rows * vocab)
                .zip(targets.par_chunks(rows)),
        )
        .for_each(|((dl, loss), (x, t))| {
            simd(
                #[inline(always)]
                || {
                    for (((dl, loss), x), &t) in
                        dl.chunks_mut(vocab).zip(loss).zip(x.chunks(vocab)).zip(t)
                    {
                        let max = max_by(x, |v| mult * v);
                        for (d, &v) in dl.iter_mut().zip(x) {
                            *d = (mult * v - max).exp_v();
                        }
                        let sum = sum_by(dl, |e| e);
                        let lse = max + sum.ln();
                        *loss = lse - mult * x[t];
                        let inv = E::one() / sum;
                        for d in dl.iter_mut() {
                            *d = grad_coef * (*d * inv);
                        }
                        dl[t] -= grad_coef;
                    }
                },
            )
        });
    losses
}

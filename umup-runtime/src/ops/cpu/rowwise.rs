//! Row-wise kernels: RMSNorm without gain and cross entropy.

use rayon::prelude::*;

use super::{rows_per_task, Real};

/// RMSNorm forward over rows of `width` (spec §4.7): `inv[r] = 1/√(mean(x_r²) + eps)`,
/// `y_r = x_r · inv[r]`.
pub fn rms_norm_fwd<E: Real>(x: &[E], width: usize, eps: E, y: &mut [E], inv: &mut [E]) {
    assert!(
        x.len() == y.len() && x.len() == inv.len() * width,
        "rms_norm_fwd lengths"
    );
    let rows = rows_per_task(width);
    let d = E::of(width as f64);
    y.par_chunks_mut(rows * width)
        .zip(inv.par_chunks_mut(rows))
        .zip(x.par_chunks(rows * width))
        .for_each(|((y, inv), x)| {
            for ((y, x), inv) in y.chunks_mut(width).zip(x.chunks(width)).zip(inv) {
                let ms = x.iter().map(|&v| v * v).sum::<E>() / d;
                let r = E::one() / (ms + eps).sqrt();
                *inv = r;
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * r;
                }
            }
        });
}

/// RMSNorm backward, written into `dx` as `dx = keep·dx + scale·grad` with the true gradient
/// `grad_r = inv·(dy − x̂·mean(dy ⊙ x̂))`, `x̂ = x·inv`. `keep = 0` overwrites `dx` without
/// reading it; `keep = b, scale = a` is the residual split's `b·G_skip + a·G_branch`.
pub fn rms_norm_bwd<E: Real>(
    x: &[E],
    inv: &[E],
    dy: &[E],
    width: usize,
    keep: E,
    scale: E,
    dx: &mut [E],
) {
    assert!(
        x.len() == dy.len() && x.len() == dx.len() && x.len() == inv.len() * width,
        "rms_norm_bwd lengths"
    );
    let rows = rows_per_task(width);
    let d = E::of(width as f64);
    dx.par_chunks_mut(rows * width)
        .zip(inv.par_chunks(rows))
        .zip(x.par_chunks(rows * width).zip(dy.par_chunks(rows * width)))
        .for_each(|((dx, inv), (x, dy))| {
            for (((dx, x), dy), &r) in dx
                .chunks_mut(width)
                .zip(x.chunks(width))
                .zip(dy.chunks(width))
                .zip(inv)
            {
                let dot = x.iter().zip(dy).map(|(&x, &g)| x * g).sum::<E>();
                let c = r * r * r * dot / d;
                if keep == E::zero() {
                    for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                        *o = scale * (r * g - c * x);
                    }
                } else {
                    for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                        *o = keep * *o + scale * (r * g - c * x);
                    }
                }
            }
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
            for (((dl, loss), x), &t) in dl.chunks_mut(vocab).zip(loss).zip(x.chunks(vocab)).zip(t)
            {
                let max = x.iter().fold(E::neg_infinity(), |m, &v| m.max(mult * v));
                for (d, &v) in dl.iter_mut().zip(x) {
                    *d = (mult * v - max).exp_v();
                }
                let sum = dl.iter().fold(E::zero(), |s, &e| s + e);
                let lse = max + sum.ln();
                *loss = lse - mult * x[t];
                let inv = E::one() / sum;
                for d in dl.iter_mut() {
                    *d = grad_coef * (*d * inv);
                }
                dl[t] -= grad_coef;
            }
        });
    losses
}

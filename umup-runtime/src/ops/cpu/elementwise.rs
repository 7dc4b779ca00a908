//! Elementwise kernels: SwiGLU, linear combinations (residual adds), embedding gather/scatter.

use rayon::prelude::*;

use super::{Real, CHUNK};

#[inline(always)]
fn sigmoid<E: Real>(z: E) -> E {
    E::one() / (E::one() + (-z).exp_v())
}

/// SwiGLU forward (spec §4.10): `out = scale · x · g · σ(mult·g)`.
pub fn swiglu_fwd<E: Real>(x: &[E], g: &[E], mult: E, scale: E, out: &mut [E]) {
    assert!(
        x.len() == g.len() && x.len() == out.len(),
        "swiglu_fwd lengths"
    );
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = scale * x * g * sigmoid(mult * g);
            }
        });
}

/// SwiGLU backward: `dx = scale·dout·g·σ(m g)`,
/// `dg = scale·dout·x·(σ(m g) + m·g·σ(m g)·(1 − σ(m g)))` (both overwritten).
pub fn swiglu_bwd<E: Real>(
    x: &[E],
    g: &[E],
    dout: &[E],
    mult: E,
    scale: E,
    dx: &mut [E],
    dg: &mut [E],
) {
    let n = x.len();
    assert!(
        g.len() == n && dout.len() == n && dx.len() == n && dg.len() == n,
        "swiglu_bwd lengths"
    );
    dx.par_chunks_mut(CHUNK)
        .zip(dg.par_chunks_mut(CHUNK))
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|(((dx, dg), (x, g)), dout)| {
            for i in 0..dx.len() {
                let s = sigmoid(mult * g[i]);
                let d = scale * dout[i];
                dx[i] = d * g[i] * s;
                dg[i] = d * x[i] * (s + mult * g[i] * s * (E::one() - s));
            }
        });
}

/// [`swiglu_bwd`] adding to `dx` and `dg` (straight into gradient buffers).
pub fn swiglu_bwd_acc<E: Real>(
    x: &[E],
    g: &[E],
    dout: &[E],
    mult: E,
    scale: E,
    dx: &mut [E],
    dg: &mut [E],
) {
    let n = x.len();
    assert!(
        g.len() == n && dout.len() == n && dx.len() == n && dg.len() == n,
        "swiglu_bwd lengths"
    );
    dx.par_chunks_mut(CHUNK)
        .zip(dg.par_chunks_mut(CHUNK))
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|(((dx, dg), (x, g)), dout)| {
            for i in 0..dx.len() {
                let s = sigmoid(mult * g[i]);
                let d = scale * dout[i];
                dx[i] += d * g[i] * s;
                dg[i] += d * x[i] * (s + mult * g[i] * s * (E::one() - s));
            }
        });
}

/// `out = a·f + b·x` (the residual add `a·branch + b·skip`, spec §3.1). With `b = 0`, `x` is
/// not read.
pub fn lincomb<E: Real>(out: &mut [E], a: E, f: &[E], b: E, x: &[E]) {
    assert!(
        f.len() == out.len() && x.len() == out.len(),
        "lincomb lengths"
    );
    out.par_chunks_mut(CHUNK)
        .zip(f.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(o, (f, x))| {
            if b == E::zero() {
                for (o, &f) in o.iter_mut().zip(f) {
                    *o = a * f;
                }
            } else {
                for ((o, &f), &x) in o.iter_mut().zip(f).zip(x) {
                    *o = a * f + b * x;
                }
            }
        });
}

/// Embedding forward: row `i` of `out` is row `ids[i]` of `table` (`width` columns).
pub fn embedding_fwd<E: Real>(table: &[E], width: usize, ids: &[usize], out: &mut [E]) {
    assert_eq!(out.len(), ids.len() * width, "embedding_fwd lengths");
    for (row, &id) in out.chunks_mut(width).zip(ids) {
        row.copy_from_slice(&table[id * width..(id + 1) * width]);
    }
}

/// Embedding backward: `dtable[ids[i]] += scale · dout[i]` (repeated ids accumulate, in order).
pub fn embedding_bwd<E: Real>(dout: &[E], width: usize, ids: &[usize], scale: E, dtable: &mut [E]) {
    assert_eq!(dout.len(), ids.len() * width, "embedding_bwd lengths");
    for (row, &id) in dout.chunks(width).zip(ids) {
        for (t, &g) in dtable[id * width..(id + 1) * width].iter_mut().zip(row) {
            *t += scale * g;
        }
    }
}

/// The transpose of a row-major `rows × cols` matrix (a new row-major `cols × rows` matrix),
/// in cache-sized tiles, rows of the result in parallel.
pub fn transpose<E: Real>(a: &[E], rows: usize, cols: usize) -> Vec<E> {
    let mut out = vec![E::zero(); rows * cols];
    transpose_into(a, rows, cols, &mut out);
    out
}

/// [`transpose`] into `out` (every element overwritten).
pub fn transpose_into<E: Real>(a: &[E], rows: usize, cols: usize, out: &mut [E]) {
    assert!(
        a.len() == rows * cols && out.len() == a.len(),
        "transpose length"
    );
    const TILE: usize = 32;
    if rows == 0 || cols == 0 {
        return;
    }
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(tc, block)| {
            let c0 = tc * TILE;
            let c1 = (c0 + TILE).min(cols);
            for r0 in (0..rows).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    for c in c0..c1 {
                        block[(c - c0) * rows + r] = a[r * cols + c];
                    }
                }
            }
        });
}

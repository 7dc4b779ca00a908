//! Elementwise kernels: SwiGLU, GELU, SiLU, embedding gather/scatter.

use rayon::prelude::*;

use super::{simd, Real, CHUNK};

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
            simd(
                #[inline(always)]
                || {
                    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                        *o = scale * x * g * sigmoid(mult * g);
                    }
                },
            )
        });
}

/// SwiGLU backward, added to `dx` and `dg` (straight into gradient buffers):
/// `dx += scale·dout·g·σ(m g)`, `dg += scale·dout·x·(σ(m g) + m·g·σ(m g)·(1 − σ(m g)))`.
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
            simd(
                #[inline(always)]
                || {
                    for ((((dx, dg), &x), &g), &dout) in
                        dx.iter_mut().zip(dg.iter_mut()).zip(x).zip(g).zip(dout)
                    {
                        let (a, b) = swiglu_grads(x, g, dout, mult, scale);
                        *dx += a;
                        *dg += b;
                    }
                },
            )
        });
}

/// SwiGLU backward in place: `x` becomes `dx` and `g` becomes `dg` (the formulas of
/// [`swiglu_bwd_acc`], for a kernel that owns both inputs and needs them no more).
pub fn swiglu_bwd_in_place<E: Real>(x: &mut [E], g: &mut [E], dout: &[E], mult: E, scale: E) {
    let n = x.len();
    assert!(g.len() == n && dout.len() == n, "swiglu_bwd lengths");
    x.par_chunks_mut(CHUNK)
        .zip(g.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((x, g), dout)| {
            simd(
                #[inline(always)]
                || {
                    for ((x, g), &dout) in x.iter_mut().zip(g.iter_mut()).zip(dout) {
                        (*x, *g) = swiglu_grads(*x, *g, dout, mult, scale);
                    }
                },
            )
        });
}

/// One element's SwiGLU gradients `(dx, dg)`: `dx = scale·dout·g·σ(m g)`,
/// `dg = scale·dout·x·(σ(m g) + m·g·σ(m g)·(1 − σ(m g)))`.
#[inline(always)]
fn swiglu_grads<E: Real>(x: E, g: E, dout: E, mult: E, scale: E) -> (E, E) {
    let s = sigmoid(mult * g);
    let d = scale * dout;
    (d * g * s, d * x * (s + mult * g * s * (E::one() - s)))
}

/// GELU forward (spec §4.10), exact erf form: `out = scale · gelu(mult·x)` with
/// `gelu(z) = z·Φ(z)`, `Φ(z) = (1 + erf(z/√2))/2`.
pub fn gelu_fwd<E: Real>(x: &[E], mult: E, scale: E, out: &mut [E]) {
    assert_eq!(x.len(), out.len(), "gelu_fwd lengths");
    let r = E::of(std::f64::consts::FRAC_1_SQRT_2);
    let half = E::of(0.5);
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            simd(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(x) {
                        let z = mult * x;
                        *o = scale * z * half * (E::one() + (z * r).erf_v());
                    }
                },
            )
        });
}

/// GELU backward, added to `dx`: `dx += scale · gelu′(mult·x) · dout` with
/// `gelu′(z) = Φ(z) + z·φ(z)`, `φ(z) = e^(−z²/2)/√(2π)`.
pub fn gelu_bwd_acc<E: Real>(x: &[E], dout: &[E], mult: E, scale: E, dx: &mut [E]) {
    assert!(
        x.len() == dout.len() && x.len() == dx.len(),
        "gelu_bwd lengths"
    );
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| {
            simd(
                #[inline(always)]
                || {
                    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                        *dx += gelu_grad(x, g, mult, scale);
                    }
                },
            )
        });
}

/// GELU backward in place: `x` becomes `dx` (the formula of [`gelu_bwd_acc`], for a kernel that
/// owns `x` and needs it no more).
pub fn gelu_bwd_in_place<E: Real>(x: &mut [E], dout: &[E], mult: E, scale: E) {
    assert_eq!(x.len(), dout.len(), "gelu_bwd lengths");
    x.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .for_each(|(x, g)| {
            simd(
                #[inline(always)]
                || {
                    for (x, &g) in x.iter_mut().zip(g) {
                        *x = gelu_grad(*x, g, mult, scale);
                    }
                },
            )
        });
}

/// One element's GELU gradient: `scale · (Φ(z) + z·φ(z)) · dout`, `z = mult·x`.
#[inline(always)]
fn gelu_grad<E: Real>(x: E, dout: E, mult: E, scale: E) -> E {
    let r = E::of(std::f64::consts::FRAC_1_SQRT_2);
    let c = E::of(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let half = E::of(0.5);
    let z = mult * x;
    let phi = half * (E::one() + (z * r).erf_v());
    let density = c * (-half * z * z).exp_v();
    scale * (phi + z * density) * dout
}

/// SiLU forward (spec §4.10): `out = scale · x·σ(mult·x)`.
pub fn silu_fwd<E: Real>(x: &[E], mult: E, scale: E, out: &mut [E]) {
    assert_eq!(x.len(), out.len(), "silu_fwd lengths");
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            simd(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(x) {
                        *o = scale * x * sigmoid(mult * x);
                    }
                },
            )
        });
}

/// SiLU backward, added to `dx`: `dx += scale · (σ(m x) + m·x·σ(m x)·(1 − σ(m x))) · dout`.
pub fn silu_bwd_acc<E: Real>(x: &[E], dout: &[E], mult: E, scale: E, dx: &mut [E]) {
    assert!(
        x.len() == dout.len() && x.len() == dx.len(),
        "silu_bwd lengths"
    );
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| {
            simd(
                #[inline(always)]
                || {
                    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                        let s = sigmoid(mult * x);
                        *dx += scale * (s + mult * x * s * (E::one() - s)) * g;
                    }
                },
            )
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

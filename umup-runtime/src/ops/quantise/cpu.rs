//! The `Cpu` kernel of simulated precision: rounding inside the op's own buffer, in parallel
//! chunks, each chunk with its own stochastic-rounding stream derived from the call's seed (so the
//! result does not depend on how rayon schedules the chunks).

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

use super::Quantise;
use crate::error::{DeviceResultExt, Result};
use crate::formats::QuantStats;
use crate::ops::cpu::{Real, CHUNK};
use crate::ops::kernels::{self, accumulate, Buf};
use crate::profile::{time, Part};

/// Rounds `data` through `q.format` in place, in parallel chunks of [`CHUNK`] elements.
///
/// The FP8 formats take a branch-free f32 path ([`round_fp8`]) with a counter-based uniform draw
/// per element (SplitMix64 of the seed and the element's index, 24 bits), so the result depends
/// only on the seed and the data. bf16 and f16 take [`crate::formats::Format::quantise_slice`]
/// per chunk, chunk `i` drawing from `StdRng::seed_from_u64(seed ⊕ i·φ)`.
pub(crate) fn round<E: Real>(data: &mut [E], q: Quantise, seed: u64) -> QuantStats {
    time(Part::Quantise, || {
        data.par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(i, chunk)| match Fp8::of(q) {
                Some(f) => f.round_chunk(chunk, seed, (i * CHUNK) as u64),
                None => {
                    let mut rng = StdRng::seed_from_u64(
                        seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    let mut f: Vec<f32> = chunk
                        .iter()
                        .map(|v| v.to_f32().unwrap_or(f32::NAN))
                        .collect();
                    let st = q.format.quantise_slice(&mut f, q.rounding, &mut rng);
                    for (v, r) in chunk.iter_mut().zip(f) {
                        *v = E::of(f64::from(r));
                    }
                    st
                }
            })
            .reduce(QuantStats::default, |mut a, b| {
                a.merge(b);
                a
            })
    })
}

/// An FP8 format's rounding constants, for [`round_fp8`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fp8 {
    max: f32,
    emin: i32,
    mantissa: i32,
    toward_zero: bool,
    stochastic: bool,
}

impl Fp8 {
    /// The constants of `q`'s format, or `None` for bf16/f16 (their ulps leave f32's normal
    /// range, so they take the generic path).
    pub(crate) fn of(q: Quantise) -> Option<Self> {
        use crate::formats::{Format, Rounding};
        matches!(
            q.format,
            Format::E4m3fn | Format::E5m2 | Format::GcE4m3 | Format::GcE5m2
        )
        .then(|| Fp8 {
            max: q.format.max() as f32,
            emin: q.format.min_normal_exp(),
            mantissa: q.format.mantissa_bits(),
            toward_zero: q.format.ties_toward_zero(),
            stochastic: q.rounding == Rounding::Stochastic,
        })
    }

    /// Rounds a chunk whose first element has index `first` in the call. Runs under `pulp`'s
    /// runtime dispatch, so the branch-free loop is compiled for AVX2/AVX-512 where the CPU has
    /// them.
    fn round_chunk<E: Real>(self, chunk: &mut [E], seed: u64, first: u64) -> QuantStats {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                let (mut overflow, mut underflow) = (0u64, 0u64);
                for (j, v) in chunk.iter_mut().enumerate() {
                    let x = v.to_f32().unwrap_or(f32::NAN);
                    let u = uniform(seed, first + j as u64);
                    let y = self.round_lane(x, u);
                    overflow += u64::from(x.abs() > self.max);
                    underflow += u64::from(x.abs() <= self.max && x != 0.0 && y == 0.0);
                    *v = E::of(f64::from(y));
                }
                QuantStats {
                    total: chunk.len() as u64,
                    overflow,
                    underflow,
                }
            },
        )
    }

    /// [`crate::formats::Format`]'s `round_by` in f32, branch-free, with the same exact steps:
    /// clamp to `max`, `ulp = 2^(max(floor(log2|x|), emin) − M)` from the exponent bits,
    /// `|x|/ulp = k + r` (exact; `k < 2^(M+1)`, so an integer conversion floors it), `k + 1` when
    /// rounding up (stochastic: iff `u < r`; nearest: `r > ½`, or `r = ½` with ties to even unless
    /// the format ties toward zero), and the sign restored. `NaN` passes through.
    #[inline(always)]
    fn round_lane(self, x: f32, u: f32) -> f32 {
        let a = x.abs().min(self.max);
        let exp = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
        let e = exp.max(self.emin);
        // e − M ≥ −17 for every FP8 format: a normal f32 power of two.
        let ulp = f32::from_bits(((e - self.mantissa + 127) as u32) << 23);
        let q = a / ulp;
        let k = q as i32;
        let r = q - k as f32;
        let up = if self.stochastic {
            u < r
        } else {
            r > 0.5 || (r == 0.5 && !self.toward_zero && k & 1 == 1)
        };
        let y = ((k + i32::from(up)) as f32 * ulp).copysign(x);
        if x.is_nan() {
            x
        } else {
            y
        }
    }
}

/// A uniform draw in `[0, 1)` (24 bits) for element `index` of a call seeded `seed`: the
/// SplitMix64 finaliser of `seed + index·φ`.
#[inline(always)]
fn uniform(seed: u64, index: u64) -> f32 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// [`crate::formats::Format::quantise`] (`u = None`) or
/// [`crate::formats::Format::quantise_stochastic`] (`u = Some(draw)`) of an f32, in f32.
#[cfg(test)]
fn round_fp8(x: f32, f: Fp8, u: Option<f32>) -> f32 {
    let stochastic = u.is_some();
    Fp8 { stochastic, ..f }.round_lane(x, u.unwrap_or(0.0))
}

/// An op's output gradient `g` as its backward reads it, rounded by `bwd` (the counts added to
/// `stats`), and the gradient to hand to [`kernels::done`]: rounded in place, unless
/// intermediate gradients are kept — then the kept one stays unrounded and the rounding works on
/// a copy.
pub(crate) fn rounded_gradient<E: Real>(
    g: Vec<E>,
    bwd: Option<Quantise>,
    stats: &Mutex<QuantStats>,
) -> (Vec<E>, Option<Vec<E>>) {
    let Some(q) = bwd else {
        return (g, None);
    };
    let (mut rounded, kept) = if kernels::keeping() {
        (g.clone(), Some(g))
    } else {
        (g, None)
    };
    let counts = round(&mut rounded, q, q.seed);
    if let Ok(mut s) = stats.lock() {
        s.merge(counts);
    }
    (rounded, kept)
}

/// `q.forward`: the value rounded, the gradient straight through; otherwise the value as is and
/// the gradient rounded (its counts go to `stats`).
pub(crate) fn quantise<S: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    q: Quantise,
    stats: Arc<Mutex<QuantStats>>,
) -> Result<(Tensor<S, E, Cpu, T>, QuantStats)> {
    let (x, mut tape) = kernels::input(x).dev()?;
    let dev = x.device().clone();
    let shape = *x.shape();
    let mut y = Buf::of(&x).dev()?;
    let st = if q.forward {
        round(&mut y, q, q.seed)
    } else {
        QuantStats::default()
    };
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let taken = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let bwd = (!q.forward).then_some(q);
            let (gy, kept) = rounded_gradient(taken, bwd, &stats);
            accumulate!(grads, xg, &gy, E::one());
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, kept.unwrap_or(gy));
            Ok(())
        });
    }
    Ok((y.put_tape(tape), st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{Format, Rounding};

    /// The f32 path equals the reference-exact f64 rounding of `formats`, nearest and stochastic
    /// (for the same draw), over normal, subnormal, tie, saturating and special values.
    #[test]
    fn fp8_fast_path_matches_the_format_rounding() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-30,
            -1e-45,
        ];
        let mut v = 1e-7f32;
        while v < 1e6 {
            xs.extend([v, -v, v * 1.0625, v * 1.125, v * 1.1875]);
            v *= 1.37;
        }
        for k in 0..512 {
            xs.push(k as f32 * 2f32.powi(-12));
            xs.push(k as f32 * 0.25 + 0.125);
        }
        for format in Format::ALL {
            for rounding in [Rounding::Nearest, Rounding::Stochastic] {
                let q = Quantise {
                    format,
                    rounding,
                    seed: 7,
                    forward: true,
                };
                let f = Fp8::of(q).unwrap();
                for (i, &x) in xs.iter().enumerate() {
                    let u = uniform(7, i as u64);
                    let (fast, exact) = match rounding {
                        Rounding::Nearest => (round_fp8(x, f, None), format.quantise(f64::from(x))),
                        Rounding::Stochastic => (
                            round_fp8(x, f, Some(u)),
                            format.quantise_stochastic(f64::from(x), f64::from(u)),
                        ),
                    };
                    assert!(
                        (fast.is_nan() && exact.is_nan()) || f64::from(fast) == exact,
                        "{format} {rounding:?} {x:e}: {fast:e} vs {exact:e}"
                    );
                }
            }
        }
        assert!(Fp8::of(Quantise {
            format: Format::Bf16,
            rounding: Rounding::Nearest,
            seed: 0,
            forward: true
        })
        .is_none());
    }

    #[test]
    fn uniform_draws_are_in_range_and_spread() {
        let n = 100_000;
        let draws: Vec<f32> = (0..n).map(|i| uniform(3, i)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().map(|&u| f64::from(u)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert_ne!(uniform(3, 0), uniform(4, 0));
    }
}

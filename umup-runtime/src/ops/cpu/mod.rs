//! CPU kernels on slices: the compute of the `Cpu` tape ops in each op's `cpu.rs` (see
//! [`super::Backend`]).
//!
//! Each kernel computes one op's forward or backward pass — scale factors included — in a single
//! pass over memory, in parallel on rayon's pool; through their tape ops they are tested against
//! the device-generic composition of the same op (`tests/kernels.rs`: f32 to 1e-5, f64 to
//! 1e-12). Matmuls go to the `gemm` crate (0.19, with its AVX-512 kernels where the CPU has them)
//! with the u-μP scale folded into the matmul's own `alpha`, so a scale never costs a pass of its
//! own.
//!
//! Layouts are row-major: activations are `[rows, features]`; attention inputs are
//! `[batch·seq, heads·d_head]` (the output of a linear layer, no permute) or
//! `[batch, heads, seq, d_head]` ([`AttnLayout`]), probabilities `[batch, heads, seq, seq]`. The
//! kernels run for `f32` and `f64` ([`Real`]).
//!
//! Preconditions (lengths) are asserted: the callers (umup's ops and models) check user shapes
//! first, so a failed assert is a bug in umup, never a consequence of user input.

mod attention;
mod elementwise;
mod gemm;
mod rowwise;

pub use attention::{attention_bwd_into, attention_fwd, AttnLayout, AttnShape};
pub use elementwise::{
    embedding_bwd, embedding_fwd, gelu_bwd_acc, gelu_bwd_in_place, gelu_fwd, silu_bwd_acc,
    silu_fwd, swiglu_bwd_acc, swiglu_bwd_in_place, swiglu_fwd,
};
pub use gemm::{gemm, Threads, View, ViewMut};
pub use rowwise::{
    cross_entropy_fwd_bwd, norm_bwd, norm_fwd, norm_param_grads, softmax_bwd_acc, softmax_fwd,
};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types of the kernels: `f32` and `f64`.
pub trait Real:
    dfdx::prelude::Dtype + num_traits::Float + Send + Sync + std::iter::Sum + sealed::Sealed
{
    /// Converts from f64 (rounding to nearest for f32).
    fn of(v: f64) -> Self;

    /// The error function `erf(x)`: for f32 a branch-free, vectorisable form (Abramowitz &
    /// Stegun 7.1.26 on [`Real::exp_v`]; absolute error below 5·10⁻⁷); for f64 libm's `erf`.
    fn erf_v(self) -> Self;

    /// `eˣ` in a form the compiler can vectorise: for f32 a branch-free Cephes-style polynomial
    /// (relative error below 2·10⁻⁷ on `[-87, 88]`, inputs clamped to that range); for f64 the
    /// standard library's `exp`.
    fn exp_v(self) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }

    #[inline(always)]
    fn erf_v(self) -> Self {
        // erf(|x|) = 1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵)·e^(−x²), t = 1/(1 + p|x|).
        let a = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t;
        let y = 1.0 - poly * (-a * a).exp_v();
        y.copysign(self)
    }

    #[inline(always)]
    fn exp_v(self) -> Self {
        // eˣ = 2ⁿ·eʳ with n = round(x·log₂e), r = x − n·ln 2 (ln 2 split in two for accuracy),
        // eʳ by its degree-7 minimax polynomial on [−ln2/2, ln2/2] (Cephes `expf`).
        let x = self.clamp(-87.3, 88.3);
        // round(x·log₂e) by the 1.5·2²³ trick (exact for |t| < 2²²): plain SSE2 arithmetic,
        // where `floor` would be a libm call on the baseline x86-64 target and block
        // vectorisation.
        const ROUND: f32 = 12_582_912.0;
        let t = x * std::f32::consts::LOG2_E + ROUND;
        let n = t - ROUND;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 0.166_666_65)
            * r
            + 0.5;
        let er = p * r * r + r + 1.0;
        // 2ⁿ from its exponent bits: n ∈ [−126, 127] after the clamp, a normal number. `t` lies
        // in [2²³, 2²⁴) with an ulp of 1, so its bits are those of 1.5·2²³ plus n: integer
        // arithmetic on the bits gives n + 127 without a float-to-int cast (Rust's saturating
        // cast does not vectorise).
        f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23) * er
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }

    fn erf_v(self) -> Self {
        libm::erf(self)
    }

    #[inline(always)]
    fn exp_v(self) -> Self {
        self.exp()
    }
}

/// Runs `f` compiled for the widest SIMD the CPU has (AVX-512 or AVX2 + FMA on x86-64, chosen at
/// run time by `pulp`'s dispatch, as `gemm` and the FP8 rounding do), so elementwise loops
/// vectorise without a `target-cpu` build flag. Pass an `#[inline(always)]` closure and keep what
/// it calls `#[inline(always)]` or generic, so its body is compiled inside the dispatched
/// function.
///
/// Values are bit-identical to the baseline build: Rust never contracts `a·b + c` into an FMA
/// and never reassociates a float sum, so vectorising changes the speed of a loop, not its
/// results (`tests/kernels.rs` and the conformance fixtures run through these loops). For the
/// same reason a plain sum over a row does not vectorise: row sums go through [`sum_by2`].
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Partial sums of a row reduction: one AVX-512 register of f32 (two of f64).
const LANES: usize = 16;

/// `Σᵢ f(a[i], b[i])` over the common length, vectorisable: element `i` goes to partial sum
/// `i mod 16`, the 16 partial sums are added pairwise, then the tail (`len mod 16` elements) in
/// order. A sequential sum is one dependent add per element and does not vectorise (Rust keeps
/// float sums in order); this order is fixed, so results are deterministic, and its rounding
/// error grows as `len/16 + 4` roundings instead of `len`.
#[inline(always)]
pub(crate) fn sum_by2<E: Real>(a: &[E], b: &[E], f: impl Fn(E, E) -> E) -> E {
    let n = a.len().min(b.len());
    let (a, b) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let (ta, tb) = (a.remainder(), b.remainder());
    let mut acc = [E::zero(); LANES];
    for (a, b) in a.zip(b) {
        for l in 0..LANES {
            acc[l] += f(a[l], b[l]);
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    ta.iter().zip(tb).fold(acc[0], |s, (&a, &b)| s + f(a, b))
}

/// `Σᵢ f(a[i])`, in [`sum_by2`]'s order.
#[inline(always)]
pub(crate) fn sum_by<E: Real>(a: &[E], f: impl Fn(E) -> E) -> E {
    sum_by2(a, a, |x, _| f(x))
}

/// `maxᵢ f(a[i])` (`-∞` for an empty row), vectorisable: 16 running maxima, then their maximum.
/// The maximum of numbers does not depend on the order (NaN inputs are skipped, as by
/// `f32::max`).
#[inline(always)]
pub(crate) fn max_by<E: Real>(a: &[E], f: impl Fn(E) -> E) -> E {
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut acc = [E::neg_infinity(); LANES];
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(f(c[l]));
        }
    }
    let m = acc.iter().fold(E::neg_infinity(), |m, &x| m.max(x));
    tail.iter().fold(m, |m, &x| m.max(f(x)))
}

/// Elements per parallel task of an elementwise kernel (smaller arrays run on one thread).
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows per parallel task of a row-wise kernel with rows of `width` elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::Real;

    #[test]
    fn row_reductions_match_their_definitions() {
        use super::{max_by, sum_by, sum_by2};
        // Integers are exact in f64 in any order: the sums must be exact, for every length
        // around the 16-lane chunks (empty, tail only, whole chunks, chunks and a tail).
        for n in [0usize, 1, 5, 15, 16, 17, 31, 32, 33, 100, 256, 1000] {
            let a: Vec<f64> = (1..=n).map(|i| i as f64).collect();
            let b: Vec<f64> = (1..=n).map(|i| (i % 7) as f64 - 3.0).collect();
            let nn = n as f64;
            assert_eq!(sum_by(&a, |x| x), nn * (nn + 1.0) / 2.0, "n = {n}");
            assert_eq!(
                sum_by(&a, |x| x * x),
                nn * (nn + 1.0) * (2.0 * nn + 1.0) / 6.0
            );
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(sum_by2(&a, &b, |x, y| x * y), dot);
            // The shorter slice bounds the sum.
            assert_eq!(
                sum_by2(&a, &b[..n / 2], |x, _| x),
                sum_by(&a[..n / 2], |x| x)
            );
            // Maximum at every position (also in the tail), and of a mapped row.
            for at in 0..n {
                let mut c = vec![-1.0f64; n];
                c[at] = 2.0;
                assert_eq!(max_by(&c, |x| x), 2.0);
                // −3·x is largest at the −1 entries, when there are any.
                assert_eq!(max_by(&c, |x| -3.0 * x), if n > 1 { 3.0 } else { -6.0 });
            }
        }
        assert_eq!(max_by::<f32>(&[], |x| x), f32::NEG_INFINITY);
        // f32: the 16 partial sums are more accurate than one running sum.
        let v = vec![0.1f32; 4096];
        let exact = 4096.0 * 0.1f32 as f64;
        let sequential = v.iter().sum::<f32>() as f64;
        let lanes = sum_by(&v, |x| x) as f64;
        assert!((lanes - exact).abs() <= (sequential - exact).abs());
        // 2.4e-6 here, against 3.9e-5 for the running sum.
        assert!((lanes - exact).abs() / exact < 5e-6);
    }

    #[test]
    fn vectorisable_erf_is_accurate() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = libm::erf(x as f64);
            worst = worst.max((x.erf_v() as f64 - want).abs());
            x += 0.00731;
        }
        assert!(worst < 5e-7, "max absolute error {worst:e}");
        assert_eq!(0f32.erf_v(), 0.0);
        assert_eq!(100f32.erf_v(), 1.0);
        assert_eq!((-100f32).erf_v(), -1.0);
        assert!(f32::NAN.erf_v().is_nan());
    }

    #[test]
    fn vectorisable_exp_is_accurate_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = x.exp_v() as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "max relative error {worst:e}");
        // Far outside the range: clamped, finite, monotone at the ends.
        assert!((-1000f32).exp_v() < 1e-37 && (-1000f32).exp_v() >= 0.0);
        assert!(1000f32.exp_v().is_finite() && 1000f32.exp_v() > 1e38);
        assert!(f32::NAN.exp_v().is_nan());
        assert_eq!(0f32.exp_v(), 1.0);
    }
}

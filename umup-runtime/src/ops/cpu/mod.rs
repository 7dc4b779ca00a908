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
    embedding_bwd, embedding_fwd, gelu_bwd_acc, gelu_fwd, silu_bwd_acc, silu_fwd, swiglu_bwd_acc,
    swiglu_fwd,
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
/// results (`tests/kernels.rs` and the conformance fixtures run through these loops).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
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

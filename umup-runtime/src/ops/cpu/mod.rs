//! Fused CPU kernels on slices: the fast path that [`Cpu`](dfdx::tensor::Cpu) training steps run.
//!
//! Each kernel computes one op's forward or backward pass — scale factors included — in a single
//! pass over memory, in parallel on rayon's pool, and is tested against the device-generic dfdx
//! composition of the same op (`tests/fused.rs`) to 1e-5 relative in f32. Matmuls go to the
//! `gemm` crate (0.19, with its AVX-512 kernels where the CPU has them) with the u-μP scale folded into the matmul's own
//! `alpha`, so a scale never costs a pass of its own.
//!
//! Layouts are row-major: activations are `[rows, features]`; attention inputs are
//! `[batch·seq, heads·d_head]` (the output of a linear layer, no permute), probabilities
//! `[batch, heads, seq, seq]`. The kernels run for `f32` and `f64` ([`Real`]).
//!
//! Preconditions (lengths) are asserted: the callers (umup's ops and models) check user shapes
//! first, so a failed assert is a bug in umup, never a consequence of user input.

mod attention;
mod elementwise;
mod gemm;
mod rowwise;

pub use attention::{attention_bwd, attention_fwd, AttnShape};
pub use elementwise::{embedding_bwd, embedding_fwd, lincomb, swiglu_bwd, swiglu_fwd, transpose};
pub use gemm::{gemm, Threads, View, ViewMut};
pub use rowwise::{cross_entropy_fwd_bwd, rms_norm_bwd, rms_norm_fwd};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types of the fused kernels: `f32` and `f64`.
pub trait Real:
    dfdx::prelude::Dtype + num_traits::Float + Send + Sync + std::iter::Sum + sealed::Sealed
{
    /// Converts from f64 (rounding to nearest for f32).
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// Elements per parallel task of an elementwise kernel (smaller arrays run on one thread).
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows per parallel task of a row-wise kernel with rows of `width` elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

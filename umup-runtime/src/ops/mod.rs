//! Unit-scaled ops on dfdx tensors (spec §4).
//!
//! Every op is generic over the dtype `E` and the device `D` ([`Backend`]), takes its activation
//! input with whatever tape it carries (`NoneTape` for inference, `OwnedTape` for training), and
//! takes parameters by reference (they join the activation's tape). Feature dims may be
//! `Const<N>` or runtime `usize`; batch and sequence dims are usually runtime `usize`.
//! Row-wise ops take `[rows, features]`: flatten leading dims first with `reshape_like`
//! (free for contiguous tensors, gradients are shared).
//!
//! Each op checks its inputs, computes its scales through [`crate::scales`] and calls one kernel
//! method of [`Backend`] with plain numbers: on `Cpu` (f32, f64) a tape op built on the slice
//! kernels of [`cpu`] with every scale folded into work the kernel does anyway (a matmul's
//! `alpha`, a pass it already makes); on any other device the op's composition of public dfdx
//! ops ([`generic`]). Each op lives in its own module (`mod.rs`: semantics and scales; `cpu.rs`:
//! the `Cpu` kernel).
//! Runtime dims are checked up front: a mismatch is an [`crate::Error::ShapeMismatch`], not a panic.

pub(crate) mod activation;
pub(crate) mod attention;
mod backend;
pub(crate) mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub(crate) mod embedding;
mod kernels;
pub(crate) mod linear;
pub(crate) mod loss;
pub(crate) mod mlp;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod quantise;
mod residual;
pub(crate) mod scale;
mod sum;

pub use activation::{dropout, gelu, silu, silu_glu, softmax};
pub use attention::{multi_head_attention, scaled_dot_product_attention};
pub use conv::{conv1d, conv1d_unbatched, Conv1dGeometry, Conv1dOptions};
pub use embedding::{check_ids, embedding};
pub use kernels::keep_intermediate_gradients;
pub use linear::{linear, linear_readout, matmul, matmul_batched};
pub use loss::{check_targets, cross_entropy, cross_entropy_plain, mse_loss, Reduction};
pub use mlp::{gelu_linear, gelu_mlp, silu_glu_linear, swiglu_mlp, LayerRef, LayerTaped};
pub use norm::{layer_norm, rms_norm};
pub use pool::mean_pool;
pub use quantise::{MatmulQuantiser, Quantise};
pub use residual::{residual_add, residual_apply, residual_split};
pub use scale::{scale_bwd, scale_fwd, scale_grad, scale_grad_generic, Backend};
pub use sum::{add, add_broadcast};

/// The device-generic compositions behind [`Backend`]'s kernel methods: what any dfdx device
/// runs (`Cuda` does), built from public dfdx tensor ops, and what the `Cpu` kernels are tested
/// against. They take the scales as plain numbers, exactly as the kernel methods do.
pub mod generic {
    pub use super::activation::gelu_generic as gelu;
    pub use super::activation::silu_generic as silu;
    pub use super::activation::silu_glu_generic as silu_glu;
    pub use super::activation::softmax_generic as softmax;
    pub use super::attention::attention_generic as attention;
    pub use super::attention::attention_rows_generic as attention_rows;
    pub use super::conv::conv1d_generic as conv1d;
    pub use super::embedding::embedding_generic as embedding;
    pub use super::linear::linear_generic as linear;
    pub use super::linear::matmul_generic as matmul;
    pub use super::loss::cross_entropy_generic as cross_entropy;
    pub use super::mlp::gelu_linear_generic as gelu_linear;
    pub use super::mlp::gelu_mlp_generic as gelu_mlp;
    pub use super::mlp::silu_glu_linear_generic as silu_glu_linear;
    pub use super::mlp::swiglu_mlp_generic as swiglu_mlp;
    pub use super::norm::layer_norm_generic as layer_norm;
    pub use super::norm::rms_norm_generic as rms_norm;
    pub use super::quantise::quantise_generic as quantise;
    pub use super::sum::add_generic as add;
}

use dfdx::prelude::*;

use crate::error::{Error, Result};

/// `Σ x` over every element, on any device and for any rank.
///
/// dfdx 0.13's `Cuda` reduction indexes past the end of a rank-0 shape (a panic in
/// `permute_for_reductions`), so a scalar is summed as a one-element vector; every other rank
/// goes straight to `try_sum`.
pub fn sum_all<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> std::result::Result<Tensor<(), E, D, T>, D::Err> {
    if S::NUM_DIMS == 0 {
        x.try_reshape_like(&(1usize,))?.try_sum::<(), _>()
    } else {
        x.try_sum::<(), _>()
    }
}

/// Whether `E` is a 16-bit dtype (f16): one whose range (max 65504) and 11-bit significand make
/// the generic compositions bound their intermediate values (norms) and reduce losses exactly.
pub(crate) fn low_precision<E: Dtype>() -> bool {
    std::mem::size_of::<E>() < 4
}

/// Checks that two runtime dims agree, naming the op and the dims in the error.
pub(crate) fn check_dim(op: &'static str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            detail: format!("{what}: expected {expected}, got {got}"),
        })
    }
}

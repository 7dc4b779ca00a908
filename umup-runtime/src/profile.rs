//! An opt-in wall-clock breakdown of the `Cpu` kernels by op (what `bench_step` prints). Off by
//! default; when off, a timed section costs one relaxed atomic load.
//!
//! Every `Cpu` kernel behind [`crate::ops::Backend`] times its forward and backward work under
//! its op's [`Part`], so the breakdown covers any model written with umup's ops.
//!
//! ```no_run
//! umup_runtime::profile::enable(true);
//! // ... training steps ...
//! for (part, seconds) in umup_runtime::profile::take() {
//!     println!("{part:?}: {seconds:.3} s");
//! }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// An op family of the `Cpu` kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Copying op inputs (activations and weights) into kernel buffers, and weight transposes.
    Copies,
    /// Embedding lookup and its gradient scatter.
    Embedding,
    /// RMSNorm and LayerNorm forward and backward.
    Norms,
    /// `linear`, `linear_readout` and `matmul`: forward, input and weight gradients.
    Matmuls,
    /// The attention core: `softmax(QKᵀ)·V` forward and backward.
    Attention,
    /// Activations (SwiGLU, GELU, SiLU, softmax) forward and backward.
    Activations,
    /// Adds and residual adds.
    Adds,
    /// Losses (cross entropy: the loss and the logits gradient).
    Loss,
    /// The scale primitive `scale_grad`.
    Scales,
    /// Simulated precision: rounding matmul inputs and output gradients.
    Quantise,
    /// The optimizer's update of every parameter ([`crate::optim::Optimizer::update`], on any
    /// device).
    Optimizer,
}

impl Part {
    /// Every part, in display order.
    pub const ALL: [Part; 11] = [
        Part::Copies,
        Part::Embedding,
        Part::Norms,
        Part::Matmuls,
        Part::Attention,
        Part::Activations,
        Part::Adds,
        Part::Loss,
        Part::Scales,
        Part::Quantise,
        Part::Optimizer,
    ];

    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Part::Copies => "input copies + weight transposes",
            Part::Embedding => "embedding (fwd + bwd)",
            Part::Norms => "norms (fwd + bwd)",
            Part::Matmuls => "linear / matmul (fwd, dx, dW)",
            Part::Attention => "attention core softmax(QKᵀ)V (fwd + bwd)",
            Part::Activations => "activations (fwd + bwd)",
            Part::Adds => "adds and residual adds (fwd + bwd)",
            Part::Loss => "cross entropy (loss + logits gradient)",
            Part::Scales => "scale_grad (fwd + bwd)",
            Part::Quantise => "simulated-precision rounding (fwd + bwd)",
            Part::Optimizer => "optimizer update",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Part::ALL.len()] = [const { AtomicU64::new(0) }; Part::ALL.len()];

/// Turns the recording on or off (process-wide).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The seconds recorded per part since the last call, and resets them.
pub fn take() -> Vec<(Part, f64)> {
    Part::ALL
        .iter()
        .map(|&p| {
            (
                p,
                NANOS[p as usize].swap(0, Ordering::Relaxed) as f64 * 1e-9,
            )
        })
        .collect()
}

/// Runs `f`, adding its wall-clock time to `part` when recording is on.
pub fn time<R>(part: Part, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS[part as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

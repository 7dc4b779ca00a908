//! An opt-in wall-clock breakdown of the fused CPU training step by part (what `bench_step`
//! prints). Off by default; when off, a timed section costs one relaxed atomic load.
//!
//! ```no_run
//! umup::profile::enable(true);
//! // ... training steps ...
//! for (part, seconds) in umup::profile::take() {
//!     println!("{part:?}: {seconds:.3} s");
//! }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A part of the fused step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Copying (and transposing) the weights into the step's buffers.
    Weights,
    /// Embedding lookup and its gradient scatter.
    Embedding,
    /// RMSNorm forward and backward.
    Norms,
    /// The attention projections' matmuls (q, k, v, o: forward, input and weight gradients).
    AttentionLinears,
    /// The attention core: `softmax(QKᵀ)·V` forward and backward.
    AttentionCore,
    /// The MLP's matmuls (up, gate, down: forward, input and weight gradients).
    MlpLinears,
    /// The SwiGLU core forward and backward.
    Swiglu,
    /// Residual adds.
    Residual,
    /// The readout matmuls and the cross entropy (forward and logits gradient).
    Loss,
}

impl Part {
    /// Every part, in display order.
    pub const ALL: [Part; 9] = [
        Part::Weights,
        Part::Embedding,
        Part::Norms,
        Part::AttentionLinears,
        Part::AttentionCore,
        Part::MlpLinears,
        Part::Swiglu,
        Part::Residual,
        Part::Loss,
    ];

    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Part::Weights => "weights copy + transpose",
            Part::Embedding => "embedding (fwd + bwd)",
            Part::Norms => "RMSNorms (fwd + bwd)",
            Part::AttentionLinears => "attention: q/k/v/o matmuls (fwd, dx, dW)",
            Part::AttentionCore => "attention: core softmax(QKᵀ)V (fwd + bwd)",
            Part::MlpLinears => "MLP: up/gate/down matmuls (fwd, dx, dW)",
            Part::Swiglu => "MLP: SwiGLU core (fwd + bwd)",
            Part::Residual => "residual adds",
            Part::Loss => "loss: readout matmuls + cross entropy",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

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
pub(crate) fn time<R>(part: Part, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS[part as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

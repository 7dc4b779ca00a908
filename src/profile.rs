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
    /// The linear layers' matmuls (forward, input and weight gradients), readout included.
    Linears,
    /// The attention core: `softmax(QKᵀ)·V` forward and backward.
    Attention,
    /// RMSNorm forward and backward.
    Norms,
    /// The SwiGLU core forward and backward.
    Swiglu,
    /// Residual adds.
    Residual,
    /// Cross entropy (forward and logits gradient).
    Loss,
}

impl Part {
    /// Every part, in display order.
    pub const ALL: [Part; 8] = [
        Part::Weights,
        Part::Embedding,
        Part::Linears,
        Part::Attention,
        Part::Norms,
        Part::Swiglu,
        Part::Residual,
        Part::Loss,
    ];
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

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

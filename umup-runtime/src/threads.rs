//! The threads the `Cpu` kernels run on.
//!
//! umup's `Cpu` kernels run their parallel loops (gemm's, the row-wise and elementwise kernels',
//! attention's) on rayon's global pool. By default that pool owns one thread per CPU, and a
//! kernel called from your thread hands each loop over to the pool and sleeps until it is done:
//! a hand-off and a wake-up per parallel loop, several hundred per training step. [`init`]
//! makes the calling thread one of the pool's threads instead (rayon's `use_current_thread`),
//! as OpenMP's master thread is in PyTorch: it runs its share of every loop itself, and the
//! hand-off is gone. On the 2-core machine of BENCHMARKS.md this took 3–7% off the training
//! step of `bench_step`'s LM and encoder.
//!
//! Call it once, first thing in `main` (before any umup op, or anything else that starts
//! rayon's pool), from the thread that runs the training loop; the thread stays in the pool
//! for the life of the process. Everything works without it, only slower.
//!
//! ```no_run
//! fn main() -> umup_runtime::Result<()> {
//!     let threads = umup_runtime::threads::init(0)?; // 0: RAYON_NUM_THREADS, or one per CPU
//!     println!("{threads} threads");
//!     // ... build the model and train on this thread
//!     Ok(())
//! }
//! ```

use crate::{Error, Result};

/// Builds rayon's global pool with the calling thread as its thread 0 and `threads` threads in
/// all (`0`: rayon's default, `RAYON_NUM_THREADS` or one per CPU); returns the pool's size.
///
/// Fails when the global pool already runs (something used rayon before this call), or when
/// the calling thread belongs to a rayon pool.
pub fn init(threads: usize) -> Result<usize> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global()
        .map_err(|e| {
            Error::Invalid(format!(
                "umup::threads::init: {e} (call it first thing in main, before any umup op)"
            ))
        })?;
    Ok(rayon::current_num_threads())
}

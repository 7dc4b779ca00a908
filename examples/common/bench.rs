//! The reference training-step configuration shared by the step benchmarks (`bench_step`,
//! `cuda_check`): vocab 256, width 256, MLP 1024 (SwiGLU), 4 layers, 4 heads, seq 128, batch 8.

use umup::models::LmOptions;

pub const V: usize = 256;
pub const D: usize = 256;
pub const F: usize = 1024;
pub const L: usize = 4;
pub const H: usize = 4;
pub const SEQ: usize = 128;
pub const BATCH: usize = 8;

/// A fixed batch of `batch` sequences of `SEQ` ids and their targets (deterministic, so every
/// model and device sees the same data).
pub fn batch_of(batch: usize) -> (Vec<usize>, Vec<usize>) {
    let n = batch * SEQ;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 11) % V).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i * 5 + 1) % V).collect();
    (ids, targets)
}

/// `H` heads, no RoPE.
pub fn opts() -> LmOptions {
    LmOptions {
        heads: H,
        rope: false,
    }
}

/// The median (upper median for an even count) of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The machine, for the tables: the CPU's model name, its widest SIMD (AVX-512, AVX2) and the
/// number of CPUs this process may use (Linux's `/proc/cpuinfo`; "unknown CPU" elsewhere).
#[allow(dead_code)] // `cuda_check` prints its GPU instead
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim());
    let simd = if info.contains(" avx512f") {
        " (AVX-512)"
    } else if info.contains(" avx2") {
        " (AVX2)"
    } else {
        ""
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{name}{simd}, {cpus} CPUs")
}

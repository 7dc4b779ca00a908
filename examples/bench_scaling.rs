//! How the u-μP training step's cost (on the `Cpu` kernels) grows with width and sequence length.
//!
//! ```text
//! cargo run --release --example bench_scaling              # 5 timed steps per configuration
//! cargo run --release --example bench_scaling -- 10        # more
//! ```
//!
//! Widths 128–1024 at seq 128 (4 layers, MLP 4×width, d_head 64, batch 8) and seq 128–512 at
//! width 256. Matmul work grows as width², attention as seq² — halved by the causal kernel,
//! which never computes the fully masked blocks. Prints a markdown table (BENCHMARKS.md).

use std::time::Instant;

use umup::dfdx::prelude::*;
use umup::models::Lm;
use umup::models::LmOptions;
use umup::nn::{Hyper, Umup};
use umup::optim::{OptimConfig, Optimizer};
use umup::profile::{self, Part};

const L: usize = 4;
const BATCH: usize = 8;
const V: usize = 256;

struct Row {
    width: usize,
    seq: usize,
    step_ms: f64,
    attention_ms: f64,
    linear_ms: f64,
    gflop: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run<const D: usize, const F: usize>(seq: usize, steps: usize) -> umup::Result<Row> {
    let dev = Cpu::seed_from_u64(0);
    dev.enable_cache();
    let mut m = Lm::<D, F, L, Umup>::build(&dev)?;
    let mut opt = Optimizer::for_table(
        OptimConfig::adamw(1.0),
        &Lm::<D, F, L, Umup>::param_table()?,
    )?;
    let mut grads = m.alloc_grads();
    let n = BATCH * seq;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 11) % V).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i * 5 + 1) % V).collect();
    let opts = LmOptions {
        heads: D / 64,
        rope: false,
    };
    let hp = Hyper::default();
    let mut times = Vec::new();
    for step in 0..steps + 2 {
        profile::enable(step > 1);
        let t = Instant::now();
        let x = dev.tensor_from_vec(ids.clone(), (n,)).traced(grads);
        let loss = m.loss(x, &targets, (BATCH, seq), &hp, &opts, None)?;
        grads = loss.backward();
        opt.update(&mut m, &mut grads)?;
        m.zero_grads(&mut grads);
        if step > 1 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            profile::take();
        }
    }
    profile::enable(false);
    let parts = profile::take();
    let part = |p: Part| {
        parts
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0.0, |(_, s)| s * 1e3 / steps as f64)
    };
    let linear = 2.0 * n as f64 * (L * (4 * D * D + 3 * D * F) + D * V) as f64;
    let attention = (L * 2 * 2 * BATCH * seq * seq * D) as f64;
    Ok(Row {
        width: D,
        seq,
        step_ms: median(&mut times),
        attention_ms: part(Part::Attention),
        linear_ms: part(Part::Matmuls),
        gflop: 3.0 * (linear + attention) / 1e9,
    })
}

fn main() -> umup::Result<()> {
    umup::threads::init(0)?;
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rows = vec![
        run::<128, 512>(128, steps)?,
        run::<256, 1024>(128, steps)?,
        run::<512, 2048>(128, steps)?,
        run::<1024, 4096>(128, steps)?,
        run::<256, 1024>(256, steps)?,
        run::<256, 1024>(512, steps)?,
    ];
    println!(
        "u-μP LM, Cpu kernels (AdamW included): {L} layers, MLP 4×width, d_head 64, batch {BATCH}, f32, {} threads; median of {steps} steps after 2 warm-up steps",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!(
        "| width | seq | GFLOP/step | step ms | GFLOP/s | linear matmuls ms | attention core ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.width,
            r.seq,
            r.gflop,
            r.step_ms,
            r.gflop / (r.step_ms * 1e-3),
            r.linear_ms,
            r.attention_ms
        );
    }
    println!();
    println!(
        "GFLOP/step counts causal attention in full (as dense); the kernel skips the masked half."
    );
    Ok(())
}

//! Benchmark of the u-μP scale primitives against plain dfdx ops (forward + backward), on `Cpu`.
//!
//! ```text
//! cargo run --release --example bench_ops            # default sizes
//! cargo run --release --example bench_ops -- 200     # rounds
//! ```
//!
//! Variants are interleaved round by round so that machine noise hits them alike; the table
//! reports medians and the ratio of each variant to its baseline measured in the same run.

use std::time::Instant;

use umup::dfdx::prelude::*;
use umup::{ops, Constraint};

type Dev = Cpu;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// A labelled benchmark body.
type Variant<'a> = (&'a str, Box<dyn FnMut() + 'a>);

fn run(name: &str, rounds: usize, variants: &mut [Variant<'_>]) {
    for (_, f) in variants.iter_mut() {
        for _ in 0..3 {
            f();
        }
    }
    let mut times = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            times[i].push(time(f.as_mut()));
        }
    }
    let base = median(&mut times[0]);
    println!("\n{name}");
    println!("| variant | median ms | ratio to `{}` |", variants[0].0);
    println!("|---|---:|---:|");
    for (i, (label, _)) in variants.iter().enumerate() {
        let m = median(&mut times[i]);
        println!("| {label} | {m:.3} | {:.3} |", m / base);
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dev = Dev::seed_from_u64(0);
    println!(
        "threads: {}, rounds: {rounds} (interleaved), f32",
        rayon_threads()
    );

    // 1. The scale primitive on 1M elements: value c·x, gradient d·G, then sum().backward().
    let n = 1 << 20;
    let x: Tensor<(usize,), f32, Dev> = dev.sample_normal_like(&(n,));
    run(
        &format!("scale_grad, {n} elements, forward + backward"),
        rounds,
        &mut [
            (
                "plain x * c (dfdx)",
                Box::new(|| {
                    let g = (x.leaky_trace() * 0.5f32).sum().backward();
                    std::hint::black_box(g);
                }),
            ),
            (
                "umup scale_grad (fused Cpu backward)",
                Box::new(|| {
                    let y = ops::scale_grad(x.leaky_trace(), 0.5, 3.0).unwrap();
                    std::hint::black_box(y.sum().backward());
                }),
            ),
            (
                "umup scale_grad_generic (device-generic path)",
                Box::new(|| {
                    let y = ops::scale_grad_generic(x.leaky_trace(), 0.5, 3.0).unwrap();
                    std::hint::black_box(y.sum().backward());
                }),
            ),
        ],
    );

    // 2. A linear layer: unit-scaled vs the plain dfdx matmul of the same shapes.
    let (rows, fan_in, fan_out) = (2048usize, 512usize, 512usize);
    let xin: Tensor<(usize, usize), f32, Dev> = dev.sample_normal_like(&(rows, fan_in));
    let w: Tensor<(usize, usize), f32, Dev> = dev.sample_normal_like(&(fan_out, fan_in));
    let b: Tensor<(usize,), f32, Dev> = dev.sample_normal_like(&(fan_out,));
    run(
        &format!("linear [{rows}, {fan_in}] x W[{fan_out}, {fan_in}]ᵀ, forward + backward"),
        rounds / 2,
        &mut [
            (
                "plain dfdx matmul x·Wᵀ",
                Box::new(|| {
                    let y = xin
                        .leaky_trace()
                        .matmul(w.retaped::<OwnedTape<f32, Dev>>().permute());
                    std::hint::black_box(y.sum().backward());
                }),
            ),
            (
                "umup linear (to_output_scale)",
                Box::new(|| {
                    let y = ops::linear(xin.leaky_trace(), &w, None, Constraint::ToOutputScale)
                        .unwrap();
                    std::hint::black_box(y.sum().backward());
                }),
            ),
            (
                "umup linear (constraint none)",
                Box::new(|| {
                    let y = ops::linear(xin.leaky_trace(), &w, None, Constraint::None).unwrap();
                    std::hint::black_box(y.sum().backward());
                }),
            ),
            (
                "plain dfdx matmul x·Wᵀ + b",
                Box::new(|| {
                    let y = xin
                        .leaky_trace()
                        .matmul(w.retaped::<OwnedTape<f32, Dev>>().permute());
                    let s = *y.shape();
                    let y = y + b
                        .retaped::<OwnedTape<f32, Dev>>()
                        .broadcast_like::<_, Axis<0>>(&s);
                    std::hint::black_box(y.sum().backward());
                }),
            ),
            (
                "umup linear + bias (to_output_scale)",
                Box::new(|| {
                    let y = ops::linear(xin.leaky_trace(), &w, Some(&b), Constraint::ToOutputScale)
                        .unwrap();
                    std::hint::black_box(y.sum().backward());
                }),
            ),
        ],
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

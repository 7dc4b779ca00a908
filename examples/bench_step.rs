//! Training-step time of the u-μP transformer LM against the same-shaped model built from stock
//! dfdx ops with no scaling at all (embedding, unbiased linears, composed RMSNorm, masked
//! softmax attention with 1/√d_head, SwiGLU, residual adds, dfdx cross entropy, dfdx Adam).
//!
//! ```text
//! cargo run --release --example bench_step                      # 3 rounds × 10 timed steps
//! cargo run --release --example bench_step -- --rounds 5 --steps 20
//! ```
//!
//! Reference configuration: vocab 256, width 256, 4 layers, 4 heads, MLP 1024 (SwiGLU), seq 128,
//! batch 8, f32. Every model runs on its own `Cpu` device; steps are interleaved (one step of
//! each model in turn), so machine noise hits them alike. The baseline of the final ratio is the
//! plain dfdx model on dfdx's default device (no allocation cache), as the performance issue
//! defines it; the cached plain model is printed beside it. Peak memory is measured in a child
//! process per model (`VmHWM`, Linux).

use std::time::Instant;

use umup::dfdx::nn::builders as nnb;
use umup::dfdx::optim::{Adam, Optimizer as _};
use umup::dfdx::prelude::*;
use umup::nn::{Hyper, Sp, Umup};
use umup::optim::{OptimConfig, Optimizer};
use umup::profile;
use umup::train::Lm;

#[path = "common/bench.rs"]
mod bench;
use bench::{median, opts, BATCH, D, F, H, L, SEQ, V};

type PlainLayer = (
    (
        nnb::UnbiasedLinear<D, D>,
        nnb::UnbiasedLinear<D, D>,
        nnb::UnbiasedLinear<D, D>,
        nnb::UnbiasedLinear<D, D>,
    ),
    (
        nnb::UnbiasedLinear<D, F>,
        nnb::UnbiasedLinear<D, F>,
        nnb::UnbiasedLinear<F, D>,
    ),
);
type PlainLm = (
    nnb::Embedding<V, D>,
    nnb::Repeated<PlainLayer, L>,
    nnb::UnbiasedLinear<D, V>,
);
type Built = <PlainLm as BuildOnDevice<Cpu, f32>>::Built;
type Rows<const K: usize> = Tensor<(usize, Const<K>), f32, Cpu, OwnedTape<f32, Cpu>>;

fn rms<const K: usize>(x: Rows<K>) -> Rows<K> {
    let s = *x.shape();
    let r = (x.with_empty_tape().square().mean::<(usize,), Axis<1>>() + 1e-5)
        .sqrt()
        .recip();
    x * r.broadcast_like::<_, Axis<1>>(&s)
}

fn plain_loss(
    m: &Built,
    ids: &[usize],
    targets: &[usize],
    grads: Gradients<f32, Cpu>,
) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>> {
    let dev = m.0.weight.device().clone();
    let n = ids.len();
    let mut x =
        m.0.forward(dev.tensor_from_vec(ids.to_vec(), (n,)).traced(grads));
    let dh = D / H;
    let mask = dev.upper_tri_like(&(SEQ, SEQ), f32::NEG_INFINITY, 1);
    for layer in m.1.modules.iter() {
        let ((q, k, v, o), (up, gate, down)) = layer;
        let h = rms(x.with_empty_tape());
        let split = |t: Rows<D>| {
            t.reshape_like(&(BATCH, SEQ, H, dh))
                .permute::<_, Axes4<0, 2, 1, 3>>()
        };
        let (qh, kh, vh) = (
            split(q.forward(h.with_empty_tape())),
            split(k.forward(h.with_empty_tape())),
            split(v.forward(h)),
        );
        let logits = qh.matmul(kh.permute::<_, Axes4<0, 1, 3, 2>>()) * (1.0 / (dh as f32).sqrt());
        let s = *logits.shape();
        let att = (logits + mask.clone().broadcast_like::<_, Axes2<0, 1>>(&s))
            .softmax::<Axis<3>>()
            .matmul(vh)
            .permute::<_, Axes4<0, 2, 1, 3>>()
            .reshape_like(&(n, Const::<D>));
        x = x + o.forward(att);
        let h = rms(x.with_empty_tape());
        let (u, g) = (up.forward(h.with_empty_tape()), gate.forward(h));
        let act = u * (g.with_empty_tape() * g.sigmoid());
        x = x + down.forward(act);
    }
    let logits = m.2.forward(rms(x));
    let mut onehot = vec![0f32; n * V];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * V + t] = 1.0;
    }
    let onehot = dev.tensor_from_vec(onehot, (n, Const::<V>));
    cross_entropy_with_logits_loss(logits, onehot)
}

#[derive(clap::Parser)]
#[command(about = "Training-step time: umup's u-μP LM vs the same model from stock dfdx ops")]
struct Args {
    /// Timed steps per model per round (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Rounds; the reported ratio is the median of the per-round ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Internal: run only this model for a few steps and print its peak memory.
    #[arg(long, hide = true, value_parser = ["umup", "ops", "plain"])]
    mem: Option<String>,
}

fn batch() -> (Vec<usize>, Vec<usize>) {
    bench::batch_of(BATCH)
}

/// Peak resident memory of this process in MiB (`VmHWM` from /proc; Linux only).
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Child-process mode: a few steps of one model, then its peak memory.
fn measure_memory(which: &str) -> umup::Result<()> {
    let (ids, targets) = batch();
    let n = ids.len();
    if which == "umup" || which == "ops" {
        let dev = Cpu::seed_from_u64(0);
        dev.enable_cache();
        let mut m = Lm::<D, F, L, Umup>::build(&dev)?;
        let mut opt = Optimizer::for_table(
            OptimConfig::adamw(1.0),
            &Lm::<D, F, L, Umup>::param_table()?,
        )?;
        let mut grads = m.alloc_grads();
        for _ in 0..3 {
            let x = dev.tensor_from_vec(ids.clone(), (n,)).traced(grads);
            let loss = if which == "ops" {
                m.loss_generic(x, &targets, (BATCH, SEQ), &Hyper::default(), &opts(), None)?
            } else {
                m.loss(x, &targets, (BATCH, SEQ), &Hyper::default(), &opts(), None)?
            };
            grads = loss.backward();
            opt.update(&mut m, &mut grads)?;
            m.zero_grads(&mut grads);
        }
    } else {
        let dev = Cpu::seed_from_u64(0);
        let mut m = dev.build_module::<PlainLm, f32>();
        let mut opt = Adam::new(&m, AdamConfig::default());
        let mut grads = m.alloc_grads();
        for _ in 0..3 {
            grads = plain_loss(&m, &ids, &targets, grads).backward();
            opt.update(&mut m, &grads)
                .expect("every tensor has a gradient");
            m.zero_grads(&mut grads);
        }
    }
    match peak_mib() {
        Some(mib) => println!("{mib:.1}"),
        None => println!("n/a"),
    }
    Ok(())
}

fn child_peak(which: &str) -> String {
    let out = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(["--mem", which])
            .output()
    });
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "n/a".into(),
    }
}

fn main() -> umup::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if let Some(which) = &args.mem {
        return measure_memory(which);
    }
    if args.steps == 0 || args.rounds == 0 {
        return Err(umup::Error::Invalid(
            "--steps and --rounds must be at least 1".into(),
        ));
    }
    let (ids, targets) = batch();
    let n = ids.len();
    let (hp, opts) = (Hyper::default(), opts());

    // u-μP model (fused CPU step), allocation cache on as in `umup::train`.
    let dev_u = Cpu::seed_from_u64(0);
    dev_u.enable_cache();
    let mut um = Lm::<D, F, L, Umup>::build(&dev_u)?;
    let table = Lm::<D, F, L, Umup>::param_table()?;
    let mut uopt = Optimizer::for_table(OptimConfig::adamw(1.0), &table)?;
    let mut ugrads = um.alloc_grads();
    assert!(Lm::<D, F, L, Umup>::uses_fused_step::<OwnedTape<f32, Cpu>>(
        &opts, false
    ));

    // The same code in standard parametrization (no u-μP scales).
    let dev_s = Cpu::seed_from_u64(0);
    dev_s.enable_cache();
    let mut sm = Lm::<D, F, L, Sp>::build(&dev_s)?;
    let mut sopt =
        Optimizer::for_table(OptimConfig::adamw(1e-3), &Lm::<D, F, L, Sp>::param_table()?)?;
    let mut sgrads = sm.alloc_grads();

    // u-μP through the device-generic path (what `Cuda` runs), for the fused path's speed-up.
    let dev_g = Cpu::seed_from_u64(0);
    dev_g.enable_cache();
    let mut gm = Lm::<D, F, L, Umup>::build(&dev_g)?;
    let mut gopt = Optimizer::for_table(OptimConfig::adamw(1.0), &table)?;
    let mut ggrads = gm.alloc_grads();

    // Plain dfdx: default device (the baseline) and with dfdx's allocation cache.
    let dev_p = Cpu::seed_from_u64(0);
    let mut pm = dev_p.build_module::<PlainLm, f32>();
    let mut popt = Adam::new(&pm, AdamConfig::default());
    let mut pgrads = pm.alloc_grads();
    let dev_c = Cpu::seed_from_u64(0);
    dev_c.enable_cache();
    let mut cm = dev_c.build_module::<PlainLm, f32>();
    let mut copt = Adam::new(&cm, AdamConfig::default());
    let mut cgrads = cm.alloc_grads();

    let optim_s = std::cell::Cell::new(0.0);
    let mut umup_step = |grads: Gradients<f32, Cpu>| -> umup::Result<Gradients<f32, Cpu>> {
        let x = dev_u.tensor_from_vec(ids.clone(), (n,));
        let loss = um.loss(x.traced(grads), &targets, (BATCH, SEQ), &hp, &opts, None)?;
        let mut g = loss.backward();
        let t = Instant::now();
        uopt.update(&mut um, &mut g)?;
        optim_s.set(optim_s.get() + t.elapsed().as_secs_f64());
        um.zero_grads(&mut g);
        Ok(g)
    };
    let mut sp_step = |grads: Gradients<f32, Cpu>| -> umup::Result<Gradients<f32, Cpu>> {
        let x = dev_s.tensor_from_vec(ids.clone(), (n,));
        let loss = sm.loss(x.traced(grads), &targets, (BATCH, SEQ), &hp, &opts, None)?;
        let mut g = loss.backward();
        sopt.update(&mut sm, &mut g)?;
        sm.zero_grads(&mut g);
        Ok(g)
    };
    let mut generic_step = |grads: Gradients<f32, Cpu>| -> umup::Result<Gradients<f32, Cpu>> {
        let x = dev_g.tensor_from_vec(ids.clone(), (n,));
        let loss = gm.loss_generic(x.traced(grads), &targets, (BATCH, SEQ), &hp, &opts, None)?;
        let mut g = loss.backward();
        gopt.update(&mut gm, &mut g)?;
        gm.zero_grads(&mut g);
        Ok(g)
    };
    let mut plain_step = |grads: Gradients<f32, Cpu>| -> Gradients<f32, Cpu> {
        let mut g = plain_loss(&pm, &ids, &targets, grads).backward();
        popt.update(&mut pm, &g)
            .expect("every tensor has a gradient");
        pm.zero_grads(&mut g);
        g
    };
    let mut cached_step = |grads: Gradients<f32, Cpu>| -> Gradients<f32, Cpu> {
        let mut g = plain_loss(&cm, &ids, &targets, grads).backward();
        copt.update(&mut cm, &g)
            .expect("every tensor has a gradient");
        cm.zero_grads(&mut g);
        g
    };

    // Raw gemm ceilings: the biggest matmul of the step, [1024, 256] @ [256, 1024], through
    // dfdx's matmul (gemm 0.15) and umup's fused-path gemm (gemm 0.19).
    let a: Tensor<(usize, Const<D>), f32, Cpu> = dev_p.sample_normal_like(&(n, Const));
    let b: Tensor<Rank2<D, F>, f32, Cpu> = dev_p.sample_normal();
    let (av, bv) = (a.as_vec(), b.as_vec());
    let mut cv = vec![0f32; n * F];
    let gemm_flop = 2.0 * (n * D * F) as f64;

    for _ in 0..2 {
        ugrads = umup_step(ugrads)?;
        sgrads = sp_step(sgrads)?;
        ggrads = generic_step(ggrads)?;
        pgrads = plain_step(pgrads);
        cgrads = cached_step(cgrads);
    }
    optim_s.set(0.0);
    profile::take();
    let names = [
        "umup, last fused CPU step (src/models/fused.rs)",
        "umup code in SP (fused, no u-μP scales)",
        "umup u-μP through the ops (Cpu kernels)",
        "plain dfdx, default device (baseline)",
        "plain dfdx + allocation cache",
        "raw gemm [1024,256]x[256,1024], dfdx (gemm 0.15)",
        "raw gemm [1024,256]x[256,1024], umup (gemm 0.19)",
    ];
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let mut this: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for _ in 0..args.steps {
            let t = Instant::now();
            ugrads = umup_step(ugrads)?;
            this[0].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            sgrads = sp_step(sgrads)?;
            this[1].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            ggrads = generic_step(ggrads)?;
            this[2].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            pgrads = plain_step(pgrads);
            this[3].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            cgrads = cached_step(cgrads);
            this[4].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(a.clone().matmul(b.clone()));
            this[5].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            umup::ops::cpu::gemm(
                umup::ops::cpu::ViewMut::rows(&mut cv, n, F),
                false,
                umup::ops::cpu::View::rows(&av, n, D),
                umup::ops::cpu::View::rows(&bv, D, F),
                1.0,
                umup::ops::cpu::Threads::All,
            );
            std::hint::black_box(&cv);
            this[6].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let r = median(&this[0]) / median(&this[3]);
        println!(
            "round {}: umup {:.1} ms, plain dfdx {:.1} ms, ratio {r:.3}",
            round + 1,
            median(&this[0]),
            median(&this[3])
        );
        ratios.push(r);
        for (acc, t) in all.iter_mut().zip(this) {
            acc.extend(t);
        }
    }
    // The per-op breakdown: extra profiled steps of the ops model (the timing overhead stays out
    // of the medians above).
    profile::take();
    let mut optim_ops = 0.0;
    let mut profiled = Vec::new();
    for _ in 0..args.steps {
        profile::enable(true);
        let t = Instant::now();
        let x = dev_g.tensor_from_vec(ids.clone(), (n,));
        let loss = gm.loss_generic(x.traced(ggrads), &targets, (BATCH, SEQ), &hp, &opts, None)?;
        let mut g = loss.backward();
        let to = Instant::now();
        gopt.update(&mut gm, &mut g)?;
        optim_ops += to.elapsed().as_secs_f64();
        gm.zero_grads(&mut g);
        ggrads = g;
        profiled.push(t.elapsed().as_secs_f64() * 1e3);
        profile::enable(false);
    }
    let timed = args.steps as f64;
    let parts = profile::take();

    let linear = 2.0 * n as f64 * (L * (4 * D * D + 3 * D * F) + D * V) as f64;
    let attention = (L * 2 * 2 * BATCH * H * SEQ * SEQ * (D / H)) as f64;
    let flops = 3.0 * (linear + attention);
    let med: Vec<f64> = all.iter().map(|t| median(t)).collect();
    let ceiling = gemm_flop / (med[6] * 1e-3) / 1e9;
    let gf = |ms: f64| flops / (ms * 1e-3) / 1e9;
    println!();
    println!(
        "vocab {V}, width {D}, {L} layers, {H} heads, MLP {F}, seq {SEQ}, batch {BATCH}, f32; {:.1} GFLOP of matmul per step (causal attention counted in full); {} rounds × {} timed steps per model (interleaved, after 2 warm-up steps); {} threads",
        flops / 1e9,
        args.rounds,
        args.steps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| model | median step ms | GFLOP/s | % of umup gemm ceiling | vs plain dfdx |");
    println!("|---|---:|---:|---:|---:|");
    for (i, name) in names.iter().enumerate().take(5) {
        println!(
            "| {name} | {:.1} | {:.1} | {:.0}% | {:.3} |",
            med[i],
            gf(med[i]),
            100.0 * gf(med[i]) / ceiling,
            med[i] / med[3]
        );
    }
    for (i, name) in names.iter().enumerate().skip(5) {
        let g = gemm_flop / (med[i] * 1e-3) / 1e9;
        println!(
            "| {name} | {:.2} | {g:.1} | {:.0}% | |",
            med[i],
            100.0 * g / ceiling
        );
    }
    println!();
    println!("Where a u-μP step goes (mean per step over the timed steps):");
    println!();
    println!("| part | ms | share |");
    println!("|---|---:|---:|");
    let step_ms = profiled.iter().sum::<f64>() / timed;
    let mut accounted = 0.0;
    let mut row = |name: &str, ms: f64| {
        accounted += ms;
        println!("| {name} | {ms:.1} | {:.0}% |", 100.0 * ms / step_ms);
    };
    for (part, s) in &parts {
        row(part.describe(), s * 1e3 / timed);
    }
    row("optimizer (AdamW, per-tensor LRs)", optim_ops * 1e3 / timed);
    let rest = step_ms - accounted;
    println!(
        "| rest (buffers, tape, gradient zeroing) | {rest:.1} | {:.0}% |",
        100.0 * rest / step_ms
    );
    println!("| total | {step_ms:.1} | 100% |");
    println!();
    println!(
        "peak memory (VmHWM, separate processes, 3 steps): umup ops {} MiB, umup fused {} MiB, plain dfdx {} MiB",
        child_peak("ops"),
        child_peak("umup"),
        child_peak("plain")
    );
    println!(
        "per-round ratios umup/plain_dfdx: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ratio ops/fused = {:.3} (ops {:.1} ms, fused {:.1} ms)",
        med[2] / med[0],
        med[2],
        med[0]
    );
    println!(
        "ratio umup/plain_dfdx = {:.3} (umup {:.1} ms, plain dfdx {:.1} ms)",
        median(&ratios),
        med[0],
        med[3]
    );
    Ok(())
}

//! Training-step time of two models written with umup's ops — the u-μP transformer LM and an
//! encoder classifier (`examples/common/encoder.rs`, written as a user would) — against the same
//! models built from stock dfdx ops with no scaling at all, and the LM's step with simulated FP8
//! matmuls against f32.
//!
//! ```text
//! cargo run --release --example bench_step                      # 3 rounds × 10 timed steps
//! cargo run --release --example bench_step -- --rounds 5 --steps 20
//! ```
//!
//! LM: vocab 256, width 256, 4 layers, 4 heads, MLP 1024 (SwiGLU), seq 128, batch 8, f32; plain
//! twin: embedding, unbiased linears, composed RMSNorm, masked softmax attention with
//! 1/√d_head, SwiGLU, residual adds, dfdx cross entropy, dfdx Adam. Encoder: vocab 256, width
//! 256, 4 layers, 4 heads, seq 128, batch 8, non-causal, LayerNorm with gain and bias, GELU MLP
//! ×4 with biases, learned positions, mean-pooled readout to 16 classes. Every model runs on its
//! own `Cpu` device; steps are interleaved (one step of each model in turn), so machine noise
//! hits them alike; ratios are medians of per-round ratios. The baselines are the plain models on
//! dfdx's default device (no allocation cache). Peak memory is measured in a child process per
//! model (`VmHWM`, Linux).

use std::time::Instant;

use umup::dfdx::nn::builders as nnb;
use umup::dfdx::optim::{Adam, Optimizer as _};
use umup::dfdx::prelude::*;
use umup::formats::MatmulFormats;
use umup::models::Lm;
use umup::nn::{AttentionScale, Hyper, Sp, Umup};
use umup::ops::MatmulQuantiser;
use umup::optim::{OptimConfig, Optimizer};
use umup::params::NormParams;
use umup::profile;

#[path = "common/bench.rs"]
mod bench;
#[path = "common/encoder.rs"]
mod encoder;
use bench::{median, opts, BATCH, D, F, H, L, SEQ, V};
use encoder::CLASSES;

type Enc = encoder::Encoder<V, SEQ, D, F, L, CLASSES, f32, Cpu, Umup>;
type PlainEnc = encoder::PlainEncoder<V, SEQ, D, F, L, CLASSES>;

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
    /// Which model's step the per-op breakdown profiles.
    #[arg(long, default_value = "lm", value_parser = ["lm", "encoder", "fp8"])]
    profile: String,
    /// Leave rayon's default pool (this thread outside it, handing each parallel loop over), to
    /// measure what `umup::threads::init` gains.
    #[arg(long)]
    no_threads_init: bool,
    /// Internal: run only this model for a few steps and print its peak memory.
    #[arg(long, hide = true, value_parser = ["umup", "plain"])]
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
    if which == "umup" {
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
            let loss = m.loss(x, &targets, (BATCH, SEQ), &Hyper::default(), &opts(), None)?;
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

/// One timed training step per call; `Step` closures are interleaved by the rounds loop.
type Step<'a> = Box<dyn FnMut() -> umup::Result<()> + 'a>;

/// A u-μP LM on its own device with its optimizer and gradients: one training step per call.
fn lm_step<'a, P: umup::nn::Param>(
    lr: f64,
    formats: Option<MatmulFormats>,
    ids: &'a [usize],
    targets: &'a [usize],
) -> umup::Result<Step<'a>> {
    let dev = Cpu::seed_from_u64(0);
    dev.enable_cache();
    let mut m = Lm::<D, F, L, P>::build(&dev)?;
    let mut opt = Optimizer::for_table(OptimConfig::adamw(lr), &Lm::<D, F, L, P>::param_table()?)?;
    let mut grads = Some(m.alloc_grads());
    let (hp, opts) = (Hyper::default(), opts());
    let mut step = 0u64;
    Ok(Box::new(move || {
        let x = dev.tensor_from_vec(ids.to_vec(), (ids.len(),));
        let mut q = formats.map(|f| MatmulQuantiser::new(f, step));
        step += 1;
        let traced = x.traced(
            grads
                .take()
                .expect("gradients are put back after each step"),
        );
        let loss = m.loss(traced, targets, (BATCH, SEQ), &hp, &opts, q.as_mut())?;
        let mut g = loss.backward();
        opt.update(&mut m, &mut g)?;
        m.zero_grads(&mut g);
        grads = Some(g);
        Ok(())
    }))
}

fn main() -> umup::Result<()> {
    let args = <Args as clap::Parser>::parse();
    // Every step below runs on this thread, as one of the kernels' threads.
    if !args.no_threads_init {
        umup::threads::init(0)?;
    }
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
    let labels: Vec<usize> = (0..BATCH).map(|b| (b * 7 + 3) % CLASSES).collect();

    // Plain dfdx LM: default device (the baseline) and with dfdx's allocation cache.
    let plain_lm = |cache: bool| -> Step<'_> {
        let dev = Cpu::seed_from_u64(0);
        if cache {
            dev.enable_cache();
        }
        let mut m = dev.build_module::<PlainLm, f32>();
        let mut opt = Adam::new(&m, AdamConfig::default());
        let mut grads = Some(m.alloc_grads());
        let (ids, targets) = (&ids, &targets);
        Box::new(move || {
            let mut g = plain_loss(&m, ids, targets, grads.take().expect("put back")).backward();
            opt.update(&mut m, &g).expect("every tensor has a gradient");
            m.zero_grads(&mut g);
            grads = Some(g);
            Ok(())
        })
    };
    // The encoder: umup (u-μP, AdamW, allocation cache on) and plain dfdx (default device).
    let umup_enc = || -> umup::Result<Step<'_>> {
        let dev = Cpu::seed_from_u64(0);
        dev.enable_cache();
        let mut m = Enc::build(&dev)?;
        // The reference's step trains the LayerNorm gains and biases: so does this one.
        let optim = OptimConfig {
            norm_params: NormParams::Trained,
            ..OptimConfig::adamw(1.0)
        };
        let mut opt = Optimizer::for_table(optim, &Enc::param_table()?)?;
        let mut grads = Some(m.alloc_grads());
        let (ids, labels) = (&ids, &labels);
        // The reference's attention scale, as in the reference's step.
        let hp = Hyper {
            attention: AttentionScale::Reference,
            ..Hyper::default()
        };
        Ok(Box::new(move || {
            let x = dev.tensor_from_vec(ids.clone(), (n,));
            let traced = x.traced(grads.take().expect("put back"));
            let loss = m.loss(traced, labels, H, &hp)?;
            let mut g = loss.backward();
            opt.update(&mut m, &mut g)?;
            m.zero_grads(&mut g);
            grads = Some(g);
            Ok(())
        }))
    };
    let plain_enc = || -> Step<'_> {
        let dev = Cpu::seed_from_u64(0);
        let mut m = dev.build_module::<PlainEnc, f32>();
        let mut opt = Adam::new(&m, AdamConfig::default());
        let mut grads = Some(m.alloc_grads());
        let (ids, labels) = (&ids, &labels);
        Box::new(move || {
            let g0 = grads.take().expect("put back");
            let mut g =
                encoder::plain_loss::<V, SEQ, D, F, L, CLASSES>(&m, ids, labels, H, g0).backward();
            opt.update(&mut m, &g).expect("every tensor has a gradient");
            m.zero_grads(&mut g);
            grads = Some(g);
            Ok(())
        })
    };

    // Raw gemm ceilings: the biggest matmul of the step, [1024, 256] @ [256, 1024], through
    // dfdx's matmul (gemm 0.15) and umup's kernels' gemm (gemm 0.19).
    let gdev = Cpu::seed_from_u64(0);
    let a: Tensor<(usize, Const<D>), f32, Cpu> = gdev.sample_normal_like(&(n, Const));
    let b: Tensor<Rank2<D, F>, f32, Cpu> = gdev.sample_normal();
    let (av, bv) = (a.as_vec(), b.as_vec());
    let mut cv = vec![0f32; n * F];
    let gemm_flop = 2.0 * (n * D * F) as f64;

    let mut models: Vec<(&str, Step)> = vec![
        (
            "umup u-μP LM (ops, Cpu kernels)",
            lm_step::<Umup>(1.0, None, &ids, &targets)?,
        ),
        (
            "umup LM in SP (same ops, no u-μP scales)",
            lm_step::<Sp>(1e-3, None, &ids, &targets)?,
        ),
        (
            "umup u-μP LM, fp8-sim matmuls",
            lm_step::<Umup>(1.0, Some(MatmulFormats::fp8_sim()), &ids, &targets)?,
        ),
        ("plain dfdx LM, default device (baseline)", plain_lm(false)),
        ("plain dfdx LM + allocation cache", plain_lm(true)),
        ("umup u-μP encoder (ops, Cpu kernels)", umup_enc()?),
        ("plain dfdx encoder, default device (baseline)", plain_enc()),
        (
            "raw gemm [1024,256]x[256,1024], dfdx (gemm 0.15)",
            Box::new(|| {
                std::hint::black_box(a.clone().matmul(b.clone()));
                Ok(())
            }),
        ),
        (
            "raw gemm [1024,256]x[256,1024], umup (gemm 0.19)",
            Box::new(|| {
                umup::ops::cpu::gemm(
                    umup::ops::cpu::ViewMut::rows(&mut cv, n, F),
                    false,
                    umup::ops::cpu::View::rows(&av, n, D),
                    umup::ops::cpu::View::rows(&bv, D, F),
                    1.0,
                    umup::ops::cpu::Threads::All,
                );
                std::hint::black_box(&cv);
                Ok(())
            }),
        ),
    ];
    const LM: usize = 0;
    const FP8: usize = 2;
    const PLAIN: usize = 3;
    const ENC: usize = 5;
    const PLAIN_ENC: usize = 6;
    const RAW: usize = 7;
    for _ in 0..2 {
        for (_, step) in models.iter_mut() {
            step()?;
        }
    }
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    let (mut lm_ratios, mut enc_ratios, mut fp8_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let mut this: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
        for _ in 0..args.steps {
            for (i, (_, step)) in models.iter_mut().enumerate() {
                let t = Instant::now();
                step()?;
                this[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let m: Vec<f64> = this.iter().map(|t| median(t)).collect();
        let (r, re, rf) = (m[LM] / m[PLAIN], m[ENC] / m[PLAIN_ENC], m[FP8] / m[LM]);
        println!(
            "round {}: LM umup {:.1} ms / plain {:.1} ms = {r:.3}; encoder umup {:.1} ms / plain {:.1} ms = {re:.3}; fp8-sim/f32 {rf:.3}",
            round + 1,
            m[LM],
            m[PLAIN],
            m[ENC],
            m[PLAIN_ENC]
        );
        lm_ratios.push(r);
        enc_ratios.push(re);
        fp8_ratios.push(rf);
        for (acc, t) in all.iter_mut().zip(this) {
            acc.extend(t);
        }
    }

    // The per-op breakdown: extra profiled steps (the timing overhead stays out of the medians
    // above).
    let (which, label) = match args.profile.as_str() {
        "encoder" => (ENC, "encoder"),
        "fp8" => (FP8, "LM (fp8-sim)"),
        _ => (LM, "LM"),
    };
    profile::take();
    let mut profiled = Vec::new();
    for _ in 0..args.steps {
        profile::enable(true);
        let t = Instant::now();
        (models[which].1)()?;
        profiled.push(t.elapsed().as_secs_f64() * 1e3);
        profile::enable(false);
    }
    let parts = profile::take();

    // Matmul FLOPs per training step (forward, input and weight gradients: 3× the forward's),
    // attention's QKᵀ and PV counted in full (the causal kernel skips the masked half).
    let attention = (L * 2 * 2 * BATCH * H * SEQ * SEQ * (D / H)) as f64;
    let flops = 3.0 * (2.0 * n as f64 * (L * (4 * D * D + 3 * D * F) + D * V) as f64 + attention);
    let enc_flops = 3.0
        * (2.0 * n as f64 * (L * (4 * D * D + 2 * D * F)) as f64
            + 2.0 * (BATCH * D * CLASSES) as f64
            + attention);
    let med: Vec<f64> = all.iter().map(|t| median(t)).collect();
    let ceiling = gemm_flop / (med[RAW + 1] * 1e-3) / 1e9;
    // The limit: the step's matmul FLOPs at the gemm ceiling, as a fraction of the step's time.
    let limit = |flop: f64, ms: f64| flop / (ceiling * 1e9) / (ms * 1e-3);
    println!();
    println!(
        "LM: vocab {V}, width {D}, {L} layers, {H} heads, MLP {F} (SwiGLU), seq {SEQ}, batch {BATCH}, f32; {:.2} GFLOP of matmul per step (causal attention counted in full). Encoder: same sizes, non-causal, GELU MLP {F}, {CLASSES} classes; {:.2} GFLOP of matmul per step. {} rounds × {} timed steps per model (interleaved, after 2 warm-up steps); {} threads; machine: {}",
        flops / 1e9,
        enc_flops / 1e9,
        args.rounds,
        args.steps,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bench::machine()
    );
    println!();
    println!("| model | median step ms | GFLOP/s | limit fraction | vs its plain dfdx twin |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _)) in models.iter().enumerate() {
        let (flop, vs) = match i {
            i if i < ENC => (flops, format!("{:.3}", med[i] / med[PLAIN])),
            i if i < RAW => (enc_flops, format!("{:.3}", med[i] / med[PLAIN_ENC])),
            _ => (gemm_flop, String::new()),
        };
        println!(
            "| {name} | {:.2} | {:.1} | {:.3} | {vs} |",
            med[i],
            flop / (med[i] * 1e-3) / 1e9,
            limit(flop, med[i])
        );
    }
    println!(
        "(umup's gemm ceiling: {ceiling:.1} GFLOP/s, the median of the raw gemm row; at it the LM's matmuls need {:.1} ms, the encoder's {:.1} ms)",
        flops / (ceiling * 1e9) * 1e3,
        enc_flops / (ceiling * 1e9) * 1e3
    );
    println!();
    println!(
        "Where a u-μP {label} step goes (`umup::profile`, mean over {} profiled steps):",
        args.steps
    );
    println!();
    println!("| part | ms | share |");
    println!("|---|---:|---:|");
    let step_ms = profiled.iter().sum::<f64>() / profiled.len() as f64;
    let mut accounted = 0.0;
    for (part, s) in &parts {
        let ms = s * 1e3 / profiled.len() as f64;
        accounted += ms;
        println!(
            "| {} | {ms:.1} | {:.0}% |",
            part.describe(),
            100.0 * ms / step_ms
        );
    }
    let rest = step_ms - accounted;
    println!(
        "| rest (tape, buffers, gradient zeroing) | {rest:.1} | {:.0}% |",
        100.0 * rest / step_ms
    );
    println!("| total | {step_ms:.1} | 100% |");
    println!();
    println!(
        "peak memory of the LM step (VmHWM, separate processes, 3 steps): umup {} MiB, plain dfdx {} MiB",
        child_peak("umup"),
        child_peak("plain")
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("per-round ratios LM umup/plain_dfdx: {}", list(&lm_ratios));
    println!(
        "per-round ratios encoder umup/plain_dfdx: {}",
        list(&enc_ratios)
    );
    println!("per-round ratios fp8-sim/f32: {}", list(&fp8_ratios));
    for (model, flop, ms) in [("LM", flops, med[LM]), ("encoder", enc_flops, med[ENC])] {
        println!(
            "limit fraction {model} = {:.3} ({:.1} GFLOP at {ceiling:.1} GFLOP/s in a {ms:.1} ms step)",
            limit(flop, ms),
            flop / 1e9
        );
    }
    println!(
        "ratio umup/plain_dfdx = {:.3} (umup {:.1} ms, plain dfdx {:.1} ms)",
        median(&lm_ratios),
        med[LM],
        med[PLAIN]
    );
    println!(
        "ratio encoder umup/plain_dfdx = {:.3} (umup {:.1} ms, plain dfdx {:.1} ms)",
        median(&enc_ratios),
        med[ENC],
        med[PLAIN_ENC]
    );
    println!(
        "ratio fp8-sim/f32 = {:.3} (fp8-sim {:.1} ms, f32 {:.1} ms)",
        median(&fp8_ratios),
        med[FP8],
        med[LM]
    );
    Ok(())
}

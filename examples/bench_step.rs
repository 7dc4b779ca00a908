//! Training-step time of the u-μP transformer LM against the same-shaped model built from stock
//! dfdx ops with no scaling at all (embedding, unbiased linears, composed RMSNorm, masked
//! softmax attention with 1/√d_head, SwiGLU, residual adds, dfdx cross entropy, dfdx Adam).
//!
//! ```text
//! cargo run --release --example bench_step            # 12 timed steps each, interleaved
//! cargo run --release --example bench_step -- 30      # more steps
//! ```
//!
//! Reference configuration: vocab 256, width 256, 4 layers, 4 heads, MLP 1024 (SwiGLU), seq 128,
//! batch 8, f32. Both models run on their own `Cpu` device with dfdx's allocation cache on.

use std::time::Instant;

use umup::dfdx::nn::builders as nnb;
use umup::dfdx::optim::{Adam, Optimizer as _};
use umup::dfdx::prelude::*;
use umup::models::LmOptions;
use umup::nn::{Hyper, Sp, Umup};
use umup::optim::{OptimConfig, Optimizer};
use umup::train::Lm;

const V: usize = 256;
const D: usize = 256;
const F: usize = 1024;
const L: usize = 4;
const H: usize = 4;
const SEQ: usize = 128;
const BATCH: usize = 8;

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> umup::Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let n = BATCH * SEQ;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 11) % V).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i * 5 + 1) % V).collect();

    // u-μP model.
    let dev_u = Cpu::seed_from_u64(0);
    dev_u.enable_cache();
    let mut um = Lm::<D, F, L, Umup>::build(&dev_u)?;
    let mut uopt = Optimizer::for_table(
        OptimConfig::adamw(1.0),
        &Lm::<D, F, L, Umup>::param_table()?,
    )?;
    let mut ugrads = um.alloc_grads();
    let (hp, opts) = (
        Hyper::default(),
        LmOptions {
            heads: H,
            rope: false,
        },
    );

    // The same code in standard parametrization (no u-μP scales): isolates the cost of the scales.
    let dev_s = Cpu::seed_from_u64(0);
    dev_s.enable_cache();
    let mut sm = Lm::<D, F, L, Sp>::build(&dev_s)?;
    let mut sopt =
        Optimizer::for_table(OptimConfig::adamw(1e-3), &Lm::<D, F, L, Sp>::param_table()?)?;
    let mut sgrads = sm.alloc_grads();

    // Plain dfdx model.
    let dev_p = Cpu::seed_from_u64(0);
    dev_p.enable_cache();
    let mut pm = dev_p.build_module::<PlainLm, f32>();
    let mut popt = Adam::new(&pm, AdamConfig::default());
    let mut pgrads = pm.alloc_grads();

    let mut umup_step = |grads: Gradients<f32, Cpu>| -> umup::Result<Gradients<f32, Cpu>> {
        let x = dev_u.tensor_from_vec(ids.clone(), (n,));
        let loss = um.loss(x.traced(grads), &targets, (BATCH, SEQ), &hp, &opts, None)?;
        let mut g = loss.backward();
        uopt.update(&mut um, &mut g)?;
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
    let mut plain_step = |grads: Gradients<f32, Cpu>| -> Gradients<f32, Cpu> {
        let loss = plain_loss(&pm, &ids, &targets, grads);
        let mut g = loss.backward();
        popt.update(&mut pm, &g)
            .expect("every tensor has a gradient");
        pm.zero_grads(&mut g);
        g
    };

    // Raw gemm ceiling: the biggest matmul of the step, [1024, 256] @ [256, 1024].
    let a: Tensor<(usize, Const<D>), f32, Cpu> = dev_p.sample_normal_like(&(n, Const));
    let b: Tensor<Rank2<D, F>, f32, Cpu> = dev_p.sample_normal();
    let mut gemm = Vec::new();

    for _ in 0..2 {
        ugrads = umup_step(ugrads)?;
        sgrads = sp_step(sgrads)?;
        pgrads = plain_step(pgrads);
    }
    let (mut tu, mut ts, mut tp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        ugrads = umup_step(ugrads)?;
        tu.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        sgrads = sp_step(sgrads)?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        pgrads = plain_step(pgrads);
        tp.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(a.clone().matmul(b.clone()));
        gemm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let linear = 2.0 * n as f64 * (L * (4 * D * D + 3 * D * F) + D * V) as f64;
    let attention = (L * 2 * 2 * BATCH * H * SEQ * SEQ * (D / H)) as f64;
    let flops = 3.0 * (linear + attention);
    let (mu, ms, mp, mg) = (
        median(&mut tu),
        median(&mut ts),
        median(&mut tp),
        median(&mut gemm),
    );
    let gf = |ms: f64| flops / (ms * 1e-3) / 1e9;
    let gemm_gf = 2.0 * (n * D * F) as f64 / (mg * 1e-3) / 1e9;
    println!(
        "vocab {V}, width {D}, {L} layers, {H} heads, MLP {F}, seq {SEQ}, batch {BATCH}, f32; {:.1} GFLOP of matmul per step; {steps} timed steps each (interleaved, after 2 warm-up steps); {} threads",
        flops / 1e9,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| model | median step ms | GFLOP/s | % of gemm ceiling |");
    println!("|---|---:|---:|---:|");
    println!(
        "| umup (u-μP, AdamW) | {mu:.1} | {:.1} | {:.0}% |",
        gf(mu),
        100.0 * gf(mu) / gemm_gf
    );
    println!(
        "| umup code in SP (no scales) | {ms:.1} | {:.1} | {:.0}% |",
        gf(ms),
        100.0 * gf(ms) / gemm_gf
    );
    println!(
        "| plain dfdx (no scaling, Adam) | {mp:.1} | {:.1} | {:.0}% |",
        gf(mp),
        100.0 * gf(mp) / gemm_gf
    );
    println!("| raw gemm [{n},{D}]x[{D},{F}] | {mg:.2} | {gemm_gf:.1} | 100% |");
    println!(
        "ratio umup/plain_dfdx = {:.3} (umup {mu:.1} ms, plain dfdx {mp:.1} ms)",
        mu / mp
    );
    Ok(())
}

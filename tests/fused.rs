//! The fused CPU path against the device-generic composition of umup's ops: every fused kernel
//! on random inputs (several shapes, causal and not) and the whole LM (loss and every parameter
//! gradient, all three parametrizations, non-default α's).

use umup::dfdx::prelude::*;
use umup::models::{LmOptions, TransformerLm};
use umup::nn::{Hyper, Mup, Param, Sp, Umup};

/// `max|a − b| / max|b|`: the error relative to the tensor's scale.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "reference tensor is all zeros");
    err / scale
}

fn hyper() -> Hyper {
    Hyper {
        eta: 1.0,
        alpha_ffn_act: 1.7,
        alpha_attn_softmax: 0.6,
        alpha_res: 1.3,
        alpha_res_attn_ratio: 0.8,
        alpha_loss_softmax: 1.4,
    }
}

type Model<E, P> = TransformerLm<64, 32, 96, 2, E, Cpu, P>;

/// Loss and every parameter gradient, fused (`loss`) or generic (`loss_generic`).
fn run<E, P>(m: &Model<E, P>, fused: bool, batch: usize, seq: usize) -> Vec<Vec<f64>>
where
    E: Dtype,
    P: Param,
    Cpu: Device<E> + umup::Backend<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    let n = batch * seq;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 11) % 64).collect();
    let targets: Vec<usize> = (0..n).map(|i| (i * 13 + 5) % 64).collect();
    let dev = m.embed.weight.device().clone();
    let x = dev.tensor_from_vec(ids, (n,)).traced(m.alloc_grads());
    let opts = LmOptions {
        heads: 4,
        rope: false,
    };
    let loss = if fused {
        m.loss(x, &targets, (batch, seq), &hyper(), &opts, None)
    } else {
        m.loss_generic(x, &targets, (batch, seq), &hyper(), &opts, None)
    }
    .unwrap();
    let value = loss.array().to_f64().unwrap();
    let grads = loss.backward();
    let f = |v: Vec<E>| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let mut out = vec![vec![value], f(grads.get(&m.embed.weight).as_vec())];
    for l in m.layers.iter() {
        for w in [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o] {
            out.push(f(grads.get(&w.weight).as_vec()));
        }
        for w in [&l.mlp.up, &l.mlp.gate] {
            out.push(f(grads.get(&w.weight).as_vec()));
        }
        out.push(f(grads.get(&l.mlp.down.weight).as_vec()));
    }
    out.push(f(grads.get(&m.readout.weight).as_vec()));
    out
}

fn whole_model<E, P>(tol: f64)
where
    E: Dtype,
    P: Param,
    Cpu: Device<E> + umup::Backend<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    let dev = Cpu::seed_from_u64(3);
    let m = Model::<E, P>::build(&dev).unwrap();
    let opts = LmOptions {
        heads: 4,
        rope: false,
    };
    assert!(Model::<E, P>::uses_fused_step::<OwnedTape<E, Cpu>>(
        &opts, false
    ));
    assert!(!Model::<E, P>::uses_fused_step::<OwnedTape<E, Cpu>>(
        &opts, true
    ));
    // seq 40: one full 32-row attention block and a partial one.
    for (batch, seq) in [(3, 40), (2, 7)] {
        let fused = run(&m, true, batch, seq);
        let generic = run(&m, false, batch, seq);
        for (i, (a, b)) in fused.iter().zip(&generic).enumerate() {
            let r = rel(a, b);
            assert!(
                r < tol,
                "{:?} batch {batch} seq {seq}: tensor {i} differs by {r:e} (relative)",
                P::parametrization()
            );
        }
    }
}

#[test]
fn whole_lm_f64_matches_the_generic_path() {
    whole_model::<f64, Umup>(1e-10);
    whole_model::<f64, Mup<16>>(1e-10);
    whole_model::<f64, Sp>(1e-10);
}

#[test]
fn whole_lm_f32_matches_the_generic_path() {
    whole_model::<f32, Umup>(1e-4);
    whole_model::<f32, Sp>(1e-4);
}

// ---------------------------------------------------------------------------------------------
// Per-op tests: each fused kernel of `umup::ops::cpu` against the device-generic dfdx
// composition (umup's public ops), on random inputs. f32 to 1e-5 relative; f64 to 1e-12.
// Output buffers that a kernel documents as overwritten (or not read) start as NaN, and every
// compared value must be finite, so a kernel that reads what it should not is caught too.
// ---------------------------------------------------------------------------------------------

use umup::ops::cpu::{self, AttnShape, Real, Threads, View, ViewMut};
use umup::rand_distr::{Distribution, StandardNormal};

const F32_TOL: f64 = 1e-5;
const F64_TOL: f64 = 1e-12;

/// `n` standard-normal samples from the seeded device.
fn randn<E: Real>(dev: &Cpu, n: usize) -> Vec<E>
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    dev.sample_normal_like(&(n,)).as_vec()
}

fn f64s<E: Real>(v: &[E]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64().unwrap()).collect()
}

/// Asserts `rel(fused, generic) < tol` (and that both are finite: `rel` ignores NaN); returns
/// the relative error.
fn check<E: Real>(what: &str, fused: &[E], generic: &[E], tol: f64) -> f64 {
    let (a, b) = (f64s(fused), f64s(generic));
    assert!(
        a.iter().chain(&b).all(|v| v.is_finite()),
        "{what}: non-finite value (fused or generic)"
    );
    let r = rel(&a, &b);
    assert!(
        r < tol,
        "{what} ({}): fused differs from generic by {r:e} (relative)",
        std::any::type_name::<E>()
    );
    r
}

/// Runs `case::<f32>` and `case::<f64>` with their tolerances; prints the worst errors.
macro_rules! both_dtypes {
    ($name:literal, $case:ident) => {{
        let w32 = $case::<f32>(F32_TOL);
        let w64 = $case::<f64>(F64_TOL);
        println!("{}: max rel f32 {w32:e}, f64 {w64:e}", $name);
    }};
}

// ---- attention ------------------------------------------------------------------------------

/// `[batch, heads, seq, d_head]` (dfdx) → `[batch·seq, heads·d_head]` (fused).
fn bhsd_to_rows<E: Copy>(g: &[E], (b, h, s, d): (usize, usize, usize, usize)) -> Vec<E> {
    let mut out = Vec::with_capacity(g.len());
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let at = ((bi * h + hi) * s + si) * d;
                out.extend_from_slice(&g[at..at + d]);
            }
        }
    }
    out
}

/// `[batch·seq, heads·d_head]` (fused) → `[batch, heads, seq, d_head]` (dfdx).
fn rows_to_bhsd<E: Copy>(f: &[E], (b, h, s, d): (usize, usize, usize, usize)) -> Vec<E> {
    let mut out = Vec::with_capacity(f.len());
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let at = (bi * s + si) * h * d + hi * d;
                out.extend_from_slice(&f[at..at + d]);
            }
        }
    }
    out
}

/// One attention problem: output and the q, k, v gradients of `sum(out ⊙ W)`.
fn attention_case<E: Real>(
    dev: &Cpu,
    shape: (usize, usize, usize, usize),
    mult: f64,
    causal: bool,
    tol: f64,
) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let (b, h, s, d) = shape;
    let n = b * h * s * d;
    let (qg, kg, vg, wg) = (
        randn::<E>(dev, n),
        randn::<E>(dev, n),
        randn::<E>(dev, n),
        randn::<E>(dev, n),
    );
    // Generic: dfdx tensors [batch, heads, seq, d_head].
    let q = dev.tensor_from_vec(qg.clone(), shape);
    let k = dev.tensor_from_vec(kg.clone(), shape);
    let v = dev.tensor_from_vec(vg.clone(), shape);
    let w = dev.tensor_from_vec(wg.clone(), shape);
    let out = umup::ops::scaled_dot_product_attention(
        q.leaky_trace(),
        k.leaky_trace(),
        v.leaky_trace(),
        mult,
        causal,
    )
    .unwrap();
    let out_generic = out.as_vec();
    let grads = (out * w).sum::<(), _>().backward();
    let dq_generic = grads.get(&q).as_vec();
    let dk_generic = grads.get(&k).as_vec();
    let dv_generic = grads.get(&v).as_vec();

    // Fused: rows [batch·seq, heads·d_head].
    let sh = AttnShape {
        batch: b,
        seq: s,
        heads: h,
        d_head: d,
        layout: umup::ops::cpu::AttnLayout::Rows,
    };
    let (qf, kf, vf, dout) = (
        bhsd_to_rows(&qg, shape),
        bhsd_to_rows(&kg, shape),
        bhsd_to_rows(&vg, shape),
        bhsd_to_rows(&wg, shape),
    );
    let logit_scale = E::of(mult / d as f64);
    let out_scale = E::of(umup::scales::sdpa(s, d, mult, causal, 0.0).unwrap());
    let mut out = vec![E::nan(); n];
    let mut probs = vec![E::nan(); sh.probs_numel()];
    cpu::attention_fwd(
        sh,
        &qf,
        &kf,
        &vf,
        logit_scale,
        out_scale,
        causal,
        &mut out,
        &mut probs,
    );
    let (mut dq, mut dk, mut dv) = (vec![E::nan(); n], vec![E::nan(); n], vec![E::nan(); n]);
    cpu::attention_bwd(
        sh,
        &qf,
        &kf,
        &vf,
        &probs,
        &dout,
        logit_scale,
        out_scale,
        causal,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    // The probabilities: rows sum to 1, exactly 0 above the diagonal when causal.
    for (r, row) in probs.chunks(s).enumerate() {
        let i = r % s;
        let total: f64 = f64s(row).iter().sum();
        assert!(
            (total - 1.0).abs() < 10.0 * tol,
            "probs row {r} sums to {total}"
        );
        if causal {
            assert!(row[i + 1..].iter().all(|&p| p == E::zero()), "masked probs");
        }
    }

    let what = |t: &str| format!("attention {t} {shape:?} mult {mult} causal {causal}");
    [
        check(&what("out"), &rows_to_bhsd(&out, shape), &out_generic, tol),
        check(&what("dq"), &rows_to_bhsd(&dq, shape), &dq_generic, tol),
        check(&what("dk"), &rows_to_bhsd(&dk, shape), &dk_generic, tol),
        check(&what("dv"), &rows_to_bhsd(&dv, shape), &dv_generic, tol),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

fn attention_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(11);
    let mut worst = 0f64;
    // seq 40: a full 32-row query block and a partial one; seq 70: three blocks.
    for shape in [(2, 3, 40, 16), (1, 2, 7, 8), (3, 1, 64, 32), (1, 2, 70, 4)] {
        for causal in [false, true] {
            for mult in [1.0, 0.6] {
                worst = worst.max(attention_case::<E>(&dev, shape, mult, causal, tol));
            }
        }
    }
    worst
}

#[test]
fn attention_kernel_matches_generic_sdpa() {
    both_dtypes!("attention", attention_all);
}

// ---- RMSNorm --------------------------------------------------------------------------------

/// RMSNorm forward and backward. `tau = None`: `dx` overwritten (`keep = 0, scale = 1`) with the
/// gradient of `sum(rms_norm(x) ⊙ W1)`. `tau = Some(τ)`: the residual split of `x` into
/// (branch, skip), loss `sum(rms_norm(branch) ⊙ W1) + sum(skip ⊙ W2)`, fused as `dx = W2`
/// then `rms_norm_bwd(keep = b, scale = a)`.
fn rms_norm_case<E: Real>(
    dev: &Cpu,
    (rows, width): (usize, usize),
    tau: Option<f64>,
    tol: f64,
) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let eps = 1e-5;
    let n = rows * width;
    let (xv, w1v, w2v) = (randn::<E>(dev, n), randn::<E>(dev, n), randn::<E>(dev, n));
    let shape = (rows, width);
    let x = dev.tensor_from_vec(xv.clone(), shape);
    let w1 = dev.tensor_from_vec(w1v.clone(), shape);
    let w2 = dev.tensor_from_vec(w2v.clone(), shape);
    let (y_generic, grads) = match tau {
        None => {
            let y = umup::ops::rms_norm(x.leaky_trace(), None, eps).unwrap();
            (y.as_vec(), (y * w1).sum::<(), _>().backward())
        }
        Some(tau) => {
            let (branch, skip) = umup::ops::residual_split(x.leaky_trace(), tau).unwrap();
            let y = umup::ops::rms_norm(branch, None, eps).unwrap();
            let y_vec = y.as_vec();
            let loss = (y * w1).sum::<(), _>() + (skip * w2).sum::<(), _>();
            (y_vec, loss.backward())
        }
    };
    let dx_generic = grads.get(&x).as_vec();

    let mut y = vec![E::nan(); n];
    let mut inv = vec![E::nan(); rows];
    cpu::rms_norm_fwd(&xv, width, E::of(eps), &mut y, &mut inv);
    let mut dx;
    match tau {
        None => {
            dx = vec![E::nan(); n];
            cpu::rms_norm_bwd(&xv, &inv, &w1v, width, E::zero(), E::one(), &mut dx);
        }
        Some(tau) => {
            let (a, b) = umup::scales::residual(tau).unwrap();
            dx = w2v.clone();
            cpu::rms_norm_bwd(&xv, &inv, &w1v, width, E::of(b), E::of(a), &mut dx);
        }
    }
    let what = |t: &str| format!("rms_norm {t} ({rows}, {width}) tau {tau:?}");
    check(&what("y"), &y, &y_generic, tol).max(check(&what("dx"), &dx, &dx_generic, tol))
}

fn rms_norm_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(12);
    let mut worst = 0f64;
    // (300, 256): several parallel tasks of 64 rows.
    for shape in [(5, 48), (33, 256), (300, 256), (1, 7)] {
        for tau in [None, Some(0.4), Some(1.3)] {
            worst = worst.max(rms_norm_case::<E>(&dev, shape, tau, tol));
        }
    }
    worst
}

#[test]
fn rms_norm_kernels_match_generic_rms_norm() {
    both_dtypes!("rms_norm", rms_norm_all);
}

// ---- SwiGLU ---------------------------------------------------------------------------------

fn swiglu_case<E: Real>(dev: &Cpu, (rows, width): (usize, usize), mult: f64, tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let n = rows * width;
    let (xv, gv, wv) = (randn::<E>(dev, n), randn::<E>(dev, n), randn::<E>(dev, n));
    let shape = (rows, width);
    let x = dev.tensor_from_vec(xv.clone(), shape);
    let g = dev.tensor_from_vec(gv.clone(), shape);
    let w = dev.tensor_from_vec(wv.clone(), shape);
    let out = umup::ops::silu_glu(x.leaky_trace(), g.leaky_trace(), mult).unwrap();
    let out_generic = out.as_vec();
    let grads = (out * w).sum::<(), _>().backward();
    let (dx_generic, dg_generic) = (grads.get(&x).as_vec(), grads.get(&g).as_vec());

    let scale = E::of(umup::scales::silu_glu(mult).unwrap());
    let mut out = vec![E::nan(); n];
    cpu::swiglu_fwd(&xv, &gv, E::of(mult), scale, &mut out);
    let (mut dx, mut dg) = (vec![E::nan(); n], vec![E::nan(); n]);
    cpu::swiglu_bwd(&xv, &gv, &wv, E::of(mult), scale, &mut dx, &mut dg);
    let what = |t: &str| format!("swiglu {t} ({rows}, {width}) mult {mult}");
    [
        check(&what("out"), &out, &out_generic, tol),
        check(&what("dx"), &dx, &dx_generic, tol),
        check(&what("dg"), &dg, &dg_generic, tol),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

fn swiglu_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(13);
    let mut worst = 0f64;
    // (70, 300): 21000 elements, more than one 16384-element parallel chunk.
    for shape in [(5, 48), (33, 96), (70, 300)] {
        for mult in [1.0, 1.7] {
            worst = worst.max(swiglu_case::<E>(&dev, shape, mult, tol));
        }
    }
    worst
}

#[test]
fn swiglu_kernels_match_generic_silu_glu() {
    both_dtypes!("swiglu", swiglu_all);
}

// ---- cross entropy --------------------------------------------------------------------------

/// The fused cross entropy against `cross_entropy` (u-μP gradient, `grad_coef = V/√(V−1)`) and
/// `cross_entropy_plain` (true gradient of the mean, `grad_coef = mult/rows`), and its per-row
/// losses against a dfdx `−log_softmax(mult·x)[t]`.
fn cross_entropy_case<E: Real>(dev: &Cpu, (rows, vocab): (usize, usize), mult: f64, tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64((rows * 1000 + vocab) as u64);
    let targets: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..vocab)).collect();
    // Logits of scale 2, so the softmax is far from uniform.
    let lv: Vec<E> = randn::<E>(dev, rows * vocab)
        .into_iter()
        .map(|v| v * E::of(2.0))
        .collect();
    let shape = (rows, vocab);
    let logits = dev.tensor_from_vec(lv.clone(), shape);
    let mut worst = 0f64;
    let what = |t: &str| format!("cross_entropy {t} ({rows}, {vocab}) mult {mult}");

    // Per-row losses against a plain dfdx composition.
    let mut onehot = vec![E::zero(); rows * vocab];
    for (r, &t) in targets.iter().enumerate() {
        onehot[r * vocab + t] = E::one();
    }
    let onehot = dev.tensor_from_vec(onehot, shape);
    let per_row_generic = ((logits.clone() * E::of(mult)).log_softmax::<Axis<1>>() * onehot)
        .sum::<(usize,), Axis<1>>()
        .negate()
        .as_vec();

    for plain in [false, true] {
        let loss = if plain {
            umup::ops::cross_entropy_plain(
                logits.leaky_trace(),
                &targets,
                mult,
                umup::ops::Reduction::Mean,
            )
        } else {
            umup::ops::cross_entropy(
                logits.leaky_trace(),
                &targets,
                mult,
                umup::ops::Reduction::Mean,
            )
        }
        .unwrap();
        let loss_generic = loss.array();
        let dl_generic = loss.backward().get(&logits).as_vec();
        let grad_coef = if plain {
            mult / rows as f64
        } else {
            umup::scales::cross_entropy_grad(vocab).unwrap()
        };
        let mut dl = vec![E::nan(); rows * vocab];
        let losses = cpu::cross_entropy_fwd_bwd(
            &lv,
            vocab,
            &targets,
            E::of(mult),
            E::of(grad_coef),
            &mut dl,
        );
        let mean = f64s(&losses).iter().sum::<f64>() / rows as f64;
        let kind = if plain { "plain" } else { "u-μP" };
        worst = worst
            .max(check(
                &what(&format!("{kind} mean loss")),
                &[E::of(mean)],
                &[loss_generic],
                tol,
            ))
            .max(check(
                &what(&format!("{kind} dlogits")),
                &dl,
                &dl_generic,
                tol,
            ))
            .max(check(
                &what("per-row losses"),
                &losses,
                &per_row_generic,
                tol,
            ));
    }
    worst
}

fn cross_entropy_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(14);
    let mut worst = 0f64;
    // (33, 1000): 16 rows per parallel task, so three tasks.
    for shape in [(6, 50), (33, 1000), (4, 2)] {
        for mult in [1.0, 1.4] {
            worst = worst.max(cross_entropy_case::<E>(&dev, shape, mult, tol));
        }
    }
    worst
}

#[test]
fn cross_entropy_kernel_matches_generic_losses() {
    both_dtypes!("cross_entropy", cross_entropy_all);
}

// ---- lincomb, transpose, embedding ----------------------------------------------------------

fn lincomb_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(15);
    let mut worst = 0f64;
    // 40000: three 16384-element parallel chunks, the last partial.
    for n in [1, 100, 40000] {
        let (fv, xv) = (randn::<E>(&dev, n), randn::<E>(&dev, n));
        let f = dev.tensor_from_vec(fv.clone(), (n,));
        let x = dev.tensor_from_vec(xv.clone(), (n,));
        // The residual add a·f + b·x.
        for tau in [0.3, 1.0, 2.5] {
            let (a, b) = umup::scales::residual(tau).unwrap();
            let generic = umup::ops::residual_add(f.clone(), x.clone(), tau)
                .unwrap()
                .as_vec();
            let mut out = vec![E::nan(); n];
            cpu::lincomb(&mut out, E::of(a), &fv, E::of(b), &xv);
            worst = worst.max(check(
                &format!("lincomb residual n {n} tau {tau}"),
                &out,
                &generic,
                tol,
            ));
        }
        // Arbitrary coefficients, and b = 0, where x must not be read (it is NaN here).
        let (a, b) = (0.7, -1.3);
        let generic = (f.clone() * E::of(a) + x.clone() * E::of(b)).as_vec();
        let mut out = vec![E::nan(); n];
        cpu::lincomb(&mut out, E::of(a), &fv, E::of(b), &xv);
        worst = worst.max(check(&format!("lincomb n {n}"), &out, &generic, tol));
        let generic = (f.clone() * E::of(a)).as_vec();
        let mut out = vec![E::nan(); n];
        cpu::lincomb(&mut out, E::of(a), &fv, E::zero(), &vec![E::nan(); n]);
        worst = worst.max(check(&format!("lincomb b=0 n {n}"), &out, &generic, tol));
    }
    worst
}

#[test]
fn lincomb_kernel_matches_generic_residual_add() {
    both_dtypes!("lincomb", lincomb_all);
}

#[test]
fn transpose_kernel_matches_naive_transpose() {
    let dev = Cpu::seed_from_u64(16);
    // Tile edges (32) inside, at and off the boundaries; a single row and a single column.
    for (rows, cols) in [
        (1, 1),
        (3, 5),
        (1, 40),
        (40, 1),
        (45, 70),
        (64, 32),
        (100, 33),
    ] {
        let a = randn::<f32>(&dev, rows * cols);
        let mut naive = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                naive[c * rows + r] = a[r * cols + c];
            }
        }
        assert_eq!(
            cpu::transpose(&a, rows, cols),
            naive,
            "transpose ({rows}, {cols})"
        );
        // Transposing back gives the original.
        assert_eq!(cpu::transpose(&naive, cols, rows), a);
    }
}

fn embedding_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    use rand::{Rng, SeedableRng};
    let dev = Cpu::seed_from_u64(17);
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut worst = 0f64;
    // Far more tokens than rows: ids repeat (and some rows get no gradient).
    for (vocab, width, tokens) in [(11, 24, 50), (64, 32, 96), (5, 3, 1)] {
        let mut ids: Vec<usize> = (0..tokens).map(|_| rng.gen_range(0..vocab)).collect();
        if tokens > 2 {
            ids[2] = ids[0];
        }
        let tv = randn::<E>(&dev, vocab * width);
        let wv = randn::<E>(&dev, tokens * width);
        let table = dev.tensor_from_vec(tv.clone(), (vocab, width));
        let w = dev.tensor_from_vec(wv.clone(), (tokens, width));
        let id_t = dev.tensor_from_vec(ids.clone(), (tokens,));
        let out = umup::ops::embedding(id_t.traced(Gradients::leaky()), &table).unwrap();
        let out_generic = out.as_vec();
        let dtable_generic = (out * w).sum::<(), _>().backward().get(&table).as_vec();

        let mut out = vec![E::nan(); tokens * width];
        cpu::embedding_fwd(&tv, width, &ids, &mut out);
        assert_eq!(
            out, out_generic,
            "embedding forward ({vocab}, {width}, {tokens})"
        );
        let scale = E::of(umup::scales::embedding_grad(vocab, tokens).unwrap());
        let mut dtable = vec![E::zero(); vocab * width];
        cpu::embedding_bwd(&wv, width, &ids, scale, &mut dtable);
        let what = format!("embedding dtable ({vocab}, {width}, {tokens})");
        worst = worst.max(check(&what, &dtable, &dtable_generic, tol));
        // `embedding_bwd` accumulates into what is already there.
        let start = randn::<E>(&dev, vocab * width);
        let mut acc = start.clone();
        cpu::embedding_bwd(&wv, width, &ids, scale, &mut acc);
        let want: Vec<E> = start
            .iter()
            .zip(&dtable_generic)
            .map(|(&s, &g)| s + g)
            .collect();
        worst = worst.max(check(&format!("{what} accumulated"), &acc, &want, tol));
    }
    worst
}

#[test]
fn embedding_kernels_match_generic_embedding() {
    both_dtypes!("embedding", embedding_all);
}

// ---- gemm -----------------------------------------------------------------------------------

/// `cpu::gemm` (scale, accumulate, transposed and block views, one thread or all) against
/// dfdx's `matmul`.
fn gemm_all<E: Real>(tol: f64) -> f64
where
    Cpu: Device<E> + umup::Backend<E>,
    StandardNormal: Distribution<E>,
{
    let dev = Cpu::seed_from_u64(18);
    let mut worst = 0f64;
    let scale = 0.7;
    for (m, k, n) in [(5, 7, 3), (64, 48, 80), (130, 70, 90), (1, 33, 1)] {
        let (av, bv, cv) = (
            randn::<E>(&dev, m * k),
            randn::<E>(&dev, k * n),
            randn::<E>(&dev, m * n),
        );
        let a = dev.tensor_from_vec(av.clone(), (m, k));
        let b = dev.tensor_from_vec(bv.clone(), (k, n));
        let c = dev.tensor_from_vec(cv.clone(), (m, n));
        let ab = a.matmul(b) * E::of(scale);
        let product = ab.as_vec();
        let accumulated = (ab + c).as_vec();
        // Aᵀ and Bᵀ stored row-major; A as columns 3..3+k of a wider matrix.
        let at = cpu::transpose(&av, m, k);
        let bt = cpu::transpose(&bv, k, n);
        let pad = 5;
        let mut a_wide = vec![E::nan(); m * (k + pad)];
        for r in 0..m {
            a_wide[r * (k + pad) + 3..r * (k + pad) + 3 + k]
                .copy_from_slice(&av[r * k..(r + 1) * k]);
        }
        for (case, threads) in [
            (0, Threads::One),
            (1, Threads::All),
            (2, Threads::One),
            (3, Threads::All),
        ] {
            let lhs = match case {
                1 => View::rows(&at, k, m).t(),
                3 => View::block(&a_wide, 3, m, k, k + pad),
                _ => View::rows(&av, m, k),
            };
            let rhs = match case {
                2 | 3 => View::rows(&bt, n, k).t(),
                _ => View::rows(&bv, k, n),
            };
            for accumulate in [false, true] {
                // The destination: columns 1..1+n of a wider matrix whose other cells must stay.
                let (dw, sentinel) = (n + 2, E::of(123.0));
                let mut dst = vec![sentinel; m * dw];
                for r in 0..m {
                    for j in 0..n {
                        dst[r * dw + 1 + j] = if accumulate { cv[r * n + j] } else { E::nan() };
                    }
                }
                gemm_into(
                    &mut dst,
                    m,
                    n,
                    dw,
                    accumulate,
                    lhs,
                    rhs,
                    E::of(scale),
                    threads,
                );
                let mut got = Vec::with_capacity(m * n);
                for r in 0..m {
                    got.extend_from_slice(&dst[r * dw + 1..r * dw + 1 + n]);
                    assert!(
                        dst[r * dw] == sentinel && dst[r * dw + n + 1] == sentinel,
                        "gemm wrote outside its destination block"
                    );
                }
                let want = if accumulate { &accumulated } else { &product };
                let what = format!("gemm ({m}, {k}, {n}) case {case} accumulate {accumulate}");
                worst = worst.max(check(&what, &got, want, tol));
            }
        }
    }
    worst
}

#[allow(clippy::too_many_arguments)]
fn gemm_into<E: Real>(
    dst: &mut [E],
    m: usize,
    n: usize,
    row_stride: usize,
    accumulate: bool,
    lhs: View<'_, E>,
    rhs: View<'_, E>,
    scale: E,
    threads: Threads,
) {
    cpu::gemm(
        ViewMut::block(dst, 1, m, n, row_stride),
        accumulate,
        lhs,
        rhs,
        scale,
        threads,
    );
}

#[test]
fn gemm_matches_dfdx_matmul() {
    both_dtypes!("gemm", gemm_all);
}

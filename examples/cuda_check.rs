//! Runs umup on `Cuda` against `Cpu`: the conformance fixtures, the LM's loss and gradients, and
//! the training-step time. Needs the `cuda` feature and a GPU.
//!
//! ```text
//! cargo run --release --features cuda --example cuda_check -- [fixtures/public.json]
//! cargo run --release --features cuda --example cuda_check -- --steps 20 --rounds 3
//! cargo run --release --features cuda --example cuda_check -- --steps-only --rounds 1
//! ```
//!
//! 0. **umup's `Cuda` kernels** (the scale primitive, gradient scaling, the scaled add) against
//!    their device-generic compositions on `Cuda`, in f64, f32 and f16, at sizes that do and do
//!    not fill whole blocks: values and gradients.
//! 1. **Conformance on `Cuda`**: every fixture case through the public API on `Cuda` in `f64`,
//!    with the fixture's tolerances (the same runner as `examples/conformance.rs`).
//! 2. **LM on `Cuda` vs `Cpu`** (width 256, 4 layers, 4 heads, batch 8×128, f32): the same
//!    weights (a checkpoint written on `Cpu` and read on `Cuda`), the same batch; the loss and
//!    every parameter's gradient (from the first Adam moment after one step, `m = (1 − β₁)·g`)
//!    compared with the `Cpu` kernels (`Cuda` runs umup's `Cuda` kernels and the generic compositions).
//! 3. **Step time**: one AdamW training step of that model, u-μP and SP on `Cuda` and u-μP on
//!    `Cpu` (its kernels, all cores), interleaved; medians over `--rounds` × `--steps`, at the
//!    reference batch 8×128 and at `--big-batch`×128.
//!
//! Exits with status 1 if a conformance case fails or a gradient differs by more than
//! `--grad-tol` (norm-wise relative error).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use umup::conformance;
use umup::device::TrainDevice;
use umup::dfdx::nn::ZeroGrads;
use umup::dfdx::prelude::*;
use umup::models::LmOn;
use umup::nn::{Hyper, Param, Sp, Umup};
use umup::optim::{OptimConfig, Optimizer};

#[path = "common/bench.rs"]
mod bench;
use bench::{batch_of as batch, median, opts, BATCH, D, F, L, SEQ};

#[derive(Parser)]
#[command(about = "umup on Cuda vs Cpu: conformance, LM gradients, step time")]
struct Args {
    /// Conformance fixture file.
    #[arg(default_value = "fixtures/public.json")]
    fixtures: String,
    /// Timed steps per model per round (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Rounds of timed steps.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequences per batch of the second timing.
    #[arg(long, default_value_t = 64)]
    big_batch: usize,
    /// Largest allowed norm-wise relative gradient difference Cuda vs Cpu.
    #[arg(long, default_value_t = 1e-4)]
    grad_tol: f64,
    /// Only the step times (section 3): what `tools/reference/bench_step_gpu.py` runs each round.
    #[arg(long)]
    steps_only: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> umup::Result<bool> {
    if args.steps == 0 || args.rounds == 0 || args.big_batch == 0 {
        return Err(umup::Error::Invalid(
            "--steps, --rounds and --big-batch must be at least 1".into(),
        ));
    }
    if args.steps_only {
        step_times(args)?;
        return Ok(true);
    }
    let cuda = Cuda::open(0)?;
    let kernels_ok = kernels_on_cuda(&cuda)?;
    let conformance_ok = conformance_on_cuda(&cuda, &args.fixtures)?;
    let grads_ok = compare_lm(&cuda, args.grad_tol)?;
    step_times(args)?;
    Ok(kernels_ok && conformance_ok && grads_ok)
}

/// Section 0: each `Cuda` kernel method against its generic composition, per dtype.
fn kernels_on_cuda(cuda: &Cuda) -> umup::Result<bool> {
    println!("## 0. umup's Cuda kernels vs their generic compositions (norm-wise rel diff)");
    println!("| dtype | n | scale_grad y | scale_grad dx | add y | add da, db | a+a da | scale_gradient |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut ok = true;
    ok &= kernels_for::<f64>(cuda, "f64", 1e-12)?;
    ok &= kernels_for::<f32>(cuda, "f32", 1e-6)?;
    ok &= kernels_for::<umup::dfdx::dtypes::f16>(cuda, "f16", 2e-3)?;
    println!("   {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// Host values → a `Cuda` vector of dtype `E`.
fn vector<E: Dtype>(cuda: &Cuda, v: &[f64]) -> umup::Result<Tensor<(usize,), E, Cuda>>
where
    Cuda: Device<E>,
{
    let data: Vec<E> = v
        .iter()
        .map(|&x| E::from_f64(x).unwrap_or_default())
        .collect();
    cuda.try_tensor_from_vec(data, (v.len(),))
        .map_err(umup::Error::device)
}

/// `‖a − b‖ / ‖b‖` of two `Cuda` tensors read back as f64.
fn tensor_diff<E: Dtype>(a: &Tensor<(usize,), E, Cuda>, b: &Tensor<(usize,), E, Cuda>) -> f64
where
    Cuda: Device<E>,
{
    let f = |t: &Tensor<(usize,), E, Cuda>| -> Vec<f32> {
        t.as_vec()
            .iter()
            .map(|x| x.to_f64().unwrap_or(f64::NAN) as f32)
            .collect()
    };
    rel_diff(&f(a), &f(b))
}

fn kernels_for<E: Dtype>(cuda: &Cuda, name: &str, tol: f64) -> umup::Result<bool>
where
    Cuda: umup::ops::Backend<E>,
{
    use umup::ops::{generic, scale_grad, scale_grad_generic, Backend};
    let dev = |e: CudaError| umup::Error::device(e);
    let mut ok = true;
    // 1: a single element; 2100: a partial last block; 1M + 3: a grid-stride loop.
    for n in [1usize, 2100, (1 << 20) + 3] {
        let host = |k: usize| -> Vec<f64> {
            (0..n)
                .map(|i| (((i * 7919 + k * 104729) % 2003) as f64 / 1001.0) - 1.0)
                .collect()
        };
        let (x, w, b) = (
            vector::<E>(cuda, &host(1))?,
            vector::<E>(cuda, &host(2))?,
            vector::<E>(cuda, &host(3))?,
        );
        // scale_grad: value 0.37·x, gradient 2.5·w.
        let run_scale = |kernel: bool| -> umup::Result<_> {
            let xt = x.clone().leaky_traced();
            let y = if kernel {
                scale_grad(xt, 0.37, 2.5)?
            } else {
                scale_grad_generic(xt, 0.37, 2.5)?
            };
            let (y, tape) = y.split_tape();
            let loss =
                umup::ops::sum_all(y.clone().put_tape(tape).try_mul(w.clone()).map_err(dev)?)
                    .map_err(dev)?;
            let g = loss.backward();
            Ok((y, g.get(&x)))
        };
        let (yk, gk) = run_scale(true)?;
        let (yg, gg) = run_scale(false)?;
        // The scaled add: value 0.6·x + 1.7·b, gradients 0.8·w and 1.3·w.
        let scales = [0.6, 1.7, 0.8, 1.3];
        let run_add = |kernel: bool, same: bool| -> umup::Result<_> {
            let other = if same { &x } else { &b };
            let (xt, bt) = (x.clone().leaky_traced(), other.clone().leaky_traced());
            let y = if kernel {
                <Cuda as Backend<E>>::add_kernel(xt, bt, scales)?
            } else {
                generic::add(xt, bt, scales)?
            };
            let (y, tape) = y.split_tape();
            let loss =
                umup::ops::sum_all(y.clone().put_tape(tape).try_mul(w.clone()).map_err(dev)?)
                    .map_err(dev)?;
            let g = loss.backward();
            Ok((y, g.get(&x), g.get(other)))
        };
        let (ak, dak, dbk) = run_add(true, false)?;
        let (ag, dag, dbg) = run_add(false, false)?;
        let (_, sk, _) = run_add(true, true)?;
        let (_, sg, _) = run_add(false, true)?;
        // scale_gradient: a gradient buffer times 0.3, in place, against 0.3·buffer.
        let mut store =
            umup::ops::sum_all(x.clone().leaky_traced().try_mul(w.clone()).map_err(dev)?)
                .map_err(dev)?
                .backward();
        let before = store.get(&x);
        <Cuda as Backend<E>>::scale_gradient(&mut store, &x, E::from_f64(0.3).unwrap_or_default())
            .map_err(dev)?;
        let expected = before
            .try_mul(E::from_f64(0.3).unwrap_or_default())
            .map_err(dev)?;
        let diffs = [
            tensor_diff(&yk, &yg),
            tensor_diff(&gk, &gg),
            tensor_diff(&ak, &ag),
            tensor_diff(&dak, &dag).max(tensor_diff(&dbk, &dbg)),
            tensor_diff(&sk, &sg),
            tensor_diff(&store.get(&x), &expected),
        ];
        let row: Vec<String> = diffs.iter().map(|d| format!("{d:.1e}")).collect();
        println!("| {name} | {n} | {} |", row.join(" | "));
        ok &= diffs.iter().all(|&d| d <= tol);
    }
    Ok(ok)
}

fn conformance_on_cuda(cuda: &Cuda, path: &str) -> umup::Result<bool> {
    let file = conformance::load(path)?;
    let t = Instant::now();
    // A panic inside dfdx's Cuda kernels fails that case instead of ending the run.
    let results: Vec<_> = file
        .cases
        .iter()
        .map(|case| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                conformance::run_case_on(cuda, case)
            }))
            .unwrap_or_else(|_| conformance::CaseResult {
                name: case.name.clone(),
                op: case.op.clone(),
                passed: false,
                worst_abs: f64::INFINITY,
                worst_rel: f64::INFINITY,
                message: Some("panicked (see the message above)".into()),
            })
        })
        .collect();
    let seconds = t.elapsed().as_secs_f64();
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for r in &failed {
        println!("{r}");
    }
    let worst_abs = results.iter().map(|r| r.worst_abs).fold(0.0, f64::max);
    let worst_rel = results.iter().map(|r| r.worst_rel).fold(0.0, f64::max);
    println!(
        "## 1. conformance on Cuda (f64, {path}): {} passed, {} failed; worst abs {worst_abs:.2e}, \
         worst rel {worst_rel:.2e}; {seconds:.1} s",
        results.len() - failed.len(),
        failed.len()
    );
    Ok(failed.is_empty())
}

/// One AdamW step on `model`; the loss and the optimizer state (`m.*` holds `(1 − β₁)·g`).
fn one_step<Dev: TrainDevice>(
    model: &mut LmOn<D, F, L, Umup, Dev>,
) -> umup::Result<(f64, BTreeMap<String, Vec<f32>>)> {
    let dev = model.embed.weight.device().clone();
    let (ids, targets) = batch(BATCH);
    let table = LmOn::<D, F, L, Umup, Dev>::param_table()?;
    let mut opt = Optimizer::<f32, Dev>::for_table(OptimConfig::adamw(1.0), &table)?;
    let n = ids.len();
    let x = dev
        .try_tensor_from_vec(ids, (n,))
        .map_err(umup::Error::device)?
        .traced(model.alloc_grads());
    let (hp, opts) = (Hyper::default(), opts());
    let loss = model.loss(x, &targets, (BATCH, SEQ), &hp, &opts, None)?;
    let value = f64::from(loss.as_vec()[0]);
    let mut grads = loss.backward();
    opt.update(model, &mut grads)?;
    let state = opt.state(model)?.into_iter().collect();
    Ok((value, state))
}

/// Norm-wise relative difference `‖a − b‖ / ‖b‖`.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn compare_lm(cuda: &Cuda, tol: f64) -> umup::Result<bool> {
    let cpu = Cpu::seed_from_u64(0);
    let mut on_cpu = LmOn::<D, F, L, Umup, Cpu>::build(&cpu)?;
    let dir = std::env::temp_dir().join(format!("umup-cuda-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| umup::Error::BadInput(e.to_string()))?;
    let init = dir.join("init.safetensors");
    umup::checkpoint::save(&on_cpu, &init, &BTreeMap::new())?;
    let mut on_cuda = LmOn::<D, F, L, Umup, Cuda>::build(cuda)?;
    umup::checkpoint::load(&mut on_cuda, &init)?;
    std::fs::remove_dir_all(&dir).ok();

    let (loss_p, st_p) = one_step(&mut on_cpu)?;
    let (loss_c, st_c) = one_step(&mut on_cuda)?;
    println!(
        "## 2. LM width {D}, depth {L}, batch {BATCH}×{SEQ}, f32: loss Cuda {loss_c:.6}, \
         Cpu {loss_p:.6}"
    );
    let mut worst = (0.0f64, String::new());
    for (name, m_c) in st_c.iter().filter(|(k, _)| k.starts_with("m.")) {
        let Some(m_p) = st_p.get(name) else {
            return Err(umup::Error::Invalid(format!("{name} missing on Cpu")));
        };
        let d = rel_diff(m_c, m_p);
        if d > worst.0 {
            worst = (d, name[2..].to_string());
        }
    }
    let count = st_c.keys().filter(|k| k.starts_with("m.")).count();
    let loss_rel = ((loss_c - loss_p) / loss_p).abs();
    println!(
        "   gradients of {count} tensors, worst ‖g_cuda − g_cpu‖/‖g_cpu‖: {:.2e} ({}); \
         loss rel diff {loss_rel:.2e}",
        worst.0, worst.1
    );
    let ok = worst.0 <= tol && loss_rel <= tol;
    println!(
        "   {} (tolerance {tol:.0e})",
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}

/// A model, its optimizer and gradients, ready to step.
struct Stepper<P: Param, Dev: TrainDevice> {
    model: LmOn<D, F, L, P, Dev>,
    opt: Optimizer<f32, Dev>,
    grads: Option<Gradients<f32, Dev>>,
    dev: Dev,
}

impl<P: Param, Dev: TrainDevice> Stepper<P, Dev> {
    fn new(lr: f64) -> umup::Result<Self> {
        let dev = Dev::open(0)?;
        dev.try_enable_cache().map_err(umup::Error::device)?;
        let model = LmOn::<D, F, L, P, Dev>::build(&dev)?;
        let opt = Optimizer::for_table(
            OptimConfig::adamw(lr),
            &LmOn::<D, F, L, P, Dev>::param_table()?,
        )?;
        let grads = Some(model.alloc_grads());
        Ok(Stepper {
            model,
            opt,
            grads,
            dev,
        })
    }

    /// One training step; returns its wall time in seconds (reading the loss waits for the
    /// device, and the next step's loss waits for this step's update).
    fn step(
        &mut self,
        ids: &[usize],
        targets: &[usize],
        shape: (usize, usize),
    ) -> umup::Result<f64> {
        let t = Instant::now();
        let grads = self
            .grads
            .take()
            .unwrap_or_else(|| self.model.alloc_grads());
        let x = self
            .dev
            .try_tensor_from_vec(ids.to_vec(), (ids.len(),))
            .map_err(umup::Error::device)?;
        let loss = self.model.loss(
            x.traced(grads),
            targets,
            shape,
            &Hyper::default(),
            &opts(),
            None,
        )?;
        let mut g = loss.backward();
        self.opt.update(&mut self.model, &mut g)?;
        self.model.zero_grads(&mut g);
        self.grads = Some(g);
        // Waits for the device (the update's kernels are queued behind the loss).
        let _ = self.model.embed.weight.as_vec().first().copied();
        Ok(t.elapsed().as_secs_f64())
    }
}

fn step_times(args: &Args) -> umup::Result<()> {
    let mut u_cuda = Stepper::<Umup, Cuda>::new(1.0)?;
    let mut s_cuda = Stepper::<Sp, Cuda>::new(1e-3)?;
    let mut u_cpu = Stepper::<Umup, Cpu>::new(1.0)?;
    for b in [BATCH, args.big_batch] {
        let (ids, targets) = batch(b);
        let shape = (b, SEQ);
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..2 {
            u_cuda.step(&ids, &targets, shape)?;
            s_cuda.step(&ids, &targets, shape)?;
            u_cpu.step(&ids, &targets, shape)?;
        }
        for _ in 0..args.rounds * args.steps {
            times[0].push(u_cuda.step(&ids, &targets, shape)?);
            times[1].push(s_cuda.step(&ids, &targets, shape)?);
            times[2].push(u_cpu.step(&ids, &targets, shape)?);
        }
        let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
        let tokens = (b * SEQ) as f64;
        println!(
            "## 3. training step, width {D}, depth {L}, batch {b}×{SEQ} (median of {} steps)",
            args.rounds * args.steps
        );
        println!("| model | ms/step | tokens/s | vs u-μP on Cuda |");
        println!("|---|---:|---:|---:|");
        for (name, m) in [
            "u-μP on Cuda (umup kernels, generic ops)",
            "SP on Cuda (same code, no u-μP scales)",
            "u-μP on Cpu (kernels, all cores)",
        ]
        .iter()
        .zip(&med)
        {
            println!(
                "| {name} | {:.2} | {:.0} | {:.2} |",
                m * 1e3,
                tokens / m,
                m / med[0]
            );
        }
    }
    Ok(())
}

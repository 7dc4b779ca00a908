//! Runtime behaviour beyond the fixtures: the fused `Cpu` scale kernel against the generic path,
//! gradient accumulation through it, simulated FP8 matmuls, and the optimizers.

use umup::dfdx::nn::ZeroGrads;
use umup::dfdx::prelude::*;
use umup::formats::{Format, MatmulFormats, Rounding};
use umup::ops::{self, MatmulQuantiser};
use umup::optim::{LrSchedule, OptimConfig, Optimizer, OptimizerKind};
use umup::params::{ParamSpec, Role};
use umup::Constraint;

type Tp = OwnedTape<f32, Cpu>;

fn dev() -> Cpu {
    Cpu::seed_from_u64(1472)
}

fn randn(dev: &Cpu, r: usize, c: usize) -> Tensor<(usize, usize), f32, Cpu> {
    dev.sample_normal_like(&(r, c))
}

#[test]
fn fused_scale_kernel_matches_the_generic_path_bit_for_bit() {
    let dev = dev();
    let x = randn(&dev, 37, 53);
    let g = randn(&dev, 37, 53);
    for (fwd, bwd) in [(0.125, 3.0), (1.0, 0.3), (2.5, 1.0), (-1.5, 0.75)] {
        let y1 = ops::scale_grad(x.leaky_trace(), fwd, bwd).unwrap();
        let y2 = ops::scale_grad_generic(x.leaky_trace(), fwd, bwd).unwrap();
        assert_eq!(y1.as_vec(), y2.as_vec());
        assert_eq!(y1.as_vec(), (x.clone() * fwd as f32).as_vec());
        let g1 = (y1 * g.clone()).sum().backward().get(&x).as_vec();
        let g2 = (y2 * g.clone()).sum().backward().get(&x).as_vec();
        assert_eq!(g1, g2);
        let want: Vec<f32> = g.as_vec().iter().map(|v| v * bwd as f32).collect();
        assert_eq!(g1, want);
    }
}

#[test]
fn scale_grad_accumulates_with_other_uses_of_its_input() {
    let dev = dev();
    let x = randn(&dev, 8, 16);
    let (g1, g2) = (randn(&dev, 8, 16), randn(&dev, 8, 16));
    let xt = x.leaky_trace();
    let y1 = ops::scale_grad(xt.with_empty_tape(), 2.0, 3.0).unwrap();
    let y2 = ops::scale_grad(xt.with_empty_tape(), 5.0, 7.0).unwrap();
    // x also used directly: grad 1·g1 from the plain path.
    let loss = (y1 * g1.clone()).sum() + (y2 * g2.clone()).sum() + (xt * g1.clone()).sum();
    let got = loss.backward().get(&x).as_vec();
    for ((got, a), b) in got.iter().zip(g1.as_vec()).zip(g2.as_vec()) {
        let want = 3.0 * a + 7.0 * b + a;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}

#[test]
fn sum_all_sums_every_rank_and_passes_the_gradient() {
    let dev = dev();
    let x = randn(&dev, 3, 5);
    let sum = ops::sum_all(x.leaky_trace()).unwrap();
    let expected: f32 = x.as_vec().iter().sum();
    assert!((sum.as_vec()[0] - expected).abs() <= 1e-5 * expected.abs().max(1.0));
    let g = sum.backward();
    assert!(g.get(&x).as_vec().iter().all(|&v| v == 1.0));
    // A scalar is summed through a one-element vector (dfdx's Cuda reduction of rank 0 panics).
    let s: Tensor<(), f32, Cpu> = dev.tensor(2.5);
    let y = ops::sum_all(s.leaky_trace() * 3.0).unwrap();
    assert_eq!(y.as_vec(), vec![7.5]);
    assert_eq!(y.backward().get(&s).as_vec(), vec![3.0]);
}

#[test]
fn scale_ops_are_identities_without_a_tape() {
    let dev = dev();
    let x = randn(&dev, 3, 4);
    assert_eq!(ops::scale_bwd(x.clone(), 9.0).unwrap().as_vec(), x.as_vec());
    assert_eq!(
        ops::scale_fwd(x.clone(), 2.0).unwrap().as_vec(),
        (x.clone() * 2.0).as_vec()
    );
}

#[test]
fn quantise_fwd_rounds_values_and_passes_gradients_straight_through() {
    let dev = dev();
    let x = randn(&dev, 16, 32) * 30.0;
    let g = randn(&dev, 16, 32);
    let mut q = MatmulQuantiser::new(MatmulFormats::fp8_ocp(), 0);
    let y = q.quantise_fwd(x.leaky_trace()).unwrap();
    let want: Vec<f32> = x
        .as_vec()
        .iter()
        .map(|&v| Format::E4m3fn.quantise_f32(v))
        .collect();
    assert_eq!(y.as_vec(), want);
    assert_ne!(y.as_vec(), x.as_vec());
    let grad = (y * g.clone()).sum().backward().get(&x).as_vec();
    assert_eq!(grad, g.as_vec());
    let st = q.forward_stats();
    assert_eq!(st.total, 16 * 32);
}

#[test]
fn quantise_bwd_rounds_the_gradient_only() {
    let dev = dev();
    let x = randn(&dev, 16, 32);
    let g = randn(&dev, 16, 32) * 1e4;
    let mut q = MatmulQuantiser::new(MatmulFormats::fp8_ocp(), 0);
    let y = q.quantise_bwd(x.leaky_trace()).unwrap();
    assert_eq!(y.as_vec(), x.as_vec());
    let grad = (y * g.clone()).sum().backward().get(&x).as_vec();
    let want: Vec<f32> = g
        .as_vec()
        .iter()
        .map(|&v| Format::E5m2.quantise_f32(v))
        .collect();
    assert_eq!(grad, want);
    assert_eq!(q.backward_stats().total, 16 * 32);
}

#[test]
fn fp8_linear_uses_quantised_operands_in_both_passes() {
    let dev = dev();
    let (rows, fan_in, fan_out) = (8usize, 16usize, 12usize);
    let x = randn(&dev, rows, fan_in);
    let w = randn(&dev, fan_out, fan_in);
    let g = randn(&dev, rows, fan_out);
    let mut q = MatmulQuantiser::new(MatmulFormats::fp8_ocp(), 0);
    let y = q
        .linear(x.leaky_trace(), &w, None, Constraint::ToOutputScale)
        .unwrap();
    let q4 = |t: &Tensor<(usize, usize), f32, Cpu>| -> Vec<f32> {
        t.as_vec()
            .iter()
            .map(|&v| Format::E4m3fn.quantise_f32(v))
            .collect()
    };
    let (xq, wq) = (q4(&x), q4(&w));
    let gq: Vec<f32> = g
        .as_vec()
        .iter()
        .map(|&v| Format::E5m2.quantise_f32(v))
        .collect();
    let s = 1.0 / (fan_in as f32).sqrt();
    let yv = y.as_vec();
    for r in 0..rows {
        for o in 0..fan_out {
            let dot: f32 = (0..fan_in)
                .map(|i| xq[r * fan_in + i] * wq[o * fan_in + i])
                .sum();
            assert!((yv[r * fan_out + o] - s * dot).abs() < 1e-4);
        }
    }
    let grads = (y * g.clone()).sum().backward();
    let gx = grads.get(&x).as_vec();
    for r in 0..rows {
        for i in 0..fan_in {
            let dot: f32 = (0..fan_out)
                .map(|o| gq[r * fan_out + o] * wq[o * fan_in + i])
                .sum();
            assert!((gx[r * fan_in + i] - s * dot).abs() < 1e-4);
        }
    }
}

#[test]
fn stochastic_fp8_sim_is_reproducible_from_its_seed() {
    let dev = dev();
    let x = randn(&dev, 8, 8);
    let run = |seed| {
        let mut q = MatmulQuantiser::new(MatmulFormats::fp8_sim(), seed);
        q.quantise_fwd(x.clone()).unwrap().as_vec()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    assert_eq!(
        MatmulFormats::fp8_sim().forward,
        Some((Format::GcE4m3, Rounding::Stochastic))
    );
}

type Net = (Linear<4, 3>,);

fn net_specs() -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("0.weight", Role::Weight, &[3, 4]),
        ParamSpec::new("0.bias", Role::Bias, &[3]),
    ]
}

fn mse_step(
    model: &<Net as BuildOnDevice<Cpu, f32>>::Built,
    x: &Tensor<Rank2<5, 4>, f32, Cpu>,
    y: &Tensor<Rank2<5, 3>, f32, Cpu>,
    grads: Gradients<f32, Cpu>,
) -> (f32, Gradients<f32, Cpu>) {
    let out = model.forward(x.trace(grads));
    let loss = (out - y.clone()).square().mean();
    let v = loss.array();
    (v, loss.backward())
}

#[test]
fn adamw_step_applies_per_parameter_lr_and_independent_decay() {
    let dev = dev();
    let mut model = dev.build_module::<Net, f32>();
    let x: Tensor<Rank2<5, 4>, f32, _> = dev.sample_normal();
    let y: Tensor<Rank2<5, 3>, f32, _> = dev.sample_normal();
    let (w0, b0) = (model.0.weight.as_vec(), model.0.bias.as_vec());
    let grads = model.alloc_grads();
    let (_, mut grads) = mse_step(&model, &x, &y, grads);
    let (gw, gb) = (
        grads.get(&model.0.weight).as_vec(),
        grads.get(&model.0.bias).as_vec(),
    );
    let cfg = OptimConfig {
        weight_decay: 0.01,
        ..OptimConfig::adamw(0.5)
    };
    let mut opt = Optimizer::<f32, Cpu>::new(cfg, &net_specs()).unwrap();
    assert_eq!(opt.groups()[0].lr, 0.25); // 0.5 / sqrt(fan_in = 4)
    assert_eq!(opt.groups()[1].lr, 0.5);
    opt.update(&mut model, &mut grads).unwrap();
    assert_eq!(opt.steps(), 1);
    // First Adam step: p ← p(1 − lr·wd_p) − lr·g/(|g| + eps), with lr·wd_p = wd = 0.01.
    let check = |p0: &[f32], g: &[f32], p1: &[f32], lr: f32| {
        for ((a, g), b) in p0.iter().zip(g).zip(p1) {
            let want = a * (1.0 - 0.01) - lr * g / (g.abs() + 1e-8);
            assert!((b - want).abs() < 1e-5, "{b} vs {want}");
        }
    };
    check(&w0, &gw, &model.0.weight.as_vec(), 0.25);
    check(&b0, &gb, &model.0.bias.as_vec(), 0.5);
}

#[test]
fn every_optimizer_reduces_the_loss() {
    for kind in [
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
        OptimizerKind::Sgd,
    ] {
        let dev = dev();
        let mut model = dev.build_module::<Net, f32>();
        let x: Tensor<Rank2<5, 4>, f32, _> = dev.sample_normal();
        let y: Tensor<Rank2<5, 3>, f32, _> = dev.sample_normal();
        let cfg = OptimConfig {
            kind,
            momentum: if kind == OptimizerKind::Sgd { 0.9 } else { 0.0 },
            ..OptimConfig::adamw(0.05)
        };
        let mut opt = Optimizer::<f32, Cpu>::new(cfg, &net_specs()).unwrap();
        let mut grads = model.alloc_grads();
        let mut losses = Vec::new();
        for _ in 0..10 {
            let (l, g) = mse_step(&model, &x, &y, grads);
            grads = g;
            losses.push(l);
            opt.update(&mut model, &mut grads).unwrap();
            model.zero_grads(&mut grads);
        }
        assert!(losses[9] < losses[0] * 0.9, "{kind:?}: {losses:?}");
    }
}

/// A model and the gradients of one MSE step against targets of RMS 100, so that the gradient
/// norm is far above 1 (for the clipping tests).
fn large_gradient_step() -> (<Net as BuildOnDevice<Cpu, f32>>::Built, Gradients<f32, Cpu>) {
    let dev = dev();
    let model = dev.build_module::<Net, f32>();
    let x: Tensor<Rank2<5, 4>, f32, _> = dev.sample_normal();
    let y: Tensor<Rank2<5, 3>, f32, _> = dev.sample_normal_like(&(Const, Const)) * 100.0;
    let (_, grads) = mse_step(&model, &x, &y, model.alloc_grads());
    (model, grads)
}

#[test]
fn clipping_limits_the_global_gradient_norm() {
    let (mut model, mut grads) = large_gradient_step();
    let w0 = model.0.weight.as_vec();
    let gw = grads.get(&model.0.weight).as_vec();
    let gb = grads.get(&model.0.bias).as_vec();
    let norm = gw.iter().chain(&gb).map(|v| v * v).sum::<f32>().sqrt();
    assert!(norm > 1.0);
    let cfg = OptimConfig {
        grad_clip: Some(1.0),
        ..OptimConfig::sgd(0.1)
    };
    let mut opt = Optimizer::<f32, Cpu>::new(cfg, &net_specs()).unwrap();
    let reported = opt.update(&mut model, &mut grads).unwrap().unwrap();
    assert!((reported as f32 - norm).abs() < 1e-3 * norm);
    // SGD with the Adam rule: lr_w = 0.1/2; the step uses the clipped gradient g·(1/norm).
    for ((a, g), b) in w0.iter().zip(&gw).zip(model.0.weight.as_vec()) {
        let want = a - 0.05 * g / norm;
        assert!((b - want).abs() < 1e-5, "{b} vs {want}");
    }
}

#[test]
fn a_frozen_tensor_keeps_its_values_and_leaves_the_clipping_norm() {
    let (mut model, mut grads) = large_gradient_step();
    let (w0, b0) = (model.0.weight.as_vec(), model.0.bias.as_vec());
    let gb = grads.get(&model.0.bias).as_vec();
    let bias_norm = gb.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(bias_norm > 1.0);
    // Weight decay and clipping on: a frozen tensor must escape both.
    let cfg = OptimConfig {
        weight_decay: 0.1,
        grad_clip: Some(1.0),
        ..OptimConfig::sgd(0.1)
    };
    let mut opt = Optimizer::<f32, Cpu>::new(cfg, &net_specs()).unwrap();
    opt.freeze("0.weight").unwrap();
    assert!(opt.is_frozen("0.weight") && !opt.is_frozen("0.bias"));
    let reported = opt.update(&mut model, &mut grads).unwrap().unwrap();
    // The norm is the bias gradient's alone.
    assert!((reported as f32 - bias_norm).abs() < 1e-4 * bias_norm);
    assert_eq!(model.0.weight.as_vec(), w0);
    // SGD, bias lr 0.1, wd_p = 0.1/0.1 = 1 (independent: lr·wd_p = 0.1), clipped gradient.
    for ((a, g), b) in b0.iter().zip(&gb).zip(model.0.bias.as_vec()) {
        let want = a - 0.1 * (g / bias_norm + a);
        assert!((b - want).abs() < 1e-5, "{b} vs {want}");
    }
    let err = opt.freeze("0.wieght").unwrap_err().to_string();
    assert!(
        err.contains("0.wieght") && err.contains("0.bias, 0.weight"),
        "{err}"
    );
}

#[test]
fn schedule_scales_the_global_lr() {
    let cfg = OptimConfig {
        schedule: LrSchedule::warmup_cosine(2, 10, 0.0).unwrap(),
        ..OptimConfig::adamw(1.0)
    };
    let mut opt = Optimizer::<f32, Cpu>::new(cfg, &net_specs()).unwrap();
    assert_eq!(opt.current_lr(), 0.5);
    opt.set_steps(2);
    assert_eq!(opt.current_lr(), 1.0);
    opt.set_steps(10);
    assert!(opt.current_lr().abs() < 1e-12);
}

#[test]
fn residual_apply_equals_split_then_add() {
    let dev = dev();
    let x = randn(&dev, 6, 10);
    let w = randn(&dev, 10, 10);
    let g = randn(&dev, 6, 10);
    let tau = 0.6;
    let branch = |t: Tensor<(usize, usize), f32, Cpu, Tp>| {
        ops::linear(t, &w, None, Constraint::ToOutputScale)
    };
    let y1 = ops::residual_apply(x.leaky_trace(), tau, branch).unwrap();
    let (r, s) = ops::residual_split(x.leaky_trace(), tau).unwrap();
    let y2 = ops::residual_add(branch(r).unwrap(), s, tau).unwrap();
    let close = |a: Vec<f32>, b: Vec<f32>| {
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    };
    close(y1.as_vec(), y2.as_vec());
    let g1 = (y1 * g.clone()).sum().backward();
    let g2 = (y2 * g.clone()).sum().backward();
    close(g1.get(&x).as_vec(), g2.get(&x).as_vec());
    close(g1.get(&w).as_vec(), g2.get(&w).as_vec());
}

/// In f16 the cross entropy of a large batch keeps its value: the rows are reduced in f64 (an
/// f16 running sum of thousands of rows loses whole units, and overflows past 65504), while the
/// gradient is the f16 one.
#[test]
fn f16_cross_entropy_of_a_large_batch_is_exact_and_does_not_overflow() {
    use umup::dfdx::dtypes::f16;
    let dev = Cpu::seed_from_u64(7);
    let (rows, classes) = (16_384usize, 16usize);
    let x32: Tensor<(usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(rows, Const));
    let targets: Vec<usize> = (0..rows).map(|i| (i * 7 + 3) % classes).collect();
    let x16 = x32.clone().to_dtype::<f16>();
    // The reference: f64 on the same (f16-rounded) logits.
    let x64 = x16.clone().to_dtype::<f64>();
    for reduction in [ops::Reduction::Sum, ops::Reduction::Mean] {
        let want = ops::cross_entropy(x64.clone(), &targets, 1.0, reduction)
            .unwrap()
            .as_vec()[0];
        let got = ops::cross_entropy(x16.clone().leaky_traced(), &targets, 1.0, reduction).unwrap();
        let value = got.as_vec()[0].to_f64();
        assert!(value.is_finite(), "{reduction}: {value}");
        // One rounding to f16 of the exact value (Σ ≈ 40,000 rows' worth).
        assert!(
            (value - want).abs() <= want.abs() * 1e-3,
            "{reduction}: f16 {value} vs f64 {want}"
        );
        // The gradient is the f16 one of the same op (mean: ∝ 1/rows, not 1).
        let g16 = got.backward().get(&x16).as_vec();
        let g64 = ops::cross_entropy(x64.clone().leaky_traced(), &targets, 1.0, reduction)
            .unwrap()
            .backward()
            .get(&x64)
            .as_vec();
        let num: f64 = g16
            .iter()
            .zip(&g64)
            .map(|(a, b)| (a.to_f64() - b).powi(2))
            .sum();
        let den: f64 = g64.iter().map(|b| b * b).sum();
        assert!((num / den).sqrt() < 2e-3, "{reduction}: gradient off");
    }
}

/// In f16, RMSNorm and LayerNorm stay finite and exact to f16 precision on rows far outside
/// `|x| ≤ 256` (where `x²` overflows f16), values and gradients, as a trained residual stream
/// needs; the reference is f64 on the same rounded inputs.
#[test]
fn f16_norms_of_large_rows_are_finite_and_match_f64() {
    use umup::dfdx::dtypes::f16;
    let dev = Cpu::seed_from_u64(11);
    let x32: Tensor<(usize, Const<64>), f32, Cpu> = dev.sample_normal_like(&(8, Const));
    // Rows of RMS 1, 30, 400 and 3000, plus an all-zero row.
    let scales: Vec<f32> = (0..8).map(|r| [1.0, 30.0, 400.0, 3000.0][r % 4]).collect();
    let mut v = x32.as_vec();
    for (i, x) in v.iter_mut().enumerate() {
        *x *= scales[i / 64];
        if i / 64 == 7 {
            *x = 0.0;
        }
    }
    let x16 = dev.tensor_from_vec(v, (8, Const::<64>)).to_dtype::<f16>();
    let x64 = x16.clone().to_dtype::<f64>();
    let g64: Tensor<(usize, Const<64>), f64, Cpu> = dev.sample_normal_like(&(8, Const));
    let g16 = g64.clone().to_dtype::<f16>();
    let g64 = g16.clone().to_dtype::<f64>();
    let rel = |a: Vec<f16>, b: Vec<f64>| {
        let num: f64 = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p.to_f64() - q).powi(2))
            .sum();
        assert!(a.iter().all(|p| p.is_finite()));
        (num / b.iter().map(|q| q * q).sum::<f64>()).sqrt()
    };
    for layer in [false, true] {
        let run16 = |x: Tensor<(usize, Const<64>), f16, Cpu>| {
            let y = if layer {
                ops::layer_norm(x.leaky_traced(), None, None, 1e-5).unwrap()
            } else {
                ops::rms_norm(x.leaky_traced(), None, 1e-5).unwrap()
            };
            let (y, tape) = y.split_tape();
            let grads = (y.clone().put_tape(tape) * g16.clone())
                .sum::<(), _>()
                .backward();
            (y.as_vec(), grads)
        };
        let (y16, grads16) = run16(x16.clone());
        let y64 = if layer {
            ops::layer_norm(x64.clone().leaky_traced(), None, None, 1e-5).unwrap()
        } else {
            ops::rms_norm(x64.clone().leaky_traced(), None, 1e-5).unwrap()
        };
        let (y64v, tape) = y64.split_tape();
        let grads64 = (y64v.clone().put_tape(tape) * g64.clone())
            .sum::<(), _>()
            .backward();
        let dy = rel(y16, y64v.as_vec());
        let dx = rel(grads16.get(&x16).as_vec(), grads64.get(&x64).as_vec());
        assert!(dy < 2e-3, "layer norm {layer}: value off by {dy}");
        assert!(dx < 2e-2, "layer norm {layer}: gradient off by {dx}");
    }
}

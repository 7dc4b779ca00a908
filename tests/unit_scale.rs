//! Statistical unit-scale tests (spec §4 and §11.2, the reference's `tests/test_functional.py`).
//!
//! With N(0,1) inputs and a randn upstream gradient (the reference's `unit_backward`), each op's
//! output and gradients have std (or RMS) within 0.1 of 1 (`assert_unit_scaled(abs=0.1)`), and
//! where a constraint moves a scale away from 1 the measured std is checked against the value the
//! scale rule predicts. Every test seeds the device with 1472 (the reference's `conftest.py`).
//! The dtype is f32; sizes follow the reference (larger where its 1-D inputs are noisy).
//!
//! Run with `--nocapture` to see every measured statistic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umup::dfdx::prelude::*;
use umup::ops::{self, Reduction};
use umup::Constraint;

type Tp = OwnedTape<f32, Cpu>;
type Grads = Gradients<f32, Cpu>;

const SEED: u64 = 1472;
/// Elements of the 1-D inputs of the elementwise activation tests (the reference uses 2^10;
/// 2^16 keeps the sampling error of a std estimate near 0.005 so the tests check the scale rules).
const N_ACT: usize = 1 << 16;

fn seeded() -> Cpu {
    Cpu::seed_from_u64(SEED)
}

fn randn<S: Shape>(dev: &Cpu, shape: S) -> Tensor<S, f32, Cpu> {
    dev.sample_normal_like(&shape)
}

/// Sample standard deviation (Bessel-corrected, as `torch.std`), accumulated in f64.
fn std_dev(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let ss = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>();
    (ss / (n - 1.0)).sqrt()
}

/// Root mean square, accumulated in f64 (the reference's `rms`).
fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// `|got − target| ≤ abs`, printing the measurement.
fn assert_near(what: &str, got: f64, target: f64, abs: f64) {
    eprintln!("{what}: {got:.4} (expected {target:.4} ± {abs})");
    assert!(
        (got - target).abs() <= abs,
        "{what}: measured {got:.4}, expected {target:.4} ± {abs}"
    );
}

/// `|got/target − 1| ≤ rel`, printing the measurement.
fn assert_rel(what: &str, got: f64, target: f64, rel: f64) {
    eprintln!(
        "{what}: {got:.4} (expected {target:.4} ± {:.0}%)",
        rel * 100.0
    );
    assert!(
        (got / target - 1.0).abs() <= rel,
        "{what}: measured {got:.4}, expected {target:.4} within {rel} relative"
    );
}

/// The reference's `assert_unit_scaled`: `|stat − 1| ≤ 0.1`.
fn assert_unit(what: &str, got: f64) {
    assert_near(what, got, 1.0, 0.1);
}

/// The reference's `assert_not_unit_scaled`: `|stat − 1| > 0.1`.
fn assert_not_unit(what: &str, got: f64) {
    eprintln!("{what}: {got:.4} (expected NOT within 1 ± 0.1)");
    assert!(
        (got - 1.0).abs() > 0.1,
        "{what}: measured {got:.4}, expected it not to be unit-scaled"
    );
}

/// The reference's `unit_backward`: backpropagates a randn gradient from `y`.
/// Returns `y`'s values and the gradients.
fn unit_backward<S: Shape>(dev: &Cpu, y: Tensor<S, f32, Cpu, Tp>) -> (Vec<f32>, Grads) {
    let g: Tensor<S, f32, Cpu> = dev.sample_normal_like(y.shape());
    let values = y.as_vec();
    let grads = (y * g).sum::<(), _>().backward();
    (values, grads)
}

fn grad_of<S: Shape, T>(grads: &Grads, t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    grads.get(t).as_vec()
}

fn grad_std<S: Shape, T>(grads: &Grads, t: &Tensor<S, f32, Cpu, T>) -> f64 {
    std_dev(&grad_of(grads, t))
}

/// Runs a unary elementwise op on N(0,1) input; returns (std of the output, std of grad x).
fn unary_stats(
    f: impl FnOnce(Tensor<(usize,), f32, Cpu, Tp>) -> umup::Result<Tensor<(usize,), f32, Cpu, Tp>>,
) -> (f64, f64) {
    let dev = seeded();
    let x = randn(&dev, (N_ACT,));
    let (y, grads) = unit_backward(&dev, f(x.leaky_trace()).unwrap());
    (std_dev(&y), grad_std(&grads, &x))
}

// ---------------------------------------------------------------- gelu / silu / silu_glu

#[test]
fn gelu_no_constraint_is_unit_for_each_mult() {
    for mult in [0.25, 1.0, 4.0] {
        let (y, gx) = unary_stats(|x| ops::gelu(x, mult, Constraint::None));
        assert_unit(&format!("gelu(mult={mult}, None) std(y)"), y);
        assert_unit(&format!("gelu(mult={mult}, None) std(grad x)"), gx);
    }
}

#[test]
fn gelu_to_output_scale_gives_a_unit_output_only() {
    let (y, gx) = unary_stats(|x| ops::gelu(x, 1.0, Constraint::ToOutputScale));
    assert_unit("gelu(to_output_scale) std(y)", y);
    assert_not_unit("gelu(to_output_scale) std(grad x)", gx);
    // Spec §4.10 measured: y = 1.05, grad x = 1.20.
    assert_near("gelu(to_output_scale) std(grad x) vs spec", gx, 1.20, 0.05);
}

#[test]
fn gelu_to_grad_input_scale_gives_a_unit_grad_only() {
    let (y, gx) = unary_stats(|x| ops::gelu(x, 1.0, Constraint::ToGradInputScale));
    assert_unit("gelu(to_grad_input_scale) std(grad x)", gx);
    assert_not_unit("gelu(to_grad_input_scale) std(y)", y);
}

#[test]
fn silu_no_constraint_is_unit_for_each_mult() {
    for mult in [0.25, 1.0, 4.0] {
        let (y, gx) = unary_stats(|x| ops::silu(x, mult, Constraint::None));
        assert_unit(&format!("silu(mult={mult}, None) std(y)"), y);
        assert_unit(&format!("silu(mult={mult}, None) std(grad x)"), gx);
    }
}

#[test]
fn silu_to_output_scale_gives_a_unit_output_only() {
    // The reference uses mult = 2 here.
    let (y, gx) = unary_stats(|x| ops::silu(x, 2.0, Constraint::ToOutputScale));
    assert_unit("silu(mult=2, to_output_scale) std(y)", y);
    assert_not_unit("silu(mult=2, to_output_scale) std(grad x)", gx);
    // At mult = 1, spec §4.10 measured y = 0.995.
    let (y1, _) = unary_stats(|x| ops::silu(x, 1.0, Constraint::ToOutputScale));
    assert_near(
        "silu(mult=1, to_output_scale) std(y) vs spec",
        y1,
        0.995,
        0.03,
    );
}

#[test]
fn silu_to_grad_input_scale_gives_a_unit_grad() {
    let (y, gx) = unary_stats(|x| ops::silu(x, 1.0, Constraint::ToGradInputScale));
    assert_unit("silu(to_grad_input_scale) std(grad x)", gx);
    // The reference also asserts `not unit` for the output, but the expected std is
    // 0.995 · gin_s/out_s = 0.995 · 1.681793/1.766783 = 0.947 (spec §4.10), inside the unit band;
    // its 2^10-sample test passes or fails by sampling noise. Check the exact ratio instead:
    // the same seed gives the same input, so only the output scale differs.
    let (y_out, _) = unary_stats(|x| ops::silu(x, 1.0, Constraint::ToOutputScale));
    assert_rel(
        "silu std(y, to_grad_input_scale) / std(y, to_output_scale)",
        y / y_out,
        1.681793 / 1.766783,
        1e-4,
    );
}

#[test]
fn silu_glu_is_unit_for_each_mult() {
    for mult in [0.25, 1.0, 4.0] {
        let dev = seeded();
        let x = randn(&dev, (N_ACT,));
        let gate = randn(&dev, (N_ACT,));
        let y = ops::silu_glu(x.leaky_trace(), gate.retaped::<Tp>(), mult).unwrap();
        let (y, grads) = unit_backward(&dev, y);
        assert_unit(&format!("silu_glu(mult={mult}) std(y)"), std_dev(&y));
        assert_unit(
            &format!("silu_glu(mult={mult}) std(grad x)"),
            grad_std(&grads, &x),
        );
        assert_unit(
            &format!("silu_glu(mult={mult}) std(grad gate)"),
            grad_std(&grads, &gate),
        );
    }
}

// ---------------------------------------------------------------- softmax

/// softmax(mult = 1/4) over n = 4096 (the reference's setting); 8 rows. Returns RMS of
/// (output, grad x).
fn softmax_rms(constraint: Constraint) -> (f64, f64) {
    let dev = seeded();
    let x = randn(&dev, (8usize, 4096usize));
    let y = ops::softmax(x.leaky_trace(), 0.25, constraint).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    (rms(&y), rms(&grad_of(&grads, &x)))
}

#[test]
fn softmax_no_constraint_is_unit() {
    let (y, gx) = softmax_rms(Constraint::None);
    assert_unit("softmax(mult=1/4, None) rms(y)", y);
    assert_unit("softmax(mult=1/4, None) rms(grad x)", gx);
}

#[test]
fn softmax_to_output_scale_gives_a_unit_output_only() {
    let (y, gx) = softmax_rms(Constraint::ToOutputScale);
    assert_unit("softmax(to_output_scale) rms(y)", y);
    assert_not_unit("softmax(to_output_scale) rms(grad x)", gx);
}

#[test]
fn softmax_to_grad_input_scale_gives_a_unit_grad_only() {
    let (y, gx) = softmax_rms(Constraint::ToGradInputScale);
    assert_unit("softmax(to_grad_input_scale) rms(grad x)", gx);
    assert_not_unit("softmax(to_grad_input_scale) rms(y)", y);
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_is_unit_for_each_p() {
    for p in [0.01, 0.1, 0.5, 0.9, 0.99] {
        let dev = seeded();
        let x = randn(&dev, (1usize << 20,));
        let y = ops::dropout(x.leaky_trace(), p, true).unwrap();
        let (y, grads) = unit_backward(&dev, y);
        // The mask is really drawn: the fraction of zeros is p.
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert_near(&format!("dropout(p={p}) zero fraction"), zeros, p, 0.005);
        assert_unit(&format!("dropout(p={p}) std(y)"), std_dev(&y));
        assert_unit(&format!("dropout(p={p}) std(grad x)"), grad_std(&grads, &x));
    }
}

// ---------------------------------------------------------------- matmul

/// `[256,1024] @ [1024,4096]` (the reference's sizes); returns std of (y, grad left, grad right).
fn matmul_stats(constraint: Constraint) -> (f64, f64, f64) {
    let dev = seeded();
    let left = randn(&dev, (256usize, 1024usize));
    let right = randn(&dev, (1024usize, 4096usize));
    let y = ops::matmul(left.leaky_trace(), right.retaped::<Tp>(), constraint).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    (
        std_dev(&y),
        grad_std(&grads, &left),
        grad_std(&grads, &right),
    )
}

// Raw scales (K^-½, N^-½, M^-½) = (1/32, 1/64, 1/16); the unscaled stds are (√K, √N, √M) =
// (32, 64, 16), so a constraint that sets every scale to s gives stds (32s, 64s, 16s).

#[test]
fn matmul_no_constraint_is_unit() {
    let (y, gl, gr) = matmul_stats(Constraint::None);
    assert_unit("matmul(None) std(y)", y);
    assert_unit("matmul(None) std(grad left)", gl);
    assert_unit("matmul(None) std(grad right)", gr);
}

#[test]
fn matmul_to_output_scale() {
    let (y, gl, gr) = matmul_stats(Constraint::ToOutputScale);
    assert_unit("matmul(to_output_scale) std(y)", y);
    // Spec §4.1 measured: g_left = 2.00, g_right = 0.50.
    assert_rel("matmul(to_output_scale) std(grad left)", gl, 2.0, 0.05);
    assert_rel("matmul(to_output_scale) std(grad right)", gr, 0.5, 0.05);
}

#[test]
fn matmul_to_left_grad_scale() {
    let (y, gl, gr) = matmul_stats(Constraint::ToLeftGradScale);
    assert_unit("matmul(to_left_grad_scale) std(grad left)", gl);
    assert_rel("matmul(to_left_grad_scale) std(y)", y, 0.5, 0.05);
    assert_rel("matmul(to_left_grad_scale) std(grad right)", gr, 0.25, 0.05);
}

#[test]
fn matmul_to_right_grad_scale() {
    let (y, gl, gr) = matmul_stats(Constraint::ToRightGradScale);
    assert_unit("matmul(to_right_grad_scale) std(grad right)", gr);
    assert_rel("matmul(to_right_grad_scale) std(y)", y, 2.0, 0.05);
    assert_rel("matmul(to_right_grad_scale) std(grad left)", gl, 4.0, 0.05);
}

#[test]
fn matmul_batched_is_unit_without_constraint() {
    // Batch dims are ignored by the scale rule: [4, 64, 256] @ [4, 256, 1024].
    let dev = seeded();
    let left = randn(&dev, (4usize, 64usize, 256usize));
    let right = randn(&dev, (4usize, 256usize, 1024usize));
    let y =
        ops::matmul_batched(left.leaky_trace(), right.retaped::<Tp>(), Constraint::None).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    assert_unit("matmul_batched(None) std(y)", std_dev(&y));
    assert_unit(
        "matmul_batched(None) std(grad left)",
        grad_std(&grads, &left),
    );
    assert_unit(
        "matmul_batched(None) std(grad right)",
        grad_std(&grads, &right),
    );
}

// ---------------------------------------------------------------- linear / linear_readout

/// x[256, 1024], W[4096, 1024] ~ N(0,1), b = 0 (the reference's sizes).
/// Returns std of (y, grad x, grad W, grad b).
fn linear_stats(readout: bool, constraint: Constraint) -> [f64; 4] {
    let dev = seeded();
    let x = randn(&dev, (256usize, 1024usize));
    let w = randn(&dev, (4096usize, 1024usize));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(4096usize,));
    let y = if readout {
        ops::linear_readout(x.leaky_trace(), &w, Some(&b), constraint)
    } else {
        ops::linear(x.leaky_trace(), &w, Some(&b), constraint)
    }
    .unwrap();
    let (y, grads) = unit_backward(&dev, y);
    [
        std_dev(&y),
        grad_std(&grads, &x),
        grad_std(&grads, &w),
        grad_std(&grads, &b),
    ]
}

#[test]
fn linear_no_constraint_is_unit() {
    let [y, gx, gw, gb] = linear_stats(false, Constraint::None);
    assert_unit("linear(None) std(y)", y);
    assert_unit("linear(None) std(grad x)", gx);
    assert_unit("linear(None) std(grad W)", gw);
    assert_unit("linear(None) std(grad b)", gb);
}

#[test]
fn linear_gmean_balances_output_and_grad() {
    let [y, gx, gw, gb] = linear_stats(false, Constraint::Gmean);
    assert_unit("linear(gmean) std(grad W)", gw);
    assert_unit("linear(gmean) std(grad b)", gb);
    assert_not_unit("linear(gmean) std(y)", y);
    assert_not_unit("linear(gmean) std(grad x)", gx);
    assert_near("linear(gmean) std(y)·std(grad x)", y * gx, 1.0, 0.1);
    // gmean(1/32, 1/64) = 2^-5.5: y = 32·2^-5.5 = 2^-½, grad x = 64·2^-5.5 = 2^½.
    assert_rel("linear(gmean) std(y)", y, 0.5f64.sqrt(), 0.05);
}

#[test]
fn linear_to_output_scale() {
    let [y, gx, gw, gb] = linear_stats(false, Constraint::ToOutputScale);
    assert_unit("linear(to_output_scale) std(y)", y);
    assert_unit("linear(to_output_scale) std(grad W)", gw);
    assert_unit("linear(to_output_scale) std(grad b)", gb);
    // Spec §4.2 measured: grad_x = 2.00 = √(fan_out/fan_in).
    assert_rel("linear(to_output_scale) std(grad x)", gx, 2.0, 0.05);
}

#[test]
fn linear_to_grad_input_scale() {
    let [y, gx, gw, gb] = linear_stats(false, Constraint::ToGradInputScale);
    assert_unit("linear(to_grad_input_scale) std(grad x)", gx);
    assert_unit("linear(to_grad_input_scale) std(grad W)", gw);
    assert_unit("linear(to_grad_input_scale) std(grad b)", gb);
    assert_rel("linear(to_grad_input_scale) std(y)", y, 0.5, 0.05);
}

#[test]
fn linear_readout_output_is_fan_in_to_the_minus_half() {
    let [y, gx, gw, gb] = linear_stats(true, Constraint::None);
    // Spec §4.3: y std = 1/√fan_in = 2^-5 (the reference asserts abs 0.1; this is rel 0.1).
    assert_rel("linear_readout std(y)", y, 2f64.powi(-5), 0.1);
    assert_unit("linear_readout std(grad x)", gx);
    assert_unit("linear_readout std(grad W)", gw);
    assert_unit("linear_readout std(grad b)", gb);
}

// ---------------------------------------------------------------- norms

#[test]
fn layer_norm_is_unit() {
    let dev = seeded();
    let x = randn(&dev, (256usize, 1024usize));
    let w = randn(&dev, (1024usize,));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(1024usize,));
    let y = ops::layer_norm(x.leaky_trace(), Some(&w), Some(&b), 1e-5).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    assert_unit("layer_norm std(y)", std_dev(&y));
    assert_unit("layer_norm std(grad x)", grad_std(&grads, &x));
    assert_unit("layer_norm std(grad weight)", grad_std(&grads, &w));
    assert_unit("layer_norm std(grad bias)", grad_std(&grads, &b));

    let dev = seeded();
    let x = randn(&dev, (256usize, 1024usize));
    let y = ops::layer_norm(x.leaky_trace(), None, None, 1e-5).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    assert_unit("layer_norm(no affine) std(y)", std_dev(&y));
    assert_unit("layer_norm(no affine) std(grad x)", grad_std(&grads, &x));
}

#[test]
fn rms_norm_is_unit() {
    let dev = seeded();
    let x = randn(&dev, (256usize, 1024usize));
    let w = randn(&dev, (1024usize,));
    let y = ops::rms_norm(x.leaky_trace(), Some(&w), 1e-5).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    assert_unit("rms_norm std(y)", std_dev(&y));
    assert_unit("rms_norm std(grad x)", grad_std(&grads, &x));
    assert_unit("rms_norm std(grad weight)", grad_std(&grads, &w));

    let dev = seeded();
    let x = randn(&dev, (256usize, 1024usize));
    let y = ops::rms_norm(x.leaky_trace(), None, 1e-5).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    // Spec §4.7 measured: y = 1.00, grad x = 1.00.
    assert_unit("rms_norm(no gain) std(y)", std_dev(&y));
    assert_unit("rms_norm(no gain) std(grad x)", grad_std(&grads, &x));
    assert_near("rms_norm(no gain) rms(y)", rms(&y), 1.0, 0.01);
}

// ---------------------------------------------------------------- add

fn add_stats(constraint: Constraint) -> (f64, f64, f64) {
    let dev = seeded();
    let a = randn(&dev, (256usize, 1024usize));
    let b = randn(&dev, (256usize, 1024usize));
    let y = ops::add(a.leaky_trace(), b.retaped::<Tp>(), constraint).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    (std_dev(&y), grad_std(&grads, &a), grad_std(&grads, &b))
}

#[test]
fn add_no_constraint_is_unit() {
    let (y, ga, gb) = add_stats(Constraint::None);
    assert_unit("add(None) std(y)", y);
    assert_unit("add(None) std(grad a)", ga);
    assert_unit("add(None) std(grad b)", gb);
}

#[test]
fn add_gmean_has_unit_product() {
    let (y, ga, gb) = add_stats(Constraint::Gmean);
    assert_not_unit("add(gmean) std(y)", y);
    assert_not_unit("add(gmean) std(grad a)", ga);
    assert_not_unit("add(gmean) std(grad b)", gb);
    assert_near(
        "add(gmean) std(y)·std(grad a)·std(grad b)",
        y * ga * gb,
        1.0,
        0.1,
    );
    // gmean(2^-½, 1, 1) = 2^-⅙: y = √2·2^-⅙ = 2^⅓, grads 2^-⅙.
    assert_rel("add(gmean) std(y)", y, 2f64.powf(1.0 / 3.0), 0.02);
    assert_rel("add(gmean) std(grad a)", ga, 2f64.powf(-1.0 / 6.0), 0.02);
}

#[test]
fn add_broadcast_is_unit() {
    // A row vector broadcast over 256 rows.
    let dev = seeded();
    let a = randn(&dev, (256usize, 1024usize));
    let b = randn(&dev, (1024usize,));
    let y = ops::add_broadcast::<_, _, Axis<0>, _, _, _>(
        a.leaky_trace(),
        b.retaped::<Tp>(),
        Constraint::None,
    )
    .unwrap();
    let (y, grads) = unit_backward(&dev, y);
    assert_unit("add_broadcast(row, None) std(y)", std_dev(&y));
    assert_unit("add_broadcast(row, None) std(grad a)", grad_std(&grads, &a));
    assert_unit("add_broadcast(row, None) std(grad b)", grad_std(&grads, &b));

    // A one-element tensor (the reference's `tensor(5.0)`): plain add, o = 1.
    let dev = seeded();
    let a = randn(&dev, (256usize, 1024usize));
    let b: Tensor<(), f32, Cpu> = dev.tensor(5.0);
    let y = ops::add_broadcast::<_, _, Axes2<0, 1>, _, _, _>(
        a.leaky_trace(),
        b.retaped::<Tp>(),
        Constraint::None,
    )
    .unwrap();
    let (y, grads) = unit_backward(&dev, y);
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    assert_near("add_broadcast(scalar 5) mean(y)", mean, 5.0, 0.01);
    assert_unit("add_broadcast(scalar 5) std(y)", std_dev(&y));
    assert_unit("add_broadcast(scalar 5) std(grad a)", grad_std(&grads, &a));
    let gb = grad_of(&grads, &b)[0].abs() as f64;
    eprintln!("add_broadcast(scalar 5) |grad b|: {gb:.4} (expected in (1e-4, 5))");
    assert!(0.0001 < gb && gb < 5.0, "|grad b| = {gb}");
}

// ---------------------------------------------------------------- mean_pool

/// x[256·64, 256] ~ N(0,1) pooled over S = 64 positions; returns (RMS of y, RMS of grad x) for a
/// randn output gradient.
fn mean_pool_stats(constraint: Constraint) -> (f64, f64) {
    let dev = seeded();
    let x = randn(&dev, (256usize * 64, Const::<256>));
    let y = ops::mean_pool(x.leaky_trace(), 64, constraint).unwrap();
    assert_eq!(y.shape().0, 256);
    let (y, grads) = unit_backward(&dev, y);
    (rms(&y), rms(&grad_of(&grads, &x)))
}

#[test]
fn mean_pool_to_output_scale_gives_a_unit_output() {
    let (y, gx) = mean_pool_stats(Constraint::ToOutputScale);
    assert_unit("mean_pool(to_output_scale) rms(y)", y);
    // Every position receives G/√S: rms 1/8 at S = 64.
    assert_rel("mean_pool(to_output_scale) rms(grad x)", gx, 0.125, 0.02);
}

#[test]
fn mean_pool_no_constraint_is_unit_forward_and_backward() {
    let (y, gx) = mean_pool_stats(Constraint::None);
    // A plain mean would have rms 1/8.
    assert_unit("mean_pool(None) rms(y)", y);
    assert_unit("mean_pool(None) rms(grad x)", gx);
}

#[test]
fn mean_pool_to_grad_input_scale_is_a_plain_sum() {
    let (y, gx) = mean_pool_stats(Constraint::ToGradInputScale);
    assert_rel("mean_pool(to_grad_input_scale) rms(y)", y, 8.0, 0.03);
    assert_unit("mean_pool(to_grad_input_scale) rms(grad x)", gx);
}

/// `ops::mean_pool(x, S, to_output_scale)` is the pooling the encoder example wrote by hand
/// before it (a dfdx mean over positions, then `scale_grad(·, √S, √S)`): same values and
/// gradients, to f32 rounding.
#[test]
fn mean_pool_equals_the_rescaled_mean_it_replaces() {
    const S: usize = 128;
    let dev = seeded();
    let x = randn(&dev, (4 * S, Const::<32>));
    let g: Tensor<(usize, Const<32>), f32, Cpu> = dev.sample_normal_like(&(4usize, Const));
    let y = ops::mean_pool(x.leaky_trace(), S, Constraint::ToOutputScale).unwrap();
    let root = (S as f64).sqrt();
    let old = ops::scale_grad(
        x.leaky_trace()
            .reshape_like(&(4usize, Const::<S>, Const::<32>))
            .mean::<(usize, Const<32>), Axis<1>>(),
        root,
        root,
    )
    .unwrap();
    let (a, b) = (y.as_vec(), old.as_vec());
    let ga = grad_of(&(y * g.clone()).sum::<(), _>().backward(), &x);
    let gb = grad_of(&(old * g).sum::<(), _>().backward(), &x);
    for (u, v) in a.iter().zip(&b).chain(ga.iter().zip(&gb)) {
        assert!((u - v).abs() <= 2e-6 * (1.0 + v.abs()), "{u} vs {v}");
    }
    assert!(rms(&a) > 0.5 && rms(&ga) > 0.05);
}

// ---------------------------------------------------------------- residual

#[test]
fn residual_split_and_add_keep_every_tensor_unit() {
    // This test reads the gradients of op outputs (the branch and the skip) after `backward`.
    ops::keep_intermediate_gradients(true);
    for tau in [0.2, 1.0, 3.0] {
        let dev = seeded();
        let x = randn(&dev, (64usize, 1024usize));
        let w = randn(&dev, (1024usize, 1024usize));
        let (r, skip) = ops::residual_split(x.leaky_trace(), tau).unwrap();
        let r = ops::linear(r, &w, None, Constraint::ToOutputScale).unwrap();
        // Handles with the same ids, to read the values and gradients of the intermediates.
        let (r_h, skip_h) = (r.retaped::<NoneTape>(), skip.retaped::<NoneTape>());
        let y = ops::residual_add(r, skip, tau).unwrap();
        let (y, grads) = unit_backward(&dev, y);
        assert_unit(&format!("residual(tau={tau}) std(y)"), std_dev(&y));
        assert_unit(
            &format!("residual(tau={tau}) std(branch)"),
            std_dev(&r_h.as_vec()),
        );
        assert_unit(
            &format!("residual(tau={tau}) std(grad branch)"),
            grad_std(&grads, &r_h),
        );
        assert_unit(
            &format!("residual(tau={tau}) std(grad skip)"),
            grad_std(&grads, &skip_h),
        );
        assert_unit(
            &format!("residual(tau={tau}) std(grad x)"),
            grad_std(&grads, &x),
        );
    }
}

#[test]
fn residual_apply_keeps_output_and_grads_unit() {
    for tau in [0.2, 1.0, 3.0] {
        let dev = seeded();
        let x = randn(&dev, (64usize, 1024usize));
        let w = randn(&dev, (1024usize, 1024usize));
        let y = ops::residual_apply(x.leaky_trace(), tau, |h| {
            ops::linear(h, &w, None, Constraint::None)
        })
        .unwrap();
        let (y, grads) = unit_backward(&dev, y);
        assert_unit(&format!("residual_apply(tau={tau}) std(y)"), std_dev(&y));
        assert_unit(
            &format!("residual_apply(tau={tau}) std(grad x)"),
            grad_std(&grads, &x),
        );
        assert_unit(
            &format!("residual_apply(tau={tau}) std(grad W)"),
            grad_std(&grads, &w),
        );
    }
}

// ---------------------------------------------------------------- embedding

#[test]
fn embedding_output_and_table_grad_are_unit() {
    // The reference's sizes: 16×32 ids into a 4096×64 table.
    let dev = seeded();
    let mut rng = StdRng::seed_from_u64(SEED);
    let (vocab, dim, tokens) = (4096usize, 64usize, 16 * 32);
    let ids: Vec<usize> = (0..tokens).map(|_| rng.gen_range(0..vocab)).collect();
    let ids: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(ids, (tokens,));
    let table = randn(&dev, (vocab, dim));
    let y = ops::embedding(ids.leaky_trace(), &table).unwrap();
    let (y, grads) = unit_backward(&dev, y);
    // Spec §4.5 measured: y = 1.00, grad E = 1.00.
    assert_unit("embedding std(y)", std_dev(&y));
    assert_unit("embedding std(grad table)", grad_std(&grads, &table));
}

// ---------------------------------------------------------------- attention

type Qkv = Tensor<(usize, usize, usize, usize), f32, Cpu>;

/// Returns std of (output, grad q, grad k, grad v).
fn sdpa_stats(shape: (usize, usize, usize, usize), is_causal: bool) -> [f64; 4] {
    let dev = seeded();
    let (q, k, v): (Qkv, Qkv, Qkv) = (randn(&dev, shape), randn(&dev, shape), randn(&dev, shape));
    let y = ops::scaled_dot_product_attention(
        q.leaky_trace(),
        k.retaped::<Tp>(),
        v.retaped::<Tp>(),
        1.0,
        is_causal,
    )
    .unwrap();
    let (y, grads) = unit_backward(&dev, y);
    [
        std_dev(&y),
        grad_std(&grads, &q),
        grad_std(&grads, &k),
        grad_std(&grads, &v),
    ]
}

#[test]
fn sdpa_output_and_v_grad_are_unit_and_qk_grads_are_seq_to_the_minus_half() {
    // The reference's test: batch 256, S = 64, d_head = 64.
    let s = 64usize;
    let [y, gq, gk, gv] = sdpa_stats((256, 1, s, 64), false);
    assert_unit("sdpa std(y)", y);
    assert_unit("sdpa std(grad v)", gv);
    let target = (s as f64).powf(-0.5);
    // The reference asserts abs 0.1 around S^-½ = 0.125; this also checks 25% relative.
    for (what, g) in [("sdpa std(grad q)", gq), ("sdpa std(grad k)", gk)] {
        assert_near(what, g, target, 0.1);
        assert_rel(what, g, target, 0.25);
    }
}

#[test]
fn causal_sdpa_output_and_v_grad_are_unit() {
    // Spec §4.12 measured (b8, h4, S256, d64), causal: y = 1.05, grad v = 1.05.
    let [y, _, _, gv] = sdpa_stats((8, 4, 256, 64), true);
    assert_unit("causal sdpa std(y)", y);
    assert_unit("causal sdpa std(grad v)", gv);
}

// ---------------------------------------------------------------- losses

/// The standard cross entropy of `logits[rows, v]` (f64), summed over rows.
fn reference_ce_sum(logits: &[f32], targets: &[usize], v: usize) -> f64 {
    logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            lse - row[t] as f64
        })
        .sum()
}

#[test]
fn cross_entropy_value_is_standard_and_grad_is_unit() {
    let v = 256usize;
    for rows in [1usize, 4096] {
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let dev = seeded();
            let mut rng = StdRng::seed_from_u64(SEED);
            let x = randn(&dev, (rows, v));
            let targets: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..v)).collect();
            let loss = ops::cross_entropy(x.leaky_trace(), &targets, 1.0, reduction).unwrap();
            let value = loss.as_vec()[0] as f64;
            let grads = loss.backward();
            let mut want = reference_ce_sum(&x.as_vec(), &targets, v);
            if reduction == Reduction::Mean {
                want /= rows as f64;
            }
            assert_rel(
                &format!("cross_entropy(rows={rows}, {reduction}) value"),
                value,
                want,
                1e-5,
            );
            // Spec §4.13 measured: grad std 1.003 (N(0,1) logits, V = 256).
            assert_unit(
                &format!("cross_entropy(rows={rows}, {reduction}) std(grad logits)"),
                grad_std(&grads, &x),
            );
        }
    }
}

#[test]
fn mse_loss_value_is_standard_and_grads_are_unit() {
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let dev = seeded();
        let a = randn(&dev, (64usize, 1024usize));
        let b = randn(&dev, (64usize, 1024usize));
        let loss = ops::mse_loss(a.leaky_trace(), b.retaped::<Tp>(), reduction).unwrap();
        let value = loss.as_vec()[0] as f64;
        let grads = loss.backward();
        let sq: f64 = a
            .as_vec()
            .iter()
            .zip(b.as_vec())
            .map(|(&x, y)| (x as f64 - y as f64).powi(2))
            .sum();
        let want = match reduction {
            Reduction::Mean => sq / (64.0 * 1024.0),
            Reduction::Sum => sq,
        };
        assert_rel(&format!("mse_loss({reduction}) value"), value, want, 1e-4);
        let (ga, gb) = (grad_of(&grads, &a), grad_of(&grads, &b));
        assert_unit(&format!("mse_loss({reduction}) std(grad a)"), std_dev(&ga));
        assert_unit(&format!("mse_loss({reduction}) std(grad b)"), std_dev(&gb));
        assert!(
            ga.iter().zip(&gb).all(|(x, y)| *x == -*y),
            "grad b = −grad a"
        );
    }
}

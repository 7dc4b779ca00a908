//! Bad input to the public API is an `umup::Error` that says what was wrong, never a panic
//! (README, `error.rs`). Each test checks the variant and the Display text.

use umup::dfdx::prelude::*;
use umup::formats::{Format, Rounding};
use umup::ops::{self, Reduction};
use umup::optim::{OptimConfig, Optimizer, OptimizerKind};
use umup::params::{ParamSpec, Role};
use umup::{Constraint, Error};

type Tp = OwnedTape<f32, Cpu>;
type T2 = Tensor<(usize, usize), f32, Cpu>;

fn dev() -> Cpu {
    Cpu::seed_from_u64(1472)
}

fn randn<S: Shape>(dev: &Cpu, shape: S) -> Tensor<S, f32, Cpu> {
    dev.sample_normal_like(&shape)
}

/// Unwraps the error of `r` and checks that its Display contains every one of `needles`.
#[track_caller]
fn expect_err<T>(r: umup::Result<T>, needles: &[&str]) -> Error {
    let e = match r {
        Ok(_) => panic!("expected an error containing {needles:?}, got Ok"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` should mention `{n}`");
    }
    e
}

#[track_caller]
fn assert_shape_mismatch(e: &Error, expected_op: &str) {
    match e {
        Error::ShapeMismatch { op, .. } => assert_eq!(*op, expected_op, "{e}"),
        other => panic!("expected ShapeMismatch from {expected_op}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_value(e: &Error, expected_what: &str) {
    match e {
        Error::InvalidValue { what, .. } => assert_eq!(*what, expected_what, "{e}"),
        other => panic!("expected InvalidValue for {expected_what}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- runtime shape mismatches

#[test]
fn linear_weight_fan_in_must_match_x() {
    let dev = dev();
    let x: T2 = randn(&dev, (5, 3));
    let w: T2 = randn(&dev, (4, 2));
    let e = expect_err(
        ops::linear(x.leaky_trace(), &w, None, Constraint::None),
        &["linear", "fan_in", "expected 3, got 2"],
    );
    assert_shape_mismatch(&e, "linear");
    let e = expect_err(
        ops::linear_readout(x.clone(), &w, None, Constraint::None),
        &["linear_readout", "fan_in", "expected 3, got 2"],
    );
    assert_shape_mismatch(&e, "linear_readout");
}

#[test]
fn linear_bias_length_must_match_fan_out() {
    let dev = dev();
    let x: T2 = randn(&dev, (5, 3));
    let w: T2 = randn(&dev, (4, 3));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(6,));
    let e = expect_err(
        ops::linear(x.leaky_trace(), &w, Some(&b), Constraint::ToOutputScale),
        &["linear", "bias", "expected 4, got 6"],
    );
    assert_shape_mismatch(&e, "linear");
}

#[test]
fn linear_with_no_rows_is_an_error() {
    let dev = dev();
    let x: T2 = dev.zeros_like(&(0, 3));
    let w: T2 = randn(&dev, (4, 3));
    let e = expect_err(ops::linear(x, &w, None, Constraint::None), &["rows"]);
    assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
}

#[test]
fn conv1d_bad_shapes_and_geometry_are_errors() {
    use ops::{Conv1dGeometry, Conv1dOptions};
    type T3 = Tensor<(usize, usize, usize), f32, Cpu>;
    let dev = dev();
    let x: T3 = randn(&dev, (2, 6, 10));
    let opts = |stride, padding, dilation, groups| Conv1dOptions {
        geometry: Conv1dGeometry {
            stride,
            padding,
            dilation,
            groups,
        },
        ..Default::default()
    };
    // The weight's second dim must be C_in / groups.
    let w: T3 = randn(&dev, (4, 6, 3));
    let e = expect_err(
        ops::conv1d(x.leaky_trace(), &w, None, opts(1, 0, 1, 2)),
        &["conv1d", "in_channels / groups", "expected 3, got 6"],
    );
    assert_shape_mismatch(&e, "conv1d");
    // groups must divide both channel counts.
    let w: T3 = randn(&dev, (5, 3, 3));
    let e = expect_err(
        ops::conv1d(x.clone(), &w, None, opts(1, 0, 1, 2)),
        &["groups (2) must divide", "out_channels (5)"],
    );
    assert_shape_mismatch(&e, "conv1d");
    // The bias length is C_out.
    let w: T3 = randn(&dev, (4, 6, 3));
    let b: Tensor<(usize,), f32, Cpu> = randn(&dev, (3,));
    let e = expect_err(
        ops::conv1d(x.clone(), &w, Some(&b), opts(1, 0, 1, 1)),
        &["bias length"],
    );
    assert_shape_mismatch(&e, "conv1d");
    // An input shorter than the dilated kernel (10 + 2·1 < 6·(3−1) + 1).
    let e = expect_err(
        ops::conv1d(x.clone(), &w, None, opts(1, 1, 6, 1)),
        &["shorter than the dilated kernel (13)"],
    );
    assert_shape_mismatch(&e, "conv1d");
    // Zero stride, dilation or groups.
    for (o, what) in [
        (opts(0, 0, 1, 1), "stride"),
        (opts(1, 0, 0, 1), "dilation"),
        (opts(1, 0, 1, 0), "groups"),
    ] {
        let e = expect_err(ops::conv1d(x.clone(), &w, None, o), &[what, "at least 1"]);
        assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
    }
    // A non-finite scale power.
    let o = Conv1dOptions {
        scale_power: [0.5, f64::INFINITY, 0.5],
        ..Default::default()
    };
    expect_err(ops::conv1d(x, &w, None, o), &["scale_power"]);
}

#[test]
fn matmul_inner_dims_must_match() {
    let dev = dev();
    let left: T2 = randn(&dev, (5, 3));
    let right: T2 = randn(&dev, (4, 2));
    let e = expect_err(
        ops::matmul(left.leaky_trace(), right.retaped::<Tp>(), Constraint::None),
        &["matmul", "K", "expected 3, got 4"],
    );
    assert_shape_mismatch(&e, "matmul");

    let l3: Tensor<(usize, usize, usize), f32, Cpu> = randn(&dev, (2, 5, 3));
    let r3: Tensor<(usize, usize, usize), f32, Cpu> = randn(&dev, (3, 3, 4));
    let e = expect_err(
        ops::matmul_batched(l3.clone(), r3, Constraint::None),
        &["matmul", "batch", "expected 2, got 3"],
    );
    assert_shape_mismatch(&e, "matmul");
    let r3: Tensor<(usize, usize, usize), f32, Cpu> = randn(&dev, (2, 7, 4));
    expect_err(
        ops::matmul_batched(l3, r3, Constraint::None),
        &["matmul", "K", "expected 3, got 7"],
    );
}

#[test]
fn selector_constraints_need_the_right_arity() {
    let dev = dev();
    // to_grad_input_scale selects from a binary scale group; matmul's group is ternary.
    let left: T2 = randn(&dev, (5, 3));
    let right: T2 = randn(&dev, (3, 2));
    let e = expect_err(
        ops::matmul(left, right, Constraint::ToGradInputScale),
        &["to_grad_input_scale", "3"],
    );
    assert!(matches!(e, Error::ConstraintArity { .. }), "{e:?}");
    // to_left_grad_scale selects from a ternary group; linear's (output, grad x) is binary.
    let x: T2 = randn(&dev, (5, 3));
    let w: T2 = randn(&dev, (4, 3));
    let e = expect_err(
        ops::linear(x, &w, None, Constraint::ToLeftGradScale),
        &["to_left_grad_scale", "2"],
    );
    assert!(matches!(e, Error::ConstraintArity { .. }), "{e:?}");
}

#[test]
fn attention_q_k_v_shapes_must_match() {
    let dev = dev();
    type T4 = Tensor<(usize, usize, usize, usize), f32, Cpu>;
    let q: T4 = randn(&dev, (1, 2, 4, 8));
    let good: T4 = randn(&dev, (1, 2, 4, 8));
    let k_bad: T4 = randn(&dev, (1, 2, 5, 8));
    let v_bad: T4 = randn(&dev, (1, 2, 4, 6));
    let e = expect_err(
        ops::scaled_dot_product_attention(
            q.leaky_trace(),
            k_bad.retaped::<Tp>(),
            good.retaped::<Tp>(),
            1.0,
            false,
        ),
        &[
            "scaled_dot_product_attention",
            "k.shape[2]",
            "expected 4, got 5",
        ],
    );
    assert_shape_mismatch(&e, "scaled_dot_product_attention");
    let e = expect_err(
        ops::scaled_dot_product_attention(q.clone(), good.clone(), v_bad, 1.0, true),
        &["v.shape[3]", "expected 8, got 6"],
    );
    assert_shape_mismatch(&e, "scaled_dot_product_attention");
    // A causal mask over one position has no u-μP scale (ln 1 = 0).
    let q1: T4 = randn(&dev, (1, 1, 1, 8));
    let e = expect_err(
        ops::scaled_dot_product_attention(q1.clone(), q1.clone(), q1, 1.0, true),
        &["seq_len"],
    );
    assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
}

#[test]
fn silu_glu_shapes_must_match() {
    let dev = dev();
    let x: T2 = randn(&dev, (4, 3));
    let gate: T2 = randn(&dev, (4, 5));
    let e = expect_err(
        ops::silu_glu(x.leaky_trace(), gate.retaped::<Tp>(), 1.0),
        &["silu_glu", "[4, 3]", "[4, 5]"],
    );
    assert_shape_mismatch(&e, "silu_glu");
}

#[test]
fn add_shapes_must_match() {
    let dev = dev();
    let a: T2 = randn(&dev, (4, 3));
    let b: T2 = randn(&dev, (3, 4));
    let e = expect_err(
        ops::add(
            a.leaky_trace(),
            b.retaped::<Tp>(),
            Constraint::ToOutputScale,
        ),
        &["add", "[3, 4]", "[4, 3]"],
    );
    assert_shape_mismatch(&e, "add");
}

#[test]
fn add_broadcast_operand_must_fit() {
    let dev = dev();
    let a: T2 = randn(&dev, (4, 3));
    // b broadcasts along axis 0, so it must have length 3.
    let b: Tensor<(usize,), f32, Cpu> = randn(&dev, (5,));
    let e = expect_err(
        ops::add_broadcast::<_, _, Axis<0>, _, _, _>(a.clone(), b, Constraint::None),
        &["add", "[5]", "[4, 3]"],
    );
    assert_shape_mismatch(&e, "add");
    // Along axis 1 it must have length 4.
    let b: Tensor<(usize,), f32, Cpu> = randn(&dev, (3,));
    expect_err(
        ops::add_broadcast::<_, _, Axis<1>, _, _, _>(a, b, Constraint::None),
        &["[3]", "[4, 3]"],
    );
}

#[test]
fn mse_loss_shapes_must_match() {
    let dev = dev();
    let a: T2 = randn(&dev, (2, 3));
    let b: T2 = randn(&dev, (1, 3));
    let e = expect_err(
        ops::mse_loss(a.leaky_trace(), b.retaped::<Tp>(), Reduction::Mean),
        &["mse_loss", "[2, 3]", "[1, 3]"],
    );
    assert_shape_mismatch(&e, "mse_loss");
}

#[test]
fn norm_gain_and_bias_lengths_must_match() {
    let dev = dev();
    let x: T2 = randn(&dev, (4, 3));
    let g: Tensor<(usize,), f32, Cpu> = dev.ones_like(&(5,));
    let e = expect_err(
        ops::rms_norm(x.leaky_trace(), Some(&g), 1e-5),
        &["rms_norm", "gain", "expected 3, got 5"],
    );
    assert_shape_mismatch(&e, "rms_norm");
    let ok: Tensor<(usize,), f32, Cpu> = dev.ones_like(&(3,));
    let e = expect_err(
        ops::layer_norm(x.clone(), Some(&ok), Some(&g), 1e-5),
        &["layer_norm", "expected 3, got 5"],
    );
    assert_shape_mismatch(&e, "layer_norm");
    // eps must be finite and positive.
    let e = expect_err(ops::rms_norm(x.clone(), None, 0.0), &["eps"]);
    assert_invalid_value(&e, "eps");
    let e = expect_err(ops::layer_norm(x, None, None, f64::NAN), &["eps", "NaN"]);
    assert_invalid_value(&e, "eps");
}

// ---------------------------------------------------------------- ids and targets

#[test]
fn embedding_token_out_of_range() {
    let dev = dev();
    let table: T2 = randn(&dev, (8, 4));
    let ids: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(vec![1, 7, 8, 3, 12], (5,));
    let e = expect_err(
        ops::embedding(ids.leaky_trace(), &table),
        &["token id 8", "position 2", "vocabulary of 8"],
    );
    assert_eq!(
        e,
        Error::TokenOutOfRange {
            id: 8,
            position: 2,
            vocab: 8
        }
    );
}

// ---------------------------------------------------------------- degenerate sizes and ranges

#[test]
fn embedding_with_no_ids_is_an_error() {
    let dev = dev();
    let table: T2 = randn(&dev, (8, 4));
    let empty: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(vec![], (0,));
    let e = expect_err(ops::embedding(empty, &table), &["embedding"]);
    assert_shape_mismatch(&e, "embedding");
}

#[test]
fn losses_on_empty_input_are_errors() {
    let dev = dev();
    let empty: T2 = dev.zeros_like(&(0, 3));
    assert!(ops::cross_entropy(empty.clone(), &[], 1.0, Reduction::Sum).is_err());
    assert!(ops::mse_loss(empty.clone(), empty, Reduction::Mean).is_err());
}

#[test]
fn scale_that_overflows_the_dtype_is_an_error() {
    let dev = dev();
    let x: T2 = randn(&dev, (2, 3));
    expect_err(ops::scale_fwd(x.clone(), 1e300), &["not representable"]);
    expect_err(
        ops::gelu(x, 1e300, Constraint::None),
        &["not representable"],
    );
}

#[test]
fn cross_entropy_targets_are_checked() {
    let dev = dev();
    let logits: T2 = randn(&dev, (3, 5));
    let e = expect_err(
        ops::cross_entropy(logits.leaky_trace(), &[0, 4, 5], 1.0, Reduction::Mean),
        &["class target 5", "row 2", "5 classes"],
    );
    assert_eq!(
        e,
        Error::TargetOutOfRange {
            target: 5,
            row: 2,
            classes: 5
        }
    );
    let e = expect_err(
        ops::cross_entropy(logits.clone(), &[0, 1], 1.0, Reduction::Sum),
        &["cross_entropy", "targets", "expected 3, got 2"],
    );
    assert_shape_mismatch(&e, "cross_entropy");
    let e = expect_err(
        ops::cross_entropy(logits, &[0, 1, 2], f64::NAN, Reduction::Mean),
        &["mult", "NaN"],
    );
    assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
    let one_class: T2 = randn(&dev, (3, 1));
    let e = expect_err(
        ops::cross_entropy(one_class, &[0, 0, 0], 1.0, Reduction::Mean),
        &["classes"],
    );
    assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
}

// ---------------------------------------------------------------- names

#[test]
fn unknown_constraint_name() {
    let e = expect_err(
        "gmaen".parse::<Constraint>(),
        &["gmaen", "gmean", "to_output_scale"],
    );
    assert_eq!(e, Error::UnknownConstraint("gmaen".into()));
    let e = expect_err(Constraint::from_option(Some("to_output")), &["to_output"]);
    assert!(matches!(e, Error::UnknownConstraint(_)), "{e:?}");
    // The reference's names all parse.
    for c in Constraint::ALL {
        assert_eq!(c.name().parse::<Constraint>().unwrap(), c);
    }
}

#[test]
fn unknown_format_optimizer_role_reduction_and_rounding_names() {
    let e = expect_err("e4m4".parse::<Format>(), &["number format", "e4m4", "e4m3"]);
    assert!(matches!(e, Error::UnknownName { .. }), "{e:?}");
    let e = expect_err(
        "adamx".parse::<OptimizerKind>(),
        &["optimizer", "adamx", "adamw"],
    );
    assert!(matches!(e, Error::UnknownName { .. }), "{e:?}");
    let e = expect_err("hiden".parse::<Role>(), &["role", "hiden", "weight"]);
    assert!(matches!(e, Error::UnknownName { .. }), "{e:?}");
    let e = expect_err(
        "avg".parse::<Reduction>(),
        &["reduction", "avg", "mean, sum"],
    );
    assert!(matches!(e, Error::UnknownName { .. }), "{e:?}");
    let e = expect_err(
        "floor".parse::<Rounding>(),
        &["rounding", "floor", "nearest"],
    );
    assert!(matches!(e, Error::UnknownName { .. }), "{e:?}");
}

// ---------------------------------------------------------------- invalid values

#[test]
fn non_finite_scales_are_rejected() {
    let dev = dev();
    let x: T2 = randn(&dev, (2, 3));
    let e = expect_err(
        ops::scale_fwd(x.leaky_trace(), f64::NAN),
        &["forward scale", "NaN"],
    );
    assert_invalid_value(&e, "forward scale");
    let e = expect_err(
        ops::scale_bwd(x.leaky_trace(), f64::INFINITY),
        &["backward scale", "inf"],
    );
    assert_invalid_value(&e, "backward scale");
    let e = expect_err(
        ops::scale_grad(x.leaky_trace(), 2.0, f64::NEG_INFINITY),
        &["backward scale", "-inf"],
    );
    assert_invalid_value(&e, "backward scale");
    let e = expect_err(
        ops::scale_grad(x.clone(), f64::INFINITY, 1.0),
        &["forward scale"],
    );
    assert_invalid_value(&e, "forward scale");
    let e = expect_err(
        ops::scale_grad_generic(x.leaky_trace(), 1.0, f64::NAN),
        &["backward scale"],
    );
    assert_invalid_value(&e, "backward scale");
}

#[test]
fn nan_or_non_positive_mult_is_rejected() {
    let dev = dev();
    let x: T2 = randn(&dev, (2, 3));
    for mult in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
        let e = expect_err(
            ops::gelu(x.leaky_trace(), mult, Constraint::None),
            &["mult"],
        );
        assert_invalid_value(&e, "mult");
        let e = expect_err(
            ops::softmax(x.leaky_trace(), mult, Constraint::None),
            &["mult"],
        );
        assert_invalid_value(&e, "mult");
        let e = expect_err(
            ops::silu(x.clone(), mult, Constraint::ToOutputScale),
            &["mult"],
        );
        assert_invalid_value(&e, "mult");
        let e = expect_err(ops::silu_glu(x.clone(), x.clone(), mult), &["mult"]);
        assert_invalid_value(&e, "mult");
    }
    let e = expect_err(ops::gelu(x, f64::NAN, Constraint::None), &["mult", "NaN"]);
    assert_invalid_value(&e, "mult");
    type T4 = Tensor<(usize, usize, usize, usize), f32, Cpu>;
    let q: T4 = randn(&dev, (1, 1, 4, 8));
    let e = expect_err(
        ops::scaled_dot_product_attention(q.clone(), q.clone(), q, f64::NAN, false),
        &["mult"],
    );
    assert_invalid_value(&e, "mult");
}

#[test]
fn tau_must_be_positive() {
    let dev = dev();
    let x: T2 = randn(&dev, (2, 3));
    for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = expect_err(ops::residual_split(x.leaky_trace(), tau), &["tau"]);
        assert_invalid_value(&e, "tau");
        let e = expect_err(
            ops::residual_add(x.leaky_trace(), x.retaped::<Tp>(), tau),
            &["tau"],
        );
        assert_invalid_value(&e, "tau");
        let mut called = false;
        let e = expect_err(
            ops::residual_apply(x.leaky_trace(), tau, |h| {
                called = true;
                Ok(h)
            }),
            &["tau"],
        );
        assert_invalid_value(&e, "tau");
        assert!(!called, "the branch must not run with an invalid tau");
    }
    let e = expect_err(ops::residual_split(x, 0.0), &["tau", "> 0"]);
    assert_invalid_value(&e, "tau");
}

#[test]
fn dropout_probability_must_be_in_unit_interval() {
    let dev = dev();
    let x: T2 = randn(&dev, (2, 3));
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        for training in [true, false] {
            let e = expect_err(
                ops::dropout(x.leaky_trace(), p, training),
                &["dropout probability", "[0, 1)"],
            );
            assert_invalid_value(&e, "dropout probability");
        }
    }
}

// ---------------------------------------------------------------- optimizer

#[test]
fn optimizer_rejects_bad_hyperparameters() {
    let table = [ParamSpec::new("w", Role::Weight, &[3, 4])];
    let e = expect_err(
        Optimizer::<f32, Cpu>::new(OptimConfig::adamw(f64::NAN), &table),
        &["learning rate", "NaN"],
    );
    assert_invalid_value(&e, "learning rate");
    let e = expect_err(
        Optimizer::<f32, Cpu>::new(OptimConfig::sgd(-0.1), &table),
        &["learning rate"],
    );
    assert_invalid_value(&e, "learning rate");
    let cfg = OptimConfig {
        betas: [0.9, 1.0],
        ..OptimConfig::adam(0.1)
    };
    let e = expect_err(Optimizer::<f32, Cpu>::new(cfg, &table), &["beta"]);
    assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
    let cfg = OptimConfig {
        weight_decay: f64::INFINITY,
        ..OptimConfig::adamw(0.1)
    };
    let e = expect_err(Optimizer::<f32, Cpu>::new(cfg, &table), &["weight decay"]);
    assert_invalid_value(&e, "weight decay");
    // A path listed twice.
    let twice = [table[0].clone(), table[0].clone()];
    let e = expect_err(
        Optimizer::<f32, Cpu>::new(OptimConfig::adamw(0.1), &twice),
        &["`w`", "twice"],
    );
    assert!(matches!(e, Error::BadParameter { .. }), "{e:?}");
}

type Model = (Linear<4, 3>,);

/// A one-layer dfdx model and the gradients of a small loss.
fn model_and_grads(
    dev: &Cpu,
) -> (
    <Model as BuildOnDevice<Cpu, f32>>::Built,
    Gradients<f32, Cpu>,
) {
    let model = dev.build_module::<Model, f32>();
    let grads = model.alloc_grads();
    let x: Tensor<Rank2<2, 4>, f32, Cpu> = dev.sample_normal();
    let y = model.forward(x.traced(grads));
    let grads = y.square().mean().backward();
    (model, grads)
}

#[test]
fn optimizer_update_names_a_tensor_without_a_role() {
    let dev = dev();
    let (mut model, mut grads) = model_and_grads(&dev);
    let table = [ParamSpec::new("0.weight", Role::Weight, &[3, 4])];
    let mut opt = Optimizer::<f32, Cpu>::new(OptimConfig::adam(0.1), &table).unwrap();
    let weight_before = model.0.weight.as_vec();
    let e = expect_err(opt.update(&mut model, &mut grads), &["0.bias", "role"]);
    assert_eq!(
        model.0.weight.as_vec(),
        weight_before,
        "a failed update changes nothing"
    );
    assert_eq!(
        e,
        Error::MissingRole {
            path: "0.bias".into()
        }
    );
    assert_eq!(opt.steps(), 0, "a failed update is not counted");

    // Opting in trains the unlisted bias with the raw η.
    let cfg = OptimConfig {
        allow_non_unit_scaling_params: true,
        ..OptimConfig::adam(0.1)
    };
    let mut opt = Optimizer::<f32, Cpu>::new(cfg, &table).unwrap();
    let bias_before = model.0.bias.as_vec();
    let norm = opt.update(&mut model, &mut grads).unwrap();
    assert_eq!(norm, None);
    assert_eq!(opt.steps(), 1);
    let bias_after = model.0.bias.as_vec();
    // Adam's first step moves every parameter with a non-zero gradient by ≈ lr.
    for (b0, b1) in bias_before.iter().zip(&bias_after) {
        assert!(((b0 - b1).abs() - 0.1).abs() < 1e-3, "{b0} -> {b1}");
    }
}

#[test]
fn optimizer_update_checks_the_table_shape() {
    let dev = dev();
    let (mut model, mut grads) = model_and_grads(&dev);
    let table = [
        ParamSpec::new("0.weight", Role::Weight, &[4, 4]),
        ParamSpec::new("0.bias", Role::Bias, &[3]),
    ];
    let mut opt = Optimizer::<f32, Cpu>::new(OptimConfig::adam(0.1), &table).unwrap();
    let e = expect_err(
        opt.update(&mut model, &mut grads),
        &["0.weight", "16 elements", "12"],
    );
    assert!(matches!(e, Error::BadParameter { .. }), "{e:?}");
}

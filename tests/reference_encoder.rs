//! The shipped masked-byte encoder (`umup::models::MaskedEncoder`, the second model family)
//! against the same model built from the reference library's modules, end to end:
//! `fixtures/reference_encoder.json` (written by `tools/reference/encoder_fixture.py` from
//! unit-scaling 0.3.5 in float64; schema in `fixtures/REFERENCE_ENCODER.md`). Same parameters,
//! same masked batch: the loss, every gradient and the parameters after three
//! `uu.optim.AdamW` steps must agree, with the default α's and with all five α's set.

mod common;

use common::{
    assert_each_alpha_matters, assert_within, collect, compare, fill_and_check, index, File,
};
use serde::Deserialize;
use umup::data::TokenBatch;
use umup::dfdx::prelude::*;
use umup::family::{training_tape, Options, Step, Trainable};
use umup::models::MaskedEncoder;
use umup::nn::Umup;
use umup::optim::{OptimConfig, Optimizer};
use umup::params::NormParams;

/// 16 positions, width 32, MLP 128, depth 2: the fixture's model.
type Model<E> = MaskedEncoder<16, 32, 128, 2, E, Cpu, Umup>;

/// The model fields of a case.
#[derive(Deserialize, Clone)]
struct Encoder {
    width: usize,
    layers: usize,
    d_head: usize,
    max_seq: usize,
    inputs: Vec<usize>,
    positions: Vec<usize>,
    targets: Vec<usize>,
}

type Case = common::Case<Encoder>;

fn fixture() -> File<Encoder> {
    common::fixture("reference_encoder.json")
}

/// Runs a case in `E` and returns the worst relative error of (losses, gradients, trained
/// parameters), asserting that the initial parameters are the fixture's and that the key
/// biases' gradients (which softmax cancels; frozen in both) are zero up to rounding.
fn run<E: Dtype>(case: &Case) -> (f64, f64, f64)
where
    Cpu: umup::ops::Backend<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    assert_eq!(
        (case.model.max_seq, case.model.width, case.model.layers),
        (16, 32, 2),
        "the fixture's model is not `Model`"
    );
    let dev = Cpu::default();
    let mut m = Model::<E>::build(&dev).unwrap();
    fill_and_check(&mut m, &case.names, &case.init);
    let index = |n: &str| index(&case.names, n);
    let hp = case.alphas.hyper(case.lr);
    let batch = TokenBatch {
        inputs: case.model.inputs.clone(),
        targets: case.model.targets.clone(),
        positions: case.model.positions.clone(),
        batch: case.batch,
        seq: case.seq,
    };
    let table = Model::<E>::param_table().unwrap();
    let cfg = OptimConfig {
        weight_decay: case.weight_decay,
        // The reference's encoder trains its LayerNorm gains and biases.
        norm_params: NormParams::Trained,
        ..OptimConfig::adamw(case.lr)
    };
    let mut opt = Optimizer::<E, Cpu>::for_table(cfg, &table).unwrap();
    let frozen: Vec<&String> = case
        .names
        .iter()
        .filter(|n| !case.grads.contains_key(*n))
        .collect();
    assert_eq!(frozen.len(), case.model.layers, "one key bias per layer");
    for name in &frozen {
        assert!(name.ends_with(".k.bias"), "{name}");
        opt.freeze(name).unwrap();
    }
    let (mut loss_err, mut grad_err) = (0f64, 0f64);
    for (i, want) in case.losses.iter().enumerate() {
        let options = Options::new().with("heads", case.model.width / case.model.d_head);
        let mut step = Step::new(&hp, &options);
        let tape = training_tape(&dev, m.alloc_grads());
        let loss = m.loss(&batch, tape, &mut step).unwrap();
        let got = loss.array().to_f64().unwrap();
        loss_err = loss_err.max((got - want).abs() / want);
        let mut grads = loss.backward();
        if i == 0 {
            for (name, g) in collect(&m, Some(&grads)) {
                match case.grads.get(&name) {
                    Some(want) => grad_err = grad_err.max(compare(&g, want, index(&name))),
                    None => {
                        let rms = umup::analysis::rms(&g);
                        assert!(rms < 1e-6, "{name}: gradient RMS {rms:.1e}, not zero");
                    }
                }
            }
        }
        opt.update(&mut m, &mut grads).unwrap();
    }
    assert_eq!(case.losses.len(), case.steps);
    let mut after_err = 0f64;
    for (name, v) in collect(&m, None) {
        after_err = after_err.max(compare(&v, &case.after[&name], index(&name)));
    }
    (loss_err, grad_err, after_err)
}

#[test]
fn the_fixture_covers_defaults_every_alpha_and_every_tensor() {
    let f = fixture();
    let names: Vec<&str> = f.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["defaults", "all_alphas"]);
    for v in f.cases[1].alphas.all() {
        assert_ne!(v, 1.0);
    }
    // 2 embeddings + 16 per layer + the final norm's 2 + the readout; every tensor has a
    // gradient summary but the key biases.
    let table = Model::<f64>::param_table().unwrap();
    for c in &f.cases {
        assert_eq!(c.names.len(), table.rows.len());
        assert_eq!((c.init.len(), c.after.len()), (37, 37));
        assert_eq!(c.grads.len(), 37 - c.model.layers);
        // The masked positions are strictly increasing flat positions, one target each.
        assert!(c.model.positions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.model.positions.len(), c.model.targets.len());
        assert!(c.model.positions.len() >= 6 && c.seq < c.model.max_seq);
    }
}

#[test]
fn f64_matches_the_reference_encoder() {
    // Measured: loss 2e-16, gradients 2.4e-14, trained parameters 5.3e-14.
    assert_within(&fixture().cases, run::<f64>, (1e-13, 1e-12, 1e-12));
}

#[test]
fn f32_matches_the_reference_encoder_to_single_precision() {
    // The trained parameters get 1e-3 (the LM's test: 1e-4): Adam divides each step by the
    // root of the squared gradient, so the f32 rounding of a small gradient entry becomes a
    // relative error of the step; biases have such entries (measured: at most 1.4e-4, in
    // `layers.0.up.bias`; everything else at most 4.5e-5).
    assert_within(&fixture().cases, run::<f32>, (1e-5, 1e-4, 1e-3));
}

#[test]
fn each_alpha_moves_the_result_far_outside_the_tolerance() {
    assert_each_alpha_matters(&fixture().cases[1], run::<f64>);
}

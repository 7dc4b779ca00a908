//! The shipped LM against the reference library's `uu.TransformerDecoder`, end to end:
//! `fixtures/reference_lm.json` (written by `tools/reference/lm_fixture.py` from unit-scaling
//! 0.3.5 in float64; schema in `fixtures/REFERENCE_LM.md`). Same weights, same tokens: the loss,
//! every weight gradient and the weights after three `uu.optim.AdamW` steps must agree, with the
//! default α's and with all five α's set.

mod common;

use common::{
    assert_each_alpha_matters, assert_within, collect, compare, fill_and_check, index, File,
};
use serde::Deserialize;
use umup::dfdx::prelude::*;
use umup::models::{LmOptions, TransformerLm};
use umup::nn::Umup;
use umup::optim::{OptimConfig, Optimizer};

/// Width 16, MLP 64, depth 2: the fixture's model.
type Model<E> = TransformerLm<256, 16, 64, 2, E, Cpu, Umup>;

/// The model fields of a case.
#[derive(Deserialize, Clone)]
struct Lm {
    heads: usize,
    ids: Vec<usize>,
}

type Case = common::Case<Lm>;

fn fixture() -> File<Lm> {
    common::fixture("reference_lm.json")
}

/// Runs a case in `E` and returns the worst relative error of (losses, gradients,
/// trained weights), asserting that the initial weights are the fixture's.
fn run<E: Dtype>(case: &Case) -> (f64, f64, f64)
where
    Cpu: umup::ops::Backend<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    let dev = Cpu::default();
    let mut m = Model::<E>::build(&dev).unwrap();
    fill_and_check(&mut m, &case.names, &case.init);
    let index = |n: &str| index(&case.names, n);
    let hp = case.alphas.hyper(case.lr);
    let opts = LmOptions {
        heads: case.model.heads,
        rope: false,
    };
    let (b, s) = (case.batch, case.seq);
    let inputs: Vec<usize> = (0..b)
        .flat_map(|i| case.model.ids[i * (s + 1)..i * (s + 1) + s].to_vec())
        .collect();
    let targets: Vec<usize> = (0..b)
        .flat_map(|i| case.model.ids[i * (s + 1) + 1..(i + 1) * (s + 1)].to_vec())
        .collect();
    let table = Model::<E>::param_table().unwrap();
    let cfg = OptimConfig {
        weight_decay: case.weight_decay,
        ..OptimConfig::adamw(case.lr)
    };
    let mut opt = Optimizer::<E, Cpu>::for_table(cfg, &table).unwrap();
    let (mut loss_err, mut grad_err) = (0f64, 0f64);
    for (step, want) in case.losses.iter().enumerate() {
        let ids = dev.tensor_from_vec(inputs.clone(), (inputs.len(),));
        let traced = ids.traced(m.alloc_grads());
        let loss = m.loss(traced, &targets, (b, s), &hp, &opts, None).unwrap();
        let got = loss.array().to_f64().unwrap();
        loss_err = loss_err.max((got - want).abs() / want);
        let mut grads = loss.backward();
        if step == 0 {
            for (name, g) in collect(&m, Some(&grads)) {
                grad_err = grad_err.max(compare(&g, &case.grads[&name], index(&name)));
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
fn the_fixture_covers_defaults_and_every_alpha() {
    let f = fixture();
    let names: Vec<&str> = f.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["defaults", "all_alphas"]);
    let a = &f.cases[1].alphas;
    for v in a.all() {
        assert_ne!(v, 1.0);
    }
    // 1 + 7 per layer + 1 tensors, each summarised three times.
    for c in &f.cases {
        assert_eq!(c.names.len(), 16);
        for m in [&c.init, &c.grads, &c.after] {
            assert_eq!(m.len(), 16);
        }
    }
}

#[test]
fn f64_matches_the_reference_decoder() {
    assert_within(&fixture().cases, run::<f64>, (1e-13, 1e-12, 1e-12));
}

#[test]
fn f32_matches_the_reference_decoder_to_single_precision() {
    assert_within(&fixture().cases, run::<f32>, (1e-5, 1e-4, 1e-4));
}

#[test]
fn each_alpha_moves_the_result_far_outside_the_tolerance() {
    assert_each_alpha_matters(&fixture().cases[1], run::<f64>);
}

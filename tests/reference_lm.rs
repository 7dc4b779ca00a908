//! The shipped LM against the reference library's `uu.TransformerDecoder`, end to end:
//! `fixtures/reference_lm.json` (written by `tools/reference/lm_fixture.py` from unit-scaling
//! 0.3.5 in float64; schema in `fixtures/REFERENCE_LM.md`). Same weights, same tokens: the loss,
//! every weight gradient and the weights after three `uu.optim.AdamW` steps must agree, with the
//! default α's and with all five α's set.

use serde::Deserialize;
use std::collections::BTreeMap;
use umup::dfdx::nn::tensor_collection::TensorCollection;
use umup::dfdx::prelude::*;
use umup::models::{LmOptions, TransformerLm};
use umup::nn::{Hyper, Umup};
use umup::optim::{OptimConfig, Optimizer};
use umup::walk::{self, Visit, VisitMut};

/// Width 16, MLP 64, depth 2: the fixture's model.
type Model<E> = TransformerLm<256, 16, 64, 2, E, Cpu, Umup>;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone, Copy)]
struct Alphas {
    ffn_act: f64,
    attn_softmax: f64,
    res: f64,
    res_attn_ratio: f64,
    loss_softmax: f64,
}

#[derive(Deserialize, Clone)]
struct Summary {
    rms: f64,
    probe_dot: f64,
    head: Vec<f64>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    heads: usize,
    batch: usize,
    seq: usize,
    lr: f64,
    weight_decay: f64,
    steps: usize,
    alphas: Alphas,
    names: Vec<String>,
    ids: Vec<usize>,
    init: BTreeMap<String, Summary>,
    losses: Vec<f64>,
    grads: BTreeMap<String, Summary>,
    after: BTreeMap<String, Summary>,
}

fn fixture() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/reference_lm.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// SplitMix64, as `lm_fixture.py::uniform_unit`: `√3·(2u − 1)`, `u = (z >> 11)·2^-53`.
fn uniform_unit(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            3f64.sqrt() * (2.0 * ((z >> 11) as f64 * 2f64.powi(-53)) - 1.0)
        })
        .collect()
}

/// Sets every tensor from its SplitMix64 stream (seed: its index in `names` + 1).
struct Fill<'a>(&'a [String]);

impl<E: Dtype, D: Device<E>> VisitMut<E, D> for Fill<'_> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        t: &mut Tensor<S, E, D>,
        _: bool,
    ) -> umup::Result<()> {
        let i = self
            .0
            .iter()
            .position(|n| *n == name)
            .ok_or(umup::Error::BadParameter {
                path: name,
                reason: "not in the fixture".into(),
            })?;
        let v = uniform_unit(i as u64 + 1, t.shape().num_elements());
        t.copy_from(
            &v.iter()
                .map(|&x| E::from_f64(x).unwrap())
                .collect::<Vec<_>>(),
        );
        Ok(())
    }
}

/// Every tensor (or, with `grads`, its gradient) by name, as f64.
struct Collect<'a, E: Dtype, D: Device<E>> {
    grads: Option<&'a Gradients<E, D>>,
    out: BTreeMap<String, Vec<f64>>,
}

impl<E: Dtype, D: Device<E>> Visit<E, D> for Collect<'_, E, D> {
    fn tensor<S: Shape>(&mut self, name: String, t: &Tensor<S, E, D>, _: bool) -> umup::Result<()> {
        let v = match self.grads {
            Some(g) => g.get(t).as_vec(),
            None => t.as_vec(),
        };
        let v = v.iter().map(|x| x.to_f64().unwrap()).collect();
        self.out.insert(name, v);
        Ok(())
    }
}

fn collect<E: Dtype, M: TensorCollection<E, Cpu>>(
    m: &M,
    grads: Option<&Gradients<E, Cpu>>,
) -> BTreeMap<String, Vec<f64>>
where
    Cpu: Device<E> + umup::Backend<E>,
{
    let mut c = Collect {
        grads,
        out: BTreeMap::new(),
    };
    walk::tensors(m, &mut c).unwrap();
    c.out
}

/// Largest relative difference between a tensor and the reference's summary of it: RMS,
/// probe dot product (relative to `rms · √n`, its scale) and the first entries (relative to
/// the RMS).
fn compare(got: &[f64], want: &Summary, index: usize) -> f64 {
    let n = got.len() as f64;
    let rms = (got.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
    let probe = uniform_unit(1000 + index as u64, got.len());
    let dot: f64 = got.iter().zip(&probe).map(|(a, b)| a * b).sum();
    let mut worst = (rms - want.rms).abs() / want.rms;
    worst = worst.max((dot - want.probe_dot).abs() / (want.rms * n.sqrt()));
    for (a, b) in got.iter().zip(&want.head) {
        worst = worst.max((a - b).abs() / want.rms);
    }
    worst
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
    walk::tensors_mut(&mut m, &mut Fill(&case.names)).unwrap();
    let index = |n: &str| case.names.iter().position(|x| x == n).unwrap();
    for (name, v) in collect(&m, None) {
        assert!(
            compare(&v, &case.init[&name], index(&name)) < 1e-6,
            "{name}"
        );
    }
    let a = &case.alphas;
    let hp = Hyper {
        eta: case.lr,
        alpha_ffn_act: a.ffn_act,
        alpha_attn_softmax: a.attn_softmax,
        alpha_res: a.res,
        alpha_res_attn_ratio: a.res_attn_ratio,
        alpha_loss_softmax: a.loss_softmax,
    };
    let opts = LmOptions {
        heads: case.heads,
        rope: false,
    };
    let (b, s) = (case.batch, case.seq);
    let inputs: Vec<usize> = (0..b)
        .flat_map(|i| case.ids[i * (s + 1)..i * (s + 1) + s].to_vec())
        .collect();
    let targets: Vec<usize> = (0..b)
        .flat_map(|i| case.ids[i * (s + 1) + 1..(i + 1) * (s + 1)].to_vec())
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
    for v in [
        a.ffn_act,
        a.attn_softmax,
        a.res,
        a.res_attn_ratio,
        a.loss_softmax,
    ] {
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

/// Every case in `E`, within `tol` = (loss, gradients, trained weights).
fn assert_every_case<E: Dtype>(tol: (f64, f64, f64))
where
    Cpu: umup::ops::Backend<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    for case in fixture().cases {
        let (loss, grad, after) = run::<E>(&case);
        assert!(
            loss < tol.0 && grad < tol.1 && after < tol.2,
            "{}: loss {loss:.1e}, grads {grad:.1e}, after {after:.1e}",
            case.name
        );
    }
}

#[test]
fn f64_matches_the_reference_decoder() {
    assert_every_case::<f64>((1e-13, 1e-12, 1e-12));
}

#[test]
fn f32_matches_the_reference_decoder_to_single_precision() {
    assert_every_case::<f32>((1e-5, 1e-4, 1e-4));
}

#[test]
fn each_alpha_moves_the_result_far_outside_the_tolerance() {
    // The agreement above is informative only if every α changes the model at this size.
    let case = fixture().cases.remove(1);
    let wrong: [fn(&mut Alphas); 5] = [
        |a| a.ffn_act = 1.0,
        |a| a.attn_softmax = 1.0,
        |a| a.res = 1.0,
        |a| a.res_attn_ratio = 1.0,
        |a| a.loss_softmax = 1.0,
    ];
    for (i, set) in wrong.iter().enumerate() {
        let mut c = case.clone();
        set(&mut c.alphas);
        let (_, grad, after) = run::<f64>(&c);
        assert!(
            grad > 1e-3 && after > 1e-6,
            "α {i}: grads {grad:.1e}, after {after:.1e}"
        );
    }
}

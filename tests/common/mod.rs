//! What the model-level reference tests share (`tests/reference_lm.rs`,
//! `tests/reference_encoder.rs`): the fixtures' SplitMix64 weights, their tensor summaries and
//! the comparison of a model's tensors against them (`fixtures/REFERENCE_LM.md`).

// Each test crate compiles this module on its own and uses what it needs of it.
#![allow(dead_code)]

use serde::Deserialize;
use std::collections::BTreeMap;
use umup::dfdx::nn::tensor_collection::TensorCollection;
use umup::dfdx::prelude::*;
use umup::nn::{AttentionScale, Hyper};
use umup::walk::{self, Visit, VisitMut};

/// A fixture file of `fixtures/` by name.
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The five α's of a case.
#[derive(Deserialize, Clone, Copy)]
pub struct Alphas {
    pub ffn_act: f64,
    pub attn_softmax: f64,
    pub res: f64,
    pub res_attn_ratio: f64,
    pub loss_softmax: f64,
}

impl Alphas {
    /// The run-time hyperparameters: η and these α's.
    pub fn hyper(&self, eta: f64) -> Hyper {
        Hyper {
            eta,
            alpha_ffn_act: self.ffn_act,
            alpha_attn_softmax: self.attn_softmax,
            alpha_res: self.res,
            alpha_res_attn_ratio: self.res_attn_ratio,
            alpha_loss_softmax: self.loss_softmax,
            // The reference library's rule: these tests compare against it.
            attention: AttentionScale::Reference,
        }
    }

    /// The same α's with α number `i` (in the order of the fields) back at 1.
    pub fn with_default(mut self, i: usize) -> Self {
        *[
            &mut self.ffn_act,
            &mut self.attn_softmax,
            &mut self.res,
            &mut self.res_attn_ratio,
            &mut self.loss_softmax,
        ][i] = 1.0;
        self
    }

    /// Every α, in the order of the fields.
    pub fn all(&self) -> [f64; 5] {
        [
            self.ffn_act,
            self.attn_softmax,
            self.res,
            self.res_attn_ratio,
            self.loss_softmax,
        ]
    }
}

/// The reference's summary of one tensor.
#[derive(Deserialize, Clone)]
pub struct Summary {
    pub rms: f64,
    pub probe_dot: f64,
    pub head: Vec<f64>,
}

/// SplitMix64, as `lm_fixture.py::uniform_unit`: `√3·(2u − 1)`, `u = (z >> 11)·2^-53`.
pub fn uniform_unit(seed: u64, n: usize) -> Vec<f64> {
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
pub struct Fill<'a>(pub &'a [String]);

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

/// Every tensor of `m` (or, with `grads`, its gradient) by name, as f64.
pub fn collect<E: Dtype, M: TensorCollection<E, Cpu>>(
    m: &M,
    grads: Option<&Gradients<E, Cpu>>,
) -> BTreeMap<String, Vec<f64>>
where
    Cpu: Device<E>,
{
    let mut c = Collect {
        grads,
        out: BTreeMap::new(),
    };
    walk::tensors(m, &mut c).unwrap();
    c.out
}

/// Fills `m` from the fixture's streams and asserts that its weights are the reference's
/// `init`.
pub fn fill_and_check<E: Dtype, M: TensorCollection<E, Cpu>>(
    m: &mut M,
    names: &[String],
    init: &BTreeMap<String, Summary>,
) where
    Cpu: Device<E>,
{
    walk::tensors_mut(m, &mut Fill(names)).unwrap();
    for (name, v) in collect(m, None) {
        assert!(
            compare(&v, &init[&name], index(names, &name)) < 1e-6,
            "{name}"
        );
    }
}

/// The index of a tensor in the fixture's `names` (its probe seed is 1000 + this).
pub fn index(names: &[String], name: &str) -> usize {
    names.iter().position(|x| x == name).unwrap()
}

/// Largest relative difference between a tensor and the reference's summary of it: RMS,
/// probe dot product (relative to `rms · √n`, its scale) and the first entries (relative to
/// the RMS).
pub fn compare(got: &[f64], want: &Summary, index: usize) -> f64 {
    let n = got.len() as f64;
    let rms = umup::analysis::rms(got);
    let probe = uniform_unit(1000 + index as u64, got.len());
    let dot: f64 = got.iter().zip(&probe).map(|(a, b)| a * b).sum();
    let mut worst = (rms - want.rms).abs() / want.rms;
    worst = worst.max((dot - want.probe_dot).abs() / (want.rms * n.sqrt()));
    for (a, b) in got.iter().zip(&want.head) {
        worst = worst.max((a - b).abs() / want.rms);
    }
    worst
}

/// A fixture file of cases with the model fields `M`.
#[derive(Deserialize)]
pub struct File<M> {
    pub cases: Vec<Case<M>>,
}

/// One case: what every model fixture records, and its model's own fields `M` (derefs to the
/// record).
#[derive(Deserialize, Clone)]
pub struct Case<M> {
    #[serde(flatten)]
    pub rec: Record,
    #[serde(flatten)]
    pub model: M,
}

impl<M> std::ops::Deref for Case<M> {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.rec
    }
}

impl<M> std::ops::DerefMut for Case<M> {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.rec
    }
}

/// What every case of a model fixture records.
#[derive(Deserialize, Clone)]
pub struct Record {
    pub name: String,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub steps: usize,
    pub alphas: Alphas,
    /// Every tensor, in the order of their SplitMix64 seeds.
    pub names: Vec<String>,
    pub init: BTreeMap<String, Summary>,
    pub losses: Vec<f64>,
    pub grads: BTreeMap<String, Summary>,
    pub after: BTreeMap<String, Summary>,
}

/// Asserts that `run`'s errors (loss, gradients, trained parameters) of every case are within
/// `tol`.
pub fn assert_within<M>(
    cases: &[Case<M>],
    run: impl Fn(&Case<M>) -> (f64, f64, f64),
    tol: (f64, f64, f64),
) {
    for case in cases {
        let (loss, grad, after) = run(case);
        assert!(
            loss < tol.0 && grad < tol.1 && after < tol.2,
            "{}: loss {loss:.1e}, grads {grad:.1e}, after {after:.1e}",
            case.name
        );
    }
}

/// Asserts that setting each α of `case` back to 1 in turn moves the gradients by more than
/// 1e-3 and the trained parameters by more than 1e-6: the agreement with the reference is
/// informative only if every α changes the model at the fixture's size.
pub fn assert_each_alpha_matters<M: Clone>(
    case: &Case<M>,
    run: impl Fn(&Case<M>) -> (f64, f64, f64),
) {
    for i in 0..5 {
        let mut c = case.clone();
        c.alphas = c.alphas.with_default(i);
        let (_, grad, after) = run(&c);
        assert!(
            grad > 1e-3 && after > 1e-6,
            "α {i}: grads {grad:.1e}, after {after:.1e}"
        );
    }
}

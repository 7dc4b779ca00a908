//! Model families: the μP workflow (train, scale check, η and α sweeps) for any `#[umup_model]`
//! on any data.
//!
//! Three pieces connect a model to the library's tools:
//! - [`Trainable`]: what a model at one size computes: its loss on a batch of its own input
//!   kind ([`Trainable::Batch`]: token ids, float features, labels, ... any type a
//!   [`crate::data::Data`] source gives). Implement it once, generically over the sizes and the
//!   device.
//! - [`umup::family!`](crate::family!): names the sizes (widths × depths) at which the model is
//!   compiled. It writes out the model type at every size, in u-μP, μP and SP, and implements
//!   [`Family`], so the tools pick the size at run time and the user writes no dispatch code.
//! - The tools, generic over (family, data): [`crate::train::train_family`],
//!   [`crate::scale_check::measure`], and the sweeps built on the trainer.
//!
//! ```ignore
//! use umup::data::FeatureBatch;
//! use umup::family::{Step, Trainable};
//!
//! impl<const D: usize, const L: usize, E, Dev, P> Trainable<Dev, E> for MyModel<D, L, E, Dev, P>
//! where E: Dtype, Dev: umup::device::TrainDevice + umup::ops::Backend<E>, P: umup::nn::Param
//! {
//!     type Batch = FeatureBatch;               // float features with a class label each
//!     const METRICS: &'static [&'static str] = &["accuracy"];
//!     fn loss<T: Tape<E, Dev> + Merge<T>>(&self, batch: &FeatureBatch, tape: T,
//!         step: &mut Step<'_>) -> umup::Result<Tensor<(), E, Dev, T>> { .. }
//! }
//!
//! umup::family! {
//!     pub struct MyFamily = MyModel<W, L> for W in [64, 128, 256], L in [2, 4];
//! }
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analysis::{tap, ScaleLog};
pub use crate::device::TrainDevice;
use crate::nn::{Hyper, Param, UmupModule};
use crate::ops::{Backend, MatmulQuantiser};
use crate::{Error, Result};
use dfdx::dtypes::f16;

/// The base width of the μP baseline (`--param mup`): μP's multipliers are 1 at this width.
pub const MUP_BASE_WIDTH: usize = 64;

/// A family's run-time settings by name (attention heads, RoPE, ...): what a model reads from
/// [`Step::options`], recorded as `options` in `config.json`. The library gives no name a
/// meaning; each model documents the ones it reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Options(BTreeMap<String, serde_json::Value>);

impl Options {
    /// No settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value` (a number, a bool or a string).
    pub fn set(&mut self, name: &str, value: impl Into<serde_json::Value>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// `self` with `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The settings by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter()
    }

    /// `name` as a non-negative integer, `None` when unset; any other value is an error naming
    /// it.
    pub fn usize(&self, name: &str) -> Result<Option<usize>> {
        self.0
            .get(name)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    Error::Invalid(format!("option {name} = {v}: expected a whole number"))
                })
            })
            .transpose()
    }

    /// `name` as a flag: `false` when unset; a value that is not a bool is an error.
    pub fn flag(&self, name: &str) -> Result<bool> {
        match self.0.get(name) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::Invalid(format!("option {name} = {v}: expected true or false"))
            }),
        }
    }

    /// Errors unless every setting is one of `known` (what a model reads), naming the others.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        let unknown: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unknown option{} {}: this model reads {}",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
    }
}

/// Metrics a model records while it is evaluated ([`Step::metric`]): a weighted mean each.
#[derive(Debug, Default)]
pub struct Metrics(RefCell<BTreeMap<String, (f64, f64)>>);

impl Metrics {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` with weight `weight` (e.g. the accuracy of a batch of `weight` examples)
    /// to the metric `name`.
    pub fn record(&self, name: &str, value: f64, weight: f64) {
        let mut m = self.0.borrow_mut();
        let e = m.entry(name.to_string()).or_insert((0.0, 0.0));
        e.0 += value * weight;
        e.1 += weight;
    }

    /// The weighted mean of each metric.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.0
            .borrow()
            .iter()
            .map(|(k, (s, w))| (k.clone(), s / w))
            .collect()
    }
}

/// The run-time settings of one forward pass.
pub struct Step<'a> {
    /// η and the α's.
    pub hp: &'a Hyper,
    /// The family's run-time settings ([`Options`]).
    pub options: &'a Options,
    /// Simulated precision of the matmuls (spec §8.1), when training in one.
    pub quant: Option<&'a mut MatmulQuantiser>,
    /// The scale check's log: a model records its activations (and their gradients) in it with
    /// [`Step::tap`].
    pub log: Option<&'a ScaleLog>,
    /// Where an evaluation collects the model's metrics ([`Step::metric`]); `None` in training.
    pub metrics: Option<&'a Metrics>,
}

impl<'a> Step<'a> {
    /// A plain forward pass: `hp` and `options`, no simulated precision, no scale log, no
    /// metrics.
    pub fn new(hp: &'a Hyper, options: &'a Options) -> Self {
        Step {
            hp,
            options,
            quant: None,
            log: None,
            metrics: None,
        }
    }
}

impl Step<'_> {
    /// The options [`Step::heads`] reads.
    pub const HEAD_OPTIONS: [&'static str; 2] = ["heads", "d_head"];

    /// Records the RMS of `x` (and, in the backward pass, of its gradient) under `name` when a
    /// scale check is running ([`crate::analysis::probe`]); the identity otherwise. `name` is only built when
    /// recording.
    pub fn tap<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
        &self,
        x: Tensor<S, E, D, T>,
        name: impl FnOnce() -> String,
    ) -> Result<Tensor<S, E, D, T>> {
        tap(x, self.log, name)
    }

    /// The quantiser of this step, if any, for [`crate::nn::UnitLinear::forward_quantised`]
    /// and the quantised attention.
    pub fn quant(&mut self) -> Option<&mut MatmulQuantiser> {
        self.quant.as_deref_mut()
    }

    /// Attention heads for a model of width `width`: the option `heads`, or else one per
    /// `d_head` channels (the option `d_head`, by default 64; at least one head). An error
    /// unless it divides the width. (Options [`Step::HEAD_OPTIONS`].)
    pub fn heads(&self, width: usize) -> Result<usize> {
        let d_head = self.options.usize("d_head")?.unwrap_or(64).max(1);
        let heads = self
            .options
            .usize("heads")?
            .unwrap_or((width / d_head).max(1));
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::Invalid(format!(
                "heads {heads} does not divide the width {width}"
            )));
        }
        Ok(heads)
    }

    /// Whether this pass is an evaluation that collects metrics: compute a metric only then.
    pub fn evaluating(&self) -> bool {
        self.metrics.is_some()
    }

    /// Records `value` (weight `weight`) for the metric `name` when evaluating (a name of
    /// [`Trainable::METRICS`]); nothing otherwise.
    pub fn metric(&self, name: &str, value: f64, weight: f64) {
        if let Some(m) = self.metrics {
            m.record(name, value, weight);
        }
    }
}

/// A training tape that accumulates into `grads` (allocated with
/// [`dfdx::nn::ZeroGrads::alloc_grads`]), to hand to [`Trainable::loss`]: the tape dfdx's
/// `tensor.traced(grads)` puts on a tensor.
pub fn training_tape<E: Dtype, Dev: Storage<E> + ZerosTensor<E>>(
    dev: &Dev,
    grads: Gradients<E, Dev>,
) -> OwnedTape<E, Dev> {
    let empty: Tensor<(Const<0>,), E, Dev> = dev.zeros();
    empty.traced(grads).split_tape().1
}

/// The mean cross entropy of `logits` (one row per example) against class `labels`
/// (`P::cross_entropy`, with α_loss-softmax, spec §4.13); when evaluating it also records
/// `accuracy`, the fraction of rows whose largest logit is the label. A classifier's
/// [`Trainable::loss`] ends with it (and lists `"accuracy"` in [`Trainable::METRICS`]).
pub fn classification_loss<P, R, C, E, Dev, T>(
    logits: Tensor<(R, C), E, Dev, T>,
    labels: &[usize],
    step: &Step<'_>,
) -> Result<Tensor<(), E, Dev, T>>
where
    P: Param,
    R: Dim,
    C: Dim,
    E: Dtype,
    Dev: Backend<E>,
    T: Tape<E, Dev>,
{
    if step.evaluating() {
        let classes = logits.shape().1.size();
        let values = logits.as_vec();
        let correct = values
            .chunks(classes.max(1))
            .zip(labels)
            .filter(|(row, &label)| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, v)| {
                        let v = v.to_f64().unwrap_or(f64::NAN);
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    })
                    .0;
                best == label
            })
            .count();
        let n = labels.len().max(1) as f64;
        step.metric("accuracy", correct as f64 / n, n);
    }
    P::cross_entropy(logits, labels, step.hp)
}

/// A model the library's workflow runs: the trainer ([`crate::train`]), the scale check
/// ([`crate::scale_check`]) and the sweeps. Implement it for the `#[umup_model]` type generically
/// over its sizes, the device, the parametrization and the dtype `E`: the trainer computes in
/// `f32`, or in `f16` with f32 master weights (`--precision f16`, [`Mixed`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Trainable`, so the trainer, the scale check and `family!` cannot run it",
    label = "this model has no `Trainable<{Dev}, {E}>` impl",
    note = "implement `umup::family::Trainable<Dev, E>` for the model, generically over `Dev: TrainDevice + Backend<E>`, `E: Dtype` (the trainer runs f32 and f16) and `P: Param`: its `Batch` type and its `loss` on a batch (see the `umup::family` docs)"
)]
pub trait Trainable<Dev: TrainDevice + Backend<E>, E: Dtype = f32>:
    TensorCollection<E, Dev, To<E, Dev> = Self> + UmupModule + Sized
{
    /// The batch the model learns from: the [`crate::data::Data::Batch`] of its data
    /// ([`crate::data::TokenBatch`], [`crate::data::FeatureBatch`], or a type of your own that
    /// implements [`crate::data::Batch`]).
    type Batch: crate::data::Batch;

    /// The metrics the model records in an evaluation ([`Step::metric`]), e.g. `["accuracy"]`:
    /// `metrics.csv` and the sweeps get a `val_<name>` column each. None by default.
    const METRICS: &'static [&'static str] = &[];

    /// The mean loss of `batch`. `tape` is the training tape (or none, in evaluation): put it on
    /// the input tensor built from the batch (`tensor.put_tape(tape)`). Activations a scale
    /// check should see go through [`Step::tap`]; matmuls run in `step.quant`'s formats when
    /// it is set.
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &Self::Batch,
        tape: T,
        step: &mut Step<'_>,
    ) -> Result<Tensor<(), E, Dev, T>>;

    /// For models that generate text: the logits of the token after `context`, divided by the
    /// softmax temperature of the loss (the trainer samples from them). `None`: the model does
    /// not generate (the default).
    fn next_token_logits(
        &self,
        context: &[usize],
        step: &mut Step<'_>,
    ) -> Result<Option<Vec<f64>>> {
        let _ = (context, step);
        Ok(None)
    }
}

/// A [`Trainable`] f32 model that also runs in f16: its f16 copy (`Half`) is `Trainable` too.
/// The trainer keeps `Self` as the f32 master weights and computes each step in the copy
/// (`--precision f16`). Implemented for every model whose `Trainable` impl is generic over the
/// dtype.
pub trait Mixed<Dev: TrainDevice>: Trainable<Dev> {
    /// The model with f16 parameters.
    type Half: Trainable<Dev, f16, Batch = <Self as Trainable<Dev>>::Batch>;

    /// An f16 copy of the parameters (round to nearest).
    fn to_half(&self) -> Result<Self::Half>;
}

impl<Dev: TrainDevice, M: Trainable<Dev>> Mixed<Dev> for M
where
    <M as TensorCollection<f32, Dev>>::To<f16, Dev>:
        Trainable<Dev, f16, Batch = <M as Trainable<Dev>>::Batch>,
{
    type Half = <M as TensorCollection<f32, Dev>>::To<f16, Dev>;

    fn to_half(&self) -> Result<Self::Half> {
        dfdx::nn::ToDtype::try_to_dtype::<f16>(self).map_err(Error::device)
    }
}

/// One size of a family in one parametrization (generated by [`crate::family!`]).
pub trait Instance {
    /// The parametrization.
    type Param: Param;
    /// Model width.
    const WIDTH: usize;
    /// Number of layers.
    const DEPTH: usize;
    /// The batch the model takes ([`Trainable::Batch`]).
    type Batch;
    /// The model on the device `Dev`, in f32 (and in f16, [`Mixed`]).
    type Model<Dev: TrainDevice>: Mixed<Dev> + Trainable<Dev, Batch = Self::Batch>;
}

/// Code that runs on one [`Instance`] of a family whose models take batches of type `B`: what a
/// tool does once the size is known.
pub trait Visitor<B> {
    /// The result.
    type Output;
    /// Runs on the instance `I`.
    fn visit<I: Instance<Batch = B>>(self) -> Result<Self::Output>;
}

/// A model at a list of compiled sizes (generated by [`crate::family!`]).
pub trait Family {
    /// The batch every size of the model takes ([`Trainable::Batch`]): the family trains on any
    /// [`crate::data::Data`] with this batch.
    type Batch;

    /// The compiled `(width, depth)` pairs.
    const SIZES: &'static [(usize, usize)];

    /// Runs `visitor` on the instance at `width`, `depth` in the parametrization `param`
    /// (`umup`, `mup` or `sp`); an error listing the compiled sizes for any other.
    fn visit<V: Visitor<Self::Batch>>(
        width: usize,
        depth: usize,
        param: &str,
        visitor: V,
    ) -> Result<V::Output>;
}

/// The error for a size or parametrization a family was not compiled at.
pub fn not_compiled<F: Family>(width: usize, depth: usize, param: &str) -> Error {
    let sizes: Vec<String> = F::SIZES.iter().map(|(w, d)| format!("{w}×{d}")).collect();
    let family = std::any::type_name::<F>();
    let family = family.rsplit("::").next().unwrap_or(family);
    Error::Invalid(format!(
        "--width {width} --depth {depth} --param {param} is not a compiled {family}: width×depth {} × umup, mup, sp",
        sizes.join(", ")
    ))
}

/// The parameter table of `F` at `width`, `depth`, `param` (an error for a size it was not
/// compiled at).
pub fn param_table<F: Family>(
    width: usize,
    depth: usize,
    param: &str,
) -> Result<crate::params::ParamTable> {
    struct Table;
    impl<B> Visitor<B> for Table {
        type Output = crate::params::ParamTable;
        fn visit<I: Instance<Batch = B>>(self) -> Result<Self::Output> {
            <I::Model<Cpu> as UmupModule>::param_table()
        }
    }
    F::visit(width, depth, param, Table)
}

//! Model families: the μP workflow (train, scale check, η and α sweeps) for any `#[umup_model]`.
//!
//! Three pieces connect a model to the library's tools:
//! - [`Trainable`]: what a model at one size computes: its loss on a [`Batch`] drawn by its
//!   [`Task`]. Implement it once, generically over the sizes and the device.
//! - [`umup::family!`](crate::family!): names the sizes (widths × depths) at which the model is
//!   compiled. It writes out the model type at every size, in u-μP, μP and SP, and implements
//!   [`Family`], so the tools pick the size at run time and the user writes no dispatch code.
//! - The tools, generic over a family: [`crate::train::train_family`],
//!   [`crate::scale_check::scale_check_family`], and the sweeps built on the trainer.
//!
//! ```ignore
//! use umup::family::{Step, Task, Trainable};
//!
//! impl<const D: usize, const F: usize, const L: usize, E, Dev, P> Trainable<Dev, E>
//!     for MyModel<D, F, L, E, Dev, P>
//! where E: Dtype, Dev: umup::device::TrainDevice + umup::ops::Backend<E>, P: umup::nn::Param
//! {
//!     const TASK: Task = Task::NextByte;
//!     fn loss<T: Tape<E, Dev> + Merge<T>>(&self, ids: Tensor<(usize,), usize, Dev, T>,
//!         batch: &Batch, step: &mut Step<'_>) -> umup::Result<Tensor<(), E, Dev, T>> { .. }
//! }
//!
//! umup::family! {
//!     pub struct MyFamily = MyModel<W, {4 * W}, L> for W in [64, 128, 256], L in [2, 4];
//! }
//! ```

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;

use crate::analysis::{tap, ScaleLog};
pub use crate::data::Batch;
pub use crate::device::TrainDevice;
use crate::nn::{Hyper, Param, UmupModule};
use crate::ops::{Backend, MatmulQuantiser};
use crate::{Error, Result};
use dfdx::dtypes::f16;

/// The base width of the μP baseline (`--param mup`): μP's multipliers are 1 at this width.
pub const MUP_BASE_WIDTH: usize = 64;

/// What a model learns from a byte corpus, i.e. how the trainer draws its batches
/// ([`crate::data::Corpus::task_batch`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// Next-byte prediction: `targets[i]` is the byte after `inputs[i]` (a causal LM).
    NextByte,
    /// Masked bytes (BERT-style): each position is chosen with probability `fraction`; a chosen
    /// byte is replaced by [`crate::data::MASK`] (80%), a random byte (10%) or kept (10%), and
    /// the model predicts the original bytes at the chosen positions ([`Batch::positions`]).
    MaskedBytes {
        /// Probability that a position is chosen (BERT: 0.15).
        fraction: f64,
    },
}

/// The run-time settings of one forward pass.
pub struct Step<'a> {
    /// η and the α's.
    pub hp: &'a Hyper,
    /// Attention heads (the width must be a multiple), for models with attention.
    pub heads: usize,
    /// Rotary position embeddings, for models that offer them.
    pub rope: bool,
    /// Simulated precision of the matmuls (spec §8.1), when training in one.
    pub quant: Option<&'a mut MatmulQuantiser>,
    /// The scale check's log: a model records its activations (and their gradients) in it with
    /// [`Step::tap`].
    pub log: Option<&'a ScaleLog>,
}

impl Step<'_> {
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
}

/// A model the library's workflow runs: the trainer ([`crate::train`]), the scale check
/// ([`crate::scale_check`]) and the sweeps. Implement it for the `#[umup_model]` type generically
/// over its sizes, the device, the parametrization and the dtype `E`: the trainer computes in
/// `f32`, or in `f16` with f32 master weights (`--precision f16`, [`Mixed`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Trainable`, so the trainer, the scale check and `family!` cannot run it",
    label = "this model has no `Trainable<{Dev}, {E}>` impl",
    note = "implement `umup::family::Trainable<Dev, E>` for the model, generically over `Dev: TrainDevice + Backend<E>`, `E: Dtype` (the trainer runs f32 and f16) and `P: Param`: its `TASK` and its `loss` on a batch (see the `umup::family` docs)"
)]
pub trait Trainable<Dev: TrainDevice + Backend<E>, E: Dtype = f32>:
    TensorCollection<E, Dev, To<E, Dev> = Self> + UmupModule + Sized
{
    /// How the trainer draws batches for this model.
    const TASK: Task;

    /// The mean loss of `batch`, with the training tape riding on `ids` (the batch's inputs as
    /// a tensor, `batch·seq` ids, row-major). Activations a scale check should see go through
    /// [`Step::tap`]; matmuls run in `step.quant`'s formats when it is set.
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        batch: &Batch,
        step: &mut Step<'_>,
    ) -> Result<Tensor<(), E, Dev, T>>;

    /// For models that generate text: the logits of the byte after `context`, divided by the
    /// softmax temperature of the loss (the trainer samples from them). `None`: the model does
    /// not generate (the default).
    fn next_byte_logits(&self, context: &[usize], step: &mut Step<'_>) -> Result<Option<Vec<f64>>> {
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
    type Half: Trainable<Dev, f16>;

    /// An f16 copy of the parameters (round to nearest).
    fn to_half(&self) -> Result<Self::Half>;
}

impl<Dev: TrainDevice, M: Trainable<Dev>> Mixed<Dev> for M
where
    <M as TensorCollection<f32, Dev>>::To<f16, Dev>: Trainable<Dev, f16>,
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
    /// The model on the device `Dev`, in f32 (and in f16, [`Mixed`]).
    type Model<Dev: TrainDevice>: Mixed<Dev>;
}

/// Code that runs on one [`Instance`]: what a tool does once the size is known.
pub trait Visitor {
    /// The result.
    type Output;
    /// Runs on the instance `I`.
    fn visit<I: Instance>(self) -> Result<Self::Output>;
}

/// A model at a list of compiled sizes (generated by [`crate::family!`]).
pub trait Family {
    /// The compiled `(width, depth)` pairs.
    const SIZES: &'static [(usize, usize)];

    /// Runs `visitor` on the instance at `width`, `depth` in the parametrization `param`
    /// (`umup`, `mup` or `sp`); an error listing the compiled sizes for any other.
    fn visit<V: Visitor>(width: usize, depth: usize, param: &str, visitor: V) -> Result<V::Output>;
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
    impl Visitor for Table {
        type Output = crate::params::ParamTable;
        fn visit<I: Instance>(self) -> Result<Self::Output> {
            <I::Model<Cpu> as UmupModule>::param_table()
        }
    }
    F::visit(width, depth, param, Table)
}

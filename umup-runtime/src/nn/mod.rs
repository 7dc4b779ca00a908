//! Model building blocks that `#[umup_model]` generates code for.
//!
//! * Layer types ([`UnitLinear`], [`UnitLinearBias`], [`UnitEmbedding`], [`UnitRmsNorm`],
//!   [`UnitLayerNorm`], [`UnitConv1d`], [`UnitConv1dBias`]) carry their role and their parametrization in their type, initialise
//!   themselves by the parametrization's rule at build and at `reset_params`, apply the role's
//!   scales in `Module::try_forward`, and report their rows of the parameter table.
//! * [`Stack`] is a depth container (`DepthSequential`, spec §3.3): every parameter inside gets
//!   depth `N`.
//! * The parametrization is a type: [`Umup`] (default), [`Mup<BASE>`](Mup) or [`Sp`], so the
//!   same model code builds the baselines.
//! * [`functional`] has the parametrization-aware pieces of a forward pass (attention, SwiGLU,
//!   residual branches, loss) and [`Hyper`] holds η and the five α's at run time.

pub mod functional;
mod layers;

use std::collections::HashMap;
use std::fmt::Debug;

pub use layers::{
    conv_layer_scales, embedding_grad_scale, gelu_linear, gelu_mlp, linear_layer_scales,
    swiglu_linear, swiglu_mlp, Stack, UnitConv1d, UnitConv1dBias, UnitEmbedding, UnitLayerNorm,
    UnitLinear, UnitLinearBias, UnitRmsNorm,
};

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::{Dim, Dtype, Merge, Shape, Tape, Tensor, TryMul};

use crate::constraint::Constraint;
use crate::error::{check_positive, DeviceResultExt, Error, Result};
use crate::ops::{Backend, Conv1dGeometry};
use crate::params::{Multipliers, ParamRow, ParamTable, Parametrization, Role};
pub use crate::scales::AttentionScale;

/// A parametrization as a type (see [`Parametrization`] for the rules).
///
/// Besides naming the parametrization, it carries the parametrization-aware pieces of a forward
/// pass as associated functions, so model code reads `P::attention(q, k, v, hp, true)`; each
/// forwards to [`functional`].
pub trait Param: 'static + Copy + Clone + Default + Debug + Send + Sync {
    /// The runtime description.
    fn parametrization() -> Parametrization;

    /// [`functional::attention`].
    fn attention<B: Dim, H: Dim, S: Dim, K: Dim, E: Dtype, D: Backend<E>, T>(
        q: Tensor<(B, H, S, K), E, D, T>,
        k: Tensor<(B, H, S, K), E, D, T>,
        v: Tensor<(B, H, S, K), E, D, T>,
        hp: &Hyper,
        is_causal: bool,
    ) -> Result<Tensor<(B, H, S, K), E, D, T>>
    where
        T: Tape<E, D> + Merge<T>,
    {
        functional::attention::<Self, B, H, S, K, E, D, T>(q, k, v, hp, is_causal)
    }

    /// [`functional::swiglu`].
    fn swiglu<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
        x: Tensor<S, E, D, T>,
        gate: Tensor<S, E, D, T>,
        hp: &Hyper,
    ) -> Result<Tensor<S, E, D, T>> {
        functional::swiglu::<Self, S, E, D, T>(x, gate, hp)
    }

    /// [`functional::residual`].
    fn residual<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>, F>(
        x: Tensor<S, E, D, T>,
        tau: f64,
        f: F,
    ) -> Result<Tensor<S, E, D, T>>
    where
        F: FnOnce(Tensor<S, E, D, T>) -> Result<Tensor<S, E, D, T>>,
    {
        functional::residual::<Self, S, E, D, T, F>(x, tau, f)
    }

    /// [`functional::cross_entropy`].
    fn cross_entropy<R: Dim, V: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
        logits: Tensor<(R, V), E, D, T>,
        targets: &[usize],
        hp: &Hyper,
    ) -> Result<Tensor<(), E, D, T>> {
        functional::cross_entropy::<Self, R, V, E, D, T>(logits, targets, hp)
    }
}

/// u-μP (the default parametrization).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Umup;

/// Classic μP with hyperparameters relative to width `BASE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Mup<const BASE: usize>;

/// Standard parametrization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sp;

impl Param for Umup {
    fn parametrization() -> Parametrization {
        Parametrization::Umup
    }
}

impl<const BASE: usize> Param for Mup<BASE> {
    fn parametrization() -> Parametrization {
        Parametrization::Mup { base_width: BASE }
    }
}

impl Param for Sp {
    fn parametrization() -> Parametrization {
        Parametrization::Sp
    }
}

/// The role and constraint of a linear layer, as a type.
pub trait LinearRole: 'static + Copy + Clone + Default + Debug + Send + Sync {
    /// [`Role::Weight`] (hidden), [`Role::Input`] (input projection) or [`Role::Output`]
    /// (readout).
    const ROLE: Role;
    /// The constraint on `(output, grad_input)` scales.
    const CONSTRAINT: Constraint;
}

/// A hidden linear layer (`#[hidden]`): forward `1/√fan_in`; `C` is a [`Constraint::code`],
/// `to_output_scale` by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Hidden<const C: u8 = 4>;

/// An input projection of float features (`#[input]`, [`Role::Input`]): a linear layer whose
/// `fan_in` is fixed and whose `fan_out` is the width. Under u-μP its forward is the unit-scaled
/// `linear` of a hidden layer (`1/√fan_in`, grad-input by the constraint `C`, `to_output_scale`
/// by default; weight gradient `1/√B_tok`; spec §2.2 `INPUT_WEIGHT`, §4.2) and its Adam LR is
/// `η/√fan_out` (the paper's input rule, as the embedding's); see [`Role::Input`] for every
/// parametrization's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Input<const C: u8 = 4>;

/// A readout layer (`#[output]`): forward `1/fan_in`, unconstrained by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Readout<const C: u8 = 0>;

impl<const C: u8> LinearRole for Hidden<C> {
    const ROLE: Role = Role::Weight;
    const CONSTRAINT: Constraint = Constraint::from_code(C);
}

impl<const C: u8> LinearRole for Input<C> {
    const ROLE: Role = Role::Input;
    const CONSTRAINT: Constraint = Constraint::from_code(C);
}

impl<const C: u8> LinearRole for Readout<C> {
    const ROLE: Role = Role::Output;
    const CONSTRAINT: Constraint = Constraint::from_code(C);
}

/// The geometry and constraint of a convolution layer, as a type.
pub trait ConvSpec: 'static + Copy + Clone + Default + Debug + Send + Sync {
    /// Step between output positions.
    const STRIDE: usize;
    /// Zeros added at both ends of the time axis.
    const PADDING: usize;
    /// Spacing of the kernel taps.
    const DILATION: usize;
    /// Channel groups.
    const GROUPS: usize;
    /// The constraint on `(output, grad_input)` scales.
    const CONSTRAINT: Constraint;

    /// The geometry as the op takes it.
    fn geometry() -> Conv1dGeometry {
        Conv1dGeometry {
            stride: Self::STRIDE,
            padding: Self::PADDING,
            dilation: Self::DILATION,
            groups: Self::GROUPS,
        }
    }
}

/// A hidden convolution layer (`#[hidden(stride = .., padding = .., dilation = .., groups = ..)]`
/// on a `Conv1d<C_IN, C_OUT, K>` field): stride `S`, padding `PAD`, dilation `DIL`, groups `G`
/// and a [`Constraint::code`] `C` (`to_output_scale` by default, the reference module's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Conv<
    const S: usize = 1,
    const PAD: usize = 0,
    const DIL: usize = 1,
    const G: usize = 1,
    const C: u8 = 4,
>;

impl<const S: usize, const PAD: usize, const DIL: usize, const G: usize, const C: u8> ConvSpec
    for Conv<S, PAD, DIL, G, C>
{
    const STRIDE: usize = S;
    const PADDING: usize = PAD;
    const DILATION: usize = DIL;
    const GROUPS: usize = G;
    const CONSTRAINT: Constraint = Constraint::from_code(C);
}

/// What a model (or layer) reports for its parameter table. `#[umup_model]` implements it by
/// visiting every field; layers implement it from their role and const shapes.
pub trait UmupModule {
    /// The parametrization the module is built in.
    fn parametrization() -> Parametrization;

    /// Appends one row per tensor, with paths under `prefix` (dfdx's visitor names, e.g.
    /// `layers.3.mlp.up.weight`) and the depth of the enclosing [`Stack`], if any.
    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()>;

    /// The model's whole parameter table.
    fn param_table() -> Result<ParamTable> {
        let mut rows = Vec::new();
        Self::param_rows("", None, &mut rows)?;
        Ok(ParamTable {
            parametrization: Self::parametrization(),
            rows,
        })
    }
}

/// Implemented by every `#[umup_model]` struct: names the same model in another dtype, device
/// and parametrization.
///
/// A `#[model]` field `inner: Block<D>` is generated as `<Block<D> as UmupModel>::Built<E, Dev,
/// P>`, so a field type that is not a `#[umup_model]` struct is reported as a missing
/// implementation of this trait, at the field, with the message below (instead of rustc's
/// "struct takes 0 generic arguments"). Type aliases of models work the same way.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `#[umup_model]` struct, so it cannot be a `#[model]` field",
    label = "`#[model]` needs a struct annotated with `#[umup_model]` here",
    note = "put `#[umup_model]` on the struct that defines this type, or give the field the role of its layer: `#[hidden]`/`#[input]`/`#[output]` for `Linear<IN, OUT>`, `#[embedding]` for `Embedding<V, D>`, `#[norm]` for `RmsNorm<D>`/`LayerNorm<D>`"
)]
pub trait UmupModel {
    /// The model with dtype `E2`, device `D2` and parametrization `P2`.
    type Built<E2: Dtype, D2: dfdx::tensor::Storage<E2>, P2: Param>;
}

/// `prefix.name`, or `name` at the top level.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// u-μP hyperparameters, read at run time (spec §6): changing them never recompiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    /// Global learning rate η.
    pub eta: f64,
    /// α_ffn-act: the FFN nonlinearity's input multiplier.
    pub alpha_ffn_act: f64,
    /// α_attn-softmax: attention logits are `α·q·k/d_head`.
    pub alpha_attn_softmax: f64,
    /// α_res: contribution of all residual branches relative to the embedding.
    pub alpha_res: f64,
    /// α_res-attn-ratio: attention-branch contribution ÷ MLP-branch contribution.
    pub alpha_res_attn_ratio: f64,
    /// α_loss-softmax: temperature of the loss softmax.
    pub alpha_loss_softmax: f64,
    /// The rule for attention's output scale under u-μP ([`AttentionScale`]; default
    /// [`AttentionScale::Auto`]: the reference's for causal, `Mean` for non-causal attention).
    pub attention: AttentionScale,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            eta: 1.0,
            alpha_ffn_act: 1.0,
            alpha_attn_softmax: 1.0,
            alpha_res: 1.0,
            alpha_res_attn_ratio: 1.0,
            alpha_loss_softmax: 1.0,
            attention: AttentionScale::Auto,
        }
    }
}

impl Hyper {
    /// The names of the hyperparameters, as [`Self::get`] and [`Self::set`] take them.
    pub const NAMES: [&'static str; 6] = [
        "eta",
        "alpha_ffn_act",
        "alpha_attn_softmax",
        "alpha_res",
        "alpha_res_attn_ratio",
        "alpha_loss_softmax",
    ];

    fn slot(&mut self, name: &str) -> Result<&mut f64> {
        Ok(match name {
            "eta" | "lr" => &mut self.eta,
            "alpha_ffn_act" => &mut self.alpha_ffn_act,
            "alpha_attn_softmax" => &mut self.alpha_attn_softmax,
            "alpha_res" => &mut self.alpha_res,
            "alpha_res_attn_ratio" => &mut self.alpha_res_attn_ratio,
            "alpha_loss_softmax" => &mut self.alpha_loss_softmax,
            _ => {
                return Err(Error::UnknownName {
                    kind: "hyperparameter",
                    name: name.to_string(),
                    expected: "eta, alpha_ffn_act, alpha_attn_softmax, alpha_res, alpha_res_attn_ratio, alpha_loss_softmax",
                })
            }
        })
    }

    /// Reads a hyperparameter by name.
    pub fn get(mut self, name: &str) -> Result<f64> {
        self.slot(name).map(|v| *v)
    }

    /// Sets a hyperparameter by name (finite and > 0).
    pub fn set(&mut self, name: &str, value: f64) -> Result<()> {
        *self.slot(name)? = check_positive("hyperparameter", value)?;
        Ok(())
    }

    /// Checks that every value is finite and > 0.
    pub fn validate(&self) -> Result<()> {
        for name in Self::NAMES {
            check_positive("hyperparameter", self.get(name)?)?;
        }
        Ok(())
    }
}

/// Multiplies every tensor of a freshly built `model` (its table `table`) by μP's and SP's init
/// factor ([`Multipliers::init_factor`]: α_in for the embedding, σ_init for hidden and readout
/// weights); their LR factors are [`crate::optim::OptimConfig::multipliers`]'. Refused under
/// u-μP unless both are 1 ([`Multipliers::validate`]). When resuming, loading the checkpoint
/// afterwards overwrites the scaled tensors.
pub fn apply_init_multipliers<E: Dtype, D: Backend<E>, M: TensorCollection<E, D>>(
    model: &mut M,
    table: &ParamTable,
    mult: &Multipliers,
) -> Result<()> {
    mult.validate(table.parametrization)?;
    if mult.is_identity() {
        return Ok(());
    }
    let factors: HashMap<String, f64> = table
        .rows
        .iter()
        .map(|r| (r.spec.path.clone(), mult.init_factor(&r.spec)))
        .collect();
    crate::walk::tensors_mut(model, &mut ScaleVisitor { factors: &factors })
}

/// Multiplies every tensor by its factor (by path; 1 when absent).
struct ScaleVisitor<'a> {
    factors: &'a HashMap<String, f64>,
}

impl<E: Dtype, D: Backend<E>> crate::walk::VisitMut<E, D> for ScaleVisitor<'_> {
    fn tensor<S: Shape>(&mut self, name: String, t: &mut Tensor<S, E, D>, _: bool) -> Result<()> {
        let f = self.factors.get(&name).copied().unwrap_or(1.0);
        if f != 1.0 {
            let f = E::from_f64(f).ok_or(Error::InvalidValue {
                what: "multiplier",
                value: f,
                reason: "not representable in the model's dtype",
            })?;
            *t = t.clone().try_mul(f).dev()?;
        }
        Ok(())
    }
}

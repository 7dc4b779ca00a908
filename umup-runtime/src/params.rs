//! Parameter roles and the per-parameter learning-rate and weight-decay rules (spec §2, §3.3, §7).
//!
//! Every rule is one documented function here: the optimizers, the conformance runner and the
//! `#[umup_model]` macro call them instead of re-deriving a formula.

use std::fmt;
use std::str::FromStr;

use crate::constraint::Constraint;
use crate::error::{Error, Result};

/// The u-μP role of a parameter tensor (the reference's `mup_type`, spec §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A hidden weight `W[fan_out, fan_in]` (reference `"weight"`): forward `1/√fan_in`.
    Weight,
    /// An input weight `W[fan_out, fan_in]`: a linear projection of float features (a ViT's
    /// patch projection, a frame or feature projection) whose `fan_in` is fixed and whose
    /// `fan_out` is the width (spec §2, "input: only fan_out grows with width").
    ///
    /// | | A (forward) | B (init std) | C (Adam LR) |
    /// |---|---|---|---|
    /// | u-μP | `fan_in^-½` | 1 | `η·fan_out^-½` |
    /// | μP | 1 (α_in, [`Multipliers::input`]) | `fan_in^-½` | `η` |
    /// | SP | 1 | `fan_in^-½` | `η` |
    ///
    /// Under u-μP the forward is the Aleph-Alpha `INPUT_WEIGHT` row (spec §2.2: forward and
    /// grad-input `n_in^-½`, weight gradient `B_tok^-½`), i.e. a unit-scaled `linear` (spec
    /// §4.2), and the LR is the u-μP paper's input-weight rule `η/√fan_out` (Table 3), the same
    /// rule as the embedding's `η/√d` (spec §2, §2.1). μP is Tensor Programs V's input-weight row
    /// (init variance `1/fan_in`, Adam LR `η`, SGD LR `η·fan_out`), as [`Role::Embedding`].
    ///
    /// **Differs from the reference library**, which has no input type and tags every linear
    /// `"weight"` (spec §7.1), so that an input projection there gets Adam LR `η/√fan_in`: a
    /// width-independent constant (μP's `η` up to that constant; Aleph Alpha gives it `η`
    /// itself, spec §2.2), without the `1/√fan_out` of the paper's input rule. umup follows the
    /// paper, whose slides find `1/√fan_out` better than μP's width-independent input LR for
    /// the embedding (spec §2.1), so that a float-input projection and a token embedding (the
    /// other input weight) share one LR rule. The two agree only where the width equals
    /// `fan_in` (fan_in 16: η/4 in both at width 16; at width 256 η/4 there, η/16 here).
    /// [`Role::mup_type`] still reports the reference's `"weight"`.
    Input,
    /// An embedding table `E[V, d]`. The reference tags it `"weight"`, so its fan-in is `d` and
    /// its Adam LR is `η/√d` (spec §2.1); its gradient scale is `√(V/B_tok)`.
    Embedding,
    /// The readout weight (reference `"output"`): forward `1/fan_in`, LR `η`.
    Output,
    /// A bias (reference `"bias"`), zero-initialised.
    Bias,
    /// A norm gain (reference `"norm"`), initialised to ones.
    Norm,
}

impl Role {
    /// All roles.
    pub const ALL: [Role; 6] = [
        Role::Weight,
        Role::Input,
        Role::Embedding,
        Role::Output,
        Role::Bias,
        Role::Norm,
    ];

    /// This crate's name for the role.
    pub fn name(self) -> &'static str {
        match self {
            Role::Weight => "weight",
            Role::Input => "input",
            Role::Embedding => "embedding",
            Role::Output => "output",
            Role::Bias => "bias",
            Role::Norm => "norm",
        }
    }

    /// The reference library's `mup_type` for the role (`"weight"` for embeddings and input
    /// weights: the reference tags every linear and embedding weight so, spec §7.1).
    pub fn mup_type(self) -> &'static str {
        match self {
            Role::Weight | Role::Input | Role::Embedding => "weight",
            Role::Output => "output",
            Role::Bias => "bias",
            Role::Norm => "norm",
        }
    }

    /// The init standard deviation under u-μP (spec §2): 1 for hidden and input weights,
    /// embeddings and the readout; biases are zeros and norm gains ones (std 0).
    pub fn init_std(self) -> f64 {
        match self {
            Role::Weight | Role::Input | Role::Embedding | Role::Output => 1.0,
            Role::Bias | Role::Norm => 0.0,
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    /// Accepts this crate's names (`input` among them), the reference's `mup_type` names and
    /// `hidden` for `weight`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "weight" | "hidden" => Ok(Role::Weight),
            "input" => Ok(Role::Input),
            "embedding" => Ok(Role::Embedding),
            "output" | "readout" => Ok(Role::Output),
            "bias" => Ok(Role::Bias),
            "norm" | "gain" => Ok(Role::Norm),
            _ => Err(Error::UnknownName {
                kind: "parameter role",
                name: s.to_string(),
                expected: "weight (hidden), input, embedding, output, bias, norm",
            }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the rules need to know about one parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamSpec {
    /// The tensor path, e.g. `layers.0.mlp.fc1.weight` (dfdx's visitor names).
    pub path: String,
    /// Its u-μP role.
    pub role: Role,
    /// Its shape, torch layout (`[fan_out, fan_in]` for weights, `[V, d]` for embeddings).
    pub shape: Vec<usize>,
    /// The length of the enclosing depth container (`DepthSequential`), if any (spec §3.3).
    pub depth: Option<usize>,
}

impl ParamSpec {
    /// A spec with no depth.
    pub fn new(path: impl Into<String>, role: Role, shape: &[usize]) -> Self {
        ParamSpec {
            path: path.into(),
            role,
            shape: shape.to_vec(),
            depth: None,
        }
    }

    /// The same spec inside a depth container of length `depth`.
    pub fn with_depth(mut self, depth: usize) -> Self {
        self.depth = Some(depth);
        self
    }

    /// `fan_in` of this parameter (spec §2.1), see [`fan_in`].
    pub fn fan_in(&self) -> Result<usize> {
        fan_in(&self.shape).map_err(|reason| Error::BadParameter {
            path: self.path.clone(),
            reason,
        })
    }

    /// The depth LR factor `depth^-½` (1 without depth) (spec §3.3).
    pub fn depth_factor(&self) -> Result<f64> {
        match self.depth {
            None => Ok(1.0),
            Some(0) => Err(Error::BadParameter {
                path: self.path.clone(),
                reason: "depth must be at least 1".into(),
            }),
            Some(d) => Ok((d as f64).powf(-0.5)),
        }
    }

    /// `fan_out` of a weight: its first dim (`shape[0]` of `W[fan_out, fan_in]`), the dim that
    /// grows with width for an input weight (spec §2).
    pub fn fan_out(&self) -> Result<usize> {
        self.first_dim().map(|n| n as usize)
    }

    fn first_dim(&self) -> Result<f64> {
        match self.shape.first() {
            Some(&n) if n > 0 => Ok(n as f64),
            _ => Err(Error::BadParameter {
                path: self.path.clone(),
                reason: format!("shape {:?} has no leading dim", self.shape),
            }),
        }
    }
}

/// `fan_in` as the reference computes it (`optim.py::_get_fan_in`, spec §2.1): `shape[0]` for
/// 1-D, `shape[1]` for 2-D, `shape[1]·shape[2]` for 3-D; other ranks (and zero dims) are errors.
pub fn fan_in(shape: &[usize]) -> std::result::Result<usize, String> {
    let f = match shape {
        [n] => *n,
        [_, i] => *i,
        [_, i, k] => i * k,
        _ => {
            return Err(format!(
                "fan_in is defined for 1-D, 2-D and 3-D parameters, got shape {shape:?}"
            ))
        }
    };
    if f == 0 {
        Err(format!("fan_in of shape {shape:?} is 0"))
    } else {
        Ok(f)
    }
}

/// The per-parameter LR rule an optimizer uses (spec §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LrRule {
    /// `lr_scale_func_adam` (Adam and AdamW, and SGD with an unconstrained readout).
    #[default]
    Adam,
    /// `lr_scale_func_sgd("to_output_scale")`: SGD when the readout's backward scale is
    /// constrained to its output scale.
    SgdConstrainedReadout,
}

impl LrRule {
    /// The rule for an optimizer: Adam/AdamW always use [`LrRule::Adam`]; SGD depends on the
    /// readout constraint (`None` → Adam rule, `to_output_scale` → constrained rule; any other
    /// constraint is an error, as in the reference).
    pub fn for_sgd(readout_constraint: Constraint) -> Result<Self> {
        match readout_constraint {
            Constraint::None => Ok(LrRule::Adam),
            Constraint::ToOutputScale => Ok(LrRule::SgdConstrainedReadout),
            other => Err(Error::UnknownName {
                kind: "SGD readout constraint",
                name: other.name().to_string(),
                expected: "none, to_output_scale",
            }),
        }
    }

    /// The LR multiplier of one parameter (multiply by η to get its LR).
    ///
    /// * Adam rule: weight/embedding `δ·fan_in^-½` (an embedding's fan-in is `d`, spec §2.1);
    ///   input weight `δ·fan_out^-½` (the paper's input rule, as the embedding's, see
    ///   [`Role::Input`]); bias, norm, output `δ`.
    /// * SGD with constrained readout: weight/embedding `δ·fan_in^+½`; input weight
    ///   `δ·fan_out^+½`; bias, norm `δ·shape[0]`; output `δ`. (The constrained readout scales
    ///   every gradient below it by a factor ∝ 1/width, so each Adam factor of a width-sized
    ///   tensor is multiplied by its width dim, spec §7.2; for the input weight that is
    ///   `fan_out`, as `d` for the embedding.)
    ///
    /// `δ = depth^-½` (spec §3.3, §7.2).
    pub fn lr_scale(self, p: &ParamSpec) -> Result<f64> {
        let delta = p.depth_factor()?;
        let factor = match (self, p.role) {
            (LrRule::Adam, Role::Weight | Role::Embedding) => (p.fan_in()? as f64).powf(-0.5),
            (LrRule::SgdConstrainedReadout, Role::Weight | Role::Embedding) => {
                (p.fan_in()? as f64).sqrt()
            }
            (LrRule::Adam, Role::Input) => p.first_dim()?.powf(-0.5),
            (LrRule::SgdConstrainedReadout, Role::Input) => p.first_dim()?.sqrt(),
            (LrRule::SgdConstrainedReadout, Role::Bias | Role::Norm) => p.first_dim()?,
            (_, Role::Bias | Role::Norm | Role::Output) => 1.0,
        };
        Ok(delta * factor)
    }
}

/// The weight decay handed to the optimizer for one parameter (spec §7.3): with independent
/// weight decay, `wd / param_lr` (so that the per-step decay `param_lr·wd_p` equals `wd` times
/// the schedule factor, independent of η and the per-tensor factors); otherwise `wd`.
pub fn weight_decay(weight_decay: f64, param_lr: f64, independent: bool) -> f64 {
    if independent && weight_decay != 0.0 {
        weight_decay / param_lr
    } else {
        weight_decay
    }
}

/// One parameter's resolved optimizer settings (the reference's param group).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// The tensor path.
    pub path: String,
    /// Its peak learning rate `η · lr_scale`.
    pub lr: f64,
    /// Its weight decay as passed to the optimizer (see [`weight_decay`]).
    pub weight_decay: f64,
}

/// Resolves every parameter's LR and weight decay (`scaled_parameters`, spec §7.3) under a
/// parametrization (the reference's rules are [`Parametrization::Umup`]), with μP's and SP's
/// own multipliers' LR factors ([`Multipliers::lr_factor`]; refused under u-μP unless 1).
pub fn param_groups(
    params: &[ParamSpec],
    parametrization: Parametrization,
    rule: LrRule,
    lr: f64,
    wd: f64,
    independent_weight_decay: bool,
    multipliers: &Multipliers,
) -> Result<Vec<ParamGroup>> {
    crate::error::check_positive("learning rate", lr)?;
    crate::error::check_finite("weight decay", wd)?;
    multipliers.validate(parametrization)?;
    params
        .iter()
        .map(|p| {
            let param_lr = lr * parametrization.lr_scale(rule, p)? * multipliers.lr_factor(p);
            Ok(ParamGroup {
                path: p.path.clone(),
                lr: param_lr,
                weight_decay: weight_decay(wd, param_lr, independent_weight_decay),
            })
        })
        .collect()
}

/// Which parametrization a model is trained in, for baselines that run the same model code
/// (spec §2 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Parametrization {
    /// u-μP (the default): unit init, unit-scaled ops, `η/√fan_in` hidden LRs, depth factors.
    #[default]
    Umup,
    /// Classic μP relative to a base width: hidden init `1/√fan_in`, hidden Adam LR
    /// `η·base/fan_in`, readout multiplier `base/fan_in`, plain (unscaled) ops.
    Mup {
        /// The base width the hyperparameters refer to.
        base_width: usize,
    },
    /// Standard parametrization: `1/√fan_in` init for linear weights, N(0,1) embeddings, one η
    /// for every tensor, plain ops.
    Sp,
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// All zeros (biases).
    Zeros,
    /// All ones (norm gains).
    Ones,
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Init::Normal(s) => write!(f, "N(0,{})", fmt_num(*s)),
            Init::Zeros => f.write_str("zeros"),
            Init::Ones => f.write_str("ones"),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

impl Parametrization {
    /// The short name: `umup`, `mup`, `sp`.
    pub fn name(self) -> &'static str {
        match self {
            Parametrization::Umup => "umup",
            Parametrization::Mup { .. } => "mup",
            Parametrization::Sp => "sp",
        }
    }

    /// The init of a parameter (spec §2): u-μP N(0,1) for every weight; SP and μP
    /// `N(0, 1/√fan_in)` for hidden and input weights (for an input weight `fan_in` is fixed, so
    /// this σ is constant in width: Tensor Programs V's input init, variance `1/fan_in`),
    /// N(0,1) for embeddings, and for the readout `1/√fan_in` (SP) or `1/√base_width` (μP: σ
    /// constant in width, the `base/fan_in` multiplier carries the width dependence). Biases
    /// zeros, norm gains ones in every parametrization.
    pub fn init(self, p: &ParamSpec) -> Result<Init> {
        Ok(match (self, p.role) {
            (_, Role::Bias) => Init::Zeros,
            (_, Role::Norm) => Init::Ones,
            (Parametrization::Umup, _) | (_, Role::Embedding) => Init::Normal(1.0),
            (Parametrization::Mup { base_width }, Role::Output) => {
                Init::Normal((base_width.max(1) as f64).powf(-0.5))
            }
            (_, Role::Weight | Role::Input | Role::Output) => {
                Init::Normal((p.fan_in()? as f64).powf(-0.5))
            }
        })
    }

    /// The multiplier applied to the tensor's value in the forward pass. u-μP: hidden and input
    /// weights `fan_in^-½` (spec §2, §2.2 `INPUT_WEIGHT`; for an input weight a width-independent
    /// constant that makes its output unit-scaled for unit inputs), readout `1/fan_in`,
    /// everything else 1 (a bias shares its layer's output scale, which the layer reports). μP:
    /// readout `base/fan_in` (the input multiplier α_in of embeddings and input weights acts
    /// through [`Multipliers`]). SP: 1.
    pub fn forward_multiplier(self, p: &ParamSpec) -> Result<f64> {
        Ok(match (self, p.role) {
            (Parametrization::Umup, Role::Weight | Role::Input) => (p.fan_in()? as f64).powf(-0.5),
            (Parametrization::Umup, Role::Output) => 1.0 / p.fan_in()? as f64,
            (Parametrization::Mup { base_width }, Role::Output) => {
                base_width as f64 / p.fan_in()? as f64
            }
            _ => 1.0,
        })
    }

    /// The LR multiplier of a parameter under `rule` (multiply by η).
    ///
    /// * u-μP: [`LrRule::lr_scale`] (spec §7.2, with depth factors).
    /// * μP, Adam: hidden `base/fan_in`, everything else 1 (Tensor Programs V, Table 3; input
    ///   weights and embeddings: `η`, width-independent).
    /// * μP, SGD: embeddings, input weights, biases and gains `fan_out/base` (TP-V's "input
    ///   weights & all biases" row, SGD LR `η·fan_out`), hidden 1, readout `base/fan_in`.
    /// * SP: 1.
    ///
    /// The flag in the μP match is whether `rule` is SGD ([`LrRule::SgdConstrainedReadout`]);
    /// μP's SGD rules do not depend on the readout constraint.
    pub fn lr_scale(self, rule: LrRule, p: &ParamSpec) -> Result<f64> {
        match self {
            Parametrization::Umup => rule.lr_scale(p),
            Parametrization::Sp => Ok(1.0),
            Parametrization::Mup { base_width } => {
                let base = base_width.max(1) as f64;
                let sgd = rule == LrRule::SgdConstrainedReadout;
                Ok(match (p.role, sgd) {
                    (Role::Weight, false) => base / p.fan_in()? as f64,
                    (Role::Weight, true) => 1.0,
                    (Role::Output, true) => base / p.fan_in()? as f64,
                    (Role::Embedding, true) => p.shape.last().copied().unwrap_or(1) as f64 / base,
                    (Role::Input, true) => p.first_dim()? / base,
                    (Role::Input, false) => 1.0,
                    (Role::Bias | Role::Norm, true) => p.first_dim()? / base,
                    _ => 1.0,
                })
            }
        }
    }
}

impl std::fmt::Display for Parametrization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parametrization::Mup { base_width } => write!(f, "mup(base_width={base_width})"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for Parametrization {
    type Err = Error;
    /// `umup`, `sp`, `mup` (base width 64) or `mup:<base_width>`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "umup" | "u-mup" => Ok(Parametrization::Umup),
            "sp" => Ok(Parametrization::Sp),
            "mup" => Ok(Parametrization::Mup { base_width: 64 }),
            _ => s
                .strip_prefix("mup:")
                .and_then(|b| b.parse().ok())
                .filter(|&b: &usize| b > 0)
                .map(|base_width| Parametrization::Mup { base_width })
                .ok_or_else(|| Error::UnknownName {
                    kind: "parametrization",
                    name: s.to_string(),
                    expected: "umup, mup, mup:<base_width>, sp",
                }),
        }
    }
}

/// μP's and SP's own multipliers besides η (Tensor Programs V, Yang et al. 2022, §5 and App.
/// F.4: "input/output multipliers and initialization std"), for sweeping them as μP practice
/// does. u-μP has none: its init is unit and the embedding's share of the residual stream is
/// α_res (spec §6), so any value but 1 is refused there ([`Multipliers::validate`]). μP's
/// output multiplier is α_loss-softmax, which multiplies the logits in every parametrization.
///
/// Both act through Adam's symmetry (TP-V App. F; Adam ignores a gradient's scale up to ε): a
/// forward multiplier `α` on a tensor initialised `N(0, σ²)` trained at LR `η` is the same
/// model as the tensor `αW`, initialised `N(0, (ασ)²)` and trained at `αη`. So
/// * `input` (α_in, the output multiplier of the input weights: the embedding and any
///   [`Role::Input`] projection) multiplies their init std and their LR ([`Self::init_factor`],
///   [`Self::lr_factor`]);
/// * `init` (σ_init) multiplies the init std of every hidden and readout weight, relative to the
///   parametrization's own (`1/√fan_in` for hidden weights; μP's readout `1/√base`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Multipliers {
    /// α_in: the output multiplier of the embedding and the input weights.
    pub input: f64,
    /// σ_init: the init std of hidden and readout weights, as a multiple of the rule's.
    pub init: f64,
}

impl Default for Multipliers {
    fn default() -> Self {
        Multipliers {
            input: 1.0,
            init: 1.0,
        }
    }
}

impl Multipliers {
    /// Whether both are 1 (nothing to apply).
    pub fn is_identity(&self) -> bool {
        *self == Multipliers::default()
    }

    /// Both finite and > 0, and both 1 under u-μP.
    pub fn validate(&self, parametrization: Parametrization) -> Result<()> {
        crate::error::check_positive("input multiplier", self.input)?;
        crate::error::check_positive("init multiplier", self.init)?;
        if parametrization == Parametrization::Umup && !self.is_identity() {
            return Err(Error::InvalidValue {
                what: "input multiplier or init σ under u-μP",
                value: if self.input != 1.0 { self.input } else { self.init },
                reason: "u-μP has neither: its init is unit and the embedding's share of the residual stream is α_res (spec §6); they are μP's and SP's",
            });
        }
        Ok(())
    }

    /// The factor on `p`'s init std: α_in for the embedding and input weights, σ_init for
    /// hidden and readout weights, 1 for biases and gains (their init is not random).
    pub fn init_factor(&self, p: &ParamSpec) -> f64 {
        match p.role {
            Role::Embedding | Role::Input => self.input,
            Role::Weight | Role::Output => self.init,
            Role::Bias | Role::Norm => 1.0,
        }
    }

    /// The factor on `p`'s LR: α_in for the embedding and input weights, 1 otherwise.
    pub fn lr_factor(&self, p: &ParamSpec) -> f64 {
        match p.role {
            Role::Embedding | Role::Input => self.input,
            _ => 1.0,
        }
    }
}

/// One row of a model's parameter table: what the rules say about one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRow {
    /// Path, role, shape and depth.
    pub spec: ParamSpec,
    /// Its fan-in (spec §2.1).
    pub fan_in: usize,
    /// Its init.
    pub init: Init,
    /// Multiplier applied to its value in the forward pass.
    pub forward_multiplier: f64,
    /// LR multiplier for Adam/AdamW.
    pub adam_lr: f64,
    /// LR multiplier for SGD (u-μP: with the readout constrained to its output scale, spec §7.2).
    pub sgd_lr: f64,
}

impl ParamRow {
    /// Computes a row under `param`. `forward_multiplier` overrides the role's default (a bias
    /// reports its layer's output scale).
    pub fn new(
        spec: ParamSpec,
        param: Parametrization,
        forward_multiplier: Option<f64>,
    ) -> Result<Self> {
        Ok(ParamRow {
            fan_in: spec.fan_in()?,
            init: param.init(&spec)?,
            forward_multiplier: match forward_multiplier {
                Some(m) => m,
                None => param.forward_multiplier(&spec)?,
            },
            adam_lr: param.lr_scale(LrRule::Adam, &spec)?,
            sgd_lr: param.lr_scale(LrRule::SgdConstrainedReadout, &spec)?,
            spec,
        })
    }
}

/// The per-parameter table of a model: every tensor the optimizer updates, with its role,
/// shape, fan-in, depth, init, forward multiplier and LR multipliers.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTable {
    /// The parametrization the rows were computed under.
    pub parametrization: Parametrization,
    /// One row per tensor, in the model's visiting order.
    pub rows: Vec<ParamRow>,
}

impl ParamTable {
    /// The specs, for [`crate::optim::Optimizer::new`].
    pub fn specs(&self) -> Vec<ParamSpec> {
        self.rows.iter().map(|r| r.spec.clone()).collect()
    }

    /// The row of a path.
    pub fn get(&self, path: &str) -> Option<&ParamRow> {
        self.rows.iter().find(|r| r.spec.path == path)
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.spec.shape.iter().product::<usize>())
            .sum()
    }
}

impl std::fmt::Display for ParamTable {
    /// An aligned text table, one row per tensor.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = [
            "path", "role", "shape", "fan_in", "depth", "init", "fwd mult", "adam lr", "sgd lr",
        ];
        let cells: Vec<[String; 9]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.spec.path.clone(),
                    r.spec.role.to_string(),
                    format!("{:?}", r.spec.shape),
                    r.fan_in.to_string(),
                    r.spec.depth.map_or("-".into(), |d| d.to_string()),
                    r.init.to_string(),
                    format!("{:.6}", r.forward_multiplier),
                    format!("{:.6}", r.adam_lr),
                    format!("{:.6}", r.sgd_lr),
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        writeln!(
            f,
            "parametrization: {} ({} tensors, {} parameters); LR = η × multiplier",
            self.parametrization,
            self.rows.len(),
            self.num_params()
        )?;
        let line = |f: &mut std::fmt::Formatter<'_>, row: &[String]| -> std::fmt::Result {
            for (i, (c, w)) in row.iter().zip(width).enumerate() {
                let pad = w - c.chars().count();
                if i < 2 || i == 5 {
                    write!(f, "{c}{}", " ".repeat(pad))?;
                } else {
                    write!(f, "{}{c}", " ".repeat(pad))?;
                }
                f.write_str(if i + 1 < row.len() { "  " } else { "\n" })?;
            }
            Ok(())
        };
        line(f, &head.map(String::from))?;
        for row in &cells {
            line(f, row)?;
        }
        Ok(())
    }
}

/// Whether the gains and biases of norms are trained (docs/results.md §9).
///
/// The u-μP paper recommends non-parametric norms (spec §6: "no trainable gains", with no
/// biases), and the reference library's `LayerNorm` and `RMSNorm` default to
/// `elementwise_affine=False`. A model that has a gain and a bias in its norms (a BERT-style
/// encoder, a ViT) gets, under the reference's Adam rule, the LR `η·depth^-½` for both (spec
/// §7.2): each step moves every gain and bias by about that much, and the change reaches every
/// token in full, where a hidden weight's change reaches a token only as far as the token
/// aligns with it. At η = 1 that makes the norms the hottest tensors of the model, and the
/// encoder's and ViT's best η fall to 2^-2 and 2^-4. Keeping them at their init (gain 1, bias
/// 0) is the reference's default norm, and brings both families' best η back to 2^-1–2^0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum NormParams {
    /// `Fixed` under u-μP, `Trained` under μP and SP (their baselines train them).
    #[default]
    Auto,
    /// Norm gains stay 1 and norm biases 0: the reference's `elementwise_affine=False`.
    Fixed,
    /// Norm gains and biases are trained with the LR rule of their role (spec §7.2).
    Trained,
}

impl NormParams {
    /// The names [`FromStr`] takes, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["auto", "fixed", "trained"];

    /// Every setting, in the order of [`NormParams::NAMES`].
    pub const ALL: [Self; 3] = [NormParams::Auto, NormParams::Fixed, NormParams::Trained];

    /// [`NormParams::Auto`] resolved for a parametrization.
    pub fn resolve(self, parametrization: Parametrization) -> NormParams {
        match (self, parametrization) {
            (NormParams::Auto, Parametrization::Umup) => NormParams::Fixed,
            (NormParams::Auto, _) => NormParams::Trained,
            (rule, _) => rule,
        }
    }

    /// The setting's name (`auto`, `fixed`, `trained`).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The setting of runs from before it existed in a saved configuration: trained.
    pub fn legacy() -> Self {
        NormParams::Trained
    }
}

impl FromStr for NormParams {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "norm parameters setting",
                name: s.to_string(),
                expected: "auto, fixed, trained",
            })
    }
}

impl fmt::Display for NormParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths of the norms' parameters in a table: every [`Role::Norm`] gain, and every
/// [`Role::Bias`] at `m.bias` whose module `m` has a norm gain at `m.weight` (a `LayerNorm`'s
/// bias; a linear's bias sits beside a weight of another role).
pub fn norm_param_paths(params: &[ParamSpec]) -> Vec<String> {
    let gains: std::collections::HashSet<&str> = params
        .iter()
        .filter(|p| p.role == Role::Norm)
        .map(|p| p.path.as_str())
        .collect();
    params
        .iter()
        .filter(|p| match p.role {
            Role::Norm => true,
            Role::Bias => p
                .path
                .strip_suffix("bias")
                .is_some_and(|m| gains.contains(format!("{m}weight").as_str())),
            _ => false,
        })
        .map(|p| p.path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_parameters_are_the_gains_and_the_biases_beside_them() {
        let specs = [
            ParamSpec::new("emb.weight", Role::Embedding, &[10, 4]),
            ParamSpec::new("l.ln1.weight", Role::Norm, &[4]),
            ParamSpec::new("l.ln1.bias", Role::Bias, &[4]),
            ParamSpec::new("l.q.weight", Role::Weight, &[4, 4]),
            ParamSpec::new("l.q.bias", Role::Bias, &[4]),
            ParamSpec::new("rms.weight", Role::Norm, &[4]),
            ParamSpec::new("head.bias", Role::Bias, &[3]),
        ];
        assert_eq!(
            norm_param_paths(&specs),
            ["l.ln1.weight", "l.ln1.bias", "rms.weight"]
        );
        let mup = Parametrization::Mup { base_width: 64 };
        assert_eq!(
            NormParams::Auto.resolve(Parametrization::Umup),
            NormParams::Fixed
        );
        assert_eq!(NormParams::Auto.resolve(mup), NormParams::Trained);
        assert_eq!(
            NormParams::Auto.resolve(Parametrization::Sp),
            NormParams::Trained
        );
        assert_eq!(
            NormParams::Trained.resolve(Parametrization::Umup),
            NormParams::Trained
        );
        assert_eq!(
            NormParams::Fixed.resolve(Parametrization::Sp),
            NormParams::Fixed
        );
        for name in NormParams::NAMES {
            assert_eq!(name.parse::<NormParams>().unwrap().to_string(), name);
        }
        assert!("frozen".parse::<NormParams>().is_err());
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs()
    }

    // The reference's optimizer test model (spec §7.3): Embedding(256,16) -> DepthSequential(3x
    // Linear(16,16,bias)) -> LinearReadout(16,1024), lr 0.1, wd 0.001.
    fn test_model() -> Vec<ParamSpec> {
        vec![
            ParamSpec::new("embedding.weight", Role::Embedding, &[256, 16]),
            ParamSpec::new("stack.0.weight", Role::Weight, &[16, 16]).with_depth(3),
            ParamSpec::new("stack.0.bias", Role::Bias, &[16]).with_depth(3),
            ParamSpec::new("readout.weight", Role::Output, &[1024, 16]),
        ]
    }

    #[test]
    fn multipliers_act_on_the_roles_tp5_names_and_not_under_umup() {
        let m = Multipliers {
            input: 4.0,
            init: 0.5,
        };
        let [emb, hidden, bias, readout] = <[ParamSpec; 4]>::try_from(test_model()).unwrap();
        let norm = ParamSpec::new("norm.weight", Role::Norm, &[16]);
        let init: Vec<f64> = [&emb, &hidden, &bias, &readout, &norm]
            .iter()
            .map(|p| m.init_factor(p))
            .collect();
        assert_eq!(init, [4.0, 0.5, 1.0, 0.5, 1.0]);
        let lr: Vec<f64> = [&emb, &hidden, &bias, &readout, &norm]
            .iter()
            .map(|p| m.lr_factor(p))
            .collect();
        assert_eq!(lr, [4.0, 1.0, 1.0, 1.0, 1.0]);
        assert!(m.validate(Parametrization::Sp).is_ok());
        assert!(m.validate(Parametrization::Mup { base_width: 64 }).is_ok());
        let e = m.validate(Parametrization::Umup).unwrap_err().to_string();
        assert!(e.contains("α_res"), "{e}");
        assert!(Multipliers::default()
            .validate(Parametrization::Umup)
            .is_ok());
        let bad = Multipliers {
            input: 0.0,
            init: 1.0,
        };
        assert!(bad.validate(Parametrization::Sp).is_err());
    }

    #[test]
    fn reference_adam_table() {
        let g = param_groups(
            &test_model(),
            Parametrization::Umup,
            LrRule::Adam,
            0.1,
            0.001,
            true,
            &Multipliers::default(),
        )
        .unwrap();
        let want = [0.1 / 4.0, 0.1 / 4.0 / 3f64.sqrt(), 0.1 / 3f64.sqrt(), 0.1];
        for (g, w) in g.iter().zip(want) {
            assert!(close(g.lr, w), "{}: {} vs {}", g.path, g.lr, w);
            assert!(close(g.weight_decay, 0.001 / w));
        }
    }

    #[test]
    fn reference_sgd_constrained_table() {
        let rule = LrRule::for_sgd(Constraint::ToOutputScale).unwrap();
        let g = param_groups(
            &test_model(),
            Parametrization::Umup,
            rule,
            0.1,
            0.0,
            true,
            &Multipliers::default(),
        )
        .unwrap();
        let adam = param_groups(
            &test_model(),
            Parametrization::Umup,
            LrRule::Adam,
            0.1,
            0.0,
            true,
            &Multipliers::default(),
        )
        .unwrap();
        for i in 0..3 {
            assert!(close(g[i].lr, adam[i].lr * 16.0), "{}", g[i].path);
        }
        assert!(close(g[3].lr, 0.1));
        assert!(LrRule::for_sgd(Constraint::Gmean).is_err());
    }

    // Spec §7.3 group tests.
    #[test]
    fn group_examples() {
        let w = ParamSpec::new("w", Role::Weight, &[1, 16]);
        assert!(close(0.3 * LrRule::Adam.lr_scale(&w).unwrap(), 0.3 / 4.0));
        let o = ParamSpec::new("o", Role::Output, &[2, 64]);
        assert!(close(LrRule::Adam.lr_scale(&o).unwrap(), 1.0));
        let d = ParamSpec::new("d", Role::Weight, &[3, 64]).with_depth(5);
        assert!(close(
            0.02 * LrRule::Adam.lr_scale(&d).unwrap(),
            0.02 / 8.0 / 5f64.sqrt()
        ));
    }

    #[test]
    fn fan_in_rule_and_errors() {
        assert_eq!(fan_in(&[7]).unwrap(), 7);
        assert_eq!(fan_in(&[7, 3]).unwrap(), 3);
        assert_eq!(fan_in(&[8, 4, 3]).unwrap(), 12);
        assert!(fan_in(&[1, 2, 3, 4]).is_err());
        let bad = ParamSpec::new("x.w", Role::Weight, &[2, 2, 2, 2]);
        let e = LrRule::Adam.lr_scale(&bad).unwrap_err();
        assert!(e.to_string().contains("x.w"));
        assert!(ParamSpec::new("d", Role::Bias, &[3])
            .with_depth(0)
            .depth_factor()
            .is_err());
    }

    // Role::Input: a patch projection `Linear<16, D>` (weight [D, 16]) at widths 64, 256, 1024.
    #[test]
    fn input_rule_values_in_every_parametrization() {
        let at = |d: usize| ParamSpec::new("patch.weight", Role::Input, &[d, 16]);
        let p = at(256);
        assert_eq!(p.fan_in().unwrap(), 16);
        assert_eq!(p.fan_out().unwrap(), 256);
        // u-μP: A = 1/√16, B = 1, C = η/√256 (Adam), η·√256 (SGD, constrained readout).
        let u = Parametrization::Umup;
        assert_eq!(u.forward_multiplier(&p).unwrap(), 0.25);
        assert_eq!(u.init(&p).unwrap(), Init::Normal(1.0));
        assert_eq!(u.lr_scale(LrRule::Adam, &p).unwrap(), 1.0 / 16.0);
        assert_eq!(u.lr_scale(LrRule::SgdConstrainedReadout, &p).unwrap(), 16.0);
        assert_eq!(Role::Input.init_std(), 1.0);
        // The forward is width-independent, the LR follows 1/√width, as the embedding's.
        for d in [64, 1024] {
            assert_eq!(u.forward_multiplier(&at(d)).unwrap(), 0.25);
            let emb = ParamSpec::new("e", Role::Embedding, &[1000, d]);
            assert!(close(
                u.lr_scale(LrRule::Adam, &at(d)).unwrap(),
                u.lr_scale(LrRule::Adam, &emb).unwrap()
            ));
        }
        // Inside a depth-4 stack the depth factor applies too.
        assert!(close(
            LrRule::Adam.lr_scale(&at(256).with_depth(4)).unwrap(),
            1.0 / 16.0 / 2.0
        ));
        // The reference would give the same tensor as "weight" η/√fan_in = η/4 at every width.
        let as_weight = ParamSpec::new("patch.weight", Role::Weight, &[256, 16]);
        assert_eq!(LrRule::Adam.lr_scale(&as_weight).unwrap(), 0.25);

        // μP: A = 1, B = 1/√16 and C = η at every width; SGD C = η·fan_out/base.
        let m = Parametrization::Mup { base_width: 64 };
        for d in [64, 256, 1024] {
            assert_eq!(m.forward_multiplier(&at(d)).unwrap(), 1.0);
            assert_eq!(m.init(&at(d)).unwrap(), Init::Normal(0.25));
            assert_eq!(m.lr_scale(LrRule::Adam, &at(d)).unwrap(), 1.0);
            assert_eq!(
                m.lr_scale(LrRule::SgdConstrainedReadout, &at(d)).unwrap(),
                d as f64 / 64.0
            );
        }
        // A hidden weight of the same width gets base/fan_in instead.
        let hidden = ParamSpec::new("h", Role::Weight, &[256, 256]);
        assert_eq!(m.lr_scale(LrRule::Adam, &hidden).unwrap(), 0.25);

        // SP: as a hidden weight.
        let sp = Parametrization::Sp;
        assert_eq!(sp.init(&p).unwrap(), Init::Normal(0.25));
        assert_eq!(sp.forward_multiplier(&p).unwrap(), 1.0);
        assert_eq!(sp.lr_scale(LrRule::Adam, &p).unwrap(), 1.0);

        // α_in acts on input weights as on the embedding: init and LR; σ_init does not.
        let mult = Multipliers {
            input: 3.0,
            init: 0.5,
        };
        assert_eq!((mult.init_factor(&p), mult.lr_factor(&p)), (3.0, 3.0));
        let g = param_groups(&[p], m, LrRule::Adam, 0.01, 0.0, true, &mult).unwrap();
        assert!(close(g[0].lr, 0.03));

        // The table row.
        let row = ParamRow::new(at(256), u, None).unwrap();
        assert_eq!(row.fan_in, 16);
        assert_eq!((row.adam_lr, row.sgd_lr), (1.0 / 16.0, 16.0));
        let table = ParamTable {
            parametrization: u,
            rows: vec![row],
        };
        let line = table.to_string();
        let line = line.lines().nth(2).unwrap();
        assert!(line.starts_with("patch.weight  input "), "{line}");
        assert!(line.ends_with("0.250000  0.062500  16.000000"), "{line}");
    }

    #[test]
    fn role_names() {
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert_eq!("hidden".parse::<Role>().unwrap(), Role::Weight);
        assert!("hiden".parse::<Role>().is_err());
        assert_eq!(Role::Embedding.mup_type(), "weight");
        assert_eq!("input".parse::<Role>().unwrap(), Role::Input);
        assert_eq!(Role::Input.to_string(), "input");
        assert_eq!(Role::Input.mup_type(), "weight");
        let e = "inptu".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("input"), "{e}");
    }
}

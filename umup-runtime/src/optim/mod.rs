//! Adam, AdamW and SGD with per-parameter u-μP learning rates (spec §7).
//!
//! An [`Optimizer`] is built from the model's parameter table ([`ParamSpec`]s, one per tensor
//! path). Each parameter's peak LR is `η · lr_scale` and its weight decay follows
//! [`crate::params::weight_decay`]; the schedule scales only η. The update walks the model with
//! dfdx's named tensor visitor and runs dfdx's own Adam/SGD kernels (`Cpu` and `Cuda`) per
//! tensor. A tensor whose path is not in the table is an [`Error::MissingRole`] unless
//! [`OptimConfig::allow_non_unit_scaling_params`] is set (then it trains with the raw η).

mod mixed;
mod schedule;

use std::collections::HashMap;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::optim::{AdamConfig, Momentum, SgdConfig, WeightDecay};
use dfdx::prelude::*;

pub use mixed::master_gradients;
pub use schedule::{Decay, LrSchedule};

use crate::constraint::Constraint;
use crate::error::{check_finite, check_positive, DeviceResultExt, Error, Result};
use crate::ops::Backend;
use crate::params::{
    self, LrRule, Multipliers, NormParams, ParamGroup, ParamSpec, ParamTable, Parametrization,
};
use crate::walk::{self, Visit, VisitMut};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OptimizerKind {
    /// Adam with L2 weight decay added to the gradient (torch `Adam`).
    Adam,
    /// Adam with decoupled weight decay `p ← p·(1 − lr_p·wd_p)` (torch `AdamW`).
    #[default]
    AdamW,
    /// SGD with optional momentum and L2 weight decay (torch `SGD`).
    Sgd,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            "sgd" => Ok(OptimizerKind::Sgd),
            _ => Err(Error::UnknownName {
                kind: "optimizer",
                name: s.to_string(),
                expected: "adam, adamw, sgd",
            }),
        }
    }
}

/// Optimizer settings. Defaults follow the reference (`uu.optim`): AdamW, betas (0.9, 0.999),
/// eps 1e-8, no weight decay, independent weight decay on.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// The global learning rate η.
    pub lr: f64,
    /// Adam betas.
    pub betas: [f64; 2],
    /// Adam epsilon.
    pub eps: f64,
    /// Weight decay (see [`crate::params::weight_decay`]).
    pub weight_decay: f64,
    /// Independent weight decay: divide by each parameter's peak LR (spec §7.3).
    pub independent_weight_decay: bool,
    /// SGD momentum (0 = none).
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    pub nesterov: bool,
    /// The readout's constraint, which selects SGD's LR rule (spec §7.2).
    pub sgd_readout_constraint: Constraint,
    /// Clip the global gradient norm to this value before the update.
    pub grad_clip: Option<f64>,
    /// Schedule of η.
    pub schedule: LrSchedule,
    /// Train tensors that have no u-μP role with the raw η instead of refusing them.
    pub allow_non_unit_scaling_params: bool,
    /// The parametrization whose LR rules apply (u-μP unless a baseline is being trained).
    pub parametrization: Parametrization,
    /// μP's and SP's own multipliers: their LR factors ([`Multipliers::lr_factor`]; identity
    /// by default, and required under u-μP). Their init factors are
    /// [`crate::nn::apply_init_multipliers`]'s.
    pub multipliers: Multipliers,
    /// Whether the norms' gains and biases ([`params::norm_param_paths`]) are trained
    /// ([`NormParams`]; default `Auto`: kept at their init under u-μP, trained under μP and SP).
    /// Kept ones are frozen from the start ([`Optimizer::freeze`]).
    pub norm_params: NormParams,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::AdamW,
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            independent_weight_decay: true,
            momentum: 0.0,
            nesterov: false,
            sgd_readout_constraint: Constraint::None,
            grad_clip: None,
            schedule: LrSchedule::constant(),
            allow_non_unit_scaling_params: false,
            parametrization: Parametrization::Umup,
            multipliers: Multipliers::default(),
            norm_params: NormParams::Auto,
        }
    }
}

impl OptimConfig {
    /// AdamW with global LR `lr`.
    pub fn adamw(lr: f64) -> Self {
        OptimConfig {
            lr,
            ..Default::default()
        }
    }

    /// Adam with global LR `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimConfig {
            kind: OptimizerKind::Adam,
            lr,
            ..Default::default()
        }
    }

    /// SGD with global LR `lr`.
    pub fn sgd(lr: f64) -> Self {
        OptimConfig {
            kind: OptimizerKind::Sgd,
            lr,
            ..Default::default()
        }
    }

    /// The per-parameter LR rule this configuration implies.
    pub fn lr_rule(&self) -> Result<LrRule> {
        match self.kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => Ok(LrRule::Adam),
            OptimizerKind::Sgd => LrRule::for_sgd(self.sgd_readout_constraint),
        }
    }

    fn validate(&self) -> Result<()> {
        check_positive("learning rate", self.lr)?;
        check_finite("weight decay", self.weight_decay)?;
        check_positive("eps", self.eps)?;
        for b in self.betas {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::InvalidValue {
                    what: "Adam beta",
                    value: b,
                    reason: "must be in [0, 1)",
                });
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::InvalidValue {
                what: "momentum",
                value: self.momentum,
                reason: "must be in [0, 1)",
            });
        }
        if let Some(c) = self.grad_clip {
            check_positive("gradient clip norm", c)?;
        }
        self.schedule.validated()?;
        Ok(())
    }
}

/// An optimizer with per-parameter u-μP learning rates and weight decay.
#[derive(Debug)]
pub struct Optimizer<E: Dtype, D: Backend<E>> {
    cfg: OptimConfig,
    groups: Vec<ParamGroup>,
    index: HashMap<String, usize>,
    numel: Vec<usize>,
    frozen: Vec<bool>,
    m: Gradients<E, D>,
    v: Gradients<E, D>,
    steps: usize,
}

impl<E: Dtype, D: Backend<E>> Optimizer<E, D> {
    /// Builds the optimizer for the parameters in `params` (the model's table).
    pub fn new(cfg: OptimConfig, params: &[ParamSpec]) -> Result<Self> {
        cfg.validate()?;
        let groups = params::param_groups(
            params,
            cfg.parametrization,
            cfg.lr_rule()?,
            cfg.lr,
            cfg.weight_decay,
            cfg.independent_weight_decay,
            &cfg.multipliers,
        )?;
        let mut index = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            if index.insert(p.path.clone(), i).is_some() {
                return Err(Error::BadParameter {
                    path: p.path.clone(),
                    reason: "appears twice in the parameter table".into(),
                });
            }
        }
        let mut frozen = vec![false; params.len()];
        if cfg.norm_params.resolve(cfg.parametrization) == NormParams::Fixed {
            for path in params::norm_param_paths(params) {
                frozen[index[&path]] = true;
            }
        }
        Ok(Optimizer {
            numel: params.iter().map(|p| p.shape.iter().product()).collect(),
            frozen,
            cfg,
            groups,
            index,
            m: Gradients::leaky(),
            v: Gradients::leaky(),
            steps: 0,
        })
    }

    /// Builds the optimizer for a model's [`ParamTable`], with the table's parametrization.
    pub fn for_table(cfg: OptimConfig, table: &ParamTable) -> Result<Self> {
        Self::new(
            OptimConfig {
                parametrization: table.parametrization,
                ..cfg
            },
            &table.specs(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Each parameter's peak LR and weight decay, in table order.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Freezes the tensor at `path` (a path of the table): from now on [`Self::update`] and
    /// [`Self::update_named`] leave it as it is (no step, no weight decay, its moments stay as
    /// they are) and leave its gradient out of the clipping norm, as PyTorch does for a tensor
    /// with `requires_grad = false`. An unknown path is an error that lists the known ones.
    pub fn freeze(&mut self, path: &str) -> Result<()> {
        match self.index.get(path) {
            Some(&i) => {
                self.frozen[i] = true;
                Ok(())
            }
            None => {
                let mut known: Vec<&str> = self.groups.iter().map(|g| g.path.as_str()).collect();
                known.sort_unstable();
                Err(Error::BadParameter {
                    path: path.to_string(),
                    reason: format!(
                        "cannot freeze it: not in the parameter table (its paths: {})",
                        known.join(", ")
                    ),
                })
            }
        }
    }

    /// Whether the tensor at `path` is frozen ([`Self::freeze`]).
    pub fn is_frozen(&self, path: &str) -> bool {
        self.index.get(path).is_some_and(|&i| self.frozen[i])
    }

    /// Number of updates taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Sets the number of updates taken (when resuming from a checkpoint; the moments are not
    /// restored by this call).
    pub fn set_steps(&mut self, steps: usize) {
        self.steps = steps;
    }

    /// The global η the next update will use (η × schedule factor).
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr * self.cfg.schedule.factor(self.steps)
    }

    /// Sets the global η (e.g. for a custom schedule); per-parameter LRs keep their factors and
    /// independent weight decay stays tied to the peak LR given at construction.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let lr = check_positive("learning rate", lr)?;
        let ratio = lr / self.cfg.lr;
        for g in &mut self.groups {
            g.lr *= ratio;
        }
        self.cfg.lr = lr;
        Ok(())
    }

    /// One update of every tensor of `model` from `grads` (as returned by `loss.backward()`).
    /// Returns the global gradient norm before clipping when clipping is on.
    pub fn update<M: TensorCollection<E, D>>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<E, D>,
    ) -> Result<Option<f64>> {
        let norm = match self.cfg.grad_clip {
            None => None,
            Some(max) => {
                let mut v = ClipVisitor {
                    grads,
                    opt: &*self,
                    sum_sq: 0.0,
                    factor: None,
                };
                walk::tensors(&*model, &mut v)?;
                let norm = v.sum_sq.sqrt();
                let c = max / (norm + 1e-6);
                if c < 1.0 {
                    v.factor = Some(crate::ops::scale::elem("clip factor", c)?);
                    walk::tensors(&*model, &mut v)?;
                }
                Some(norm)
            }
        };
        // Resolve every tensor first, so that a missing role or a wrong shape fails before
        // anything is updated.
        let mut check = ResolveVisitor {
            opt: self,
            settings: Vec::new(),
        };
        walk::tensors(&*model, &mut check)?;
        let settings = check.settings;
        let mut step = StepVisitor {
            opt: self,
            grads,
            settings: settings.into_iter(),
        };
        crate::profile::time(crate::profile::Part::Optimizer, || {
            walk::tensors_mut(model, &mut step)
        })?;
        self.steps += 1;
        Ok(norm)
    }

    /// One update of an explicit list of named tensors (for parameters that do not live in a
    /// dfdx module). No clipping; the paths are looked up in the table as in [`Self::update`].
    pub fn update_named<S: Shape>(
        &mut self,
        params: &mut [(&str, &mut Tensor<S, E, D>)],
        grads: &mut Gradients<E, D>,
    ) -> Result<()> {
        let settings = params
            .iter()
            .map(|(path, p)| self.resolve(path, p.shape().num_elements()))
            .collect::<Result<Vec<_>>>()?;
        for ((_, p), setting) in params.iter_mut().zip(settings) {
            if let Some((lr, wd)) = setting {
                self.apply(p, lr, wd, grads)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// The peak LR and weight decay of the tensor at `path` with `n` elements; `None` if it is
    /// frozen.
    fn resolve(&self, path: &str, n: usize) -> Result<Option<(f64, f64)>> {
        Ok(match self.index.get(path) {
            Some(&i) => {
                if self.numel[i] != n {
                    return Err(Error::BadParameter {
                        path: path.to_string(),
                        reason: format!(
                            "table says {} elements, the tensor has {n}",
                            self.numel[i]
                        ),
                    });
                }
                (!self.frozen[i]).then_some((self.groups[i].lr, self.groups[i].weight_decay))
            }
            None if self.cfg.allow_non_unit_scaling_params => Some((
                self.cfg.lr,
                params::weight_decay(
                    self.cfg.weight_decay,
                    self.cfg.lr,
                    self.cfg.independent_weight_decay,
                ),
            )),
            None => {
                return Err(Error::MissingRole {
                    path: path.to_string(),
                })
            }
        })
    }

    /// One update of `p` with peak LR `lr` (scaled here by the schedule) and weight decay `wd`.
    fn apply<S: Shape>(
        &mut self,
        p: &mut Tensor<S, E, D>,
        lr: f64,
        wd: f64,
        grads: &mut Gradients<E, D>,
    ) -> Result<()> {
        let lr = lr * self.cfg.schedule.factor(self.steps);
        let g = grads.get_or_alloc_mut(&*p).dev()?;
        let m = self.m.get_or_alloc_mut(&*p).dev()?;
        match self.cfg.kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                let decay = match self.cfg.kind {
                    _ if wd == 0.0 => None,
                    OptimizerKind::AdamW => Some(WeightDecay::Decoupled(wd)),
                    _ => Some(WeightDecay::L2(wd)),
                };
                let cfg = AdamConfig {
                    lr,
                    betas: self.cfg.betas,
                    eps: self.cfg.eps,
                    weight_decay: decay,
                };
                let v = self.v.get_or_alloc_mut(&*p).dev()?;
                cfg.try_update(self.steps as i32 + 1, p, m, v, g).dev()
            }
            OptimizerKind::Sgd => {
                let mu = self.cfg.momentum;
                let momentum = match self.cfg.nesterov {
                    _ if mu == 0.0 => None,
                    false => Some(Momentum::Classic(mu)),
                    true => Some(Momentum::Nesterov(mu)),
                };
                let cfg = SgdConfig {
                    lr,
                    momentum,
                    weight_decay: (wd != 0.0).then_some(WeightDecay::L2(wd)),
                };
                cfg.try_update(p, m, g).dev()
            }
        }
    }
}

impl<E: Dtype, D: Backend<E>> Optimizer<E, D> {
    /// The optimizer's per-tensor state for a checkpoint: the first and second moments of
    /// every tensor of `model`, named `m.<path>` and `v.<path>` (SGD: `m.` is the velocity).
    pub fn state<M: TensorCollection<E, D>>(&mut self, model: &M) -> Result<Vec<(String, Vec<E>)>> {
        let mut v = StateVisitor {
            opt: self,
            load: None,
            out: Vec::new(),
        };
        walk::tensors(model, &mut v)?;
        Ok(v.out)
    }

    /// Restores what [`Self::state`] returned (looked up by name through `get`) and the step
    /// count, so that training continues exactly where it stopped.
    pub fn load_state<M: TensorCollection<E, D>>(
        &mut self,
        model: &M,
        get: &dyn Fn(&str) -> Option<Vec<E>>,
        steps: usize,
    ) -> Result<()> {
        let mut v = StateVisitor {
            opt: self,
            load: Some(get),
            out: Vec::new(),
        };
        walk::tensors(model, &mut v)?;
        self.steps = steps;
        Ok(())
    }
}

struct StateVisitor<'a, E: Dtype, D: Backend<E>> {
    opt: &'a mut Optimizer<E, D>,
    load: Option<&'a dyn Fn(&str) -> Option<Vec<E>>>,
    out: Vec<(String, Vec<E>)>,
}

impl<E: Dtype, D: Backend<E>> Visit<E, D> for StateVisitor<'_, E, D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()> {
        if !trainable {
            return Ok(());
        }
        for (prefix, store) in [("m", &mut self.opt.m), ("v", &mut self.opt.v)] {
            let key = format!("{prefix}.{name}");
            store.try_alloc_for(p).dev()?;
            match self.load {
                None => self.out.push((key, store.get(p).as_vec())),
                Some(get) => {
                    let vals = get(&key).ok_or_else(|| Error::BadParameter {
                        path: key.clone(),
                        reason: "missing from the optimizer state".into(),
                    })?;
                    if vals.len() != p.shape().num_elements() {
                        return Err(Error::BadParameter {
                            path: key,
                            reason: format!(
                                "{} values in the optimizer state, the tensor has {}",
                                vals.len(),
                                p.shape().num_elements()
                            ),
                        });
                    }
                    let t = p.device().try_tensor_from_vec(vals, *p.shape()).dev()?;
                    crate::ops::quantise::set_gradient(store, p, t).dev()?;
                }
            }
        }
        Ok(())
    }
}

struct ResolveVisitor<'a, E: Dtype, D: Backend<E>> {
    opt: &'a Optimizer<E, D>,
    settings: Vec<Option<(f64, f64)>>,
}

impl<E: Dtype, D: Backend<E>> Visit<E, D> for ResolveVisitor<'_, E, D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()> {
        if trainable {
            let s = self.opt.resolve(&name, p.shape().num_elements())?;
            self.settings.push(s);
        }
        Ok(())
    }
}

struct StepVisitor<'a, E: Dtype, D: Backend<E>> {
    opt: &'a mut Optimizer<E, D>,
    grads: &'a mut Gradients<E, D>,
    settings: std::vec::IntoIter<Option<(f64, f64)>>,
}

impl<E: Dtype, D: Backend<E>> VisitMut<E, D> for StepVisitor<'_, E, D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &mut Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()> {
        if trainable {
            let setting = self.settings.next().ok_or_else(|| Error::BadParameter {
                path: name.clone(),
                reason: "the model changed between two passes of one update".into(),
            })?;
            if let Some((lr, wd)) = setting {
                self.opt.apply(p, lr, wd, self.grads)?;
            }
        }
        Ok(())
    }
}

/// First pass: sums squared gradients; second pass (with `factor`): scales them. Frozen tensors
/// are left out of both.
struct ClipVisitor<'a, E: Dtype, D: Backend<E>> {
    grads: &'a mut Gradients<E, D>,
    opt: &'a Optimizer<E, D>,
    sum_sq: f64,
    factor: Option<E>,
}

impl<E: Dtype, D: Backend<E>> Visit<E, D> for ClipVisitor<'_, E, D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()> {
        if !trainable || self.opt.is_frozen(&name) {
            return Ok(());
        }
        self.grads.try_alloc_for(p).dev()?;
        match self.factor {
            None => {
                let g = self.grads.get(p);
                let ss = g.try_square().dev()?.try_sum::<(), _>().dev()?.as_vec();
                self.sum_sq += ss.first().and_then(|x| x.to_f64()).unwrap_or(0.0);
            }
            Some(f) => D::scale_gradient(self.grads, p, f).dev()?,
        }
        Ok(())
    }
}

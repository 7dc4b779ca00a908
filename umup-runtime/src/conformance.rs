//! A runner for the reference library's conformance fixtures (`fixtures/SCHEMA.md`).
//!
//! A fixture file holds cases, each an op id, parameters, float64 inputs, upstream gradients and
//! the reference's float64 outputs and input gradients. [`run_case`] evaluates a case through
//! this crate's public API on `Cpu` in `f64` (the vector–Jacobian product of all outputs with
//! their `grad_outputs`, exactly what `torch.autograd.backward` computes) and compares every
//! tensor with `|got − exp| ≤ tol.abs + tol.rel·|exp|`. An op the runner does not know, a
//! missing output, a shape mismatch or an op error is a failure, never a skip.
//!
//! Nothing here is specific to one fixture file: shapes, parameters and names all come from the
//! case.

use std::collections::BTreeMap;
use std::path::Path;

use dfdx::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Error, Result};
use crate::formats::Format;
use crate::ops::{self, Backend, Reduction};
use crate::optim::{OptimConfig, Optimizer, OptimizerKind};
use crate::params::{self, LrRule, NormParams, ParamGroup, ParamSpec, Role};
use crate::scales;

type Tp<D> = OwnedTape<f64, D>;
type T1<D> = Tensor<(usize,), f64, D>;
type T2<D> = Tensor<(usize, usize), f64, D>;

/// A fixture file.
#[derive(Debug, Clone, Deserialize)]
pub struct FixtureFile {
    /// Where the values come from.
    #[serde(default)]
    pub reference: Option<String>,
    /// Schema version (1).
    pub schema_version: u32,
    /// Informational set name.
    #[serde(default)]
    pub set: Option<String>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// A tensor in a fixture: flat row-major data and a shape.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorData {
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// `product(shape)` values, row-major.
    pub data: Vec<f64>,
    /// `"i64"` for integer tensors; absent for float64.
    #[serde(default)]
    pub dtype: Option<String>,
}

impl TensorData {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn check(&self, name: &str) -> Result<()> {
        if self.numel() != self.data.len() {
            return Err(Error::BadInput(format!(
                "tensor `{name}` has shape {:?} but {} values",
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }

    fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    fn ids(&self, name: &str) -> Result<Vec<usize>> {
        self.data
            .iter()
            .map(|&v| {
                if v >= 0.0 && v.fract() == 0.0 {
                    Ok(v as usize)
                } else {
                    Err(Error::BadInput(format!(
                        "`{name}` holds {v}, not a non-negative integer"
                    )))
                }
            })
            .collect()
    }
}

/// Expected results of a case.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expected {
    /// Forward outputs by name.
    #[serde(default)]
    pub outputs: BTreeMap<String, TensorData>,
    /// Input gradients by input name.
    #[serde(default)]
    pub grads: BTreeMap<String, TensorData>,
    /// Per-parameter LR and weight decay (optimizer cases).
    #[serde(default)]
    pub param_groups: Option<Vec<ExpectedGroup>>,
}

/// One expected optimizer param group.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedGroup {
    /// Parameter name.
    pub name: String,
    /// Its LR.
    pub lr: f64,
    /// Its weight decay.
    pub weight_decay: f64,
}

/// Comparison tolerance: `|got − exp| ≤ abs + rel·|exp|`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Tol {
    /// Relative part.
    pub rel: f64,
    /// Absolute part.
    pub abs: f64,
}

/// One conformance case.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Unique descriptive name.
    pub name: String,
    /// Op id (SCHEMA §3).
    pub op: String,
    /// Op parameters.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    /// Inputs by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, TensorData>,
    /// Upstream gradient of each output.
    #[serde(default)]
    pub grad_outputs: BTreeMap<String, TensorData>,
    /// Per-step gradients (`adamw_step`).
    #[serde(default)]
    pub step_grads: Vec<BTreeMap<String, TensorData>>,
    /// Expected results.
    #[serde(default)]
    pub expected: Expected,
    /// Tolerance.
    pub tol: Tol,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// Op id.
    pub op: String,
    /// Whether every compared value is within tolerance.
    pub passed: bool,
    /// Largest absolute error over all compared values.
    pub worst_abs: f64,
    /// Largest relative error (`|got − exp| / |exp|`, over nonzero `exp`).
    pub worst_rel: f64,
    /// Why the case failed, if it did.
    pub message: Option<String>,
}

/// One line: `ok   name  worst abs …  worst rel …`, or `FAIL name  worst abs …  worst rel …  (why)`.
impl std::fmt::Display for CaseResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.passed { "ok  " } else { "FAIL" };
        write!(
            f,
            "{status} {}  worst abs {:.3e}  worst rel {:.3e}",
            self.name, self.worst_abs, self.worst_rel
        )?;
        match &self.message {
            Some(m) => write!(f, "  ({m})"),
            None => Ok(()),
        }
    }
}

/// Loads a fixture file (floats parsed bit-exactly).
pub fn load(path: impl AsRef<Path>) -> Result<FixtureFile> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

/// Parses fixture JSON.
pub fn parse(text: &str) -> Result<FixtureFile> {
    let f: FixtureFile =
        serde_json::from_str(text).map_err(|e| Error::BadInput(format!("fixture JSON: {e}")))?;
    if f.schema_version != 1 {
        return Err(Error::BadInput(format!(
            "schema_version {} is not supported (expected 1)",
            f.schema_version
        )));
    }
    Ok(f)
}

/// Runs every case of a file on `Cpu`.
pub fn run_file(file: &FixtureFile) -> Vec<CaseResult> {
    run_file_on(&Cpu::default(), file)
}

/// Runs every case of a file on `dev` (e.g. `Cuda`), in `f64`.
pub fn run_file_on<D: Backend<f64>>(dev: &D, file: &FixtureFile) -> Vec<CaseResult> {
    file.cases.iter().map(|c| run_case_on(dev, c)).collect()
}

/// What an op produced: named tensors (shape, values) and optional param groups.
#[derive(Default)]
struct Computed {
    outputs: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    grads: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    groups: Option<Vec<ParamGroup>>,
}

/// Runs one case on `Cpu` and compares it with its expected values.
pub fn run_case(case: &Case) -> CaseResult {
    run_case_on(&Cpu::default(), case)
}

/// Runs one case on `dev` (in `f64`) and compares it with its expected values.
pub fn run_case_on<D: Backend<f64>>(dev: &D, case: &Case) -> CaseResult {
    let mut r = CaseResult {
        name: case.name.clone(),
        op: case.op.clone(),
        passed: false,
        worst_abs: 0.0,
        worst_rel: 0.0,
        message: None,
    };
    let computed = case
        .inputs
        .iter()
        .chain(&case.grad_outputs)
        .try_for_each(|(n, t)| t.check(n))
        .and_then(|_| compute(case, dev));
    match computed {
        Err(e) => r.message = Some(e.to_string()),
        Ok(c) => match compare(case, &c, &mut r) {
            Ok(()) => r.passed = true,
            Err(msg) => r.message = Some(msg),
        },
    }
    r
}

fn compare(case: &Case, c: &Computed, r: &mut CaseResult) -> std::result::Result<(), String> {
    let tol = case.tol;
    let mut failures = Vec::new();
    let mut check = |what: String, exp: &[f64], got: &[f64]| {
        let mut bad = 0usize;
        for (&e, &g) in exp.iter().zip(got) {
            let err = (g - e).abs();
            let err = if err.is_nan() { f64::INFINITY } else { err };
            r.worst_abs = r.worst_abs.max(err);
            if e != 0.0 {
                r.worst_rel = r.worst_rel.max(err / e.abs());
            }
            if err > tol.abs + tol.rel * e.abs() {
                bad += 1;
            }
        }
        if bad > 0 {
            failures.push(format!(
                "{what}: {bad} of {} values out of tolerance",
                exp.len()
            ));
        }
    };
    for (kind, exp_map, got_map) in [
        ("output", &case.expected.outputs, &c.outputs),
        ("grad", &case.expected.grads, &c.grads),
    ] {
        for (name, exp) in exp_map {
            match got_map.get(name) {
                None => return Err(format!("{kind} `{name}` was not produced")),
                Some((shape, got)) => {
                    if *shape != exp.shape || got.len() != exp.data.len() {
                        return Err(format!(
                            "{kind} `{name}`: shape {shape:?}, expected {:?}",
                            exp.shape
                        ));
                    }
                    check(format!("{kind} `{name}`"), &exp.data, got);
                }
            }
        }
    }
    if let Some(exp) = &case.expected.param_groups {
        let got = c
            .groups
            .as_ref()
            .ok_or_else(|| "param_groups were not produced".to_string())?;
        if got.len() != exp.len() {
            return Err(format!(
                "{} param groups, expected {}",
                got.len(),
                exp.len()
            ));
        }
        for (g, e) in got.iter().zip(exp) {
            if g.path != e.name {
                return Err(format!("param group `{}`, expected `{}`", g.path, e.name));
            }
            check(format!("lr of `{}`", e.name), &[e.lr], &[g.lr]);
            check(
                format!("weight_decay of `{}`", e.name),
                &[e.weight_decay],
                &[g.weight_decay],
            );
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter access.

fn param<'a>(case: &'a Case, key: &str) -> Option<&'a Value> {
    case.params.get(key).filter(|v| !v.is_null())
}

fn f64_param(case: &Case, key: &str, default: Option<f64>) -> Result<f64> {
    match param(case, key) {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| Error::BadInput(format!("param `{key}` is not a number"))),
        None => default.ok_or_else(|| Error::BadInput(format!("missing param `{key}`"))),
    }
}

fn usize_param(case: &Case, key: &str) -> Result<usize> {
    param(case, key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::BadInput(format!("param `{key}` is missing or not an integer")))
}

fn bool_param(case: &Case, key: &str, default: bool) -> Result<bool> {
    match param(case, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| Error::BadInput(format!("param `{key}` is not a boolean"))),
    }
}

fn str_param<'a>(case: &'a Case, key: &str) -> Result<Option<&'a str>> {
    match param(case, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| Error::BadInput(format!("param `{key}` is not a string"))),
    }
}

/// `constraint`: absent → the op's default; `null`/`""` → none; otherwise parsed.
fn constraint_param(case: &Case, default: Constraint) -> Result<Constraint> {
    match case.params.get("constraint") {
        None => Ok(default),
        Some(Value::Null) => Ok(Constraint::None),
        Some(Value::String(s)) => s.parse(),
        Some(v) => Err(Error::BadInput(format!("constraint {v} is not a string"))),
    }
}

fn input<'a>(case: &'a Case, name: &str) -> Result<&'a TensorData> {
    case.inputs
        .get(name)
        .ok_or_else(|| Error::BadInput(format!("missing input `{name}`")))
}

fn grad_output<'a>(case: &'a Case, name: &str) -> Result<&'a TensorData> {
    case.grad_outputs
        .get(name)
        .ok_or_else(|| Error::BadInput(format!("missing grad_output `{name}`")))
}

// ---------------------------------------------------------------------------------------------
// Tensor helpers.

fn t1<D: Backend<f64>>(dev: &D, t: &TensorData) -> Result<T1<D>> {
    dev.try_tensor_from_vec(t.data.clone(), (t.data.len(),))
        .dev()
}

/// `[..., d]` viewed as `[numel/d, d]`.
fn t2<D: Backend<f64>>(dev: &D, t: &TensorData, d: usize) -> Result<T2<D>> {
    if d == 0 || !t.data.len().is_multiple_of(d) {
        return Err(Error::BadInput(format!(
            "cannot view shape {:?} as rows of {d}",
            t.shape
        )));
    }
    dev.try_tensor_from_vec(t.data.clone(), (t.data.len() / d, d))
        .dev()
}

fn untaped<S: Shape, D: Backend<f64>>(t: &Tensor<S, f64, D, Tp<D>>) -> Tensor<S, f64, D> {
    t.retaped::<NoneTape>()
}

/// `Σ y ⊙ g` for one output: its backward pass is the vector–Jacobian product with `g`.
fn vjp_term<S: Shape, D: Backend<f64>>(
    y: Tensor<S, f64, D, Tp<D>>,
    g: &TensorData,
) -> Result<Tensor<(), f64, D, Tp<D>>> {
    let n = y.shape().num_elements();
    if g.data.len() != n {
        return Err(Error::BadInput(format!(
            "grad_output has {} values, the output has {n}",
            g.data.len()
        )));
    }
    let shape = *y.shape();
    let g = y
        .device()
        .try_tensor_from_vec(g.data.clone(), shape)
        .dev()?;
    ops::sum_all(y.try_mul(g).dev()?).dev()
}

/// Records a single output named `output`, runs its backward pass and returns the gradients.
fn finish_single<S: Shape, D: Backend<f64>>(
    case: &Case,
    c: &mut Computed,
    y: Tensor<S, f64, D, Tp<D>>,
    shape: Vec<usize>,
) -> Result<Gradients<f64, D>> {
    c.outputs
        .insert("output".into(), (shape, untaped(&y).as_vec()));
    let loss = vjp_term(y, grad_output(case, "output")?)?;
    Ok(loss.backward())
}

fn record<S: Shape, D: Backend<f64>>(
    c: &mut Computed,
    grads: &Gradients<f64, D>,
    name: &str,
    t: &Tensor<S, f64, D>,
    shape: &[usize],
) {
    c.grads
        .insert(name.into(), (shape.to_vec(), grads.get(t).as_vec()));
}

fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    match s.last_mut() {
        Some(l) => *l = last,
        None => s.push(last),
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Ops.

fn compute<D: Backend<f64>>(case: &Case, dev: &D) -> Result<Computed> {
    let mut c = Computed::default();
    match case.op.as_str() {
        "scale_fwd" | "scale_bwd" => {
            let x = input(case, "x")?;
            let s = f64_param(case, "scale", None)?;
            let xt = t1(dev, x)?;
            let y = if case.op == "scale_fwd" {
                ops::scale_fwd(xt.leaky_trace(), s)?
            } else {
                ops::scale_bwd(xt.leaky_trace(), s)?
            };
            let grads = finish_single(case, &mut c, y, x.shape.clone())?;
            record(&mut c, &grads, "x", &xt, &x.shape);
        }
        "matmul" => matmul(case, dev, &mut c)?,
        "linear" | "linear_readout" => linear(case, dev, &mut c)?,
        "conv1d" => conv1d(case, dev, &mut c)?,
        "embedding" => {
            let (ids, table) = (input(case, "ids")?, input(case, "weight")?);
            let w = t2(dev, table, table.last_dim())?;
            let idt = dev
                .try_tensor_from_vec(ids.ids("ids")?, (ids.data.len(),))
                .dev()?;
            let y = ops::embedding(Trace::<f64, D>::leaky_traced(idt), &w)?;
            let mut shape = ids.shape.clone();
            shape.push(table.last_dim());
            let grads = finish_single(case, &mut c, y, shape)?;
            record(&mut c, &grads, "weight", &w, &table.shape);
        }
        "rms_norm" | "layer_norm" => norm(case, dev, &mut c)?,
        "gelu" | "silu" => {
            let x = input(case, "x")?;
            let mult = f64_param(case, "mult", Some(1.0))?;
            let con = constraint_param(case, Constraint::ToOutputScale)?;
            let xt = t1(dev, x)?;
            let y = if case.op == "gelu" {
                match str_param(case, "approximate")? {
                    None | Some("none") => {}
                    Some(other) => {
                        return Err(Error::BadInput(format!(
                            "gelu approximate=`{other}` is not supported (only \"none\")"
                        )))
                    }
                }
                ops::gelu(xt.leaky_trace(), mult, con)?
            } else {
                ops::silu(xt.leaky_trace(), mult, con)?
            };
            let grads = finish_single(case, &mut c, y, x.shape.clone())?;
            record(&mut c, &grads, "x", &xt, &x.shape);
        }
        "silu_glu" => {
            let (x, gate) = (input(case, "x")?, input(case, "gate")?);
            let mult = f64_param(case, "mult", Some(1.0))?;
            let (xt, gt) = (t1(dev, x)?, t1(dev, gate)?);
            let y = ops::silu_glu(xt.leaky_trace(), gt.retaped::<Tp<D>>(), mult)?;
            let grads = finish_single(case, &mut c, y, x.shape.clone())?;
            record(&mut c, &grads, "x", &xt, &x.shape);
            record(&mut c, &grads, "gate", &gt, &gate.shape);
        }
        "softmax" => {
            let x = input(case, "x")?;
            let dim = param(case, "dim").and_then(Value::as_i64).unwrap_or(-1);
            let rank = x.shape.len() as i64;
            if dim != -1 && dim != rank - 1 {
                return Err(Error::BadInput(format!(
                    "softmax over dim {dim} of a rank-{rank} tensor: only the last dim is supported"
                )));
            }
            let mult = f64_param(case, "mult", Some(1.0))?;
            let con = constraint_param(case, Constraint::ToOutputScale)?;
            let xt = t2(dev, x, x.last_dim())?;
            let y = ops::softmax(xt.leaky_trace(), mult, con)?;
            let grads = finish_single(case, &mut c, y, x.shape.clone())?;
            record(&mut c, &grads, "x", &xt, &x.shape);
        }
        "scaled_dot_product_attention" => sdpa(case, dev, &mut c)?,
        "add" => add(case, dev, &mut c)?,
        "residual_split" => {
            let x = input(case, "x")?;
            let tau = f64_param(case, "tau", None)?;
            let xt = t1(dev, x)?;
            let (r, s) = ops::residual_split(xt.leaky_trace(), tau)?;
            c.outputs
                .insert("residual".into(), (x.shape.clone(), untaped(&r).as_vec()));
            c.outputs
                .insert("skip".into(), (x.shape.clone(), untaped(&s).as_vec()));
            let loss = vjp_term(r, grad_output(case, "residual")?)?
                .try_add(vjp_term(s, grad_output(case, "skip")?)?)
                .dev()?;
            let grads = loss.backward();
            record(&mut c, &grads, "x", &xt, &x.shape);
        }
        "residual_add" => {
            let (r, s) = (input(case, "residual")?, input(case, "skip")?);
            let tau = f64_param(case, "tau", None)?;
            let (rt, st) = (t1(dev, r)?, t1(dev, s)?);
            if r.shape != s.shape {
                return Err(Error::BadInput("residual and skip shapes differ".into()));
            }
            let y = ops::residual_add(rt.leaky_trace(), st.retaped::<Tp<D>>(), tau)?;
            let grads = finish_single(case, &mut c, y, r.shape.clone())?;
            record(&mut c, &grads, "residual", &rt, &r.shape);
            record(&mut c, &grads, "skip", &st, &s.shape);
        }
        "residual_scaling_rule" => {
            let taus = scales::transformer_residual_taus(
                f64_param(case, "residual_mult", Some(1.0))?,
                f64_param(case, "residual_attn_ratio", Some(1.0))?,
                usize_param(case, "n_layers")?,
            )?;
            c.outputs.insert("taus".into(), (vec![taus.len()], taus));
        }
        "cross_entropy" => {
            let (x, t) = (input(case, "logits")?, input(case, "targets")?);
            let mult = f64_param(case, "mult", Some(1.0))?;
            let reduction: Reduction = str_param(case, "reduction")?.unwrap_or("mean").parse()?;
            let xt = t2(dev, x, x.last_dim())?;
            let y = ops::cross_entropy(xt.leaky_trace(), &t.ids("targets")?, mult, reduction)?;
            let grads = finish_single(case, &mut c, y, vec![])?;
            record(&mut c, &grads, "logits", &xt, &x.shape);
        }
        "mse_loss" => {
            let (x, t) = (input(case, "input")?, input(case, "target")?);
            if x.shape != t.shape {
                return Err(Error::ShapeMismatch {
                    op: "mse_loss",
                    detail: format!("input {:?} vs target {:?}", x.shape, t.shape),
                });
            }
            let reduction: Reduction = str_param(case, "reduction")?.unwrap_or("mean").parse()?;
            let (xt, tt) = (t1(dev, x)?, t1(dev, t)?);
            let y = ops::mse_loss(xt.leaky_trace(), tt.retaped::<Tp<D>>(), reduction)?;
            let grads = finish_single(case, &mut c, y, vec![])?;
            record(&mut c, &grads, "input", &xt, &x.shape);
            record(&mut c, &grads, "target", &tt, &t.shape);
        }
        "scale_factor" => scale_factor(case, &mut c)?,
        "optimizer_lr" => {
            let specs = param_specs(case)?;
            let kind: OptimizerKind = str_param(case, "optimizer")?.unwrap_or("adam").parse()?;
            let rule = match kind {
                OptimizerKind::Sgd => LrRule::for_sgd(Constraint::from_option(str_param(
                    case,
                    "readout_constraint",
                )?)?)?,
                _ => LrRule::Adam,
            };
            c.groups = Some(params::param_groups(
                &specs,
                params::Parametrization::Umup,
                rule,
                f64_param(case, "lr", None)?,
                f64_param(case, "weight_decay", Some(0.0))?,
                bool_param(case, "independent_weight_decay", true)?,
                &params::Multipliers::default(),
            )?);
        }
        "adamw_step" => adamw_step(case, dev, &mut c)?,
        "quantise" => {
            let x = input(case, "x")?;
            let format: Format = str_param(case, "format")?.unwrap_or("").parse()?;
            if !bool_param(case, "saturate", true)? {
                return Err(Error::BadInput(
                    "only saturating quantisation is supported".into(),
                ));
            }
            let out = x.data.iter().map(|&v| format.quantise(v)).collect();
            c.outputs.insert("output".into(), (x.shape.clone(), out));
        }
        other => {
            return Err(Error::UnknownName {
                kind: "conformance op",
                name: other.to_string(),
                expected: "the ops of SCHEMA.md §3",
            })
        }
    }
    Ok(c)
}

fn matmul<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let (l, r) = (input(case, "left")?, input(case, "right")?);
    let con = constraint_param(case, Constraint::ToOutputScale)?;
    let (lr, rr) = (l.shape.len(), r.shape.len());
    if lr < 2 || rr < 2 {
        return Err(Error::BadInput(
            "matmul operands must be at least 2-D".into(),
        ));
    }
    let (m, k) = (l.shape[lr - 2], l.shape[lr - 1]);
    let (k2, n) = (r.shape[rr - 2], r.shape[rr - 1]);
    let (lb, rb) = (&l.shape[..lr - 2], &r.shape[..rr - 2]);
    if lb != rb {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            detail: format!("batch dims {lb:?} vs {rb:?}"),
        });
    }
    let mut out_shape = lb.to_vec();
    out_shape.extend([m, n]);
    if lb.is_empty() {
        let (lt, rt) = (t2(dev, l, k)?, t2(dev, r, n)?);
        let y = ops::matmul(lt.leaky_trace(), rt.retaped::<Tp<D>>(), con)?;
        let grads = finish_single(case, c, y, out_shape)?;
        record(c, &grads, "left", &lt, &l.shape);
        record(c, &grads, "right", &rt, &r.shape);
    } else {
        let b: usize = lb.iter().product();
        let lt = dev.try_tensor_from_vec(l.data.clone(), (b, m, k)).dev()?;
        let rt = dev.try_tensor_from_vec(r.data.clone(), (b, k2, n)).dev()?;
        let y = ops::matmul_batched(lt.leaky_trace(), rt.retaped::<Tp<D>>(), con)?;
        let grads = finish_single(case, c, y, out_shape)?;
        record(c, &grads, "left", &lt, &l.shape);
        record(c, &grads, "right", &rt, &r.shape);
    }
    Ok(())
}

fn linear<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let readout = case.op == "linear_readout";
    let (x, w) = (input(case, "x")?, input(case, "weight")?);
    let con = constraint_param(
        case,
        if readout {
            Constraint::None
        } else {
            Constraint::ToOutputScale
        },
    )?;
    let has_bias = bool_param(case, "has_bias", case.inputs.contains_key("bias"))?;
    let (fan_out, fan_in) = match w.shape[..] {
        [o, i] => (o, i),
        _ => {
            return Err(Error::BadInput(format!(
                "weight shape {:?} is not 2-D",
                w.shape
            )))
        }
    };
    let xt = t2(dev, x, x.last_dim())?;
    let wt = t2(dev, w, fan_in)?;
    let bt = if has_bias {
        Some(t1(dev, input(case, "bias")?)?)
    } else {
        None
    };
    let f = if readout {
        ops::linear_readout
    } else {
        ops::linear
    };
    let y = f(xt.leaky_trace(), &wt, bt.as_ref(), con)?;
    let grads = finish_single(case, c, y, with_last(&x.shape, fan_out))?;
    record(c, &grads, "x", &xt, &x.shape);
    record(c, &grads, "weight", &wt, &w.shape);
    if let Some(b) = &bt {
        record(c, &grads, "bias", b, &[fan_out]);
    }
    Ok(())
}

fn conv1d<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let (x, w) = (input(case, "x")?, input(case, "weight")?);
    let has_bias = bool_param(case, "has_bias", case.inputs.contains_key("bias"))?;
    let scale_power = match param(case, "scale_power").and_then(Value::as_array) {
        None => [0.5; 3],
        Some(p) => match p.iter().map(Value::as_f64).collect::<Option<Vec<_>>>() {
            Some(v) if v.len() == 3 => [v[0], v[1], v[2]],
            _ => return Err(Error::BadInput("scale_power must be three numbers".into())),
        },
    };
    let geo = |key: &str, default: usize| -> Result<usize> {
        match param(case, key) {
            None => Ok(default),
            Some(_) => usize_param(case, key),
        }
    };
    let options = ops::Conv1dOptions {
        geometry: ops::Conv1dGeometry {
            stride: geo("stride", 1)?,
            padding: geo("padding", 0)?,
            dilation: geo("dilation", 1)?,
            groups: geo("groups", 1)?,
        },
        constraint: constraint_param(case, Constraint::ToOutputScale)?,
        scale_power,
    };
    let [co, ig, k] = match w.shape[..] {
        [o, i, k] => [o, i, k],
        _ => {
            return Err(Error::BadInput(format!(
                "conv1d weight shape {:?} is not 3-D",
                w.shape
            )))
        }
    };
    let (lead, ci, len) = match x.shape[..] {
        [ci, len] => (None, ci, len),
        [b, ci, len] => (Some(b), ci, len),
        _ => {
            return Err(Error::BadInput(format!(
                "conv1d input shape {:?} is not [C_in, T] or [B, C_in, T]",
                x.shape
            )))
        }
    };
    let xt = dev
        .try_tensor_from_vec(x.data.clone(), (lead.unwrap_or(1), ci, len))
        .dev()?;
    let wt = dev.try_tensor_from_vec(w.data.clone(), (co, ig, k)).dev()?;
    let bt = if has_bias {
        Some(t1(dev, input(case, "bias")?)?)
    } else {
        None
    };
    let y = ops::conv1d(xt.leaky_trace(), &wt, bt.as_ref(), options)?;
    let t_out = y.shape().2;
    let mut shape: Vec<usize> = lead.into_iter().collect();
    shape.extend([co, t_out]);
    let grads = finish_single(case, c, y, shape)?;
    record(c, &grads, "x", &xt, &x.shape);
    record(c, &grads, "weight", &wt, &w.shape);
    if let Some(b) = &bt {
        record(c, &grads, "bias", b, &[co]);
    }
    Ok(())
}

fn norm<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let x = input(case, "x")?;
    let eps = f64_param(case, "eps", Some(1e-5))?;
    let d: usize = match param(case, "normalized_shape").and_then(Value::as_array) {
        Some(dims) => dims
            .iter()
            .map(|v| v.as_u64().map(|v| v as usize))
            .product::<Option<usize>>()
            .ok_or_else(|| Error::BadInput("normalized_shape is not a list of ints".into()))?,
        None => x.last_dim(),
    };
    let xt = t2(dev, x, d)?;
    let has_w = bool_param(case, "has_weight", case.inputs.contains_key("weight"))?;
    let has_b = bool_param(case, "has_bias", case.inputs.contains_key("bias"))?;
    let wt = if has_w {
        Some(t1(dev, input(case, "weight")?)?)
    } else {
        None
    };
    let bt = if has_b {
        Some(t1(dev, input(case, "bias")?)?)
    } else {
        None
    };
    let y = if case.op == "rms_norm" {
        if bt.is_some() {
            return Err(Error::BadInput("rms_norm has no bias".into()));
        }
        ops::rms_norm(xt.leaky_trace(), wt.as_ref(), eps)?
    } else {
        ops::layer_norm(xt.leaky_trace(), wt.as_ref(), bt.as_ref(), eps)?
    };
    let grads = finish_single(case, c, y, x.shape.clone())?;
    record(c, &grads, "x", &xt, &x.shape);
    for (name, t) in [("weight", &wt), ("bias", &bt)] {
        if let Some(t) = t {
            record(c, &grads, name, t, &input(case, name)?.shape);
        }
    }
    Ok(())
}

fn sdpa<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let (q, k, v) = (input(case, "q")?, input(case, "k")?, input(case, "v")?);
    let p = f64_param(case, "dropout_p", Some(0.0))?;
    if p != 0.0 {
        return Err(Error::BadInput(format!(
            "attention dropout_p = {p} is not supported (only 0)"
        )));
    }
    let mult = f64_param(case, "mult", Some(1.0))?;
    let causal = bool_param(case, "is_causal", false)?;
    // [..., heads, seq, d_head] with any number of leading dims (folded into batch).
    let dims4 = |t: &TensorData| -> Result<(usize, usize, usize, usize)> {
        let r = t.shape.len();
        if r < 2 {
            return Err(Error::BadInput(
                "attention inputs must be at least 2-D".into(),
            ));
        }
        let (s, d) = (t.shape[r - 2], t.shape[r - 1]);
        let h = if r >= 3 { t.shape[r - 3] } else { 1 };
        let b = t.shape[..r.saturating_sub(3)].iter().product();
        Ok((b, h, s, d))
    };
    let (qs, ks, vs) = (dims4(q)?, dims4(k)?, dims4(v)?);
    if qs != ks || qs != vs {
        return Err(Error::ShapeMismatch {
            op: "scaled_dot_product_attention",
            detail: format!("q {:?}, k {:?}, v {:?}", q.shape, k.shape, v.shape),
        });
    }
    let mk = |t: &TensorData| dev.try_tensor_from_vec(t.data.clone(), qs).dev();
    let (qt, kt, vt) = (mk(q)?, mk(k)?, mk(v)?);
    let y = ops::scaled_dot_product_attention(
        qt.leaky_trace(),
        kt.retaped::<Tp<D>>(),
        vt.retaped::<Tp<D>>(),
        mult,
        causal,
    )?;
    let grads = finish_single(case, c, y, v.shape.clone())?;
    record(c, &grads, "q", &qt, &q.shape);
    record(c, &grads, "k", &kt, &k.shape);
    record(c, &grads, "v", &vt, &v.shape);
    Ok(())
}

/// `add` with numpy broadcasting of `b` to `a`: `b`'s dims are grouped into runs of kept and
/// broadcast dims, which covers `b` = a's suffix, prefix, middle block, a scalar, and `b` with
/// size-1 dims.
fn add<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let (a, b) = (input(case, "a")?, input(case, "b")?);
    let con = constraint_param(case, Constraint::ToOutputScale)?;
    let at = t1(dev, a)?;
    if a.shape == b.shape {
        let bt = t1(dev, b)?;
        let y = ops::add(at.leaky_trace(), bt.retaped::<Tp<D>>(), con)?;
        let grads = finish_single(case, c, y, a.shape.clone())?;
        record(c, &grads, "a", &at, &a.shape);
        record(c, &grads, "b", &bt, &b.shape);
        return Ok(());
    }
    let bad = || Error::ShapeMismatch {
        op: "add",
        detail: format!("b {:?} does not broadcast to a {:?}", b.shape, a.shape),
    };
    if b.shape.len() > a.shape.len() {
        return Err(bad());
    }
    let pad = a.shape.len() - b.shape.len();
    // Runs of (kept?, product of a's dims).
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for (i, &ad) in a.shape.iter().enumerate() {
        let bd = if i < pad { 1 } else { b.shape[i - pad] };
        let kept = if bd == ad {
            ad != 1 || runs.last().is_some_and(|r| r.0)
        } else if bd == 1 {
            false
        } else {
            return Err(bad());
        };
        match runs.last_mut() {
            Some(r) if r.0 == kept => r.1 *= ad,
            _ => runs.push((kept, ad)),
        }
    }
    let bt = t1(dev, b)?;
    let shape_a = a.shape.clone();
    let y = match runs[..] {
        [(false, p)] => {
            let bs = bt.retaped::<Tp<D>>().try_reshape_like(&()).dev()?;
            ops::add_broadcast::<_, _, Axis<0>, _, _, _>(
                at.leaky_trace().try_reshape_like(&(p,)).dev()?,
                bs,
                con,
            )?
            .try_reshape_like(&(a.data.len(),))
            .dev()?
        }
        [(false, p), (true, q)] => flat(ops::add_broadcast::<_, _, Axis<0>, _, _, _>(
            at.leaky_trace().try_reshape_like(&(p, q)).dev()?,
            bt.retaped::<Tp<D>>(),
            con,
        )?)?,
        [(true, p), (false, q)] => flat(ops::add_broadcast::<_, _, Axis<1>, _, _, _>(
            at.leaky_trace().try_reshape_like(&(p, q)).dev()?,
            bt.retaped::<Tp<D>>(),
            con,
        )?)?,
        [(false, p), (true, q), (false, r)] => {
            flat3(ops::add_broadcast::<_, _, Axes2<0, 2>, _, _, _>(
                at.leaky_trace().try_reshape_like(&(p, q, r)).dev()?,
                bt.retaped::<Tp<D>>(),
                con,
            )?)?
        }
        [(true, p), (false, q), (true, r)] => flat3(ops::add_broadcast::<_, _, Axis<1>, _, _, _>(
            at.leaky_trace().try_reshape_like(&(p, q, r)).dev()?,
            bt.retaped::<Tp<D>>().try_reshape_like(&(p, r)).dev()?,
            con,
        )?)?,
        _ => {
            return Err(Error::BadInput(format!(
                "broadcast of b {:?} to a {:?} has too many alternating runs for this runner",
                b.shape, a.shape
            )))
        }
    };
    let grads = finish_single(case, c, y, shape_a)?;
    record(c, &grads, "a", &at, &a.shape);
    record(c, &grads, "b", &bt, &b.shape);
    Ok(())
}

fn flat<D: Backend<f64>>(
    t: Tensor<(usize, usize), f64, D, Tp<D>>,
) -> Result<Tensor<(usize,), f64, D, Tp<D>>> {
    let n = t.shape().num_elements();
    t.try_reshape_like(&(n,)).dev()
}

fn flat3<D: Backend<f64>>(
    t: Tensor<(usize, usize, usize), f64, D, Tp<D>>,
) -> Result<Tensor<(usize,), f64, D, Tp<D>>> {
    let n = t.shape().num_elements();
    t.try_reshape_like(&(n,)).dev()
}

fn scale_factor(case: &Case, c: &mut Computed) -> Result<()> {
    let kind = str_param(case, "kind")?.unwrap_or("");
    let mult = f64_param(case, "mult", Some(1.0))?;
    let s = match kind {
        "gelu" => scales::gelu(mult)?,
        "silu" => scales::silu(mult)?,
        "silu_glu" => {
            let s = scales::silu_glu(mult)?;
            scales::OpScales {
                output: s,
                grad_input: s,
            }
        }
        "softmax" => scales::softmax(usize_param(case, "n")?, mult)?,
        "sdpa" => {
            let s = scales::sdpa(
                usize_param(case, "seq_len")?,
                usize_param(case, "d_head")?,
                mult,
                bool_param(case, "is_causal", false)?,
                f64_param(case, "dropout_p", Some(0.0))?,
            )?;
            scales::OpScales {
                output: s,
                grad_input: s,
            }
        }
        other => {
            return Err(Error::UnknownName {
                kind: "scale_factor kind",
                name: other.to_string(),
                expected: "gelu, silu, silu_glu, softmax, sdpa",
            })
        }
    };
    c.outputs
        .insert("output_scale".into(), (vec![], vec![s.output]));
    c.outputs
        .insert("grad_input_scale".into(), (vec![], vec![s.grad_input]));
    Ok(())
}

fn param_specs(case: &Case) -> Result<Vec<ParamSpec>> {
    let list = param(case, "parameters")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::BadInput("param `parameters` is missing".into()))?;
    list.iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .ok_or_else(|| Error::BadInput("parameter without a name".into()))?;
            let role: Role = p["mup_type"].as_str().unwrap_or("").parse()?;
            let shape = p["shape"]
                .as_array()
                .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| Error::BadInput(format!("parameter `{name}` has no shape")))?;
            let depth = match &p["depth"] {
                Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| {
                    Error::BadInput(format!("parameter `{name}` has a non-integer depth"))
                })? as usize),
            };
            Ok(ParamSpec {
                path: name.to_string(),
                role,
                shape,
                depth,
            })
        })
        .collect()
}

fn adamw_step<D: Backend<f64>>(case: &Case, dev: &D, c: &mut Computed) -> Result<()> {
    let specs = param_specs(case)?;
    let betas = match param(case, "betas")
        .and_then(Value::as_array)
        .map(|b| b.as_slice())
    {
        Some([b1, b2]) => [
            b1.as_f64().unwrap_or(f64::NAN),
            b2.as_f64().unwrap_or(f64::NAN),
        ],
        None => [0.9, 0.999],
        Some(_) => return Err(Error::BadInput("betas must be two numbers".into())),
    };
    let cfg = OptimConfig {
        kind: OptimizerKind::AdamW,
        lr: f64_param(case, "lr", None)?,
        betas,
        eps: f64_param(case, "eps", Some(1e-8))?,
        weight_decay: f64_param(case, "weight_decay", Some(0.0))?,
        independent_weight_decay: bool_param(case, "independent_weight_decay", true)?,
        // `uu.optim.AdamW` steps every parameter it is given, norm gains and biases included.
        norm_params: NormParams::Trained,
        ..Default::default()
    };
    let mut opt = Optimizer::<f64, D>::new(cfg, &specs)?;
    let mut tensors: Vec<T1<D>> = specs
        .iter()
        .map(|s| t1(dev, input(case, &s.path)?))
        .collect::<Result<_>>()?;
    let steps = param(case, "steps")
        .and_then(Value::as_u64)
        .unwrap_or(case.step_grads.len() as u64);
    if steps as usize != case.step_grads.len() {
        return Err(Error::BadInput(format!(
            "steps = {steps} but {} step_grads",
            case.step_grads.len()
        )));
    }
    for step in &case.step_grads {
        // Σ_p Σ(p ⊙ g_p): its backward pass leaves exactly g_p in each parameter's gradient.
        let mut loss: Option<Tensor<(), f64, D, Tp<D>>> = None;
        for (spec, t) in specs.iter().zip(&tensors) {
            let g = step
                .get(&spec.path)
                .ok_or_else(|| Error::BadInput(format!("no gradient for `{}`", spec.path)))?;
            let term = vjp_term(t.retaped::<Tp<D>>(), g)?;
            loss = Some(match loss {
                None => term,
                Some(l) => l.try_add(term).dev()?,
            });
        }
        let mut grads = match loss {
            Some(l) => l.backward(),
            None => Gradients::leaky(),
        };
        let mut named: Vec<(&str, &mut T1<D>)> = specs
            .iter()
            .map(|s| s.path.as_str())
            .zip(tensors.iter_mut())
            .collect();
        opt.update_named(&mut named, &mut grads)?;
    }
    for (spec, t) in specs.iter().zip(&tensors) {
        c.outputs
            .insert(spec.path.clone(), (spec.shape.clone(), t.as_vec()));
    }
    c.groups = Some(opt.groups().to_vec());
    Ok(())
}

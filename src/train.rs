//! The training loop of every model family on any data: behind `examples/train_lm.rs`,
//! `examples/train_encoder.rs`, `examples/train_vit.rs` and the sweeps. [`train_family`] trains
//! any [`Family`] at the size a [`TrainConfig`] names on any
//! [`Data`] source whose batches the family takes; [`train_model`] trains one model type.
//!
//! Everything a run depends on is in [`TrainConfig`] and the data ([`Data::describe`], recorded
//! as the config's `data`). Batches ([`Data::batch`]) and stochastic rounding are drawn from
//! RNGs keyed by `(seed, purpose, step)`, so a run stopped at step `k` and resumed
//! ([`RunOptions::resume`]) computes exactly what an uninterrupted run computes.
//!
//! Files in the output directory: `config.json`, `metrics.csv`
//! (`step,tokens,train_loss,val_loss,lr,seconds`, then `val_bpb` for text and `val_<metric>`
//! for each of the model's [`Trainable::METRICS`]; row `k` is the loss after `k` updates, row 0
//! the loss at init), `model.safetensors` (with the u-μP metadata), `optim.safetensors` (Adam
//! moments), `state.json` (the step they hold, and a CRC-32 of each checkpoint file) and, once
//! the run has done all its steps, `result.json` ([`RunResult`]: what the sweeps read).
//! Checkpoints are written atomically, and a resume whose files do not match their recorded
//! checksums is refused, naming the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use dfdx::nn::ZeroGrads;
use dfdx::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::{step_rng, Batch as _, Data, Split};
use crate::device::{DeviceKind, TrainDevice};
use crate::family::{
    training_tape, Family, Instance, Metrics, Mixed, Options, Step, Trainable, Visitor,
};
use crate::formats::{Format, MatmulFormats, QuantStats, Rounding};
use crate::nn::{AttentionScale, Hyper};
use crate::ops::Backend;
use crate::ops::MatmulQuantiser;
use crate::optim::{master_gradients, LrSchedule, OptimConfig, Optimizer};
use crate::params::{Multipliers, NormParams, ParamTable, Parametrization};
use crate::{Error, Result};

const QUANT_STREAM: u64 = 3;
const SAMPLE_STREAM: u64 = 4;

/// Number formats of the matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Plain f32.
    F32,
    /// Mixed precision: each step computes in IEEE half (f16 parameters, activations and
    /// gradients, the model's f16 copy of [`crate::family::Mixed`]) and updates f32 master
    /// weights and Adam moments ([`crate::optim::master_gradients`]); no loss scaling. Checkpoints
    /// hold the f32 master weights. Meant for `Cuda` (on `Cpu` the f16 ops are slow).
    F16,
    /// Simulated f16 mixed precision: matmul inputs and output gradients rounded to IEEE half
    /// (round to nearest even), products accumulated and weights kept in f32.
    F16Sim,
    /// Simulated bf16 mixed precision, likewise.
    Bf16Sim,
    /// The reference's simulated FP8 (spec §8.1): E4M3 (max 240) matmul inputs, E5M2
    /// gradients, stochastic rounding, no scaling.
    Fp8Sim,
}

impl Precision {
    /// The formats of the matmul inputs and gradients.
    pub fn formats(self) -> MatmulFormats {
        match self {
            Precision::F32 | Precision::F16 => MatmulFormats::none(),
            Precision::F16Sim => MatmulFormats {
                forward: Some((Format::F16, Rounding::Nearest)),
                backward: Some((Format::F16, Rounding::Nearest)),
            },
            Precision::Bf16Sim => MatmulFormats::bf16_sim(),
            Precision::Fp8Sim => MatmulFormats::fp8_sim(),
        }
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::F16Sim => "f16-sim",
            Precision::Bf16Sim => "bf16-sim",
            Precision::Fp8Sim => "fp8-sim",
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [
            Precision::F32,
            Precision::F16,
            Precision::F16Sim,
            Precision::Bf16Sim,
            Precision::Fp8Sim,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| Error::UnknownName {
            kind: "precision",
            name: s.to_string(),
            expected: "f32, f16, f16-sim, bf16-sim, fp8-sim",
        })
    }
}

/// Everything a run depends on besides its data (written to `config.json`, with the data's
/// description).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model family's name (`lm`, `encoder`, `vit`, or a user's own): a label the command
    /// lines dispatch on; the trainer only records it.
    #[serde(default = "lm_name")]
    pub model: String,
    /// Model width `D` (one of the compiled sizes).
    pub width: usize,
    /// Number of layers `L` (one of the compiled sizes).
    pub depth: usize,
    /// The family's run-time settings (e.g. `heads`, `rope`; [`Options`]). Absent from
    /// `config.json` when empty.
    #[serde(default, skip_serializing_if = "Options::is_empty")]
    pub options: Options,
    /// Parametrization: `umup`, `mup` or `sp`.
    pub param: String,
    /// Matmul number formats.
    pub precision: Precision,
    /// Number of optimizer updates.
    pub steps: usize,
    /// Examples (sequences, images, ...) per batch.
    pub batch: usize,
    /// η and the five α's.
    pub lr: f64,
    /// α_ffn-act.
    pub alpha_ffn_act: f64,
    /// α_attn-softmax.
    pub alpha_attn_softmax: f64,
    /// α_res.
    pub alpha_res: f64,
    /// α_res-attn-ratio.
    pub alpha_res_attn_ratio: f64,
    /// α_loss-softmax (also μP's and SP's output multiplier: it multiplies the logits).
    pub alpha_loss_softmax: f64,
    /// μP's and SP's input multiplier α_in ([`Multipliers::input`]; u-μP: 1). Absent from
    /// `config.json` when 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub alpha_input: f64,
    /// μP's and SP's init σ as a multiple of the rule's ([`Multipliers::init`]; u-μP: 1).
    /// Absent from `config.json` when 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub sigma_init: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Final LR as a fraction of η (cosine decay).
    pub final_lr_fraction: f64,
    /// Weight decay (independent, spec §7.3).
    pub weight_decay: f64,
    /// Global gradient-norm clipping.
    pub grad_clip: Option<f64>,
    /// Seed of init, batches and stochastic rounding.
    pub seed: u64,
    /// Validation (and checkpoint) interval in steps.
    pub eval_every: usize,
    /// Validation batches per evaluation (at most the whole validation split of a finite
    /// dataset, [`Data::val_batches`]).
    pub eval_batches: usize,
    /// The data's description ([`Data::describe`]): the trainer writes it here, and refuses to
    /// resume on data with another. Empty in a config made by hand: the trainer fills it in.
    #[serde(default)]
    pub data: String,
    /// The rule for attention's output scale under u-μP ([`AttentionScale`]; default `auto`:
    /// the reference's for causal attention, `mean` for non-causal). A `config.json` without it
    /// is a run from before the rule existed: `reference`.
    #[serde(default = "AttentionScale::legacy")]
    pub attention: AttentionScale,
    /// Whether norm gains and biases are trained ([`NormParams`]; default `auto`: fixed under
    /// u-μP, trained under μP and SP). A `config.json` without it: `trained`.
    #[serde(default = "NormParams::legacy")]
    pub norm_params: NormParams,
    /// Parameters (table paths, e.g. `layers.0.attn.q.weight`) kept at their initial values
    /// ([`Optimizer::freeze`]). Absent from `config.json` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

fn lm_name() -> String {
    "lm".into()
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: lm_name(),
            width: 128,
            depth: 4,
            options: Options::default(),
            param: "umup".into(),
            precision: Precision::F32,
            steps: 400,
            batch: 16,
            lr: 1.0,
            alpha_ffn_act: 1.0,
            alpha_attn_softmax: 1.0,
            alpha_res: 1.0,
            alpha_res_attn_ratio: 1.0,
            alpha_loss_softmax: 1.0,
            alpha_input: 1.0,
            sigma_init: 1.0,
            warmup: 40,
            final_lr_fraction: 0.1,
            weight_decay: 0.0,
            grad_clip: None,
            seed: 0,
            eval_every: 100,
            eval_batches: 8,
            data: String::new(),
            attention: AttentionScale::Auto,
            norm_params: NormParams::Auto,
            freeze: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// The hyperparameters.
    pub fn hyper(&self) -> Hyper {
        Hyper {
            eta: self.lr,
            alpha_ffn_act: self.alpha_ffn_act,
            alpha_attn_softmax: self.alpha_attn_softmax,
            alpha_res: self.alpha_res,
            alpha_res_attn_ratio: self.alpha_res_attn_ratio,
            alpha_loss_softmax: self.alpha_loss_softmax,
            attention: self.attention,
        }
    }

    /// μP's and SP's own multipliers by name ([`Multipliers`]), besides [`Hyper::NAMES`].
    pub const MULTIPLIER_NAMES: [&'static str; 2] = ["alpha_input", "sigma_init"];

    /// Every name [`TrainConfig::set_hyper`] and [`TrainConfig::get_hyper`] take:
    /// [`Hyper::NAMES`] (`eta` is `lr`), then [`TrainConfig::MULTIPLIER_NAMES`].
    pub fn hyper_names() -> impl Iterator<Item = &'static str> {
        Hyper::NAMES.into_iter().chain(Self::MULTIPLIER_NAMES)
    }

    /// Sets η and the five α's from `hp`.
    pub fn set_hyperparams(&mut self, hp: &Hyper) {
        self.lr = hp.eta;
        self.alpha_ffn_act = hp.alpha_ffn_act;
        self.alpha_attn_softmax = hp.alpha_attn_softmax;
        self.alpha_res = hp.alpha_res;
        self.alpha_res_attn_ratio = hp.alpha_res_attn_ratio;
        self.alpha_loss_softmax = hp.alpha_loss_softmax;
        self.attention = hp.attention;
    }

    /// Sets a hyperparameter by name ([`TrainConfig::hyper_names`]; finite and > 0).
    pub fn set_hyper(&mut self, name: &str, value: f64) -> Result<()> {
        let slot = match name {
            "alpha_input" => &mut self.alpha_input,
            "sigma_init" => &mut self.sigma_init,
            _ => {
                let mut hp = self.hyper();
                hp.set(name, value)?;
                self.set_hyperparams(&hp);
                return Ok(());
            }
        };
        *slot = crate::error::check_positive("hyperparameter", value)?;
        Ok(())
    }

    /// Reads a hyperparameter by name ([`TrainConfig::hyper_names`]).
    pub fn get_hyper(&self, name: &str) -> Result<f64> {
        match name {
            "alpha_input" => Ok(self.alpha_input),
            "sigma_init" => Ok(self.sigma_init),
            _ => self.hyper().get(name),
        }
    }

    /// μP's and SP's own multipliers ([`Multipliers`]).
    pub fn multipliers(&self) -> Multipliers {
        Multipliers {
            input: self.alpha_input,
            init: self.sigma_init,
        }
    }

    /// Checks the settings that do not depend on the model type.
    pub fn validate(&self) -> Result<()> {
        self.hyper().validate()?;
        self.multipliers()
            .validate(self.param.parse::<Parametrization>()?)?;
        let positive = [
            ("steps", self.steps),
            ("batch", self.batch),
            ("eval-every", self.eval_every),
            ("eval-batches", self.eval_batches),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(Error::Invalid(format!("--{what} must be at least 1")));
            }
        }
        LrSchedule::warmup_cosine(self.warmup, self.steps, self.final_lr_fraction)?;
        Ok(())
    }
}

/// What the loop reports after every step.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Updates done.
    pub step: usize,
    /// Total updates.
    pub steps: usize,
    /// Training loss after `step` updates.
    pub train_loss: f64,
    /// Validation loss, when evaluated at this step.
    pub val_loss: Option<f64>,
    /// The model's validation metrics ([`Trainable::METRICS`]), when evaluated at this step.
    pub val_metrics: BTreeMap<String, f64>,
    /// Tokens (input positions, [`crate::data::Batch::tokens`]) per second since the (re)start.
    pub tokens_per_second: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Training loss at step 0 (at init).
    pub initial_loss: Option<f64>,
    /// Validation loss at the last step reached.
    pub final_val_loss: f64,
    /// The model's validation metrics at the last step reached ([`Trainable::METRICS`]).
    pub val_metrics: BTreeMap<String, f64>,
    /// The final validation loss in bits per byte, for text ([`Data::bytes_per_token`]).
    pub final_val_bpb: Option<f64>,
    /// The last step reached.
    pub step: usize,
    /// Whether the run stopped early (`stop_at`).
    pub stopped: bool,
    /// Training tokens per second (this process).
    pub tokens_per_second: f64,
    /// Overflow/underflow counts of the matmul inputs (forward) and gradients (backward).
    pub quant_stats: (QuantStats, QuantStats),
    /// A sample generated by the trained model (text data and models that generate).
    pub sample: String,
    /// The parameter table.
    pub table: ParamTable,
}

/// How to run: where to write, whether to resume, when to stop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop (after checkpointing) once this many updates are done.
    pub stop_at: Option<usize>,
    /// Tokens of generated text in the summary (0: none).
    pub sample_len: usize,
    /// The device to train on. Checkpoints do not depend on it: a run started on one device
    /// resumes on another.
    pub device: DeviceKind,
}

impl RunOptions {
    /// A fresh run into `out`: no resume, no early stop, no sample, on `Cpu`.
    pub fn to(out: impl Into<PathBuf>) -> Self {
        RunOptions {
            out: out.into(),
            resume: false,
            stop_at: None,
            sample_len: 0,
            device: DeviceKind::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    step: usize,
    seconds: f64,
    /// CRC-32 (hex) of each checkpoint file by name, written after the files. Absent in
    /// checkpoints of earlier versions, which resume unchecked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    checksums: BTreeMap<String, String>,
}

/// The CRC-32 of the file at `path`, in hex (against accidental corruption: a flipped bit, a
/// torn or truncated write; not against deliberate tampering).
fn checksum(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    Ok(format!("{:08x}", crc32fast::hash(&bytes)))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::BadInput(format!("{}: {e}", path.display()))
}

pub use crate::family::MUP_BASE_WIDTH;

/// What a finished run reports, written by the trainer to `result.json` in its directory: the
/// record the sweeps read ([`finished_result`]). A trainer of your own writes it with
/// [`RunResult::write`] (or returns a [`Summary`] to [`crate::sweep::Sweep::run`], which writes
/// it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Steps done.
    pub step: usize,
    /// Final validation loss (∞ for a run that diverged).
    pub val_loss: f64,
    /// Final validation metrics by name (`accuracy`, ...; `bpb` for text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl RunResult {
    /// The result of a run that returned `summary`.
    pub fn of(summary: &Summary) -> Self {
        let mut metrics = summary.val_metrics.clone();
        if let Some(b) = summary.final_val_bpb {
            metrics.insert("bpb".into(), b);
        }
        RunResult {
            step: summary.step,
            val_loss: summary.final_val_loss,
            metrics,
        }
    }

    /// The file in a run directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("result.json")
    }

    /// Writes `dir/result.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&Self::path(dir), self)
    }

    /// Reads `dir/result.json`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        if path.exists() {
            read_json(&path).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Trains the model of the family `F` at the width, depth and parametrization `cfg` names, on
/// `data` (any [`Data`] whose batches the family's models take) and on the device `run.device`
/// names; `observe` sees every step. An error lists `F`'s compiled sizes when `cfg` names
/// another.
pub fn train_family<F: Family, D: Data<Batch = F::Batch> + ?Sized>(
    cfg: &TrainConfig,
    data: &D,
    run: &RunOptions,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    struct Run<'a, 'o, D: ?Sized> {
        cfg: &'a TrainConfig,
        data: &'a D,
        run: &'a RunOptions,
        observe: &'a mut (dyn FnMut(&Progress) + 'o),
    }
    impl<D: Data + ?Sized> Visitor<D::Batch> for Run<'_, '_, D> {
        type Output = Summary;
        fn visit<I: Instance<Batch = D::Batch>>(self) -> Result<Summary> {
            let Run {
                cfg,
                data,
                run,
                observe,
            } = self;
            match run.device {
                DeviceKind::Cpu => train_model::<I::Model<Cpu>, Cpu, D>(cfg, data, run, observe),
                #[cfg(feature = "cuda")]
                DeviceKind::Cuda => train_model::<I::Model<Cuda>, Cuda, D>(cfg, data, run, observe),
                #[allow(unreachable_patterns)]
                other => Err(other.not_compiled()),
            }
        }
    }
    F::visit(
        cfg.width,
        cfg.depth,
        &cfg.param,
        Run {
            cfg,
            data,
            run,
            observe,
        },
    )
}

/// The columns of `metrics.csv` after `seconds`: `val_bpb` for text, then `val_<name>` for each
/// of the model's metrics.
fn metric_columns(bpb: bool, metrics: &[&str]) -> Vec<String> {
    let mut c = Vec::new();
    if bpb {
        c.push("val_bpb".to_string());
    }
    c.extend(metrics.iter().map(|m| format!("val_{m}")));
    c
}

/// One validation pass: the mean loss (weighted by examples) and the model's metrics.
struct Evaluation {
    loss: f64,
    metrics: BTreeMap<String, f64>,
}

/// Trains the model `M` on `data` as `cfg` says, on the device `Dev` (`run.device` must name
/// it); `observe` sees every step. `cfg.width` and `cfg.depth` are recorded, not checked:
/// [`train_family`] picks `M` from them.
///
/// Nothing is written before the data and the model have been checked together: the first
/// training batch and every validation batch are drawn and the loss of the first is computed,
/// so a bad dataset (a token or label out of range, a shape the model does not take, an empty
/// split) is an error that leaves the output directory as it was.
///
/// On `Cpu`, call [`crate::threads::init`] first thing in `main` (as the shipped examples do):
/// the loop then runs on one of the kernels' threads, which saves a hand-off per parallel loop.
pub fn train_model<M: Mixed<Dev>, Dev: TrainDevice, D: Data<Batch = M::Batch> + ?Sized>(
    cfg: &TrainConfig,
    data: &D,
    run: &RunOptions,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    cfg.validate()?;
    if run.device != Dev::KIND {
        return Err(Error::Invalid(format!(
            "the run asks for device {}, this is the {} training loop",
            run.device,
            Dev::KIND
        )));
    }
    let cfg = &TrainConfig {
        data: data.describe(),
        ..cfg.clone()
    };
    let paths = Paths::new(&run.out);
    let dev = Dev::open(cfg.seed)?;
    // Reuse freed buffers: allocation churn is a large share of CPU time otherwise.
    dev.try_enable_cache().map_err(Error::device)?;
    let table = M::param_table()?;
    let mut model = M::try_build(&dev).map_err(Error::device)?;
    let hp = cfg.hyper();
    let optim_cfg = OptimConfig {
        weight_decay: cfg.weight_decay,
        grad_clip: cfg.grad_clip,
        schedule: LrSchedule::warmup_cosine(cfg.warmup, cfg.steps, cfg.final_lr_fraction)?,
        multipliers: cfg.multipliers(),
        norm_params: cfg.norm_params,
        ..OptimConfig::adamw(cfg.lr)
    };
    let mut opt = Optimizer::<f32, Dev>::for_table(optim_cfg, &table)?;
    crate::nn::apply_init_multipliers(&mut model, &table, &cfg.multipliers())?;
    for path in &cfg.freeze {
        opt.freeze(path)?;
    }
    let val_batches: Vec<D::Batch> = (0..data.val_batches(cfg.batch, cfg.eval_batches) as u64)
        .map(|j| data.batch(Split::Val, j, cfg.batch, cfg.seed))
        .collect::<Result<_>>()?;
    if val_batches.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no validation batch",
            data.describe()
        )));
    }
    let train_batch = |step: usize| data.batch(Split::Train, step as u64, cfg.batch, cfg.seed);

    let (start, seconds0) = if run.resume {
        resume(cfg, &paths, &mut model, &mut opt)?
    } else {
        // The data and the model together, before anything is written.
        model.loss(
            &train_batch(0)?,
            NoneTape,
            &mut Step::new(&hp, &cfg.options),
        )?;
        std::fs::create_dir_all(&run.out).map_err(|e| io(&run.out, e))?;
        write_json(&paths.config, cfg)?;
        (0, 0.0)
    };
    // A result belongs to a finished run: this one is not (yet).
    let result = RunResult::path(&run.out);
    if result.exists() {
        std::fs::remove_file(&result).map_err(|e| io(&result, e))?;
    }
    let bpt = data.bytes_per_token();
    let columns = metric_columns(bpt.is_some(), M::METRICS);
    let mut metrics = open_metrics(&paths.metrics, start, &columns)?;
    let formats = cfg.precision.formats();
    let mut stats = (QuantStats::default(), QuantStats::default());
    let mut grads = model.alloc_grads();
    let clock = Instant::now();
    let mut tokens_trained = 0usize;
    let mut initial_loss = None;
    let mut last_val = f64::NAN;
    let mut last_metrics = BTreeMap::new();
    let mut last_checkpoint = format!("{} (step {start})", paths.model.display());
    let end = run.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    let mut step = start;
    loop {
        let batch = train_batch(step)?;
        let mut quant = (!formats.is_none()).then(|| {
            MatmulQuantiser::new(formats, step_rng(cfg.seed, QUANT_STREAM, step as u64).gen())
        });
        let updating = step < end;
        let lr = opt.current_lr();
        let mut cx = Step {
            quant: quant.as_mut(),
            ..Step::new(&hp, &cfg.options)
        };
        // Mixed precision: this step's f16 copy of the f32 master weights.
        let half = match cfg.precision {
            Precision::F16 => Some(model.to_half()?),
            _ => None,
        };
        let train_loss = match (&half, updating) {
            (None, true) => {
                let loss = model.loss(&batch, training_tape(&dev, grads), &mut cx)?;
                let v = scalar(&loss);
                check_finite(v, step, &last_checkpoint)?;
                grads = loss.backward();
                v
            }
            (Some(half), true) => {
                let tape = training_tape(&dev, half.alloc_grads());
                let loss = half.loss(&batch, tape, &mut cx)?;
                let v = scalar(&loss);
                check_finite(v, step, &last_checkpoint)?;
                let mut half_grads = loss.backward();
                grads = master_gradients(&model, half, &mut half_grads)?;
                v
            }
            (None, false) => scalar(&model.loss(&batch, NoneTape, &mut cx)?),
            (Some(half), false) => scalar(&half.loss(&batch, NoneTape, &mut cx)?),
        };
        check_finite(train_loss, step, &last_checkpoint)?;
        if let Some(q) = &quant {
            stats.0.merge(q.forward_stats());
            stats.1.merge(q.backward_stats());
        }
        if step == 0 {
            initial_loss = Some(train_loss);
        }
        let evaluate = step % cfg.eval_every == 0 || step == end;
        let val = if evaluate {
            let v = match &half {
                Some(half) => evaluate_loss(half, &val_batches, cfg)?,
                None => evaluate_loss(&model, &val_batches, cfg)?,
            };
            check_finite(v.loss, step, &last_checkpoint)?;
            last_val = v.loss;
            last_metrics = v.metrics.clone();
            Some(v)
        } else {
            None
        };
        let seconds = seconds0 + clock.elapsed().as_secs_f64();
        let mut row = format!(
            "{step},{},{train_loss},{},{lr},{seconds:.3}",
            step * batch.tokens(),
            val.as_ref().map(|v| v.loss.to_string()).unwrap_or_default(),
        );
        if let Some(bpt) = bpt {
            let bpb = val.as_ref().map(|v| bits_per_byte(v.loss, bpt));
            write!(row, ",{}", bpb.map(|b| b.to_string()).unwrap_or_default()).ok();
        }
        for m in M::METRICS {
            let v = val.as_ref().and_then(|v| v.metrics.get(*m));
            write!(row, ",{}", v.map(|b| b.to_string()).unwrap_or_default()).ok();
        }
        writeln!(metrics, "{row}")
            .and_then(|_| metrics.flush())
            .map_err(|e| io(&paths.metrics, e))?;
        let resumed_here = step == start && start > 0;
        if (step % cfg.eval_every == 0 && !resumed_here) || step == end {
            save_checkpoint(&paths, &model, &mut opt, step, seconds)?;
            last_checkpoint = format!("{} (step {step})", paths.model.display());
        }
        observe(&Progress {
            step,
            steps: cfg.steps,
            train_loss,
            val_loss: val.as_ref().map(|v| v.loss),
            val_metrics: val.map(|v| v.metrics).unwrap_or_default(),
            tokens_per_second: tokens_trained as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        });
        if !updating {
            break;
        }
        opt.update(&mut model, &mut grads)?;
        model.zero_grads(&mut grads);
        tokens_trained += batch.tokens();
        // The allocation cache keeps every freed buffer; buffers made from host vectors (ids,
        // one-hot targets, simulated-precision roundings) enter it without leaving. Emptying it
        // bounds memory (the f32 step leaves ≈ 2 MB, a simulated-precision step ≈ 130 MB);
        // emptying it every step would cost ≈ 20% speed in f32.
        let flush_every = if formats.is_none() { 50 } else { 1 };
        if step % flush_every == 0 {
            dev.try_empty_cache().map_err(Error::device)?;
        }
        step += 1;
    }
    let sample = if run.sample_len > 0 {
        generate(&model, data, cfg, run.sample_len)?
    } else {
        String::new()
    };
    let summary = Summary {
        initial_loss,
        final_val_loss: last_val,
        val_metrics: last_metrics,
        final_val_bpb: bpt.map(|b| bits_per_byte(last_val, b)),
        step,
        stopped: step < cfg.steps,
        tokens_per_second: tokens_trained as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        quant_stats: stats,
        sample,
        table,
    };
    if !summary.stopped {
        RunResult::of(&summary).write(&run.out)?;
    }
    Ok(summary)
}

/// A loss in nats per token as bits per byte of text, with `bytes_per_token` bytes per token:
/// `loss / ln 2 / bytes_per_token`.
pub fn bits_per_byte(loss: f64, bytes_per_token: f64) -> f64 {
    loss / std::f64::consts::LN_2 / bytes_per_token
}

/// The value of a scalar tensor on any device.
fn scalar<E: Dtype, Dev: Storage<E>, T>(t: &Tensor<(), E, Dev, T>) -> f64 {
    t.as_vec()
        .first()
        .and_then(|v| v.to_f64())
        .unwrap_or(f64::NAN)
}

fn check_finite(v: f64, step: usize, checkpoint: &str) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged {
            step,
            loss: v,
            checkpoint: checkpoint.to_string(),
        })
    }
}

struct Paths {
    config: PathBuf,
    metrics: PathBuf,
    model: PathBuf,
    optim: PathBuf,
    state: PathBuf,
}

impl Paths {
    fn new(out: &Path) -> Self {
        Paths {
            config: out.join("config.json"),
            metrics: out.join("metrics.csv"),
            model: out.join("model.safetensors"),
            optim: out.join("optim.safetensors"),
            state: out.join("state.json"),
        }
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::BadInput(e.to_string()))?;
    checkpoint::write_atomically(path, text.as_bytes())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

fn save_checkpoint<M: Trainable<Dev>, Dev: TrainDevice>(
    paths: &Paths,
    model: &M,
    opt: &mut Optimizer<f32, Dev>,
    step: usize,
    seconds: f64,
) -> Result<()> {
    let meta = BTreeMap::from([("step".to_string(), step.to_string())]);
    checkpoint::save(model, &paths.model, &meta)?;
    checkpoint::save_named(&paths.optim, &opt.state(model)?, &meta)?;
    let mut checksums = BTreeMap::new();
    for file in [&paths.model, &paths.optim] {
        checksums.insert(file_name(file), checksum(file)?);
    }
    write_json(
        &paths.state,
        &State {
            step,
            seconds,
            checksums,
        },
    )
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

fn resume<M: Trainable<Dev>, Dev: TrainDevice>(
    cfg: &TrainConfig,
    paths: &Paths,
    model: &mut M,
    opt: &mut Optimizer<f32, Dev>,
) -> Result<(usize, f64)> {
    check_same_config(paths, cfg, "--resume: ", "; resume with the same flags")?;
    let state: State = read_json(&paths.state)?;
    for file in [&paths.model, &paths.optim] {
        if let Some(want) = state.checksums.get(&file_name(file)) {
            let got = checksum(file)?;
            if got != *want {
                return Err(Error::BadInput(format!(
                    "--resume: {} is corrupted: its CRC-32 is {got}, {} recorded {want} when it was written (step {}); restore it or start the run again",
                    file.display(),
                    paths.state.display(),
                    state.step
                )));
            }
        }
    }
    let meta = checkpoint::load(model, &paths.model)?;
    if meta.get("step") != Some(&state.step.to_string()) {
        return Err(Error::BadInput(format!(
            "{} does not hold step {} of state.json",
            paths.model.display(),
            state.step
        )));
    }
    let (moments, _) = checkpoint::load_named::<f32>(&paths.optim)?;
    opt.load_state(model, &|k| moments.get(k).cloned(), state.step)?;
    Ok((state.step, state.seconds))
}

/// Errors unless the run in `paths` was started with exactly `cfg` (its `config.json`): data
/// with another description is named first (another tokenizer, another file, another
/// sequence length), then any other setting.
fn check_same_config(paths: &Paths, cfg: &TrainConfig, prefix: &str, hint: &str) -> Result<()> {
    let saved: TrainConfig = read_json(&paths.config)?;
    let dir = paths.config.parent().unwrap_or(&paths.config).display();
    if !cfg.data.is_empty() && saved.data != cfg.data {
        return Err(Error::Invalid(format!(
            "{prefix}the run in {dir} was trained on `{}`, this run's data is `{}`{hint}",
            saved.data, cfg.data
        )));
    }
    if saved.attention != cfg.attention || saved.norm_params != cfg.norm_params {
        return Err(Error::Invalid(format!(
            "{prefix}the run in {dir} was trained with attention scale `{}` and norm parameters `{}`, this run asks for `{}` and `{}`{hint}",
            saved.attention, saved.norm_params, cfg.attention, cfg.norm_params
        )));
    }
    let cfg = TrainConfig {
        data: saved.data.clone(),
        ..cfg.clone()
    };
    if saved != cfg {
        return Err(Error::Invalid(format!(
            "{prefix}the settings differ from the run in {dir} (see its config.json){hint}"
        )));
    }
    Ok(())
}

/// The result of the run of `cfg` in `out` once it has finished all `cfg.steps` steps; `None`
/// while `out` holds no run or an unfinished one. A run in `out` that was started with other
/// settings is an error, never a result to reuse (`cfg.data` empty: on any data). Reads
/// `result.json` ([`RunResult`]), or the last row of `metrics.csv` of a run from before it.
pub fn finished_result(cfg: &TrainConfig, out: &Path) -> Result<Option<RunResult>> {
    let paths = Paths::new(out);
    if !paths.config.exists() {
        return Ok(None);
    }
    check_same_config(
        &paths,
        cfg,
        "",
        "; use the same settings, or another directory",
    )?;
    if let Some(r) = RunResult::read(out)? {
        return Ok((r.step == cfg.steps).then_some(r));
    }
    let Ok(text) = std::fs::read_to_string(&paths.metrics) else {
        return Ok(None);
    };
    // The last row `step,tokens,train_loss,val_loss,...` (see `open_metrics`).
    let last: Vec<&str> = text.lines().last().unwrap_or("").split(',').collect();
    let step = last.first().and_then(|s| s.parse::<usize>().ok());
    let loss = last.get(3).and_then(|s| s.parse::<f64>().ok());
    Ok(match (step, loss) {
        (Some(step), Some(val_loss)) if step == cfg.steps => Some(RunResult {
            step,
            val_loss,
            metrics: BTreeMap::new(),
        }),
        _ => None,
    })
}

/// Opens `metrics.csv`: a new file with the header (the fixed columns, then `columns`), or
/// (resuming at `start`) the existing rows before `start`.
fn open_metrics(path: &Path, start: usize, columns: &[String]) -> Result<std::fs::File> {
    let mut text = String::from("step,tokens,train_loss,val_loss,lr,seconds");
    for c in columns {
        write!(text, ",{c}").ok();
    }
    text.push('\n');
    if start > 0 {
        let old = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        for line in old.lines().skip(1) {
            let step: usize = line
                .split(',')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::BadInput(format!("{}: bad row `{line}`", path.display())))?;
            if step < start {
                writeln!(text, "{line}").ok();
            }
        }
    }
    checkpoint::write_atomically(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))
}

/// The mean loss over `batches` (weighted by their examples) and the model's metrics.
fn evaluate_loss<E: Dtype, M: Trainable<Dev, E>, Dev: TrainDevice + Backend<E>>(
    model: &M,
    batches: &[M::Batch],
    cfg: &TrainConfig,
) -> Result<Evaluation> {
    let formats = cfg.precision.formats();
    let hp = cfg.hyper();
    let metrics = Metrics::new();
    let (mut total, mut weight) = (0.0, 0.0);
    for (j, b) in batches.iter().enumerate() {
        let mut quant =
            (!formats.is_none()).then(|| MatmulQuantiser::new(formats, cfg.seed ^ j as u64));
        let mut cx = Step {
            quant: quant.as_mut(),
            metrics: Some(&metrics),
            ..Step::new(&hp, &cfg.options)
        };
        let w = b.examples() as f64;
        total += scalar(&model.loss(b, NoneTape, &mut cx)?) * w;
        weight += w;
    }
    Ok(Evaluation {
        loss: total / weight,
        metrics: metrics.means(),
    })
}

/// Samples `len` tokens after the data's prompt ([`Data::generation`]; temperature 0.8, seeded
/// by the config's seed), for models that generate ([`Trainable::next_token_logits`]); empty
/// for the others and for data that is not text.
fn generate<M: Trainable<Dev>, Dev: TrainDevice, D: Data + ?Sized>(
    model: &M,
    data: &D,
    cfg: &TrainConfig,
    len: usize,
) -> Result<String> {
    let Some(g) = data.generation() else {
        return Ok(String::new());
    };
    let hp = cfg.hyper();
    let mut text = g.prompt;
    let mut rng = step_rng(cfg.seed, SAMPLE_STREAM, 0);
    for _ in 0..len {
        let ctx = &text[text.len().saturating_sub(g.context)..];
        let Some(logits) = model.next_token_logits(ctx, &mut Step::new(&hp, &cfg.options))? else {
            return Ok(String::new());
        };
        let scaled: Vec<f64> = logits.iter().map(|l| l / 0.8).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.gen::<f64>() * total;
        let mut next = weights.len().saturating_sub(1);
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                next = i;
                break;
            }
            u -= w;
        }
        text.push(next);
    }
    Ok(data.decode(&text))
}

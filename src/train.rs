//! The training loop of every model family: behind `examples/train_lm.rs`,
//! `examples/train_encoder.rs` and the sweeps. [`train_family`] trains any
//! [`Family`](crate::family::Family) at the size a [`TrainConfig`] names; [`train_compiled`]
//! picks the shipped family by [`TrainConfig::model`] (`lm` or `encoder`).
//!
//! Everything a run depends on is in [`TrainConfig`]. Batches, evaluation windows and stochastic
//! rounding are drawn from RNGs keyed by `(seed, purpose, step)`, so a run stopped at step `k`
//! and resumed ([`RunOptions::resume`]) computes exactly what an uninterrupted run computes.
//!
//! Files in the output directory: `config.json`, `metrics.csv`
//! (`step,tokens,train_loss,val_loss,lr,seconds`; row `k` is the loss after `k` updates, row 0
//! the loss at init), `model.safetensors` (with the u-μP metadata), `optim.safetensors` (Adam
//! moments) and `state.json` (the step they hold, and a CRC-32 of each checkpoint file). Checkpoints
//! are written atomically, and a resume whose files do not match their recorded checksums is
//! refused, naming the file.

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
use crate::data::{step_rng, Batch, Corpus, Split};
use crate::device::{DeviceKind, TrainDevice};
use crate::family::{self, Family, Instance, Mixed, Step, Trainable, Visitor};
use crate::formats::{Format, MatmulFormats, QuantStats, Rounding};
use crate::models::{EncoderFamily, LmFamily, TransformerLm};
use crate::nn::{Hyper, Param};
use crate::ops::Backend;
use crate::ops::MatmulQuantiser;
use crate::optim::{master_gradients, LrSchedule, OptimConfig, Optimizer};
use crate::params::{Multipliers, ParamTable, Parametrization};
use crate::{Error, Result};

pub use crate::models::VOCAB;

/// The byte-level language model at width `D`, MLP width `F`, depth `L`, parametrization `P`,
/// on `Cpu`.
pub type Lm<const D: usize, const F: usize, const L: usize, P> = LmOn<D, F, L, P, Cpu>;

/// [`Lm`] on the device `Dev` (e.g. `Cuda`).
pub type LmOn<const D: usize, const F: usize, const L: usize, P, Dev> =
    TransformerLm<VOCAB, D, F, L, f32, Dev, P>;

const TRAIN_STREAM: u64 = 1;
const VAL_STREAM: u64 = 2;
const QUANT_STREAM: u64 = 3;

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

/// Everything a run depends on (written to `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model family: `lm` (the transformer LM) or `encoder` (the masked-byte encoder), for
    /// [`train_compiled`]. A `config.json` without it is an `lm` run.
    #[serde(default = "lm_name")]
    pub model: String,
    /// Model width `D` (one of the compiled sizes).
    pub width: usize,
    /// Number of layers `L` (one of the compiled sizes).
    pub depth: usize,
    /// Attention heads (`D` must be a multiple).
    pub heads: usize,
    /// Rotary position embeddings.
    pub rope: bool,
    /// Parametrization: `umup`, `mup` or `sp`.
    pub param: String,
    /// Matmul number formats.
    pub precision: Precision,
    /// Number of optimizer updates.
    pub steps: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
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
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Description of the data.
    pub data: String,
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
            heads: 2,
            rope: false,
            param: "umup".into(),
            precision: Precision::F32,
            steps: 400,
            batch: 16,
            seq: 128,
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
            data: "shakespeare (embedded)".into(),
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
            ("seq", self.seq),
            ("heads", self.heads),
            ("eval_every", self.eval_every),
            ("eval_batches", self.eval_batches),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(Error::Invalid(format!("--{what} must be at least 1")));
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(Error::Invalid(format!(
                "--heads {} does not divide the width {}",
                self.heads, self.width
            )));
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
    /// Tokens per second since the (re)start.
    pub tokens_per_second: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Training loss at step 0 (at init).
    pub initial_loss: Option<f64>,
    /// Validation loss at the last step reached.
    pub final_val_loss: f64,
    /// The last step reached.
    pub step: usize,
    /// Whether the run stopped early (`stop_at`).
    pub stopped: bool,
    /// Training tokens per second (this process).
    pub tokens_per_second: f64,
    /// Overflow/underflow counts of the matmul inputs (forward) and gradients (backward).
    pub quant_stats: (QuantStats, QuantStats),
    /// A sample generated by the trained model.
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
    /// Bytes of generated text in the summary (0: none).
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

/// The compiled model sizes `(width, depth)` of the LM ([`LmFamily`]; MLP width 4 × width).
pub const COMPILED_SIZES: &[(usize, usize)] = LmFamily::SIZES;

pub use crate::family::MUP_BASE_WIDTH;

/// The shipped families by name: `$body` with the type `$F` bound to the family `$name` names.
macro_rules! with_family {
    ($name:expr, $F:ident => $body:expr) => {
        match $name {
            "lm" => {
                type $F = LmFamily;
                $body
            }
            "encoder" => {
                type $F = EncoderFamily;
                $body
            }
            other => Err(Error::UnknownName {
                kind: "model",
                name: other.to_string(),
                expected: "lm, encoder",
            }),
        }
    };
}

/// [`train_family`] for the shipped family that `cfg.model` names (`lm` or `encoder`).
pub fn train_compiled(
    cfg: &TrainConfig,
    corpus: &Corpus,
    run: &RunOptions,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    with_family!(cfg.model.as_str(), F => train_family::<F>(cfg, corpus, run, observe))
}

/// The parameter table of the shipped model that `cfg` names (family, size, parametrization).
pub fn param_table_compiled(cfg: &TrainConfig) -> Result<ParamTable> {
    with_family!(cfg.model.as_str(), F => family::param_table::<F>(cfg.width, cfg.depth, &cfg.param))
}

/// Trains the model of the family `F` at the width, depth and parametrization `cfg` names, on
/// the device `run.device` names; `observe` sees every step. An error lists `F`'s compiled sizes
/// when `cfg` names another.
pub fn train_family<F: Family>(
    cfg: &TrainConfig,
    corpus: &Corpus,
    run: &RunOptions,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    struct Run<'a, 'o> {
        cfg: &'a TrainConfig,
        corpus: &'a Corpus,
        run: &'a RunOptions,
        observe: &'a mut (dyn FnMut(&Progress) + 'o),
    }
    impl Visitor for Run<'_, '_> {
        type Output = Summary;
        fn visit<I: Instance>(self) -> Result<Summary> {
            let Run {
                cfg,
                corpus,
                run,
                observe,
            } = self;
            match run.device {
                DeviceKind::Cpu => train_model::<I::Model<Cpu>, Cpu>(cfg, corpus, run, observe),
                #[cfg(feature = "cuda")]
                DeviceKind::Cuda => train_model::<I::Model<Cuda>, Cuda>(cfg, corpus, run, observe),
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
            corpus,
            run,
            observe,
        },
    )
}

/// Trains the language model `Lm<D, F, L, P>` (a shorthand of [`train_model`] for the LM, on
/// the device `run.device` names); `cfg.width` and `cfg.depth` must be `D` and `L`.
pub fn train<const D: usize, const F: usize, const L: usize, P: Param>(
    cfg: &TrainConfig,
    corpus: &Corpus,
    run: &RunOptions,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    if cfg.width != D || cfg.depth != L {
        return Err(Error::Invalid(format!(
            "config asks for width {} depth {}, the model is width {D} depth {L}",
            cfg.width, cfg.depth
        )));
    }
    match run.device {
        DeviceKind::Cpu => train_model::<LmOn<D, F, L, P, Cpu>, Cpu>(cfg, corpus, run, observe),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => train_model::<LmOn<D, F, L, P, Cuda>, Cuda>(cfg, corpus, run, observe),
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}

/// Trains the model `M` on `corpus` as `cfg` says (batches drawn by `M::TASK`), on the device
/// `Dev` (`run.device` must name it); `observe` sees every step. `cfg.width` and `cfg.depth` are
/// recorded, not checked: [`train_family`] picks `M` from them.
pub fn train_model<M: Mixed<Dev>, Dev: TrainDevice>(
    cfg: &TrainConfig,
    corpus: &Corpus,
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
    std::fs::create_dir_all(&run.out).map_err(|e| io(&run.out, e))?;
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
        ..OptimConfig::adamw(cfg.lr)
    };
    let mut opt = Optimizer::<f32, Dev>::for_table(optim_cfg, &table)?;
    crate::nn::apply_init_multipliers(&mut model, &table, &cfg.multipliers())?;
    for path in &cfg.freeze {
        opt.freeze(path)?;
    }

    let (start, seconds0) = if run.resume {
        resume(cfg, &paths, &mut model, &mut opt)?
    } else {
        write_json(&paths.config, cfg)?;
        (0, 0.0)
    };
    let mut metrics = open_metrics(&paths.metrics, start)?;
    let val_batches: Vec<Batch> = (0..cfg.eval_batches as u64)
        .map(|j| {
            corpus.task_batch(
                M::TASK,
                Split::Val,
                cfg.batch,
                cfg.seq,
                &mut step_rng(cfg.seed, VAL_STREAM, j),
            )
        })
        .collect::<Result<_>>()?;
    let formats = cfg.precision.formats();
    let mut stats = (QuantStats::default(), QuantStats::default());
    let mut grads = model.alloc_grads();
    let clock = Instant::now();
    let tokens_per_step = cfg.batch * cfg.seq;
    let mut initial_loss = None;
    let mut last_val = f64::NAN;
    let mut last_checkpoint = format!("{} (step {start})", paths.model.display());
    let end = run.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    let mut step = start;
    loop {
        let batch = corpus.task_batch(
            M::TASK,
            Split::Train,
            cfg.batch,
            cfg.seq,
            &mut step_rng(cfg.seed, TRAIN_STREAM, step as u64),
        )?;
        let mut quant = (!formats.is_none()).then(|| {
            MatmulQuantiser::new(formats, step_rng(cfg.seed, QUANT_STREAM, step as u64).gen())
        });
        let ids = dev
            .try_tensor_from_vec(batch.inputs.clone(), (batch.inputs.len(),))
            .map_err(Error::device)?;
        let updating = step < end;
        let lr = opt.current_lr();
        let mut cx = Step {
            hp: &hp,
            heads: cfg.heads,
            rope: cfg.rope,
            quant: quant.as_mut(),
            log: None,
        };
        // Mixed precision: this step's f16 copy of the f32 master weights.
        let half = match cfg.precision {
            Precision::F16 => Some(model.to_half()?),
            _ => None,
        };
        let train_loss = match (&half, updating) {
            (None, true) => {
                let loss = model.loss(ids.traced(grads), &batch, &mut cx)?;
                let v = scalar(&loss);
                check_finite(v, step, &last_checkpoint)?;
                grads = loss.backward();
                v
            }
            (Some(half), true) => {
                let loss = half.loss(ids.traced(half.alloc_grads()), &batch, &mut cx)?;
                let v = scalar(&loss);
                check_finite(v, step, &last_checkpoint)?;
                let mut half_grads = loss.backward();
                grads = master_gradients(&model, half, &mut half_grads)?;
                v
            }
            (None, false) => scalar(&model.loss(ids, &batch, &mut cx)?),
            (Some(half), false) => scalar(&half.loss(ids, &batch, &mut cx)?),
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
        let val_loss = if evaluate {
            let v = match &half {
                Some(half) => evaluate_loss(half, &dev, &val_batches, cfg)?,
                None => evaluate_loss(&model, &dev, &val_batches, cfg)?,
            };
            check_finite(v, step, &last_checkpoint)?;
            last_val = v;
            Some(v)
        } else {
            None
        };
        let seconds = seconds0 + clock.elapsed().as_secs_f64();
        writeln!(
            metrics,
            "{step},{},{train_loss},{},{lr},{seconds:.3}",
            step * tokens_per_step,
            val_loss.map(|v| v.to_string()).unwrap_or_default(),
        )
        .and_then(|_| metrics.flush())
        .map_err(|e| io(&paths.metrics, e))?;
        let resumed_here = step == start && start > 0;
        if (step % cfg.eval_every == 0 && !resumed_here) || step == end {
            save_checkpoint(&paths, &model, &mut opt, step, seconds)?;
            last_checkpoint = format!("{} (step {step})", paths.model.display());
        }
        let done = (step - start) as f64;
        observe(&Progress {
            step,
            steps: cfg.steps,
            train_loss,
            val_loss,
            tokens_per_second: done * tokens_per_step as f64
                / clock.elapsed().as_secs_f64().max(1e-9),
        });
        if !updating {
            break;
        }
        opt.update(&mut model, &mut grads)?;
        model.zero_grads(&mut grads);
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
    let trained = (step - start) * tokens_per_step;
    let sample = if run.sample_len > 0 {
        generate(&model, corpus, &hp, cfg, run.sample_len)?
    } else {
        String::new()
    };
    Ok(Summary {
        initial_loss,
        final_val_loss: last_val,
        step,
        stopped: step < cfg.steps,
        tokens_per_second: trained as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        quant_stats: stats,
        sample,
        table,
    })
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

/// Errors unless the run in `paths` was started with exactly `cfg` (its `config.json`).
fn check_same_config(paths: &Paths, cfg: &TrainConfig, prefix: &str, hint: &str) -> Result<()> {
    let saved: TrainConfig = read_json(&paths.config)?;
    if saved != *cfg {
        return Err(Error::Invalid(format!(
            "{prefix}the settings differ from the run in {} (see its config.json){hint}",
            paths.config.parent().unwrap_or(&paths.config).display()
        )));
    }
    Ok(())
}

/// The final validation loss of the run of `cfg` in `out` once it has finished all `cfg.steps`
/// steps; `None` while `out` holds no run or an unfinished one. A run in `out` that was started
/// with other settings is an error, never a result to reuse.
pub fn finished_val_loss(cfg: &TrainConfig, out: &Path) -> Result<Option<f64>> {
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
    let Ok(text) = std::fs::read_to_string(&paths.metrics) else {
        return Ok(None);
    };
    // The last row `step,tokens,train_loss,val_loss,...` (see `open_metrics`).
    let last: Vec<&str> = text.lines().last().unwrap_or("").split(',').collect();
    let step = last.first().and_then(|s| s.parse::<usize>().ok());
    Ok(if step == Some(cfg.steps) {
        last.get(3).and_then(|s| s.parse::<f64>().ok())
    } else {
        None
    })
}

/// Opens `metrics.csv`: a new file with the header, or (resuming at `start`) the existing rows
/// before `start`.
fn open_metrics(path: &Path, start: usize) -> Result<std::fs::File> {
    const HEADER: &str = "step,tokens,train_loss,val_loss,lr,seconds";
    let mut text = String::new();
    writeln!(text, "{HEADER}").ok();
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

fn evaluate_loss<E: Dtype, M: Trainable<Dev, E>, Dev: TrainDevice + Backend<E>>(
    model: &M,
    dev: &Dev,
    batches: &[Batch],
    cfg: &TrainConfig,
) -> Result<f64> {
    let formats = cfg.precision.formats();
    let hp = cfg.hyper();
    let mut total = 0.0;
    for (j, b) in batches.iter().enumerate() {
        let mut quant =
            (!formats.is_none()).then(|| MatmulQuantiser::new(formats, cfg.seed ^ j as u64));
        let ids = dev
            .try_tensor_from_vec(b.inputs.clone(), (b.inputs.len(),))
            .map_err(Error::device)?;
        let mut cx = Step {
            hp: &hp,
            heads: cfg.heads,
            rope: cfg.rope,
            quant: quant.as_mut(),
            log: None,
        };
        total += scalar(&model.loss(ids, b, &mut cx)?);
    }
    Ok(total / batches.len() as f64)
}

/// Samples `len` bytes after a prompt taken from the start of the validation split
/// (temperature 0.8, seeded by the config's seed), for models that generate
/// ([`Trainable::next_byte_logits`]); empty for the others.
fn generate<M: Trainable<Dev>, Dev: TrainDevice>(
    model: &M,
    corpus: &Corpus,
    hp: &Hyper,
    cfg: &TrainConfig,
    len: usize,
) -> Result<String> {
    let val = corpus.split(Split::Val);
    let prompt_len = cfg.seq.min(val.len()).min(32);
    let mut text: Vec<usize> = val[..prompt_len].iter().map(|&b| b as usize).collect();
    let mut rng = step_rng(cfg.seed, 4, 0);
    for _ in 0..len {
        let ctx = &text[text.len().saturating_sub(cfg.seq)..];
        let mut cx = Step {
            hp,
            heads: cfg.heads,
            rope: cfg.rope,
            quant: None,
            log: None,
        };
        let Some(logits) = model.next_byte_logits(ctx, &mut cx)? else {
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
    Ok(text.iter().map(|&b| b as u8 as char).collect())
}

//! The η-transfer sweep and the independent α search (spec §6.1), for any model family the
//! trainer runs, on any data.
//!
//! A [`Sweep`] names a grid: log2 η values × widths × parametrizations × seeds (the η stage),
//! then 1-D sweeps of each α at the best u-μP η (the α stage), then every α at its optimum
//! together (the combined stage). Every grid point is a [`Point`]: a label and the
//! [`TrainConfig`] of an independent training run in `out/<label>/`. A point whose run finished
//! ([`finished_result`]: its `result.json`) is never redone, so an interrupted sweep resumes
//! where it stopped; a point that diverged leaves a `diverged` marker and counts as loss ∞.
//! Points are ranked by their final validation loss; the model's metrics (accuracy, bits per
//! byte) are reported beside it.
//!
//! The sweep is generic over how a point is trained: [`Sweep::run`] and [`Sweep::run_points`]
//! take the trainer as a closure returning the run's [`Summary`] (the sweep records it as the
//! point's [`RunResult`]), e.g. for a user's family and data
//! `|cfg, run| train_family::<MyFamily, _>(cfg, &data, run, &mut |_| {})`; [`Sweep::plan`]
//! writes one shell command per pending point instead (for GNU parallel or a Slurm array), and
//! [`Sweep::collect`] merges what finished. [`Sweep::report`] writes `sweep.csv`, `summary.md`
//! (best η per width and its drift, loss vs width at each η, α optima), `transfer.png` and
//! `alphas.png`.
//!
//! ```ignore
//! let sweep = Sweep { model: "bigram".into(), widths: vec![32, 64], params: vec!["umup".into()],
//!     umup_lr_exps: vec![-1, 0, 1], steps: 100, out: "runs/bigram_sweep".into(), ..Sweep::default() };
//! let train = |cfg: &TrainConfig, run: &RunOptions| train_family::<Bigram, _>(cfg, &data, run, &mut |_| {});
//! let summary = sweep.run(&[Stage::Eta], train, |_| {})?;
//! ```

pub mod axis;
pub mod budget;

pub use axis::{Axis, AxisSweep};
pub use budget::EqualBudget;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::family::{self, Family, Options};
use crate::nn::AttentionScale;
use crate::params::NormParams;
use crate::plot::{self, Panel};
use crate::train::{finished_result, RunOptions, RunResult, Summary, TrainConfig};
use crate::{Error, Result};

/// The α's of the u-μP LM that the α stage sweeps by default ([`crate::nn::Hyper::set`] names).
pub const ALPHAS: [&str; 5] = [
    "alpha_ffn_act",
    "alpha_attn_softmax",
    "alpha_res",
    "alpha_res_attn_ratio",
    "alpha_loss_softmax",
];

/// A stage of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The η grid × widths × parametrizations × seeds ([`Sweep::eta_points`]).
    Eta,
    /// 1-D sweeps of each α at the best u-μP η at the α width ([`Sweep::alpha_points`]).
    Alpha,
    /// One run with every α at its optimum from the α stage ([`Sweep::combined_point`]).
    Combined,
}

impl Stage {
    /// The stages a `--stage` value names: `eta`, `alpha`, `combined`, or `all` (the three in
    /// turn).
    pub fn parse_list(name: &str) -> Result<Vec<Stage>> {
        Ok(match name {
            "eta" => vec![Stage::Eta],
            "alpha" => vec![Stage::Alpha],
            "combined" => vec![Stage::Combined],
            "all" => vec![Stage::Eta, Stage::Alpha, Stage::Combined],
            other => {
                return Err(Error::Invalid(format!(
                    "--stage {other}: expected eta, alpha, combined or all"
                )))
            }
        })
    }

    /// `eta`, `alpha` or `combined`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Eta => "eta",
            Stage::Alpha => "alpha",
            Stage::Combined => "combined",
        }
    }
}

/// The grid of a sweep and the settings of its runs (the `lr_sweep` example's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The family's name, written to every point's [`TrainConfig::model`] (`lm`, `encoder`, or
    /// a user's own).
    pub model: String,
    /// Output directory: one subdirectory per point, and the reports.
    pub out: PathBuf,
    /// Widths.
    pub widths: Vec<usize>,
    /// Number of layers.
    pub depth: usize,
    /// Parametrizations (`umup`, `mup`, `sp`).
    pub params: Vec<String>,
    /// log2 η grid of u-μP.
    pub umup_lr_exps: Vec<i32>,
    /// log2 η grid of μP and SP.
    pub sp_lr_exps: Vec<i32>,
    /// The α's of the α stage ([`crate::nn::Hyper::set`] names).
    pub alphas: Vec<String>,
    /// log2 grid of each α in the α stage.
    pub alpha_exps: Vec<i32>,
    /// Width of the α stages (`None`: the widest).
    pub alpha_width: Option<usize>,
    /// Steps per point.
    pub steps: usize,
    /// Examples per batch.
    pub batch: usize,
    /// The family's run-time settings at every point ([`Options`]; e.g. `heads`: unset, each
    /// model's own default).
    pub options: Options,
    /// Linear warm-up as a fraction of `steps`.
    pub warmup_fraction: f64,
    /// Final LR of the cosine decay as a fraction of η.
    pub final_lr_fraction: f64,
    /// Validation batches for each point's final loss.
    pub eval_batches: usize,
    /// Seed (the same data order at every point).
    pub seed: u64,
    /// Seeds of every η point (`seed`, `seed + 1`, ...): their mean final loss is compared. The α
    /// stages run at `seed` only. Points of seed 0 live under `eta/`, of seed s > 0 under
    /// `eta-seed<s>/`.
    pub seeds: u64,
    /// Points trained at once by [`Sweep::run_points`].
    pub jobs: usize,
    /// The attention output rule of every point ([`TrainConfig::attention`]).
    pub attention: AttentionScale,
    /// Whether every point trains its norms' gains and biases ([`TrainConfig::norm_params`]).
    pub norm_params: NormParams,
}

impl Default for Sweep {
    /// The `lr_sweep` example's defaults: the LM at widths 64, 128, 256, depth 2, u-μP and SP,
    /// 300 steps of batch 8 per point (the LM's windows of 64 bytes are the data's setting).
    fn default() -> Self {
        Sweep {
            model: "lm".into(),
            out: "runs/lr_sweep".into(),
            widths: vec![64, 128, 256],
            depth: 2,
            params: vec!["umup".into(), "sp".into()],
            umup_lr_exps: (-3..=3).collect(),
            sp_lr_exps: (-12..=-6).collect(),
            alphas: ALPHAS.iter().map(|a| a.to_string()).collect(),
            alpha_exps: (-2..=2).collect(),
            alpha_width: None,
            steps: 300,
            batch: 8,
            options: Options::default(),
            warmup_fraction: 0.1,
            final_lr_fraction: 0.1,
            eval_batches: 8,
            seed: 0,
            seeds: 1,
            jobs: 1,
            attention: AttentionScale::Auto,
            norm_params: NormParams::Auto,
        }
    }
}

/// One grid point: an independent training run in `out/<label>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Where the point lives under the sweep's directory: `eta/<param>/w<width>/log2lr<e>`
    /// (`eta-seed<s>/...` for seed s > 0), `alpha/<alpha>/log2<e>` or `combined`.
    pub label: String,
    /// The run's settings.
    pub cfg: TrainConfig,
}

impl Point {
    /// The point's directory under `out`.
    pub fn dir(&self, out: &Path) -> PathBuf {
        out.join(&self.label)
    }
}

/// What [`Sweep::run_points`] and [`Sweep::run`] report as they go.
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage starts with this many points (finished ones included).
    Stage {
        /// The stage.
        stage: Stage,
        /// Its points.
        points: usize,
    },
    /// This many points are about to be trained (sent only when there are any).
    Pending(usize),
    /// A point's run ended: its final validation loss, ∞ when it diverged.
    Finished {
        /// The point.
        point: &'a Point,
        /// Final validation loss.
        loss: f64,
    },
    /// A point's run failed (the others go on; the sweep then errors).
    Failed {
        /// The point.
        point: &'a Point,
        /// Why.
        error: &'a Error,
    },
}

/// Each point with its final validation loss: `Some(∞)` if it diverged, `None` if it has not
/// finished.
pub type Results = Vec<(Point, Option<f64>)>;

/// The mean final loss of the η points by (parametrization, width, log2 η).
pub type EtaMeans = BTreeMap<(String, usize, i32), Option<f64>>;

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

impl Sweep {
    /// Checks the fractions and seeds, and the run settings of every parametrization at every
    /// width (not whether a family has those sizes: [`Sweep::check_family`]).
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--warmup-fraction", self.warmup_fraction),
            ("--final-lr-fraction", self.final_lr_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Invalid(format!(
                    "{flag} {v}: expected a fraction in [0, 1]"
                )));
            }
        }
        if self.seeds == 0 {
            return Err(Error::Invalid("--seeds must be at least 1".into()));
        }
        for p in &self.params {
            for &w in &self.widths {
                self.base(p, w, 1.0).validate()?;
            }
        }
        Ok(())
    }

    /// Errors unless the family `F` was compiled at every width (at `depth`) in every
    /// parametrization of the sweep.
    pub fn check_family<F: Family>(&self) -> Result<()> {
        for p in &self.params {
            for &w in &self.widths {
                family::param_table::<F>(w, self.depth, p)?;
            }
        }
        Ok(())
    }

    /// The run settings of a point: `param` at `width` with η `lr`, every α 1, one validation at
    /// the end, the sweep's [`Sweep::options`].
    pub fn base(&self, param: &str, width: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            model: self.model.clone(),
            width,
            depth: self.depth,
            options: self.options.clone(),
            param: param.into(),
            steps: self.steps,
            batch: self.batch,
            lr,
            warmup: (self.steps as f64 * self.warmup_fraction).round() as usize,
            final_lr_fraction: self.final_lr_fraction,
            seed: self.seed,
            eval_every: self.steps,
            eval_batches: self.eval_batches,
            attention: self.attention,
            norm_params: self.norm_params,
            ..TrainConfig::default()
        }
    }

    /// The log2 η grid of `param`.
    pub fn lr_exps(&self, param: &str) -> &[i32] {
        if param == "umup" {
            &self.umup_lr_exps
        } else {
            &self.sp_lr_exps
        }
    }

    /// The width of the α stages: `alpha_width`, or the widest width.
    pub fn alpha_width(&self) -> usize {
        self.alpha_width
            .unwrap_or_else(|| self.widths.iter().copied().max().unwrap_or(64))
    }

    /// The η stage: every seed × parametrization × width × η of its grid, labelled
    /// `eta/<param>/w<width>/log2lr<e>` (`eta-seed<s>/...` for seed s > 0).
    pub fn eta_points(&self) -> Vec<Point> {
        let mut v = Vec::new();
        for seed in self.seed..self.seed + self.seeds {
            let stage = if seed == 0 {
                "eta".to_string()
            } else {
                format!("eta-seed{seed}")
            };
            for p in &self.params {
                for &w in &self.widths {
                    for &e in self.lr_exps(p) {
                        v.push(Point {
                            cfg: TrainConfig {
                                seed,
                                ..self.base(p, w, 2f64.powi(e))
                            },
                            label: format!("{stage}/{p}/w{w}/log2lr{e}"),
                        });
                    }
                }
            }
        }
        v
    }

    /// The α stage at η `eta`: u-μP at the α width, each α at each value of its grid (the
    /// others at 1), labelled `alpha/<alpha>/log2<e>`.
    pub fn alpha_points(&self, eta: f64) -> Vec<Point> {
        let w = self.alpha_width();
        let mut v = Vec::new();
        for a in &self.alphas {
            for &e in &self.alpha_exps {
                let mut cfg = self.base("umup", w, eta);
                let mut hp = cfg.hyper();
                if hp.set(a, 2f64.powi(e)).is_ok() {
                    cfg.set_hyperparams(&hp);
                }
                v.push(Point {
                    cfg,
                    label: format!("alpha/{a}/log2{e}"),
                });
            }
        }
        v
    }

    /// The combined stage at η `eta`: u-μP at the α width with every α at its optimum in
    /// `results` (the η and α stages; [`Sweep::best_alphas`]), labelled `combined`.
    pub fn combined_point(&self, eta: f64, results: &[(Point, Option<f64>)]) -> Result<Point> {
        let mut cfg = self.base("umup", self.alpha_width(), eta);
        let mut hp = cfg.hyper();
        for (a, (v, _)) in &self.best_alphas(results) {
            hp.set(a, *v)?;
        }
        cfg.set_hyperparams(&hp);
        Ok(Point {
            cfg,
            label: "combined".into(),
        })
    }

    /// The final validation loss of `point` if it finished (∞ if it diverged), `None` if it is
    /// still to run; a directory holding a run with other settings is an error
    /// ([`finished_result`]).
    pub fn finished(&self, point: &Point) -> Result<Option<f64>> {
        Ok(self.finished_result(point)?.map(|r| r.val_loss))
    }

    /// The [`RunResult`] of `point` if it finished (loss ∞, no metrics, if it diverged).
    pub fn finished_result(&self, point: &Point) -> Result<Option<RunResult>> {
        let dir = point.dir(&self.out);
        if dir.join("diverged").exists() {
            return Ok(Some(RunResult {
                step: point.cfg.steps,
                val_loss: f64::INFINITY,
                metrics: BTreeMap::new(),
            }));
        }
        finished_result(&point.cfg, &dir)
    }

    /// The points that have not finished (their settings checked against their directories).
    pub fn pending<'a>(&self, points: &'a [Point]) -> Result<Vec<&'a Point>> {
        let mut v = Vec::new();
        for p in points {
            if self.finished(p)?.is_none() {
                v.push(p);
            }
        }
        Ok(v)
    }

    /// Every point with its final loss ([`Sweep::finished`]).
    pub fn results(&self, points: &[Point]) -> Result<Results> {
        points
            .iter()
            .map(|p| Ok((p.clone(), self.finished(p)?)))
            .collect()
    }

    /// Trains the pending points, `jobs` at a time, each with `train(cfg, run)` into its
    /// directory (`run`: no resume, no sample, the default device). A run that diverges
    /// ([`Error::Diverged`]) leaves a `diverged` marker and counts as finished; other errors are
    /// collected, the remaining points still run, and the sweep errors at the end.
    pub fn run_points<T, O>(&self, points: &[Point], train: T, observe: O) -> Result<()>
    where
        T: Fn(&TrainConfig, &RunOptions) -> Result<Summary> + Sync,
        O: Fn(Event<'_>) + Sync,
    {
        let pending = self.pending(points)?;
        if pending.is_empty() {
            return Ok(());
        }
        observe(Event::Pending(pending.len()));
        let queue = Mutex::new(pending.into_iter());
        let failures = Mutex::new(Vec::new());
        let work = || loop {
            let next = queue.lock().ok().and_then(|mut q| q.next());
            let Some(point) = next else { break };
            let run = RunOptions {
                out: point.dir(&self.out),
                resume: false,
                stop_at: None,
                sample_len: 0,
                device: Default::default(),
            };
            match train(&point.cfg, &run).and_then(|sm| {
                // The trainer's own record, for a trainer that does not write it.
                RunResult::of(&sm).write(&run.out)?;
                Ok(sm)
            }) {
                Ok(sm) => observe(Event::Finished {
                    point,
                    loss: sm.final_val_loss,
                }),
                // A diverged point is a result (loss = ∞), not a failure of the sweep.
                Err(Error::Diverged { .. }) => {
                    let _ = std::fs::write(run.out.join("diverged"), "");
                    observe(Event::Finished {
                        point,
                        loss: f64::INFINITY,
                    });
                }
                Err(error) => {
                    observe(Event::Failed {
                        point,
                        error: &error,
                    });
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("{}: {error}", point.label));
                    }
                }
            }
        };
        // One job runs on the calling thread (which `umup::threads::init` may have made one of
        // the kernels' threads); more run on threads of their own.
        if self.jobs <= 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..self.jobs {
                    s.spawn(work);
                }
            });
        }
        let failures = failures.into_inner().unwrap_or_default();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{} points failed:\n{}",
                failures.len(),
                failures.join("\n")
            )))
        }
    }

    /// The points of `stage`. The α stages need the best u-μP η at the α width from the
    /// finished points of `all` (an error until they finished); the combined stage adds the α
    /// points to `all`.
    pub fn stage_points(&self, stage: Stage, all: &mut Vec<Point>) -> Result<Vec<Point>> {
        if stage == Stage::Eta {
            return Ok(self.eta_points());
        }
        let mut results = self.results(all)?;
        let Some(eta) = self.best_eta(&results) else {
            return Err(Error::Invalid(
                "the α stages need the u-μP η points at the α width to have finished (run --stage eta first)".into(),
            ));
        };
        let alpha = self.alpha_points(eta);
        if stage == Stage::Alpha {
            return Ok(alpha);
        }
        results.extend(self.results(&alpha)?);
        all.extend(alpha);
        let combined = self.combined_point(eta, &results)?;
        Ok(vec![combined])
    }

    /// Runs `stages` in turn ([`Sweep::run_points`] with `train`), then writes the reports of
    /// every point so far ([`Sweep::report`]) and returns the summary.
    pub fn run<T, O>(&self, stages: &[Stage], train: T, observe: O) -> Result<String>
    where
        T: Fn(&TrainConfig, &RunOptions) -> Result<Summary> + Sync,
        O: Fn(Event<'_>) + Sync,
    {
        self.stages(stages, Some((&train, &observe)))
    }

    /// Trains nothing: the reports ([`Sweep::report`]) of the finished points of `stages` under
    /// `out`; returns the summary.
    pub fn collect(&self, stages: &[Stage]) -> Result<String> {
        type Nothing = fn(&TrainConfig, &RunOptions) -> Result<Summary>;
        self.stages::<Nothing, fn(Event<'_>)>(stages, None)
    }

    fn stages<T, O>(&self, stages: &[Stage], run: Option<(&T, &O)>) -> Result<String>
    where
        T: Fn(&TrainConfig, &RunOptions) -> Result<Summary> + Sync,
        O: Fn(Event<'_>) + Sync,
    {
        let mut all = self.eta_points();
        for &stage in stages {
            let points = self.stage_points(stage, &mut all)?;
            if let Some((train, observe)) = run {
                observe(Event::Stage {
                    stage,
                    points: points.len(),
                });
                self.run_points(&points, train, observe)?;
            }
            for p in points {
                if !all.iter().any(|q| q.label == p.label) {
                    all.push(p);
                }
            }
        }
        self.report(&self.results(&all)?)
    }

    /// One shell command per pending point of the first of `stages` (later stages depend on its
    /// results), made by `command(point, dir)` (`dir`: the point's directory, where the command
    /// must write the run). For the shipped trainers, [`train_flags`] gives the flags.
    pub fn plan(
        &self,
        stages: &[Stage],
        command: impl Fn(&Point, &Path) -> String,
    ) -> Result<Vec<String>> {
        let mut all = self.eta_points();
        let Some(&stage) = stages.first() else {
            return Ok(Vec::new());
        };
        let points = self.stage_points(stage, &mut all)?;
        Ok(self
            .pending(&points)?
            .into_iter()
            .map(|p| command(p, &p.dir(&self.out)))
            .collect())
    }

    /// The mean final loss over the seeds of each η point of `results`, by parametrization,
    /// width and log2 η: `None` until every seed finished, ∞ if any diverged.
    pub fn eta_means(&self, results: &[(Point, Option<f64>)]) -> EtaMeans {
        let mut sums: BTreeMap<(String, usize, i32), (f64, u64, bool)> = BTreeMap::new();
        for (p, l) in results.iter().filter(|(p, _)| p.label.starts_with("eta")) {
            let key = (
                p.cfg.param.clone(),
                p.cfg.width,
                p.cfg.lr.log2().round() as i32,
            );
            let e = sums.entry(key).or_insert((0.0, 0, true));
            match l {
                Some(v) => {
                    e.0 += v;
                    e.1 += 1;
                }
                None => e.2 = false,
            }
        }
        sums.into_iter()
            .map(|(k, (sum, n, complete))| {
                let mean = (complete && n == self.seeds).then(|| sum / n as f64);
                (k, mean)
            })
            .collect()
    }

    /// The best η of u-μP at the α width (lowest mean loss over the seeds) among the finished
    /// η points of `results`.
    pub fn best_eta(&self, results: &[(Point, Option<f64>)]) -> Option<f64> {
        let w = self.alpha_width();
        self.eta_means(results)
            .into_iter()
            .filter_map(|((param, width, e), l)| (param == "umup" && width == w).then_some((e, l?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, _)| 2f64.powi(e))
    }

    /// The loss of u-μP with every α = 1 at the best η and the α width: the α grid's 0 point
    /// when the grid has one, or else the η stage's run (`--seed`) with the same settings.
    pub fn alpha_default_loss(&self, results: &[(Point, Option<f64>)]) -> Option<f64> {
        let first = self.alphas.first().map_or("", String::as_str);
        let best_eta = self.best_eta(results);
        let at_best_eta = |p: &Point| {
            p.label.starts_with("eta")
                && p.cfg.param == "umup"
                && p.cfg.seed == self.seed
                && p.cfg.width == self.alpha_width()
                && Some(p.cfg.lr) == best_eta
        };
        results
            .iter()
            .find(|(p, _)| p.label == format!("alpha/{first}/log20"))
            .or_else(|| results.iter().find(|(p, _)| at_best_eta(p)))
            .and_then(|(_, l)| *l)
    }

    /// The best value of each α and its loss, among the finished α points of `results` and
    /// α = 1 ([`Sweep::alpha_default_loss`]; it wins ties): spec §6.1's independent search keeps
    /// an α at 1 unless another value is strictly better.
    pub fn best_alphas(&self, results: &[(Point, Option<f64>)]) -> BTreeMap<String, (f64, f64)> {
        let default = self.alpha_default_loss(results);
        let mut best = BTreeMap::new();
        for a in &self.alphas {
            let prefix = format!("alpha/{a}/");
            let swept = results.iter().filter_map(|(p, l)| {
                let l = (*l)?;
                p.label
                    .starts_with(&prefix)
                    .then(|| (p.cfg.hyper().get(a).unwrap_or(1.0), l))
            });
            let found = swept.min_by(|x, y| x.1.total_cmp(&y.1));
            let chosen = match (found, default) {
                (Some((_, l)), Some(d)) if d <= l => Some((1.0, d)),
                (found, _) => found,
            };
            if let Some(c) = chosen {
                best.insert(a.clone(), c);
            }
        }
        best
    }

    /// Writes the reports of `results` to `out`: `sweep.csv` (one row per point), `transfer.png`
    /// (final validation loss vs η, one curve per width, one panel per parametrization; the mean
    /// over the seeds), `summary.md` (best η per width and its drift in grid steps, the loss vs
    /// width at each η, and, when the α stage ran, the best value of each α and the combined
    /// run) and `alphas.png`. Returns the summary.
    pub fn report(&self, results: &[(Point, Option<f64>)]) -> Result<String> {
        std::fs::create_dir_all(&self.out).map_err(|e| io(&self.out, e))?;
        // The metrics of every finished point, and their names in order.
        let metrics: Vec<BTreeMap<String, f64>> = results
            .iter()
            .map(|(p, _)| {
                Ok(self
                    .finished_result(p)?
                    .map(|r| r.metrics)
                    .unwrap_or_default())
            })
            .collect::<Result<_>>()?;
        let names: Vec<String> = metrics
            .iter()
            .flat_map(|m| m.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut csv = String::from("label,param,width,lr,seed,alpha_ffn_act,alpha_attn_softmax,alpha_res,alpha_res_attn_ratio,alpha_loss_softmax,final_val_loss");
        for n in &names {
            write!(csv, ",final_val_{n}").ok();
        }
        csv.push('\n');
        for ((p, l), m) in results.iter().zip(&metrics) {
            let c = &p.cfg;
            write!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                p.label,
                c.param,
                c.width,
                c.lr,
                c.seed,
                c.alpha_ffn_act,
                c.alpha_attn_softmax,
                c.alpha_res,
                c.alpha_res_attn_ratio,
                c.alpha_loss_softmax,
                l.map_or(String::new(), |v| v.to_string())
            )
            .ok();
            for n in &names {
                write!(
                    csv,
                    ",{}",
                    m.get(n).map_or(String::new(), |v| v.to_string())
                )
                .ok();
            }
            csv.push('\n');
        }
        let write = |name: &str, text: &str| {
            std::fs::write(self.out.join(name), text)
                .map_err(|e| Error::Invalid(format!("{name}: {e}")))
        };
        write("sweep.csv", &csv)?;

        let means = self.eta_means(results);
        let seeds = if self.seeds > 1 {
            format!(" (mean over {} seeds)", self.seeds)
        } else {
            String::new()
        };
        let mut summary = format!(
            "## η transfer{seeds}\n\n| parametrization | width | best η | loss at best η |"
        );
        for n in &names {
            write!(summary, " {n} at best η |").ok();
        }
        write!(
            summary,
            "\n|---|---:|---:|---:|{}\n",
            "---:|".repeat(names.len())
        )
        .ok();
        // A metric of the η point of `param`, `w`, log2 η `e` at `--seed`.
        let metric_at = |param: &str, w: usize, e: i32, name: &str| {
            results
                .iter()
                .zip(&metrics)
                .find(|((p, _), _)| {
                    p.label.starts_with("eta")
                        && p.cfg.param == param
                        && p.cfg.width == w
                        && p.cfg.seed == self.seed
                        && p.cfg.lr.log2().round() as i32 == e
                })
                .and_then(|(_, m)| m.get(name).copied())
        };
        let mut panels = Vec::new();
        for param in &self.params {
            let mut series = Vec::new();
            let mut best_per_width = Vec::new();
            for &w in &self.widths {
                let pts: Vec<(f64, f64)> = self
                    .lr_exps(param)
                    .iter()
                    .filter_map(|&e| {
                        let l = (*means.get(&(param.clone(), w, e))?)?;
                        Some((2f64.powi(e), l))
                    })
                    .collect();
                if let Some(&(lr, loss)) = pts
                    .iter()
                    .filter(|p| p.1.is_finite())
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                {
                    let e = lr.log2().round() as i32;
                    write!(summary, "| {param} | {w} | 2^{e} | {loss:.4} |").ok();
                    for n in &names {
                        let v = metric_at(param, w, e, n);
                        write!(
                            summary,
                            " {} |",
                            v.map_or("-".into(), |v| format!("{v:.4}"))
                        )
                        .ok();
                    }
                    summary.push('\n');
                    best_per_width.push(grid_index(self.lr_exps(param), e));
                }
                series.push((format!("width {w}"), pts));
            }
            if let Some((end, _)) = axis::drift(&best_per_width) {
                writeln!(
                    summary,
                    "| {param} | drift | {end:+} grid steps from the narrowest to the widest | |{}",
                    " |".repeat(names.len())
                )
                .ok();
            }
            panels.push(Panel {
                title: format!("{param}: final validation loss vs η{seeds}"),
                x_label: "η".into(),
                y_label: "validation loss".into(),
                series,
                log_y: false,
                legend: true,
            });
        }
        plot::draw(&self.out.join("transfer.png"), &panels, panels.len())?;
        summary += &self.width_table(&means);
        let best = self.best_alphas(results);
        if !best.is_empty() {
            let default = self.alpha_default_loss(results);
            summary += "\n## α sweeps (u-μP, at the best η)\n\n| α | best value | loss at best | loss at α = 1 |\n|---|---:|---:|---:|\n";
            let mut apanels = Vec::new();
            for a in &self.alphas {
                if let Some((v, l)) = best.get(a) {
                    writeln!(
                        summary,
                        "| {a} | {v} | {l:.4} | {} |",
                        default.map_or("-".into(), |d| format!("{d:.4}"))
                    )
                    .ok();
                }
                let pts: Vec<(f64, f64)> = results
                    .iter()
                    .filter(|(p, l)| p.label.starts_with(&format!("alpha/{a}/")) && l.is_some())
                    .map(|(p, l)| (p.cfg.hyper().get(a).unwrap_or(1.0), l.unwrap_or(f64::NAN)))
                    .collect();
                apanels.push((a.to_string(), pts));
            }
            if let Some((_, Some(l))) = results.iter().find(|(p, _)| p.label == "combined") {
                writeln!(summary, "\nCombined run (every α at its optimum): {l:.4}").ok();
            }
            plot::draw(
                &self.out.join("alphas.png"),
                &[Panel {
                    title: "u-μP: final validation loss vs α (others at 1)".into(),
                    x_label: "α".into(),
                    y_label: "validation loss".into(),
                    series: apanels,
                    log_y: false,
                    legend: true,
                }],
                1,
            )?;
        }
        write("summary.md", &summary)?;
        Ok(summary)
    }

    /// "Loss vs width at fixed η": for every parametrization and η, the (mean) final loss at
    /// each width and whether it falls strictly from the narrowest to the widest.
    fn width_table(&self, means: &EtaMeans) -> String {
        let mut widths = self.widths.clone();
        widths.sort_unstable();
        let mut t = String::from("\n## Loss vs width at fixed η\n\n| parametrization | η |");
        for w in &widths {
            t += &format!(" width {w} |");
        }
        t += " improves with width |\n|---|---:|";
        t += &"---:|".repeat(widths.len());
        t += "---|\n";
        for param in &self.params {
            for &e in self.lr_exps(param) {
                let losses: Vec<Option<f64>> = widths
                    .iter()
                    .map(|&w| means.get(&(param.clone(), w, e)).copied().flatten())
                    .collect();
                t += &format!("| {param} | 2^{e} |");
                for l in &losses {
                    t += &l.map_or(" - |".into(), |l| format!(" {l:.4} |"));
                }
                let verdict = if losses.len() < 2 || losses.iter().any(Option::is_none) {
                    "-"
                } else if losses.windows(2).all(|p| p[1] < p[0]) {
                    "yes"
                } else {
                    "no"
                };
                t += &format!(" {verdict} |\n");
            }
        }
        t
    }
}

/// The position of the log2 η `e` in the η grid `exps` (ascending order): drifts are counted
/// in grid points, so a move between neighbours of a grid with step 2 (2^0 → 2^2) is one step.
pub fn grid_index(exps: &[i32], e: i32) -> Option<i32> {
    let mut sorted = exps.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.iter().position(|&x| x == e).map(|i| i as i32)
}

/// The flags of the shipped trainers (`train_lm`, `train_encoder`, `train_vit`, and any binary
/// with their command line) that run `cfg` into `dir` quietly without a sample: `--quiet
/// --sample-len 0 --param ... --out <dir>`, each option as `--<name> <value>` (a flag that is
/// true as `--<name>`). The data's own flags (`--seq`, `--data`, ...) are the caller's to add.
pub fn train_flags(cfg: &TrainConfig, dir: &Path) -> String {
    let c = cfg;
    let mut options = String::new();
    for (name, v) in c.options.iter() {
        let flag = name.replace('_', "-");
        match v {
            serde_json::Value::Bool(true) => write!(options, " --{flag}"),
            serde_json::Value::Bool(false) => Ok(()),
            serde_json::Value::String(s) => write!(options, " --{flag} {s}"),
            other => write!(options, " --{flag} {other}"),
        }
        .ok();
    }
    format!(
        "--quiet --sample-len 0 --param {} --width {} --depth {} --steps {} --batch {} --seed {} --lr {} --warmup {} --final-lr-fraction {} --eval-every {} --eval-batches {} --alpha-ffn-act {} --alpha-attn-softmax {} --alpha-res {} --alpha-res-attn-ratio {} --alpha-loss-softmax {} --alpha-input {} --sigma-init {} --attn-scale {} --norm-params {}{options} --out {}",
        c.param, c.width, c.depth, c.steps, c.batch, c.seed, c.lr, c.warmup, c.final_lr_fraction, c.eval_every, c.eval_batches,
        c.alpha_ffn_act, c.alpha_attn_softmax, c.alpha_res, c.alpha_res_attn_ratio, c.alpha_loss_softmax, c.alpha_input, c.sigma_init,
        c.attention, c.norm_params, dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A u-μP sweep at one width with an α grid without 0 (as the equal-budget search runs it).
    fn sweep() -> Sweep {
        Sweep {
            widths: vec![64],
            params: vec!["umup".into()],
            umup_lr_exps: vec![-1, 0],
            alpha_exps: vec![-1, 1],
            alphas: vec!["alpha_res".into(), "alpha_loss_softmax".into()],
            ..Sweep::default()
        }
    }

    /// `points` with the losses `loss(label)`.
    fn with_losses(points: Vec<Point>, loss: impl Fn(&str) -> f64) -> Results {
        points
            .into_iter()
            .map(|p| {
                let l = loss(&p.label);
                (p, Some(l))
            })
            .collect()
    }

    #[test]
    fn drift_is_counted_in_points_of_the_grid() {
        // own_model's grid 2^-2, 2^0, 2^2: a move from 2^0 to 2^2 is one grid step.
        let grid = [-2, 0, 2];
        let best = [grid_index(&grid, 0), grid_index(&grid, 2)];
        assert_eq!(best, [Some(1), Some(2)]);
        assert_eq!(axis::drift(&best), Some((1, 1)));
        // Any order of the grid; an exponent off the grid has no position.
        assert_eq!(grid_index(&[3, -1, 1], 3), Some(2));
        assert_eq!(grid_index(&grid, 1), None);
    }

    #[test]
    fn an_alpha_stays_at_1_unless_another_value_is_strictly_better() {
        let s = sweep();
        let mut points = s.eta_points();
        points.extend(s.alpha_points(1.0));
        // η = 1 is best (3.0); α_res = 2 beats it, every α_loss-softmax value is worse, and
        // α_loss-softmax = 1/2 ties it.
        let results = with_losses(points, |label| match label {
            "eta/umup/w64/log2lr-1" => 3.5,
            "eta/umup/w64/log2lr0" => 3.0,
            "alpha/alpha_res/log21" => 2.9,
            "alpha/alpha_res/log2-1" => 3.1,
            "alpha/alpha_loss_softmax/log2-1" => 3.0,
            _ => 3.2,
        });
        assert_eq!(s.alpha_default_loss(&results), Some(3.0));
        let best = s.best_alphas(&results);
        assert_eq!(best["alpha_res"], (2.0, 2.9));
        assert_eq!(best["alpha_loss_softmax"], (1.0, 3.0));
        let combined = s.combined_point(1.0, &results).unwrap().cfg.hyper();
        assert_eq!(combined.get("alpha_res").unwrap(), 2.0);
        assert_eq!(combined.get("alpha_loss_softmax").unwrap(), 1.0);
        // Without the η stage's runs there is no α = 1 to compare with: the best swept value.
        let alpha_only: Results = results
            .iter()
            .filter(|(p, _)| p.label.starts_with("alpha/"))
            .cloned()
            .collect();
        assert_eq!(s.best_alphas(&alpha_only)["alpha_loss_softmax"], (0.5, 3.0));
    }
}

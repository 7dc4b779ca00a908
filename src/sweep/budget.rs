//! u-μP against μP and SP at an equal sweep budget (the u-μP paper's claim that u-μP's cheap
//! independent search reaches a loss at least as low as μP's, Blake et al. 2024 §1 and §5).
//!
//! Every parametrization gets the same number of training runs at a narrow proxy width, each
//! spent with that scheme's own strategy, and its best run's hyperparameters are trained at the
//! target width over several seeds:
//!
//! * **u-μP**: the η grid, then each α alone on its grid at the best η, then every α at its
//!   optimum together: the independent search of spec §6.1 ([`Sweep`]'s three stages). Its run
//!   count sets the budget ([`EqualBudget::budget`]).
//! * **μP and SP**: a random search of as many runs over η and their own multipliers
//!   ([`Multipliers`](crate::params::Multipliers): input multiplier α_in, init σ; the output
//!   multiplier α_loss-softmax; μP also its attention multiplier), each log-uniform on its range
//!   ([`Range`]), as Tensor Programs V tunes μP.
//!
//! The target also runs each scheme's untuned defaults ([`EqualBudget::default_config`]). Runs
//! live under `out/`: `umup/` (the u-μP sweep), `random/<param>/<i>`, `target/<param>/<tuned |
//! default>/seed<s>`; finished runs are never redone, and [`EqualBudget::plan`] lists the next
//! phase's pending runs as shell commands.

use std::fmt::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{io, Event, Point, Results, Stage, Sweep};
use crate::plot::{self, Panel};
use crate::train::{RunOptions, Summary, TrainConfig};
use crate::{Error, Result};

/// One hyperparameter's log2 range in a random search.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// A [`TrainConfig::set_hyper`] name.
    pub name: String,
    /// Lowest log2 value.
    pub lo: f64,
    /// Highest log2 value.
    pub hi: f64,
}

impl Range {
    /// `name` log-uniform on `[2^lo, 2^hi]`.
    pub fn new(name: &str, lo: f64, hi: f64) -> Self {
        Range {
            name: name.into(),
            lo,
            hi,
        }
    }
}

/// The random-search space of μP (η, α_in, α_out, σ_init and the attention multiplier) or SP
/// (the same without the attention multiplier, which SP does not have: its logits are
/// `q·k/√d_head`): η over `2^[-12, -4]` (SP's and μP's optimum in docs/results.md §2 is
/// 2^-7…2^-9), the multipliers over `2^[-3, 3]` (σ_init `2^[-2, 2]`).
pub fn baseline_space(param: &str) -> Vec<Range> {
    let mut v = vec![
        Range::new("eta", -12.0, -4.0),
        Range::new("alpha_input", -3.0, 3.0),
        Range::new("alpha_loss_softmax", -3.0, 3.0),
        Range::new("sigma_init", -2.0, 2.0),
    ];
    if param.starts_with("mup") {
        v.push(Range::new("alpha_attn_softmax", -3.0, 3.0));
    }
    v
}

/// The equal-budget comparison (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct EqualBudget {
    /// The proxy: its one width, its run settings, u-μP's η grid (`umup_lr_exps`), α's and α
    /// grid (`alpha_exps`, without 0: α = 1 is the η stage's run), `seed`, `jobs`, and `out`
    /// (the whole comparison's directory). `params` are the schemes compared (u-μP first).
    pub proxy: Sweep,
    /// The width the winners are trained at.
    pub target_width: usize,
    /// Seeds of every target run (`proxy.seed`, `proxy.seed + 1`, ...).
    pub target_seeds: u64,
    /// μP's and SP's untuned η ([`EqualBudget::default_config`]).
    pub baseline_lr: f64,
}

impl EqualBudget {
    /// Checks the proxy (one width, u-μP among the schemes, α grid without 0) and the target.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(why));
        if self.proxy.widths.len() != 1 {
            return bad(format!(
                "the proxy has one width, got {:?}",
                self.proxy.widths
            ));
        }
        if !self.proxy.params.iter().any(|p| p == "umup") {
            return bad("the budget is set by u-μP's search: include umup".into());
        }
        if self.proxy.alpha_exps.contains(&0) {
            return bad("the α grid leaves out 0 (α = 1 is the η stage's run)".into());
        }
        if self.target_seeds == 0 {
            return bad("at least one target seed".into());
        }
        self.proxy.validate()?;
        for p in &self.proxy.params {
            self.default_config(p, self.proxy.seed).validate()?;
        }
        Ok(())
    }

    /// u-μP's independent search at the proxy width, in `out/umup`.
    pub fn umup_sweep(&self) -> Sweep {
        Sweep {
            params: vec!["umup".into()],
            out: self.proxy.out.join("umup"),
            alpha_width: None,
            seeds: 1,
            ..self.proxy.clone()
        }
    }

    /// The number of proxy runs of every scheme: u-μP's η grid, each α on its grid, and the
    /// combined run.
    pub fn budget(&self) -> usize {
        let s = &self.proxy;
        s.umup_lr_exps.len() + s.alphas.len() * s.alpha_exps.len() + 1
    }

    /// The random search of `param` ([`baseline_space`]): [`EqualBudget::budget`] runs at the
    /// proxy width, labelled `random/<param>/<i>`, each value log-uniform on its range rounded
    /// to a quarter octave, from a generator seeded by the proxy seed and the scheme.
    pub fn random_points(&self, param: &str) -> Vec<Point> {
        let tag = param
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
        let mut rng = StdRng::seed_from_u64(self.proxy.seed.wrapping_mul(1_000_003) ^ tag);
        let space = baseline_space(param);
        (0..self.budget())
            .map(|i| {
                let mut cfg = self.proxy.base(param, self.proxy.widths[0], 1.0);
                for r in &space {
                    let e = (rng.gen_range(r.lo..=r.hi) * 4.0).round() / 4.0;
                    // Every name of the space is a settable hyperparameter.
                    let _ = cfg.set_hyper(&r.name, 2f64.powf(e));
                }
                Point {
                    cfg,
                    label: format!("random/{param}/{i:02}"),
                }
            })
            .collect()
    }

    /// The untuned defaults of `param` at the target width and `seed`: u-μP's η = 1 and every
    /// α = 1; μP's and SP's every multiplier 1 and η = [`EqualBudget::baseline_lr`] (Adam's
    /// customary 10^-3).
    pub fn default_config(&self, param: &str, seed: u64) -> TrainConfig {
        let lr = if param == "umup" {
            1.0
        } else {
            self.baseline_lr
        };
        TrainConfig {
            seed,
            ..self.proxy.base(param, self.target_width, lr)
        }
    }

    /// The proxy runs of `param` that can be listed now, with their losses: u-μP's stages as
    /// far as the finished runs allow (α after η, combined after α), or the random search.
    pub fn proxy_results(&self, param: &str) -> Result<Results> {
        if param != "umup" {
            return self.proxy.results(&self.random_points(param));
        }
        let s = self.umup_sweep();
        let mut all = s.eta_points();
        if let Ok(alpha) = s.stage_points(Stage::Alpha, &mut s.eta_points()) {
            let done = s.pending(&alpha)?.is_empty();
            all.extend(alpha);
            if done {
                all.extend(s.stage_points(Stage::Combined, &mut s.eta_points())?);
            }
        }
        // Labels relative to `out`, like every other run of the comparison.
        Ok(s.results(&all)?
            .into_iter()
            .map(|(p, l)| {
                let label = format!("umup/{}", p.label);
                (Point { label, ..p }, l)
            })
            .collect())
    }

    /// The run with the lowest finite final loss among `param`'s proxy `results`, once its
    /// search finished (u-μP: the combined run; the others: all [`EqualBudget::budget`] runs).
    pub fn winner(&self, param: &str, results: &Results) -> Option<(Point, f64)> {
        let done = if param == "umup" {
            results
                .iter()
                .any(|(p, l)| p.label.ends_with("/combined") && l.is_some())
        } else {
            results.len() == self.budget()
        };
        if !done || results.iter().any(|(_, l)| l.is_none()) {
            return None;
        }
        results
            .iter()
            .filter_map(|(p, l)| Some((p.clone(), (*l)?)))
            .filter(|(_, l)| l.is_finite())
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The target runs: for every scheme whose proxy search finished, its winner's
    /// hyperparameters at the target width (`target/<param>/tuned/seed<s>`) and its defaults
    /// (`target/<param>/default/seed<s>`), every seed.
    pub fn target_points(&self) -> Result<Vec<Point>> {
        let mut v = Vec::new();
        for param in &self.proxy.params {
            let Some((win, _)) = self.winner(param, &self.proxy_results(param)?) else {
                continue;
            };
            for seed in self.proxy.seed..self.proxy.seed + self.target_seeds {
                let tuned = TrainConfig {
                    width: self.target_width,
                    seed,
                    ..win.cfg.clone()
                };
                v.push(Point {
                    cfg: tuned,
                    label: format!("target/{param}/tuned/seed{seed}"),
                });
                v.push(Point {
                    cfg: self.default_config(param, seed),
                    label: format!("target/{param}/default/seed{seed}"),
                });
            }
        }
        Ok(v)
    }

    /// Runs every phase in turn ([`EqualBudget::pending`]) with `train`, then writes the report
    /// ([`EqualBudget::report`]) and returns its summary.
    pub fn run<T, O>(&self, train: T, observe: O) -> Result<String>
    where
        T: Fn(&TrainConfig, &RunOptions) -> Result<Summary> + Sync,
        O: Fn(Event<'_>) + Sync,
    {
        self.validate()?;
        loop {
            let pending = self.pending()?;
            if pending.is_empty() {
                break;
            }
            self.proxy.run_points(&pending, &train, &observe)?;
        }
        self.report()
    }

    /// The pending runs of the first phase that has any: (1) u-μP's η grid and the random
    /// searches, (2) u-μP's α grid, (3) its combined run, (4) the target runs; empty when
    /// everything finished. Labels are relative to `out`.
    pub fn pending(&self) -> Result<Vec<Point>> {
        let mut v = Vec::new();
        for param in &self.proxy.params {
            let results = self.proxy_results(param)?;
            v.extend(results.into_iter().filter(|r| r.1.is_none()).map(|r| r.0));
        }
        if v.is_empty() {
            v = self
                .proxy
                .pending(&self.target_points()?)?
                .into_iter()
                .cloned()
                .collect();
        }
        Ok(v)
    }

    /// One shell command per run of [`EqualBudget::pending`], made by `command(point, dir)`.
    /// Run them, then plan again for the next phase.
    pub fn plan(&self, command: impl Fn(&Point, &Path) -> String) -> Result<Vec<String>> {
        self.validate()?;
        let out = &self.proxy.out;
        Ok(self
            .pending()?
            .iter()
            .map(|p| command(p, &p.dir(out)))
            .collect())
    }

    /// Writes `out/budget.csv` (every run: label, scheme, width, seed, η, the α's, α_in,
    /// σ_init, final validation loss), `out/budget.png` (the best proxy loss so far against the
    /// runs spent, per scheme) and `out/summary.md` (per scheme: runs, best proxy loss and its
    /// hyperparameters, the target loss of the winner and of the defaults, mean and per seed).
    pub fn report(&self) -> Result<String> {
        let out = &self.proxy.out;
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        if self.winner("umup", &self.proxy_results("umup")?).is_some() {
            // u-μP's own sweep reports (η transfer table, α plot) in `out/umup`.
            self.umup_sweep()
                .collect(&[Stage::Eta, Stage::Alpha, Stage::Combined])?;
        }
        let target = self.proxy.results(&self.target_points()?)?;
        let mut csv = String::from("label,param,width,seed,lr,alpha_ffn_act,alpha_attn_softmax,alpha_res,alpha_res_attn_ratio,alpha_loss_softmax,alpha_input,sigma_init,final_val_loss\n");
        let mut summary = format!(
            "## Equal sweep budget: {} runs per scheme at width {}, winners at width {} ({} seeds)\n\n\
             | scheme | best proxy loss | its hyperparameters | target: tuned (mean) | per seed | target: defaults (mean) | per seed |\n\
             |---|---:|---|---:|---|---:|---|\n",
            self.budget(),
            self.proxy.widths[0],
            self.target_width,
            self.target_seeds
        );
        let mut panels = Vec::new();
        for param in &self.proxy.params {
            let proxy = self.proxy_results(param)?;
            let mut best = f64::INFINITY;
            let curve: Vec<(f64, f64)> = proxy
                .iter()
                .enumerate()
                .filter_map(|(i, (_, l))| {
                    best = best.min((*l)?);
                    Some(((i + 1) as f64, best))
                })
                .collect();
            panels.push((param.clone(), curve));
            let rows = proxy.iter().chain(
                target
                    .iter()
                    .filter(|(p, _)| p.label.starts_with(&format!("target/{param}/"))),
            );
            for (p, l) in rows {
                let c = &p.cfg;
                writeln!(
                    csv,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    p.label,
                    c.param,
                    c.width,
                    c.seed,
                    c.lr,
                    c.alpha_ffn_act,
                    c.alpha_attn_softmax,
                    c.alpha_res,
                    c.alpha_res_attn_ratio,
                    c.alpha_loss_softmax,
                    c.alpha_input,
                    c.sigma_init,
                    l.map_or(String::new(), |v| v.to_string())
                )
                .ok();
            }
            let Some((win, loss)) = self.winner(param, &proxy) else {
                writeln!(summary, "| {param} | (searching) | | | | | |").ok();
                continue;
            };
            let seeds = |kind: &str| -> (String, String) {
                let ls: Vec<Option<f64>> = target
                    .iter()
                    .filter(|(p, _)| p.label.starts_with(&format!("target/{param}/{kind}/")))
                    .map(|(_, l)| *l)
                    .collect();
                let per = ls
                    .iter()
                    .map(|l| l.map_or("-".into(), |l| format!("{l:.4}")))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mean = match ls.iter().copied().collect::<Option<Vec<f64>>>() {
                    Some(v) if !v.is_empty() => {
                        format!("{:.4}", v.iter().sum::<f64>() / v.len() as f64)
                    }
                    _ => "-".into(),
                };
                (mean, per)
            };
            let (tm, tp) = seeds("tuned");
            let (dm, dp) = seeds("default");
            writeln!(
                summary,
                "| {param} | {loss:.4} | {} | {tm} | {tp} | {dm} | {dp} |",
                describe(&win.cfg)
            )
            .ok();
        }
        std::fs::write(out.join("budget.csv"), csv).map_err(|e| io(out, e))?;
        plot::draw(
            &out.join("budget.png"),
            &[Panel {
                title: format!(
                    "best proxy loss so far (width {}) vs runs spent",
                    self.proxy.widths[0]
                ),
                x_label: "runs".into(),
                y_label: "validation loss".into(),
                series: panels,
                log_y: false,
                legend: true,
            }],
            1,
        )?;
        std::fs::write(out.join("summary.md"), &summary).map_err(|e| io(out, e))?;
        Ok(summary)
    }
}

/// `η = 2^e` and every hyperparameter that is not 1, as `name = 2^e`.
fn describe(cfg: &TrainConfig) -> String {
    TrainConfig::hyper_names()
        .map(|n| (n, cfg.get_hyper(n).unwrap_or(1.0)))
        .filter(|&(n, v)| n == "eta" || v != 1.0)
        .map(|(n, v)| format!("{n} 2^{}", fmt_exp(v.log2())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_exp(e: f64) -> String {
    if e == e.round() {
        format!("{e:.0}")
    } else {
        format!("{e:.2}")
    }
}

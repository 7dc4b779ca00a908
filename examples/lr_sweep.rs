//! Learning-rate transfer sweep and the independent α search (spec §6.1).
//!
//! ```text
//! cargo run --release --example lr_sweep                                  # η grid × widths × {umup, sp}
//! cargo run --release --example lr_sweep -- --model encoder --seeds 2     # the masked-byte encoder
//! cargo run --release --example lr_sweep -- --stage all                   # then 1-D α sweeps at the best η, then combined
//! cargo run --release --example lr_sweep -- --plan plan.txt               # one command per grid point, for a cluster
//! parallel -j 4 < plan.txt                                                # (or a Slurm array: sed -n "${SLURM_ARRAY_TASK_ID}p" plan.txt | sh)
//! cargo run --release --example lr_sweep -- --collect runs/lr_sweep       # merge finished points into CSV, plots, summary
//! ```
//!
//! Every grid point is an independent `train_lm` (or `train_encoder`) run in `DIR/<point>/`; a point whose run
//! finished is never redone, so an interrupted sweep resumes where it stopped. Locally the points
//! run `--jobs` at a time with a progress bar. Outputs: `DIR/sweep.csv`, `DIR/transfer.png`
//! (final validation loss vs η, one curve per width, one panel per parametrization; with
//! `--seeds N` the mean over N seeds),
//! `DIR/alphas.png`, and `DIR/summary.md` (best η per width and its drift, loss vs width at each
//! fixed η, α optima).

#[path = "common/plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use umup::data::Corpus;
use umup::train::{self, RunOptions, TrainConfig};

const ALPHAS: [&str; 5] = [
    "alpha_ffn_act",
    "alpha_attn_softmax",
    "alpha_res",
    "alpha_res_attn_ratio",
    "alpha_loss_softmax",
];

#[derive(Parser, Debug, Clone)]
#[command(about = "η transfer sweep across widths and parametrizations, then α sweeps")]
struct Args {
    /// The model family: lm (the transformer LM) or encoder (the masked-byte encoder).
    #[arg(long, default_value = "lm")]
    model: String,
    /// Output directory (one subdirectory per grid point).
    #[arg(long, default_value = "runs/lr_sweep")]
    out: PathBuf,
    /// Widths (compiled: 64, 128, 256, 512).
    #[arg(long, default_value = "64,128,256", value_delimiter = ',')]
    widths: Vec<usize>,
    /// Depth (compiled: 2, 4).
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Parametrizations.
    #[arg(long, default_value = "umup,sp", value_delimiter = ',')]
    param: Vec<String>,
    /// log2 η grid for umup.
    #[arg(
        long,
        default_value = "-3,-2,-1,0,1,2,3",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    umup_lr_exps: Vec<i32>,
    /// log2 η grid for mup and sp.
    #[arg(
        long,
        default_value = "-12,-11,-10,-9,-8,-7,-6",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    sp_lr_exps: Vec<i32>,
    /// log2 grid of each α in the α stage.
    #[arg(
        long,
        default_value = "-2,-1,0,1,2",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    alpha_exps: Vec<i32>,
    /// Width of the α sweeps [default: the widest].
    #[arg(long)]
    alpha_width: Option<usize>,
    /// eta: the η grid; alpha: 1-D α sweeps at the best u-μP η; combined: all α optima
    /// together; all: the three in turn.
    #[arg(long, default_value = "eta")]
    stage: String,
    /// Steps per point.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Bytes per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Linear warm-up as a fraction of `--steps` (the reference demo of spec §10: 0.2).
    #[arg(long, default_value_t = 0.1)]
    warmup_fraction: f64,
    /// Final LR of the cosine decay as a fraction of η (the reference demo: 0).
    #[arg(long, default_value_t = 0.1)]
    final_lr_fraction: f64,
    /// Validation batches (of `--batch` × `--seq`) for each point's final loss.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Seed (the same data order at every point).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run every η point with this many seeds (`--seed`, `--seed`+1, ...) and compare the mean
    /// final loss; the α stages run at `--seed` only. Points of seed 0 live under `eta/`, of
    /// seed s > 0 under `eta-seed<s>/`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Points run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Write one `train_lm` command per pending point to this file instead of running.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Only merge the finished points under this directory.
    #[arg(long)]
    collect: Option<PathBuf>,
}

/// One grid point.
#[derive(Debug, Clone)]
struct Point {
    cfg: TrainConfig,
    label: String,
}

impl Point {
    fn dir(&self, out: &Path) -> PathBuf {
        out.join(&self.label)
    }

    fn command(&self, out: &Path) -> String {
        let c = &self.cfg;
        format!(
            "cargo run --release --example train_{} -- --quiet --sample-len 0 --param {} --width {} --depth {} --steps {} --batch {} --seq {} --seed {} --lr {} --warmup {} --final-lr-fraction {} --eval-every {} --eval-batches {} --alpha-ffn-act {} --alpha-attn-softmax {} --alpha-res {} --alpha-res-attn-ratio {} --alpha-loss-softmax {} --out {}",
            c.model, c.param, c.width, c.depth, c.steps, c.batch, c.seq, c.seed, c.lr, c.warmup, c.final_lr_fraction, c.eval_every, c.eval_batches,
            c.alpha_ffn_act, c.alpha_attn_softmax, c.alpha_res, c.alpha_res_attn_ratio, c.alpha_loss_softmax,
            self.dir(out).display()
        )
    }
}

/// "Loss vs width at fixed η": for every parametrization and η, the (mean) final loss at each
/// width and whether it falls strictly from the narrowest to the widest.
fn width_table(args: &Args, means: &BTreeMap<(String, usize, i32), Option<f64>>) -> String {
    let mut widths = args.widths.clone();
    widths.sort_unstable();
    let mut t = String::from("\n## Loss vs width at fixed η\n\n| parametrization | η |");
    for w in &widths {
        t += &format!(" width {w} |");
    }
    t += " improves with width |\n|---|---:|";
    t += &"---:|".repeat(widths.len());
    t += "---|\n";
    for param in &args.param {
        for &e in lr_exps(args, param) {
            let losses: Vec<Option<f64>> = widths
                .iter()
                .map(|&w| means.get(&(param.clone(), w, e)).copied().flatten())
                .collect();
            t += &format!("| {param} | 2^{e} |");
            for l in &losses {
                t += &l.map_or(" - |".into(), |l| format!(" {l:.4} |"));
            }
            let verdict = if losses.iter().any(Option::is_none) {
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

/// The final validation loss of a point if it finished (∞ if it diverged), `None` if it is still
/// to run; a directory holding a run with other settings is an error
/// ([`train::finished_val_loss`]).
fn finished(dir: &Path, cfg: &TrainConfig) -> umup::Result<Option<f64>> {
    let loss = train::finished_val_loss(cfg, dir)?;
    Ok(if dir.join("diverged").exists() {
        Some(f64::INFINITY)
    } else {
        loss
    })
}

/// The points that have not finished (their settings checked against their directories).
fn pending<'a>(args: &Args, points: &'a [Point]) -> umup::Result<Vec<&'a Point>> {
    let mut v = Vec::new();
    for p in points {
        if finished(&p.dir(&args.out), &p.cfg)?.is_none() {
            v.push(p);
        }
    }
    Ok(v)
}

fn base(args: &Args, param: &str, width: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        model: args.model.clone(),
        width,
        depth: args.depth,
        heads: (width / 64).max(1),
        param: param.into(),
        steps: args.steps,
        batch: args.batch,
        seq: args.seq,
        lr,
        warmup: (args.steps as f64 * args.warmup_fraction).round() as usize,
        final_lr_fraction: args.final_lr_fraction,
        seed: args.seed,
        eval_every: args.steps,
        eval_batches: args.eval_batches,
        ..TrainConfig::default()
    }
}

fn lr_exps<'a>(args: &'a Args, param: &str) -> &'a [i32] {
    if param == "umup" {
        &args.umup_lr_exps
    } else {
        &args.sp_lr_exps
    }
}

fn eta_points(args: &Args) -> Vec<Point> {
    let mut v = Vec::new();
    for seed in args.seed..args.seed + args.seeds {
        let stage = if seed == 0 {
            "eta".to_string()
        } else {
            format!("eta-seed{seed}")
        };
        for p in &args.param {
            for &w in &args.widths {
                for &e in lr_exps(args, p) {
                    v.push(Point {
                        cfg: TrainConfig {
                            seed,
                            ..base(args, p, w, 2f64.powi(e))
                        },
                        label: format!("{stage}/{p}/w{w}/log2lr{e}"),
                    });
                }
            }
        }
    }
    v
}

/// The mean final loss over `--seeds` of each η point, by parametrization, width and log2 η:
/// `None` until every seed finished, ∞ if any diverged.
fn eta_means(
    args: &Args,
    results: &[(Point, Option<f64>)],
) -> BTreeMap<(String, usize, i32), Option<f64>> {
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
            let mean = (complete && n == args.seeds).then(|| sum / n as f64);
            (k, mean)
        })
        .collect()
}

fn alpha_width(args: &Args) -> usize {
    args.alpha_width
        .unwrap_or_else(|| args.widths.iter().copied().max().unwrap_or(64))
}

/// Best η of u-μP at the α width (lowest mean loss over the seeds), from the finished η points.
fn best_eta(args: &Args, results: &[(Point, Option<f64>)]) -> Option<f64> {
    let w = alpha_width(args);
    eta_means(args, results)
        .into_iter()
        .filter_map(|((param, width, e), l)| (param == "umup" && width == w).then_some((e, l?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| 2f64.powi(e))
}

fn alpha_points(args: &Args, eta: f64) -> Vec<Point> {
    let w = alpha_width(args);
    let mut v = Vec::new();
    for a in ALPHAS {
        for &e in &args.alpha_exps {
            let mut cfg = base(args, "umup", w, eta);
            let mut hp = cfg.hyper();
            if hp.set(a, 2f64.powi(e)).is_ok() {
                set_alphas(&mut cfg, &hp);
            }
            v.push(Point {
                cfg,
                label: format!("alpha/{a}/log2{e}"),
            });
        }
    }
    v
}

fn set_alphas(cfg: &mut TrainConfig, hp: &umup::nn::Hyper) {
    cfg.alpha_ffn_act = hp.alpha_ffn_act;
    cfg.alpha_attn_softmax = hp.alpha_attn_softmax;
    cfg.alpha_res = hp.alpha_res;
    cfg.alpha_res_attn_ratio = hp.alpha_res_attn_ratio;
    cfg.alpha_loss_softmax = hp.alpha_loss_softmax;
}

/// Best value of each α from the finished α points.
fn best_alphas(results: &[(Point, Option<f64>)]) -> BTreeMap<&'static str, (f64, f64)> {
    let mut best = BTreeMap::new();
    for a in ALPHAS {
        let prefix = format!("alpha/{a}/");
        if let Some((p, Some(l))) = results
            .iter()
            .filter(|(p, l)| p.label.starts_with(&prefix) && l.is_some())
            .min_by(|x, y| x.1.unwrap_or(f64::MAX).total_cmp(&y.1.unwrap_or(f64::MAX)))
        {
            best.insert(a, (p.cfg.hyper().get(a).unwrap_or(1.0), *l));
        }
    }
    best
}

fn run_points(args: &Args, corpus: &Corpus, points: &[Point]) -> umup::Result<()> {
    let pending = pending(args, points)?;
    if pending.is_empty() {
        return Ok(());
    }
    let bar = ProgressBar::new(pending.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} points  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let queue = Mutex::new(pending.into_iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some(p) = next else { break };
                let opts = RunOptions {
                    out: p.dir(&args.out),
                    resume: false,
                    stop_at: None,
                    sample_len: 0,
                    device: Default::default(),
                };
                match train::train_compiled(&p.cfg, corpus, &opts, &mut |_| {}) {
                    Ok(sm) => bar.set_message(format!("{}: {:.4}", p.label, sm.final_val_loss)),
                    // A diverged point is a result (loss = ∞), not a failure of the sweep.
                    Err(umup::Error::Diverged { .. }) => {
                        let _ = std::fs::write(p.dir(&args.out).join("diverged"), "");
                        bar.set_message(format!("{}: diverged", p.label));
                    }
                    Err(e) => {
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{}: {e}", p.label));
                        }
                    }
                }
                bar.inc(1);
            });
        }
    });
    bar.finish();
    let failures = failures.into_inner().unwrap_or_default();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(umup::Error::Invalid(format!(
            "{} points failed:\n{}",
            failures.len(),
            failures.join("\n")
        )))
    }
}

fn results(args: &Args, points: &[Point]) -> umup::Result<Vec<(Point, Option<f64>)>> {
    points
        .iter()
        .map(|p| Ok((p.clone(), finished(&p.dir(&args.out), &p.cfg)?)))
        .collect()
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> umup::Result<()> {
    if let Some(dir) = args.collect.clone() {
        args.out = dir;
    }
    let stages: &[&str] = match args.stage.as_str() {
        "eta" => &["eta"],
        "alpha" => &["alpha"],
        "combined" => &["combined"],
        "all" => &["eta", "alpha", "combined"],
        other => {
            return Err(umup::Error::Invalid(format!(
                "--stage {other}: expected eta, alpha, combined or all"
            )))
        }
    };
    for (flag, v) in [
        ("--warmup-fraction", args.warmup_fraction),
        ("--final-lr-fraction", args.final_lr_fraction),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(umup::Error::Invalid(format!(
                "{flag} {v}: expected a fraction in [0, 1]"
            )));
        }
    }
    for p in &args.param {
        for &w in &args.widths {
            let cfg = base(&args, p, w, 1.0);
            train::param_table_compiled(&cfg)?;
            cfg.validate()?;
        }
    }
    let corpus = Corpus::shakespeare(0.1)?;
    let mut all = eta_points(&args);
    let mut plan = Vec::new();
    for stage in stages {
        let points = match *stage {
            "eta" => eta_points(&args),
            "alpha" | "combined" => {
                let Some(eta) = best_eta(&args, &results(&args, &all)?) else {
                    return Err(umup::Error::Invalid(
                        "the α stages need the u-μP η points at the α width to have finished (run --stage eta first)".into(),
                    ));
                };
                let alpha = alpha_points(&args, eta);
                if *stage == "alpha" {
                    alpha
                } else {
                    let best = best_alphas(&results(&args, &alpha)?);
                    let mut cfg = base(&args, "umup", alpha_width(&args), eta);
                    let mut hp = cfg.hyper();
                    for (a, (v, _)) in &best {
                        hp.set(a, *v)?;
                    }
                    set_alphas(&mut cfg, &hp);
                    all.extend(alpha);
                    vec![Point {
                        cfg,
                        label: "combined".into(),
                    }]
                }
            }
            _ => Vec::new(),
        };
        if args.plan.is_some() {
            plan.extend(
                pending(&args, &points)?
                    .iter()
                    .map(|p| p.command(&args.out)),
            );
            // Later stages depend on this one's results.
            break;
        }
        if args.collect.is_none() {
            eprintln!("stage {stage}: {} points", points.len());
            run_points(&args, &corpus, &points)?;
        }
        for p in points {
            if !all.iter().any(|q| q.label == p.label) {
                all.push(p);
            }
        }
    }
    if let Some(path) = &args.plan {
        std::fs::write(path, plan.join("\n") + "\n")
            .map_err(|e| umup::Error::Invalid(format!("{}: {e}", path.display())))?;
        println!("wrote {} commands to {}", plan.len(), path.display());
        return Ok(());
    }
    report(&args, &results(&args, &all)?)
}

fn report(args: &Args, results: &[(Point, Option<f64>)]) -> umup::Result<()> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| umup::Error::Invalid(format!("{}: {e}", args.out.display())))?;
    let mut csv = String::from("label,param,width,lr,seed,alpha_ffn_act,alpha_attn_softmax,alpha_res,alpha_res_attn_ratio,alpha_loss_softmax,final_val_loss\n");
    for (p, l) in results {
        let c = &p.cfg;
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
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
        );
    }
    let write = |name: &str, text: &str| {
        std::fs::write(args.out.join(name), text)
            .map_err(|e| umup::Error::Invalid(format!("{name}: {e}")))
    };
    write("sweep.csv", &csv)?;

    let means = eta_means(args, results);
    let seeds = if args.seeds > 1 {
        format!(" (mean over {} seeds)", args.seeds)
    } else {
        String::new()
    };
    let mut summary = format!("## η transfer{seeds}\n\n| parametrization | width | best η | loss at best η |\n|---|---:|---:|---:|\n");
    let mut panels = Vec::new();
    for param in &args.param {
        let mut series = Vec::new();
        let mut best_per_width = Vec::new();
        for &w in &args.widths {
            let pts: Vec<(f64, f64)> = lr_exps(args, param)
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
                summary += &format!("| {param} | {w} | 2^{} | {loss:.4} |\n", lr.log2().round());
                best_per_width.push(lr.log2());
            }
            series.push((format!("width {w}"), pts));
        }
        if let (Some(first), Some(last)) = (best_per_width.first(), best_per_width.last()) {
            summary += &format!(
                "| {param} | drift | {:+} grid steps from the narrowest to the widest | |\n",
                (last - first).round()
            );
        }
        panels.push(plot::Panel {
            title: format!("{param}: final validation loss vs η{seeds}"),
            x_label: "η".into(),
            y_label: "validation loss".into(),
            series,
            log_y: false,
            legend: true,
        });
    }
    plot::draw(&args.out.join("transfer.png"), &panels, panels.len())?;
    summary += &width_table(args, &means);
    let best = best_alphas(results);
    if !best.is_empty() {
        let default = results
            .iter()
            .find(|(p, _)| p.label == "alpha/alpha_ffn_act/log20")
            .and_then(|(_, l)| *l);
        summary += "\n## α sweeps (u-μP, at the best η)\n\n| α | best value | loss at best | loss at α = 1 |\n|---|---:|---:|---:|\n";
        let mut apanels = Vec::new();
        for a in ALPHAS {
            if let Some((v, l)) = best.get(a) {
                summary += &format!(
                    "| {a} | {v} | {l:.4} | {} |\n",
                    default.map_or("-".into(), |d| format!("{d:.4}"))
                );
            }
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|(p, l)| p.label.starts_with(&format!("alpha/{a}/")) && l.is_some())
                .map(|(p, l)| (p.cfg.hyper().get(a).unwrap_or(1.0), l.unwrap_or(f64::NAN)))
                .collect();
            apanels.push((a.to_string(), pts));
        }
        if let Some((_, Some(l))) = results.iter().find(|(p, _)| p.label == "combined") {
            summary += &format!("\nCombined run (every α at its optimum): {l:.4}\n");
        }
        plot::draw(
            &args.out.join("alphas.png"),
            &[plot::Panel {
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
    print!("{summary}");
    println!(
        "\nwrote {}/{{sweep.csv, transfer.png, summary.md}}",
        args.out.display()
    );
    Ok(())
}

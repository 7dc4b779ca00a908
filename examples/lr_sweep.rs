//! Learning-rate transfer sweep and the independent α search (spec §6.1).
//!
//! ```text
//! cargo run --release --example lr_sweep                                  # η grid × widths × {umup, sp}
//! cargo run --release --example lr_sweep -- --model encoder --seeds 2     # the masked-byte encoder
//! cargo run --release --example lr_sweep -- --model vit --widths 32,64,128,256 --batch 64   # the ViT on the digits
//! cargo run --release --example lr_sweep -- --tokenizer bpe               # the LM on BPE tokens
//! cargo run --release --example lr_sweep -- --stage all                   # then 1-D α sweeps at the best η, then combined
//! cargo run --release --example lr_sweep -- --widths 128 --depth 4 --vary depth=2,4,8,16   # η transfer across depth (or batch=, steps=)
//! cargo run --release --example lr_sweep -- --widths 64 --param umup,mup,sp --equal-budget 512 --alpha-exps=-2,-1,1,2 --seeds 3   # u-μP vs μP vs SP at equal sweep budget
//! cargo run --release --example lr_sweep -- --plan plan.txt               # one command per grid point, for a cluster
//! parallel -j 4 < plan.txt                                                # (or a Slurm array: sed -n "${SLURM_ARRAY_TASK_ID}p" plan.txt | sh)
//! cargo run --release --example lr_sweep -- --collect runs/lr_sweep       # merge finished points into CSV, plots, summary
//! ```
//!
//! Every grid point is an independent `train_lm` (`train_encoder`, `train_vit`) run in `DIR/<point>/`; a point whose run
//! finished is never redone, so an interrupted sweep resumes where it stopped. Locally the points
//! run `--jobs` at a time with a progress bar. Outputs: `DIR/sweep.csv`, `DIR/transfer.png`
//! (final validation loss vs η, one curve per width, one panel per parametrization; with
//! `--seeds N` the mean over N seeds),
//! `DIR/alphas.png`, and `DIR/summary.md` (best η per width and its drift, loss vs width at each
//! fixed η, α optima).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use umup::nn::AttentionScale;
use umup::params::NormParams;
use umup::sweep::{train_flags, Axis, AxisSweep, EqualBudget, Event, Point, Stage, Sweep};
use umup::train::{RunOptions, Summary, TrainConfig};

#[macro_use]
#[path = "common/shipped.rs"]
mod shipped;
use shipped::DataArgs;

#[derive(Parser, Debug, Clone)]
#[command(about = "η transfer sweep across widths and parametrizations, then α sweeps")]
struct Args {
    /// The model family: lm (the transformer LM), encoder (the masked-byte encoder) or vit (the
    /// image classifier on the digits).
    #[arg(long, default_value = "lm")]
    model: String,
    /// Output directory (one subdirectory per grid point).
    #[arg(long, default_value = "runs/lr_sweep")]
    out: PathBuf,
    /// Widths (compiled: 64, 128, 256, 512).
    #[arg(long, default_value = "64,128,256", value_delimiter = ',')]
    widths: Vec<usize>,
    /// Depth (compiled: 2, 4; the LM also 8 and 16 at width 128).
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
    #[command(flatten)]
    data: DataArgs,
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
    /// Attention's output scale under u-μP at every point: auto, reference or mean (as
    /// `train_*`'s flag).
    #[arg(long, default_value = "auto")]
    attn_scale: AttentionScale,
    /// Norm gains and biases at every point: auto, fixed or trained (as `train_*`'s flag).
    #[arg(long, default_value = "auto")]
    norm_params: NormParams,
    /// Write one `train_lm` command per pending point to this file instead of running.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Only merge the finished points under this directory.
    #[arg(long)]
    collect: Option<PathBuf>,
    /// η transfer along another axis instead of width: `depth=2,4,8,16`, `batch=4,8,16` or
    /// `steps=150,300,600` (one width; the η stage at each value, in `DIR/<axis><value>/`;
    /// reports `DIR/summary.md`, `DIR/axis.csv`, `DIR/transfer_<axis>.png`).
    #[arg(long)]
    vary: Option<String>,
    /// u-μP against μP and SP at an equal sweep budget, the winners trained at this width:
    /// `--widths` is the one proxy width, u-μP's budget is its η grid + each α on
    /// `--alpha-exps` (without 0) + the combined run, μP and SP random-search as many runs,
    /// and `--seeds` seeds the target runs (`umup::sweep::EqualBudget`).
    #[arg(long)]
    equal_budget: Option<usize>,
    /// With `--equal-budget`: μP's and SP's untuned η (their defaults at the target).
    #[arg(long, default_value_t = 1e-3)]
    baseline_lr: f64,
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

fn run(args: Args) -> umup::Result<()> {
    let text = args.data.clone();
    let command = |point: &Point, dir: &Path| command(point, dir, &text);
    let sweep = Sweep {
        model: args.model,
        out: args.collect.clone().unwrap_or(args.out),
        widths: args.widths,
        depth: args.depth,
        params: args.param,
        umup_lr_exps: args.umup_lr_exps,
        sp_lr_exps: args.sp_lr_exps,
        alpha_exps: args.alpha_exps,
        alpha_width: args.alpha_width,
        steps: args.steps,
        batch: args.batch,
        warmup_fraction: args.warmup_fraction,
        final_lr_fraction: args.final_lr_fraction,
        eval_batches: args.eval_batches,
        seed: args.seed,
        seeds: args.seeds,
        jobs: args.jobs,
        attention: args.attn_scale,
        norm_params: args.norm_params,
        ..Sweep::default()
    };
    let stages = Stage::parse_list(&args.stage)?;
    if let Some(target_width) = args.equal_budget {
        let budget = EqualBudget {
            target_width,
            target_seeds: sweep.seeds,
            baseline_lr: args.baseline_lr,
            proxy: Sweep { seeds: 1, ..sweep },
        };
        budget.validate()?;
        check_compiled(&budget.proxy, &text)?;
        for p in &budget.proxy.params {
            shipped::param_table(&budget.default_config(p, 0), &text)?;
        }
        return finish(
            &text,
            &budget.proxy.model,
            args.plan.as_deref(),
            args.collect.is_some(),
            || budget.plan(command),
            || budget.report(),
            |t, o| budget.run(t, o),
            format!(
                "{}/{{budget.csv, budget.png, summary.md}}",
                budget.proxy.out.display()
            ),
        );
    }
    if let Some(spec) = &args.vary {
        if stages != [Stage::Eta] {
            return Err(umup::Error::Invalid(
                "--vary runs the η stage only (leave --stage at eta)".into(),
            ));
        }
        let (axis, values) = Axis::parse(spec)?;
        let axis = AxisSweep::new(axis, values, sweep)?;
        for (_, s) in axis.sweeps() {
            check_compiled(&s, &text)?;
        }
        let name = axis.axis.name();
        return finish(
            &text,
            &axis.base.model,
            args.plan.as_deref(),
            args.collect.is_some(),
            || axis.plan(command),
            || axis.collect(),
            |t, o| axis.run(t, o),
            format!(
                "{}/{{axis.csv, transfer_{name}.png, summary.md}}",
                axis.base.out.display()
            ),
        );
    }
    sweep.validate()?;
    check_compiled(&sweep, &text)?;
    finish(
        &text,
        &sweep.model,
        args.plan.as_deref(),
        args.collect.is_some(),
        || sweep.plan(&stages, command),
        || sweep.collect(&stages),
        |t, o| sweep.run(&stages, t, o),
        format!(
            "{}/{{sweep.csv, transfer.png, summary.md}}",
            sweep.out.display()
        ),
    )
}

/// The sequence length of the sweeps' text windows unless `--seq` says otherwise.
const SEQ: usize = 64;

/// The shipped trainer, for [`finish`].
type Train<'a> = &'a (dyn Fn(&TrainConfig, &RunOptions) -> umup::Result<Summary> + Sync);
/// The progress display, for [`finish`].
type Observe<'a> = &'a (dyn Fn(Event<'_>) + Sync);

/// Writes the commands of `commands` to `plan`, or prints `report` (`collect`), or trains with
/// `run` (the shipped trainer of `model` on the data of `text`, with a progress bar) and prints
/// its summary and where the reports are (`wrote`).
#[allow(clippy::too_many_arguments)]
fn finish(
    text: &DataArgs,
    model: &str,
    plan: Option<&Path>,
    collect: bool,
    commands: impl FnOnce() -> umup::Result<Vec<String>>,
    report: impl FnOnce() -> umup::Result<String>,
    run: impl FnOnce(Train<'_>, Observe<'_>) -> umup::Result<String>,
    wrote: String,
) -> umup::Result<()> {
    if let Some(path) = plan {
        let plan = commands()?;
        std::fs::write(path, plan.join("\n") + "\n")
            .map_err(|e| umup::Error::Invalid(format!("{}: {e}", path.display())))?;
        println!("wrote {} commands to {}", plan.len(), path.display());
        return Ok(());
    }
    let summary = if collect {
        report()?
    } else {
        let bar = Mutex::new(None);
        let observe = |event: Event<'_>| progress(&bar, event);
        let summary = with_shipped!(model, text, SEQ, |F, data| {
            let train = |cfg: &TrainConfig, r: &RunOptions| F::train(cfg, &data, r, &mut |_| {});
            run(&train, &observe)
        });
        if let Some(bar) = bar.lock().ok().and_then(|mut b| b.take()) {
            bar.finish();
        }
        summary?
    };
    print!("{summary}");
    println!("\nwrote {wrote}");
    Ok(())
}

/// Errors unless the trainer was compiled at every size of `sweep` (on the data of `text`).
fn check_compiled(sweep: &Sweep, text: &DataArgs) -> umup::Result<()> {
    for p in &sweep.params {
        for &w in &sweep.widths {
            shipped::param_table(&sweep.base(p, w, 1.0), text)?;
        }
    }
    Ok(())
}

/// The shell command that trains `point` into `dir` on the data of `text`.
fn command(point: &Point, dir: &Path, text: &DataArgs) -> String {
    let flags = train_flags(&point.cfg, dir);
    format!(
        "cargo run --release --example train_{} -- {flags} {}",
        point.cfg.model,
        text.flags(&point.cfg.model, SEQ)
    )
}

/// Shows the sweep's progress: the stages on stderr, the points of each stage as a progress bar.
fn progress(bar: &Mutex<Option<ProgressBar>>, event: Event<'_>) {
    let Ok(mut bar) = bar.lock() else { return };
    match event {
        Event::Stage { stage, points } => eprintln!("stage {}: {points} points", stage.name()),
        Event::Pending(n) => {
            if let Some(old) = bar.take() {
                old.finish();
            }
            let style = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} points  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            *bar = Some(ProgressBar::new(n as u64).with_style(style));
        }
        Event::Finished { point, loss } => {
            if let Some(b) = bar.as_ref() {
                match loss.is_finite() {
                    true => b.set_message(format!("{}: {loss:.4}", point.label)),
                    false => b.set_message(format!("{}: diverged", point.label)),
                }
                b.inc(1);
            }
        }
        Event::Failed { .. } => {
            if let Some(b) = bar.as_ref() {
                b.inc(1);
            }
        }
    }
}

//! Scale check (μP's coord check): RMS of every parameter, activation and gradient of a model
//! family (`--model lm`, the transformer LM; `encoder`, the masked-byte encoder; `vit`, the image
//! classifier) at several widths, on real data, at init and over the first training steps.
//!
//! ```text
//! cargo run --release --example scale_check                                   # u-μP LM, widths 64..1024
//! cargo run --release --example scale_check -- --model encoder --widths 64,512 --repeats 8
//! cargo run --release --example scale_check -- --model vit --widths 64,256 --repeats 4
//! cargo run --release --example scale_check -- --param umup,mup,sp --widths 64,128,256,512
//! cargo run --release --example scale_check -- --steps 5 --json runs/scale.json
//! cargo run --release --example scale_check -- --load runs/scale.json             # re-check a saved run
//! ```
//!
//! Prints an aligned table (one row per tensor, one column per width, and the spread
//! max/min across widths), checks the u-μP expectations of spec §10, and draws
//! `runs/scale_check/scale_check.png` (RMS vs width, log-log, one panel per parametrization and
//! kind; with `--steps N` a second row of panels after step N). `--json PATH` writes one report
//! per parametrization (an array when several):
//! `{"parametrization": "umup", "rows": [{"width": 64, "step": 0, "kind": "param|activation|grad",
//! "name": "layers.0.mlp.up.weight", "rms": 1.0}, ...], "loss": [{"width": 64, "step": 0,
//! "value": 5.55}, ...]}`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use umup::family::Options;
use umup::nn::AttentionScale;
use umup::params::NormParams;
use umup::scale_check::{self, Measurement, Report, Settings};

#[macro_use]
#[path = "common/shipped.rs"]
mod shipped;

#[derive(Parser, Debug)]
#[command(
    about = "RMS of every parameter, activation and gradient of a model family across widths"
)]
struct Args {
    /// The model family: lm (the transformer LM), encoder (the masked-byte encoder) or vit (the
    /// image classifier on the digits).
    #[arg(long, default_value = "lm")]
    model: String,
    /// Widths (compiled: 64, 128, 256, 512; the LM also 1024).
    #[arg(long, default_value = "64,128,256,512,1024", value_delimiter = ',')]
    widths: Vec<usize>,
    /// Number of layers [default: 4; vit: 2] (compiled: 2, 4; the LM at width 1024: 4; vit: 2).
    #[arg(long)]
    depth: Option<usize>,
    /// Parametrizations, comma-separated: umup, mup (base width 64), sp.
    #[arg(long, default_value = "umup", value_delimiter = ',')]
    param: Vec<String>,
    /// Training steps to measure after init.
    #[arg(long, default_value_t = 0)]
    steps: usize,
    /// Seed of init and batch (the same batch at every width).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Average over this many seeds (seed, seed+1, ...): RMS combined as √(mean of squares).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// Examples (sequences) per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    data: shipped::DataArgs,
    /// η for --steps [default: 1 for umup, 2^-7 for mup and sp].
    #[arg(long)]
    lr: Option<f64>,
    /// Attention head dimension (heads = width / d_head).
    #[arg(long, default_value_t = 64)]
    d_head: usize,
    /// Attention's output scale under u-μP: auto, reference or mean (as `train_*`'s flag).
    #[arg(long, default_value = "auto")]
    attn_scale: AttentionScale,
    /// Norm gains and biases during `--steps`: auto, fixed or trained (as `train_*`'s flag).
    #[arg(long, default_value = "auto")]
    norm_params: NormParams,
    /// Write the reports as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to draw the plot.
    #[arg(long, default_value = "runs/scale_check/scale_check.png")]
    png: PathBuf,
    /// Measure nothing: read the reports from a file written by `--json`, then print the table
    /// and the checks and draw the plot as for a new measurement.
    #[arg(long, conflicts_with_all = ["model", "depth", "widths", "param", "steps", "seed", "repeats", "batch", "seq", "lr", "d_head", "data", "json"])]
    load: Option<PathBuf>,
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
    umup::threads::init(0)?;
    let reports = match &args.load {
        Some(path) => scale_check::load_json(path)?,
        None => measure(&args)?,
    };
    for report in &reports {
        print!("{}", scale_check::render(report));
    }
    if let Some(path) = &args.json {
        scale_check::write_json(path, &reports)?;
        println!("wrote {}", path.display());
    }
    scale_check::plot_reports(&args.png, &reports)?;
    println!("wrote {}", args.png.display());
    Ok(())
}

/// Runs the scale check of every `--param` at every `--widths`, `--repeats` seeds each.
fn measure(args: &Args) -> umup::Result<Vec<Report>> {
    let m = Measurement {
        widths: args.widths.clone(),
        depth: args
            .depth
            .unwrap_or(if args.model == "vit" { 2 } else { 4 }),
        params: args.param.clone(),
        repeats: args.repeats,
        settings: Settings {
            batch: args.batch,
            steps: args.steps,
            seed: args.seed,
            lr: 1.0,
            options: Options::new().with("d_head", args.d_head),
            attention: args.attn_scale,
            norm_params: args.norm_params,
        },
        lr: args.lr,
    };
    let model = args.model.as_str();
    let mut progress = |param: &str, w: usize| eprintln!("{model} {param}: width {w} ...");
    with_shipped!(model, args.data, 128, |F, data| F::measure(
        &data,
        &m,
        &mut progress
    ))
}

//! The command line of `train_lm` and `train_encoder`: the same flags, outputs and checkpoints
//! for every shipped text family, over [`umup::train::train_family`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use umup::data::Data;
use umup::device::DeviceKind;
use umup::family::Options;
use umup::nn::AttentionScale;
use umup::params::NormParams;
use umup::train::{Precision, RunOptions, TrainConfig};

use crate::shipped::{self, DataArgs};

#[derive(Parser, Debug)]
struct Args {
    /// Optimizer updates.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    /// Model width [default: 128; vit: 64] (compiled: 64, 128, 256, 512; the LM also 1024 at
    /// depth 4; vit 32 to 256).
    #[arg(long)]
    width: Option<usize>,
    /// Number of layers [default: 4; vit: 2] (compiled: 2, 4; the LM also 8 and 16 at width
    /// 128; vit 2).
    #[arg(long)]
    depth: Option<usize>,
    /// Attention heads [default: width / 64, at least 1].
    #[arg(long)]
    heads: Option<usize>,
    /// Examples (sequences, images) per batch [default: 16; vit: 64].
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Global learning rate η [default: 1.0 for umup, 2^-7 for mup and sp].
    #[arg(long)]
    lr: Option<f64>,
    /// α_ffn-act.
    #[arg(long, default_value_t = 1.0)]
    alpha_ffn_act: f64,
    /// α_attn-softmax.
    #[arg(long, default_value_t = 1.0)]
    alpha_attn_softmax: f64,
    /// α_res.
    #[arg(long, default_value_t = 1.0)]
    alpha_res: f64,
    /// α_res-attn-ratio.
    #[arg(long, default_value_t = 1.0)]
    alpha_res_attn_ratio: f64,
    /// α_loss-softmax (for μP and SP also their output multiplier).
    #[arg(long, default_value_t = 1.0)]
    alpha_loss_softmax: f64,
    /// μP's and SP's input multiplier α_in (u-μP: must be 1).
    #[arg(long, default_value_t = 1.0)]
    alpha_input: f64,
    /// μP's and SP's init σ, as a multiple of the rule's (u-μP: must be 1).
    #[arg(long, default_value_t = 1.0)]
    sigma_init: f64,
    /// Attention's output scale under u-μP: auto (reference for causal attention, mean for
    /// non-causal), reference (the reference library's rule) or mean (the weighted mean's own
    /// scale) (docs/results.md §9).
    #[arg(long, default_value = "auto")]
    attn_scale: AttentionScale,
    /// Norm gains and biases: auto (fixed under u-μP, trained under μP and SP), fixed or trained
    /// (docs/results.md §9).
    #[arg(long, default_value = "auto")]
    norm_params: NormParams,
    /// Parametrization: umup, mup (base width 64) or sp.
    #[arg(long, default_value = "umup")]
    param: String,
    /// Number formats: f32; f16 (mixed precision: f16 compute, f32 master weights; for
    /// --device cuda); f16-sim, bf16-sim, fp8-sim (simulated matmul formats).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Linear warm-up steps [default: steps / 10].
    #[arg(long)]
    warmup: Option<usize>,
    /// Final LR as a fraction of η (cosine decay).
    #[arg(long, default_value_t = 0.1)]
    final_lr_fraction: f64,
    /// Independent weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Rotary position embeddings (the LM only; off by default, as the reference).
    #[arg(long)]
    rope: bool,
    /// Seed of init, batches and stochastic rounding.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation and checkpoint interval.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Output directory [default: runs/train_lm or runs/train_encoder].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (same flags).
    #[arg(long)]
    resume: bool,
    /// Stop after this many updates (checkpointed; finish later with --resume).
    #[arg(long)]
    stop_at: Option<usize>,
    /// Keep these parameters at their initial values (comma-separated paths of the table that
    /// --print-table shows, e.g. layers.0.attn.q.weight,layers.0.attn.k.weight).
    #[arg(long, value_delimiter = ',')]
    freeze: Vec<String>,
    /// Print the per-parameter table and exit.
    #[arg(long)]
    print_table: bool,
    /// Bytes of text to generate at the end (models that generate).
    #[arg(long, default_value_t = 300)]
    sample_len: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Device: cpu, or cuda (GPU 0; needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

fn progress_bar(steps: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A family's defaults for the flags that differ between families.
pub struct Defaults {
    /// `--width`.
    pub width: usize,
    /// `--depth`.
    pub depth: usize,
    /// `--batch`.
    pub batch: usize,
    /// `--lr` under u-μP.
    pub umup_lr: f64,
}

/// The text families' defaults: width 128, depth 4, batch 16, η 1.
#[allow(dead_code)]
pub const TEXT: Defaults = Defaults {
    width: 128,
    depth: 4,
    batch: 16,
    umup_lr: 1.0,
};

/// Parses the command line and trains the shipped model `model` (`lm`, `encoder` or `vit`), as
/// `about` says, with its `defaults`.
pub fn main(model: &str, about: &'static str, defaults: Defaults) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().about(about).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match main_inner(model, args, defaults) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(model: &str, args: Args, defaults: Defaults) -> umup::Result<()> {
    // This thread runs the training loop: make it one of the kernels' threads.
    umup::threads::init(0)?;
    let param = args.param.as_str();
    if !["umup", "mup", "sp"].contains(&param) {
        return Err(umup::Error::Invalid(format!(
            "--param {param}: expected umup, mup or sp"
        )));
    }
    let precision: Precision = args.precision.parse()?;
    if args.rope && model != "lm" {
        return Err(umup::Error::Invalid(
            "--rope: only the LM has rotary position embeddings".into(),
        ));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/train_{model}")));
    let mut options = Options::new();
    if let Some(h) = args.heads {
        options.set("heads", h);
    }
    if args.rope {
        options.set("rope", true);
    }
    let cfg = TrainConfig {
        model: model.into(),
        width: args.width.unwrap_or(defaults.width),
        depth: args.depth.unwrap_or(defaults.depth),
        options,
        param: param.into(),
        precision,
        steps: args.steps,
        batch: args.batch.unwrap_or(defaults.batch),
        lr: args.lr.unwrap_or(if param == "umup" {
            defaults.umup_lr
        } else {
            2f64.powi(-7)
        }),
        alpha_ffn_act: args.alpha_ffn_act,
        alpha_attn_softmax: args.alpha_attn_softmax,
        alpha_res: args.alpha_res,
        alpha_res_attn_ratio: args.alpha_res_attn_ratio,
        alpha_loss_softmax: args.alpha_loss_softmax,
        alpha_input: args.alpha_input,
        sigma_init: args.sigma_init,
        warmup: args.warmup.unwrap_or(args.steps / 10),
        final_lr_fraction: args.final_lr_fraction,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        data: String::new(),
        attention: args.attn_scale,
        norm_params: args.norm_params,
        freeze: args.freeze.clone(),
    };
    if args.print_table {
        print!("{}", shipped::param_table(&cfg, &args.data)?);
        return Ok(());
    }
    shipped::param_table(&cfg, &args.data)?;
    cfg.validate()?;
    println!(
        "umup train_{model}: {} · width {} depth {} heads {} · {} · η {} · batch {} · {} steps · {}",
        cfg.param,
        cfg.width,
        cfg.depth,
        args.heads.unwrap_or((cfg.width / 64).max(1)),
        cfg.precision.name(),
        cfg.lr,
        cfg.batch,
        cfg.steps,
        args.device,
    );
    let opts = RunOptions {
        out,
        resume: args.resume,
        stop_at: args.stop_at,
        sample_len: args.sample_len,
        device: args.device,
    };
    if shipped::is_text(model) {
        args.data.keep_tokenizer(&opts.out, opts.resume)?;
    }
    let bar = progress_bar(cfg.steps, args.quiet);
    let unit = if shipped::is_text(model) {
        "tokens"
    } else {
        "examples"
    };
    let mut last_val = None;
    let mut classes = None;
    let s = with_shipped!(model, args.data, 128, |F, data| {
        classes = data.classes();
        println!("data: {}", data.describe());
        F::train(&cfg, &data, &opts, &mut |p| {
            if p.val_loss.is_some() {
                last_val = p.val_loss;
            }
            bar.set_position(p.step as u64);
            bar.set_message(format!(
                "loss {:.4}  val {}  {:.0} {unit}/s",
                p.train_loss,
                last_val.map_or("-".into(), |v| format!("{v:.4}")),
                p.tokens_per_second
            ));
        })
    });
    bar.finish();
    let s = s?;
    if let (Some(l0), Some(c)) = (s.initial_loss, classes) {
        println!(
            "loss at step 0:        {l0:.4}  (ln {c} = {:.4})",
            (c as f64).ln()
        );
    }
    println!(
        "validation loss:       {:.4}  at step {}{}",
        s.final_val_loss,
        s.step,
        if s.stopped {
            " (stopped early; --resume to continue)"
        } else {
            ""
        }
    );
    if let Some(b) = s.final_val_bpb {
        println!("                       {b:.4} bits per byte");
    }
    for (name, v) in &s.val_metrics {
        println!("validation {name}: {v:.4}");
    }
    if shipped::is_text(model) {
        println!(
            "unigram entropy:       {:.4}  (training split)",
            args.data.tokens()?.unigram_entropy()
        );
    }
    println!("throughput:            {:.0} {unit}/s", s.tokens_per_second);
    if precision != Precision::F32 {
        let (f, b) = s.quant_stats;
        println!(
            "{} overflow/underflow: matmul inputs {:.2e}/{:.2e}, gradients {:.2e}/{:.2e}",
            precision.name(),
            f.overflow_fraction(),
            f.underflow_fraction(),
            b.overflow_fraction(),
            b.underflow_fraction()
        );
    }
    if !s.sample.is_empty() {
        println!("sample:\n---\n{}\n---", s.sample);
    }
    println!(
        "wrote {}/{{metrics.csv, model.safetensors, optim.safetensors, config.json}}",
        opts.out.display()
    );
    Ok(())
}

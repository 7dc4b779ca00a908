//! The u-μP workflow on your own model: declare it, say what it computes, name its sizes, then
//! print its parameter table, train it, check its scales across widths and sweep η across widths
//! (the README's "Use it on your own model").
//!
//! ```text
//! cargo run --release --example own_model      # about 20 s on 2 cores; writes runs/own_model/
//! ```

use umup::data::{Corpus, NextToken, TokenBatch, TokenCorpus};
use umup::dfdx::prelude::*;
use umup::family::{self, Step, TrainDevice, Trainable};
use umup::nn::Param;
use umup::rand_distr::{Distribution, StandardNormal};
use umup::scale_check::{self, Measurement};
use umup::sweep::{Stage, Sweep};
use umup::train::{train_family, RunOptions, TrainConfig};
use umup::{ops, umup_model, Backend, Constraint};

/// A byte model: embedding → `L` residual GELU layers → RMSNorm → readout, predicting the next
/// byte from the current one.
#[umup_model]
pub struct ByteMlp<const D: usize, const L: usize> {
    #[embedding]
    embed: Embedding<256, D>,
    #[hidden(bias)]
    #[depth]
    layers: [Linear<D, D>; L],
    #[output]
    readout: Linear<D, 256>,
}

/// Its loss on a batch; `step.tap` shows an activation to the scale check.
impl<const D: usize, const L: usize, E: Dtype, Dev: TrainDevice + Backend<E>, P: Param>
    Trainable<Dev, E> for ByteMlp<D, L, E, Dev, P>
where
    StandardNormal: Distribution<E>,
{
    type Batch = TokenBatch;

    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &TokenBatch,
        tape: T,
        step: &mut Step<'_>,
    ) -> umup::Result<Tensor<(), E, Dev, T>> {
        let ids = batch.ids(self.embed.weight.device(), 256)?.put_tape(tape);
        let mut x = step.tap(self.embed.try_forward(ids)?, || "embed".into())?;
        for l in self.layers.iter() {
            x = P::residual(x, 0.5, |h| {
                ops::gelu(l.try_forward(h)?, 1.0, Constraint::ToOutputScale)
            })?;
        }
        let logits = self.readout.try_forward(ops::rms_norm(x, None, 1e-5)?)?;
        P::cross_entropy(
            step.tap(logits, || "logits".into())?,
            &batch.targets,
            step.hp,
        )
    }
}

umup::family! {
    /// `ByteMlp` compiled at three widths, depth 2, in u-μP, μP and SP.
    pub struct Bytes = ByteMlp<W, L> for W in [32, 64, 128], L in [2];
}

fn main() -> umup::Result<()> {
    let corpus = NextToken::new(TokenCorpus::bytes(&Corpus::shakespeare(0.1)?), 128);

    // 1. Every parameter's role, shape, init and multipliers under u-μP.
    println!("{}", family::param_table::<Bytes>(64, 2, "umup")?);

    // 2. Train width 64 (runs/own_model/train: config.json, metrics.csv, checkpoints).
    let cfg = TrainConfig {
        model: "bytes".into(),
        width: 64,
        depth: 2,
        ..TrainConfig::default()
    };
    let s = train_family::<Bytes, _>(
        &cfg,
        &corpus,
        &RunOptions::to("runs/own_model/train"),
        &mut |_| {},
    )?;
    println!(
        "width 64: loss {:.4} at init, validation loss {:.4} after {} steps\n",
        s.initial_loss.unwrap_or(f64::NAN),
        s.final_val_loss,
        s.step
    );

    // 3. The scale check at init: every tensor's RMS across widths, and the u-μP checks.
    let m = Measurement {
        widths: vec![32, 64, 128],
        depth: 2,
        ..Measurement::default()
    };
    for r in scale_check::measure::<Bytes, _>(&corpus, &m, &mut |_, _| {})? {
        print!("{}", scale_check::render(&r));
    }

    // 4. The η sweep across two widths. (This toy's loss is nearly flat in η, within 0.02 over
    // 2^-2..2^2, so it shows the API, not transfer: docs/results.md §2 and §7b have the evidence.)
    let sweep = Sweep {
        model: "bytes".into(),
        widths: vec![32, 128],
        depth: 2,
        params: vec!["umup".into()],
        umup_lr_exps: vec![-2, 0, 2],
        out: "runs/own_model/sweep".into(),
        ..Sweep::default()
    };
    let windows = NextToken::new(corpus.corpus.clone(), 64);
    let train = |cfg: &TrainConfig, run: &RunOptions| {
        train_family::<Bytes, _>(cfg, &windows, run, &mut |_| {})
    };
    print!("\n{}", sweep.run(&[Stage::Eta], train, |_| {})?);
    Ok(())
}

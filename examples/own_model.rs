//! The u-μP workflow on your own model: declare it, say what it computes, name its sizes, then
//! print its parameter table, train it, check its scales across widths and sweep η across widths.
//!
//! ```text
//! cargo run --release --example own_model      # about a minute; writes runs/own_model/
//! ```

use umup::data::{Batch, Corpus};
use umup::dfdx::prelude::*;
use umup::family::{self, Param, Step, Task, TrainDevice, Trainable};
use umup::scale_check::{self, Measurement, Settings};
use umup::sweep::{Stage, Sweep};
use umup::train::{train_family, RunOptions, TrainConfig};
use umup::{ops, umup_model, Constraint};

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
impl<const D: usize, const L: usize, Dev: TrainDevice, P: Param> Trainable<Dev>
    for ByteMlp<D, L, f32, Dev, P>
{
    const TASK: Task = Task::NextByte;

    fn loss<T: Tape<f32, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        batch: &Batch,
        step: &mut Step<'_>,
    ) -> umup::Result<Tensor<(), f32, Dev, T>> {
        let hp = step.hp;
        let mut x = step.tap(self.embed.try_forward(ids)?, || "embed".into())?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = P::residual(x, 0.5, |h| {
                let h = ops::gelu(
                    layer.try_forward(h)?,
                    hp.alpha_ffn_act,
                    Constraint::ToOutputScale,
                )?;
                step.tap(h, || format!("layers.{i}.act"))
            })?;
        }
        let logits = step.tap(
            self.readout.try_forward(ops::rms_norm(x, None, 1e-5)?)?,
            || "logits".into(),
        )?;
        P::cross_entropy(logits, &batch.targets, hp)
    }
}

umup::family! {
    /// `ByteMlp` compiled at three widths, depth 2, in u-μP, μP and SP.
    pub struct Bytes = ByteMlp<W, L> for W in [32, 64, 128], L in [2];
}

fn main() -> umup::Result<()> {
    let corpus = Corpus::shakespeare(0.1)?;

    // 1. Every parameter's role, shape, init and multipliers under u-μP.
    println!("{}", family::param_table::<Bytes>(64, 2, "umup")?);

    // 2. Train width 64 (runs/own_model/train: config.json, metrics.csv, checkpoints).
    let cfg = TrainConfig {
        model: "bytes".into(),
        width: 64,
        depth: 2,
        heads: 1,
        steps: 200,
        batch: 16,
        seq: 64,
        warmup: 20,
        eval_every: 50,
        ..TrainConfig::default()
    };
    let run = RunOptions {
        out: "runs/own_model/train".into(),
        resume: false,
        stop_at: None,
        sample_len: 0,
        device: Default::default(),
    };
    let s = train_family::<Bytes>(&cfg, &corpus, &run, &mut |_| {})?;
    let l0 = s.initial_loss.unwrap_or(f64::NAN);
    println!(
        "width 64: loss {l0:.3} at init, validation loss {:.3} after {} steps",
        s.final_val_loss, s.step
    );

    // 3. The scale check at init and after 2 steps: every tensor's RMS across widths.
    let settings = Settings {
        batch: 8,
        seq: 64,
        steps: 2,
        ..Settings::default()
    };
    let m = Measurement {
        widths: vec![32, 64, 128],
        depth: 2,
        settings,
        ..Measurement::default()
    };
    for report in scale_check::measure::<Bytes>(&corpus, &m, &mut |_, _| {})? {
        print!("{}", scale_check::render(&report));
    }

    // 4. η transfer: the best η at width 32 should be the best at width 128.
    let sweep = Sweep {
        model: "bytes".into(),
        out: "runs/own_model/sweep".into(),
        widths: vec![32, 128],
        depth: 2,
        params: vec!["umup".into()],
        umup_lr_exps: vec![-2, 0, 2],
        steps: 150,
        batch: 16,
        jobs: 2,
        ..Sweep::default()
    };
    let train =
        |cfg: &TrainConfig, run: &RunOptions| train_family::<Bytes>(cfg, &corpus, run, &mut |_| {});
    print!("\n{}", sweep.run(&[Stage::Eta], train, |_| {})?);
    Ok(())
}

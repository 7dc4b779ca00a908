//! A user's own model through the whole workflow: `#[umup_model]` + `Trainable` + `family!`,
//! then the library's trainer and scale check at a size chosen at run time.

use umup::data::{Batch, Corpus};
use umup::dfdx::prelude::*;
use umup::family::{self, Family, Step, Task, TrainDevice, Trainable};
use umup::nn::Param;
use umup::scale_check::{scale_check_family, Settings};
use umup::train::{self, RunOptions, TrainConfig};
use umup::{ops, umup_model, Constraint};

/// A GELU MLP block.
#[umup_model]
pub struct Block<const D: usize, const F: usize> {
    #[hidden(bias)]
    up: Linear<D, F>,
    #[hidden(bias)]
    down: Linear<F, D>,
}

/// A byte-level model that predicts the next byte from the current one: embedding → `L`
/// residual MLP blocks → RMSNorm → readout.
#[umup_model]
pub struct BigramMlp<const D: usize, const F: usize, const L: usize> {
    #[embedding]
    embed: Embedding<256, D>,
    #[model]
    #[depth]
    blocks: [Block<D, F>; L],
    #[output]
    readout: Linear<D, 256>,
}

impl<const D: usize, const F: usize, const L: usize, Dev: TrainDevice, P: Param> Trainable<Dev>
    for BigramMlp<D, F, L, f32, Dev, P>
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
        for (i, b) in self.blocks.iter().enumerate() {
            x = P::residual(x, 0.5, |h| {
                let u = ops::gelu(
                    b.up.try_forward(h)?,
                    hp.alpha_ffn_act,
                    Constraint::ToOutputScale,
                )?;
                let u = step.tap(u, || format!("blocks.{i}.act"))?;
                b.down.try_forward(u)
            })?;
        }
        let x = ops::rms_norm(x, None, 1e-5)?;
        let logits = step.tap(self.readout.try_forward(x)?, || "logits".into())?;
        P::cross_entropy(logits, &batch.targets, hp)
    }
}

umup::family! {
    /// The bigram MLP at two widths and two depths.
    pub struct Bigram = BigramMlp<W, {2 * W}, L> for W in [32, 64], L in [1, 2];
}

umup::family! {
    /// An explicit list of sizes.
    pub struct BigramPairs = BigramMlp<W, W, L> for (W, L) in [(16, 1), (48, 3)];
}

fn corpus() -> Corpus {
    let text: Vec<u8> = (0..20_000u32)
        .map(|i| b"the quick brown fox jumps over the lazy dog. "[(i % 45) as usize])
        .collect();
    Corpus::from_bytes(text, 0.1).unwrap()
}

#[test]
fn a_family_lists_its_sizes_and_instantiates_each_in_every_parametrization() {
    assert_eq!(Bigram::SIZES, &[(32, 1), (32, 2), (64, 1), (64, 2)]);
    assert_eq!(BigramPairs::SIZES, &[(16, 1), (48, 3)]);
    for &(w, l) in Bigram::SIZES {
        for param in ["umup", "mup", "sp"] {
            let t = family::param_table::<Bigram>(w, l, param).unwrap();
            // embedding + 2 tensors × 2 linears per block + readout.
            assert_eq!(t.rows.len(), 2 + 4 * l, "{w}×{l} {param}");
            let up = t
                .rows
                .iter()
                .find(|r| r.spec.path == "blocks.0.up.weight")
                .unwrap();
            assert_eq!(up.spec.shape, vec![2 * w, w]);
            assert_eq!(t.parametrization.name(), param);
        }
    }
    let t = family::param_table::<BigramPairs>(48, 3, "umup").unwrap();
    assert_eq!(t.rows.len(), 2 + 4 * 3);
    let e = family::param_table::<Bigram>(128, 1, "umup")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--width 128") && e.contains("32×1, 32×2, 64×1, 64×2"),
        "{e}"
    );
    let e = family::param_table::<Bigram>(32, 1, "ntk")
        .unwrap_err()
        .to_string();
    assert!(e.contains("umup, mup, sp"), "{e}");
}

#[test]
fn the_trainer_and_the_scale_check_run_a_users_family() {
    let c = corpus();
    let out = std::env::temp_dir().join(format!("umup-family-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = TrainConfig {
        model: "bigram".into(),
        width: 64,
        depth: 2,
        heads: 1,
        steps: 30,
        batch: 4,
        seq: 32,
        warmup: 3,
        eval_every: 10,
        eval_batches: 2,
        ..TrainConfig::default()
    };
    let run = RunOptions {
        out: out.clone(),
        resume: false,
        stop_at: None,
        sample_len: 0,
        device: Default::default(),
    };
    let s = train::train_family::<Bigram>(&cfg, &c, &run, &mut |_| {}).unwrap();
    let l0 = s.initial_loss.unwrap();
    assert!((l0 - 256f64.ln()).abs() < 0.05, "unit scale at init: {l0}");
    // The text is a cycle of 45 bytes in which most bytes have one successor: the bigram
    // model learns it far below the 256-way guess.
    assert!(s.final_val_loss < 2.0, "{}", s.final_val_loss);
    for f in [
        "metrics.csv",
        "model.safetensors",
        "optim.safetensors",
        "config.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&out).unwrap();
    // A size the family lacks is refused before anything is written.
    let e = train::train_family::<Bigram>(&TrainConfig { width: 48, ..cfg }, &c, &run, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("Bigram") && e.contains("48"), "{e}");
    assert!(!out.exists());

    let settings = Settings {
        batch: 4,
        seq: 32,
        steps: 1,
        ..Settings::default()
    };
    let (mut rows, mut loss) = (Vec::new(), Vec::new());
    for w in [32, 64] {
        scale_check_family::<Bigram>(w, 2, "umup", &c, &settings, &mut rows, &mut loss).unwrap();
    }
    // Two steps (init and after one update) at two widths.
    assert_eq!(loss.len(), 4);
    for name in ["embed", "blocks.1.act", "logits", "blocks.0.up.weight"] {
        assert!(
            rows.iter()
                .filter(|r| r.name == name && r.step == 0)
                .count()
                >= 2,
            "{name} measured at both widths"
        );
    }
    let embed: Vec<f64> = rows
        .iter()
        .filter(|r| r.name == "embed" && r.step == 0 && r.kind == umup::analysis::Kind::Activation)
        .map(|r| r.rms)
        .collect();
    assert!(embed.iter().all(|v| (v - 1.0).abs() < 0.1), "{embed:?}");
}

//! A user's own data through the whole workflow: a dataset type, a batch type and a loss of the
//! user's (a synthetic regression with an MSE loss), trained by the library's trainer, measured
//! by its scale check and swept by its sweep. No byte or text type appears.

use std::path::Path;

use umup::data::{Batch, Batcher, Data, Dataset, Loader, StdRng};
use umup::dfdx::prelude::*;
use umup::family::{Step, TrainDevice, Trainable};
use umup::nn::Param;
use umup::ops::Reduction;
use umup::rand_distr::{Distribution, StandardNormal};
use umup::scale_check::{self, Measurement};
use umup::sweep::{Stage, Sweep};
use umup::train::{self, RunOptions, RunResult, TrainConfig};
use umup::{ops, umup_model, Backend, Constraint};

/// Four features from a hash of the example's index (deterministic, unit scale) and a smooth
/// target of them.
struct Waves {
    n: usize,
    offset: u64,
}

fn unit(i: u64, j: u64) -> f32 {
    // SplitMix64 → uniform in [-√3, √3) (unit variance).
    let mut z = (i * 4 + j).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let u = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
    ((2.0 * u - 1.0) * 3f64.sqrt()) as f32
}

impl Dataset for Waves {
    type Item = ([f32; 4], f32);
    fn get(&self, i: usize) -> Option<([f32; 4], f32)> {
        (i < self.n).then(|| {
            let k = i as u64 + self.offset;
            let x = [unit(k, 0), unit(k, 1), unit(k, 2), unit(k, 3)];
            let y = (x[0] * x[1]).sin() + 0.5 * x[2] - 0.25 * x[3] * x[3];
            (x, y)
        })
    }
    fn len(&self) -> usize {
        self.n
    }
}

/// The user's batch type.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Batch for Points {
    fn examples(&self) -> usize {
        self.y.len()
    }
}

/// Stacks examples; `width` values per example (4, or a wrong count to test the checks).
struct Stack {
    width: usize,
}

impl Batcher<([f32; 4], f32)> for Stack {
    type Batch = Points;
    fn batch(&self, items: Vec<([f32; 4], f32)>, _: &mut StdRng) -> umup::Result<Points> {
        let x = items
            .iter()
            .flat_map(|(x, _)| x.iter().copied().cycle().take(self.width))
            .collect();
        Ok(Points {
            x,
            y: items.iter().map(|p| p.1).collect(),
        })
    }
}

/// The user's model: an input projection of the 4 features, residual GELU layers, a scalar
/// readout.
#[umup_model]
pub struct Regressor<const D: usize, const L: usize> {
    #[input(bias)]
    inp: Linear<4, D>,
    #[hidden(bias)]
    #[depth]
    layers: [Linear<D, D>; L],
    #[output]
    out: Linear<D, 1>,
}

impl<const D: usize, const L: usize, E: Dtype, Dev: TrainDevice + Backend<E>, P: Param>
    Trainable<Dev, E> for Regressor<D, L, E, Dev, P>
where
    StandardNormal: Distribution<E>,
{
    type Batch = Points;

    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        b: &Points,
        tape: T,
        step: &mut Step<'_>,
    ) -> umup::Result<Tensor<(), E, Dev, T>> {
        let n = b.y.len();
        if b.x.len() != 4 * n {
            return Err(umup::Error::ShapeMismatch {
                op: "Regressor::loss",
                detail: format!("{} values for {n} examples of 4 features", b.x.len()),
            });
        }
        let dev = self.inp.weight.device().clone();
        let e = |v: &[f32]| v.iter().map(|&v| E::from_f32(v).unwrap()).collect();
        let x = dev.tensor_from_vec(e(&b.x), (n, Const::<4>)).put_tape(tape);
        let mut h = step.tap(self.inp.try_forward(x)?, || "input".into())?;
        for (i, l) in self.layers.iter().enumerate() {
            h = P::residual(h, 0.5, |r| {
                ops::gelu(l.try_forward(r)?, 1.0, Constraint::ToOutputScale)
            })?;
            h = step.tap(h, || format!("layers.{i}"))?;
        }
        let y = self.out.try_forward(h)?;
        let target = dev.tensor_from_vec(e(&b.y), (n, Const::<1>));
        ops::mse_loss(y, target.retaped::<T>(), Reduction::Mean)
    }
}

umup::family! {
    /// The regressor at two widths.
    pub struct Reg = Regressor<W, L> for W in [32, 64], L in [2];
}

fn data(width: usize) -> Loader<Waves, Stack> {
    let train = Waves { n: 512, offset: 0 };
    let val = Waves {
        n: 100,
        offset: 1 << 20,
    };
    Loader::new("waves", train, val, Stack { width }).unwrap()
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("umup-own-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg() -> TrainConfig {
    TrainConfig {
        model: "regressor".into(),
        width: 32,
        depth: 2,
        steps: 60,
        batch: 32,
        lr: 0.5,
        warmup: 6,
        eval_every: 20,
        eval_batches: 8,
        ..TrainConfig::default()
    }
}

fn run(out: &Path, resume: bool, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        stop_at,
        resume,
        ..RunOptions::to(out)
    }
}

/// Every row of `metrics.csv` but the wall time.
fn rows(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn a_users_dataset_trains_resumes_bit_exactly_and_is_refused_when_bad() {
    let (d, c) = (data(4), cfg());
    assert_eq!(d.describe(), "waves · 512 train / 100 validation examples");
    // 100 validation examples in batches of 32: 4 batches, each example once.
    assert_eq!(d.val_batches(32, 8), 4);
    let a = dir("a");
    let s = train::train_family::<Reg, _>(&c, &d, &run(&a, false, None), &mut |_| {}).unwrap();
    let l0 = s.initial_loss.unwrap();
    assert!(s.final_val_loss < 0.5 * l0, "{l0} → {}", s.final_val_loss);
    assert!(s.val_metrics.is_empty() && s.final_val_bpb.is_none());
    let header = rows(&a)[0].clone();
    assert_eq!(header, "step,tokens,train_loss,val_loss,lr");
    assert_eq!(
        RunResult::read(&a).unwrap().unwrap(),
        RunResult::of(&s),
        "result.json holds the summary"
    );
    let config = std::fs::read_to_string(a.join("config.json")).unwrap();
    assert!(config.contains("\"data\": \"waves · 512 train"), "{config}");

    // Stopped at 30 (inside the second epoch of 16 batches) and resumed: the same rows.
    let b = dir("b");
    train::train_family::<Reg, _>(&c, &d, &run(&b, false, Some(30)), &mut |_| {}).unwrap();
    assert!(RunResult::read(&b).unwrap().is_none(), "not finished");
    train::train_family::<Reg, _>(&c, &d, &run(&b, true, None), &mut |_| {}).unwrap();
    assert_eq!(rows(&a), rows(&b));

    // Data the model refuses (3 values per example) is an error before anything is written:
    // the finished run in `a` is left as it was.
    let before = std::fs::read(a.join("metrics.csv")).unwrap();
    let e = train::train_family::<Reg, _>(&c, &data(3), &run(&a, false, None), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("96 values for 32 examples"), "{e}");
    assert_eq!(std::fs::read(a.join("metrics.csv")).unwrap(), before);
    assert!(RunResult::read(&a).unwrap().is_some());
    // Resuming on other data is refused, naming both.
    let other = Loader::new(
        "waves2",
        Waves { n: 512, offset: 0 },
        Waves { n: 50, offset: 9 },
        Stack { width: 4 },
    )
    .unwrap();
    let e = train::train_family::<Reg, _>(&c, &other, &run(&b, true, None), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`waves · 512") && e.contains("`waves2 · 512"),
        "{e}"
    );
    for x in [a, b] {
        std::fs::remove_dir_all(x).unwrap();
    }
}

#[test]
fn the_scale_check_and_the_sweep_run_on_a_users_data() {
    let d = data(4);
    let m = Measurement {
        widths: vec![32, 64],
        depth: 2,
        settings: scale_check::Settings {
            batch: 64,
            ..Default::default()
        },
        ..Measurement::default()
    };
    let reports = scale_check::measure::<Reg, _>(&d, &m, &mut |_, _| {}).unwrap();
    let r = &reports[0];
    // A regression has no classes: no expected loss at init.
    assert_eq!(r.classes, None);
    assert!(!scale_check::umup_violations(r)
        .iter()
        .any(|v| v.contains("loss at init")));
    // The input projection of unit features is unit-scaled at every width.
    for row in r.rows.iter().filter(|x| x.name == "input" && x.step == 0) {
        if row.kind == umup::analysis::Kind::Activation {
            assert!((row.rms - 1.0).abs() < 0.15, "{row:?}");
        }
    }

    let out = dir("sweep");
    let sweep = Sweep {
        model: "regressor".into(),
        out: out.clone(),
        widths: vec![32, 64],
        params: vec!["umup".into()],
        umup_lr_exps: vec![-3, -1],
        steps: 20,
        batch: 32,
        eval_batches: 4,
        ..Sweep::default()
    };
    let trainer =
        |cfg: &TrainConfig, r: &RunOptions| train::train_family::<Reg, _>(cfg, &d, r, &mut |_| {});
    let summary = sweep.run(&[Stage::Eta], trainer, |_| {}).unwrap();
    let results = sweep.results(&sweep.eta_points()).unwrap();
    assert_eq!(results.len(), 4);
    for (w, pair) in [32, 64].into_iter().zip(results.chunks(2)) {
        let (lo, hi) = (pair[0].1.unwrap(), pair[1].1.unwrap());
        let (e, best) = if hi < lo { (-1, hi) } else { (-3, lo) };
        let row = format!("| umup | {w} | 2^{e} | {best:.4} |");
        assert!(summary.contains(&row), "{row} in\n{summary}");
    }
    // Two grid points: a best η that moves between them is one grid step.
    assert!(summary.contains("grid steps"), "{summary}");
    std::fs::remove_dir_all(out).unwrap();
}

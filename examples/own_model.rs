//! Your model on your data: a dataset type, a model, its loss, its sizes; then the library's
//! parameter table, trainer, scale check and η sweep (the README's "Your model and your data").
//! `cargo run --release --example own_model` (about 30 s on 2 cores; writes runs/own_model/).
#[rustfmt::skip] // kept as the README shows it
mod program {
use umup::data::{Dataset, FeatureBatch, FeatureBatcher, Loader};
use umup::dfdx::prelude::*;
use umup::family::{classification_loss, param_table, Step, TrainDevice, Trainable};
use umup::{nn::Param, ops, scale_check, sweep::{Stage, Sweep}, umup_model, Backend, Constraint};
use umup::train::{train_family, RunOptions, TrainConfig};

struct Spirals(usize, u64); // Your data: points on three spirals (2 features), the spiral the class.
impl Dataset for Spirals {
    type Item = (Vec<f32>, usize);
    fn get(&self, i: usize) -> Option<(Vec<f32>, usize)> {
        let (c, t) = (i % 3, ((i as u64 * 7919 + self.1) % 1000) as f32 / 1000.0);
        let a = 4.0 * t + c as f32 * 2.094;
        (i < self.0).then(|| (vec![2.0 * t * a.cos(), 2.0 * t * a.sin()], c))
    }
    fn len(&self) -> usize { self.0 }
}
#[umup_model] // Your model: roles say how each weight scales with width.
pub struct Mlp<const D: usize, const L: usize> {
    #[input(bias)] inp: Linear<2, D>,
    #[hidden(bias)] #[depth] layers: [Linear<D, D>; L],
    #[output] out: Linear<D, 3>,
}

impl<const D: usize, const L: usize, E: Dtype, Dev: TrainDevice + Backend<E>, P: Param>
    Trainable<Dev, E> for Mlp<D, L, E, Dev, P> where umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E> {
    type Batch = FeatureBatch; // float features with a class label each
    const METRICS: &'static [&'static str] = &["accuracy"];
    fn loss<T: Tape<E, Dev> + Merge<T>>(&self, b: &FeatureBatch, tape: T, step: &mut Step<'_>) -> umup::Result<Tensor<(), E, Dev, T>> {
        let x = b.tensor(self.inp.weight.device(), (b.len(), Const::<2>))?.put_tape(tape);
        let mut x = step.tap(self.inp.try_forward(x)?, || "input".into())?; // seen by the scale check
        for l in self.layers.iter() { x = P::residual(x, 0.5, |h| ops::gelu(l.try_forward(h)?, 1.0, Constraint::ToOutputScale))?; }
        classification_loss::<P, _, _, _, _, _>(self.out.try_forward(ops::rms_norm(x, None, 1e-5)?)?, &b.targets, step)
    }
}

umup::family! { pub struct Spiral = Mlp<W, L> for W in [32, 128], L in [2]; } // the sizes it is compiled at

pub fn main() -> umup::Result<()> {
    let data = Loader::new("spirals", Spirals(3000, 0), Spirals(300, 1), FeatureBatcher::new(&[2]))?.with_classes(3);
    println!("{}", param_table::<Spiral>(32, 2, "umup")?);
    let cfg = TrainConfig { model: "spiral".into(), width: 32, depth: 2, batch: 64, steps: 300, ..TrainConfig::default() };
    let s = train_family::<Spiral, _>(&cfg, &data, &RunOptions::to("runs/own_model/train"), &mut |_| {})?;
    println!("loss {:.4} → {:.4}, accuracy {:.3}", s.initial_loss.unwrap_or(f64::NAN), s.final_val_loss, s.val_metrics["accuracy"]);
    let m = scale_check::Measurement { widths: vec![32, 128], depth: 2, repeats: 4, settings: scale_check::Settings { batch: 256, ..Default::default() }, ..Default::default() };
    for r in scale_check::measure::<Spiral, _>(&data, &m, &mut |_, _| {})? { print!("{}", scale_check::render(&r)); }
    let sweep = Sweep { model: "spiral".into(), widths: vec![32, 128], params: vec!["umup".into()], umup_lr_exps: vec![-2, 0, 2], batch: 64, out: "runs/own_model/sweep".into(), ..Sweep::default() };
    print!("{}", sweep.run(&[Stage::Eta], |c: &TrainConfig, r: &RunOptions| train_family::<Spiral, _>(c, &data, r, &mut |_| {}), |_| {})?);
    Ok(())
}
}

fn main() -> umup::Result<()> {
    program::main()
}

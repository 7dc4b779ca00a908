//! A small `#[umup_model]` model: build it, print its parameter table, train it a few steps.
//!
//! ```text
//! cargo run --release --example mlp
//! ```

use umup::dfdx::prelude::*;
use umup::nn::{Hyper, Param};
use umup::optim::{OptimConfig, Optimizer};
use umup::umup_model;

#[umup_model]
pub struct Block<const D: usize> {
    #[hidden(constraint = "none")]
    up: Linear<D, D>,
    #[hidden(constraint = "none")]
    gate: Linear<D, D>,
    #[hidden(constraint = "none")]
    down: Linear<D, D>,
}

/// A token classifier: embedding → depth-2 stack of SwiGLU residual blocks → readout.
#[umup_model]
pub struct Classifier<const V: usize, const D: usize, const C: usize> {
    #[embedding]
    embed: Embedding<V, D>,
    #[model]
    #[depth]
    blocks: [Block<D>; 2],
    #[output]
    readout: Linear<D, C>,
}

impl<const V: usize, const D: usize, const C: usize, E, Dev, P> Classifier<V, D, C, E, Dev, P>
where
    E: Dtype,
    Dev: umup::Backend<E> + Storage<usize>,
    P: Param,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        targets: &[usize],
        hp: &Hyper,
    ) -> umup::Result<Tensor<(), E, Dev, T>> {
        let mut x = self.embed.try_forward(ids)?;
        for block in self.blocks.iter() {
            x = P::residual(x, 0.5, |h| {
                let up = block.up.try_forward(h.with_empty_tape())?;
                let gate = block.gate.try_forward(h)?;
                block.down.try_forward(P::swiglu(up, gate, hp)?)
            })?;
        }
        let x = umup::ops::rms_norm(x, None, 1e-5)?;
        P::cross_entropy(self.readout.try_forward(x)?, targets, hp)
    }
}

fn main() -> umup::Result<()> {
    let dev = Cpu::seed_from_u64(0);
    type Model = Classifier<32, 64, 32>;
    println!("{}", Model::param_table()?);
    let mut model = Model::build(&dev)?;
    let hp = Hyper::default();
    let mut opt = Optimizer::for_table(OptimConfig::adamw(hp.eta), &Model::param_table()?)?;
    let ids: Vec<usize> = (0..256).map(|i| (i * 7) % 32).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i + 1) % 32).collect();
    let mut grads = model.alloc_grads();
    for step in 0..20 {
        let x = dev.tensor_from_vec(ids.clone(), (ids.len(),));
        let loss = model.loss(x.traced(grads), &targets, &hp)?;
        println!("step {step:2}  loss {:.4}", loss.array());
        grads = loss.backward();
        opt.update(&mut model, &mut grads)?;
        model.zero_grads(&mut grads);
    }
    Ok(())
}

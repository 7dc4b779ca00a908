//! One definition, several widths, three parametrizations, two dtypes.
use umup::dfdx::prelude::*;
use umup::nn::{Mup, Sp};
use umup::umup_model;

#[umup_model]
pub struct Mlp<const D: usize, const F: usize> {
    #[hidden(bias, constraint = "none")]
    up: Linear<D, F>,
    #[hidden(constraint = "gmean")]
    down: Linear<F, D>,
    #[norm]
    norm: RmsNorm<D>,
}

fn run<const D: usize, const F: usize>() -> umup::Result<usize> {
    let dev = Cpu::default();
    let m = Mlp::<D, F>::build(&dev)?;
    let _sp = Mlp::<D, F, f32, Cpu, Sp>::build(&dev)?;
    let _mup = Mlp::<D, F, f64, Cpu, Mup<64>>::build(&dev)?;
    Ok(m.num_trainable_params())
}

fn main() -> umup::Result<()> {
    for n in [run::<64, 256>()?, run::<128, 512>()?, run::<256, 1024>()?] {
        assert!(n > 0);
    }
    Ok(())
}

//! The model from the design card: builds, prints its table, runs forward.
use umup::dfdx::prelude::*;
use umup::umup_model;

#[umup_model]
pub struct Mlp<const D: usize> {
    #[embedding]
    embed: Embedding<256, D>,
    #[hidden]
    fc1: Linear<D, D>,
    #[hidden]
    fc2: Linear<D, D>,
    #[output]
    readout: Linear<D, 10>,
}

fn main() -> umup::Result<()> {
    let dev = Cpu::default();
    let m = Mlp::<16>::build(&dev)?;
    print!("{}", Mlp::<16>::param_table()?);
    let ids = dev.tensor_from_vec(vec![1usize, 2, 3], (3,));
    let y = m.readout.try_forward(m.fc2.try_forward(m.fc1.try_forward(m.embed.try_forward(ids)?)?)?)?;
    assert_eq!(y.shape().1, Const::<10>);
    Ok(())
}

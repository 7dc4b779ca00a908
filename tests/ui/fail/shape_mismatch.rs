use umup::dfdx::prelude::*;
use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fc1: Linear<4, 8>,
    #[hidden]
    fc2: Linear<4, 2>,
}

fn main() {
    let dev = Cpu::default();
    let m = <M>::build(&dev).unwrap();
    let x: Tensor<Rank2<3, 4>, f32, Cpu> = dev.zeros();
    let _ = m.fc2.forward(m.fc1.forward(x));
}

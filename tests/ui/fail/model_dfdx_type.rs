use umup::dfdx::nn::modules::ReLU;
use umup::umup_model;

#[umup_model]
pub struct M {
    #[model]
    act: ReLU,
    #[hidden]
    fc: Linear<8, 8>,
}

fn main() {}

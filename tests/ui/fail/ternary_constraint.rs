use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(constraint = "to_left_grad_scale")]
    fc: Linear<16, 16>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[output]
    head_a: Linear<16, 10>,
    #[output]
    head_b: Linear<16, 10>,
}

fn main() {}

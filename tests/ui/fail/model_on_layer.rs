use umup::umup_model;

#[umup_model]
pub struct M {
    #[model]
    fc: Linear<16, 16>,
}

fn main() {}

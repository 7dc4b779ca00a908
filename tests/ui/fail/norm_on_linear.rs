use umup::umup_model;

#[umup_model]
pub struct M {
    #[norm]
    fc: Linear<16, 16>,
}

fn main() {}

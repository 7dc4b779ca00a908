use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(bais)]
    fc: Linear<16, 16>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(constraint = "gmaen")]
    fc: Linear<16, 16>,
}

fn main() {}

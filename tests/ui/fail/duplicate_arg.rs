use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(bias, bias)]
    fc: Linear<16, 16>,
}

fn main() {}

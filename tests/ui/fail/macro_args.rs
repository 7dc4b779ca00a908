use umup::umup_model;

#[umup_model(width = 64)]
pub struct M {
    #[hidden]
    fc: Linear<16, 16>,
}

fn main() {}

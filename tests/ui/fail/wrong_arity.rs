use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fc: Linear<16>,
}

fn main() {}

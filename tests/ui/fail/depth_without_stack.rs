use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    #[depth]
    fc: Linear<16, 16>,
}

fn main() {}

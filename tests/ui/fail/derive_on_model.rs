use umup::umup_model;

#[umup_model]
#[derive(Clone, Default)]
pub struct M {
    #[hidden]
    fc: Linear<16, 16>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fc: Linear<0, 16>,
}

fn main() {}

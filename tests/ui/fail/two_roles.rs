use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    #[output]
    fc: Linear<4, 4>,
}

fn main() {}

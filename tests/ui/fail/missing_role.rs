use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fc1: Linear<4, 4>,
    fc2: Linear<4, 4>,
}

fn main() {}

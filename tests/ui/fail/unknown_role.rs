use umup::umup_model;

#[umup_model]
pub struct M {
    #[hiden]
    fc: Linear<4, 4>,
}

fn main() {}

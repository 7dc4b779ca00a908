use umup::umup_model;

#[umup_model]
pub struct Block<const D: usize> {
    #[hidden]
    fc: Linear<D, D>,
}

#[umup_model]
pub struct M {
    #[hidden]
    block: Block<16>,
}

fn main() {}

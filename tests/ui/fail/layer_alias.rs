use umup::umup_model;

type Square = Linear<16, 16>;

#[umup_model]
pub struct M {
    #[hidden]
    fc: Square,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M<'a> {
    #[hidden]
    fc: Linear<16, 16>,
}

fn main() {}

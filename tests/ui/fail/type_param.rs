use umup::umup_model;

#[umup_model]
pub struct M<T> {
    #[hidden]
    fc: Linear<16, 16>,
    marker: T,
}

fn main() {}

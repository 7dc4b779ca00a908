use umup::umup_model;

#[umup_model]
pub struct M<const D: usize> {
    #[hidden]
    fc: Linear<D, { 4 * D }>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M<const E: usize> {
    #[hidden]
    fc: Linear<E, E>,
}

fn main() {}

use umup::umup_model;

pub struct Plain<const D: usize> {
    pub w: [f32; D],
}

#[umup_model]
pub struct M<const D: usize> {
    #[model]
    inner: Plain<D>,
    #[hidden]
    fc: Linear<D, D>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M<const D: usize>
where
    [(); D]:,
{
    #[hidden]
    fc: Linear<D, D>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct Block<const D: usize> {
    #[hidden]
    fc: Linear<D, D>,
}

// A nested model always takes the outer model's dtype, device and parametrization: a dtype
// written on the field would be silently replaced, so it is an error at the argument.
#[umup_model]
pub struct Outer {
    #[model]
    inner: Block<16, f64>,
    #[model]
    second: Block<16, f32>,
    #[output]
    out: Linear<16, 16>,
}

fn main() {}

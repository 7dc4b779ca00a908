use umup::umup_model;

#[umup_model]
pub struct M {
    // Convolution arguments, `tie` and unknown arguments are not `#[input]`'s.
    #[input(stride = 2)]
    a: Linear<16, 32>,
    #[input(tie = "a")]
    b: Linear<16, 32>,
    #[input(bias, scale = 2)]
    c: Linear<16, 32>,
    #[input(constraint = "to_left_grad_scale")]
    d: Linear<16, 32>,
    // One role per field.
    #[input]
    #[hidden]
    e: Linear<16, 32>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    // A convolution is never the readout.
    #[output]
    a: Conv1d<4, 4, 3>,
    // Convolution arguments on a linear layer.
    #[hidden(stride = 2)]
    b: Linear<4, 4>,
    // Three dimensions, each at least 1.
    #[hidden]
    d: Conv1d<4, 4>,
    #[hidden]
    e: Conv1d<4, 0, 3>,
}

fn main() {}

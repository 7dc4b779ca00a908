use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(stride = 0, dilation = 0)]
    a: Conv1d<4, 4, 3>,
    #[hidden(padding = "1", groups = 1.5)]
    b: Conv1d<4, 4, 3>,
    #[hidden(stride = 2, stride = 3)]
    c: Conv1d<4, 4, 3>,
    #[hidden(constraint = "to_left_grad_scale")]
    d: Conv1d<4, 4, 3>,
}

fn main() {}

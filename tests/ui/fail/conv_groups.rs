use umup::umup_model;

#[umup_model]
pub struct M<const C: usize> {
    // 3 divides neither 8 nor 10.
    #[hidden(groups = 3)]
    a: Conv1d<8, 10, 3>,
    // With groups > 1 the channel counts must be literals.
    #[hidden(groups = 2)]
    b: Conv1d<C, C, 3>,
}

fn main() {}

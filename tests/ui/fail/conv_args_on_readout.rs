use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden(padding = 1)]
    conv: Conv1d<4, 4, 3>,
    #[output(padding = 1)]
    readout: Linear<4, 4>,
}

fn main() {}

use umup::umup_model;

// `#[input]` is the input weight of float features: a `Linear<IN, OUT>` only.
#[umup_model]
pub struct M {
    // Token ids take `#[embedding]` (the same LR rule).
    #[input]
    embed: Embedding<256, 16>,
    #[input]
    norm: LayerNorm<16>,
    #[input]
    conv: Conv1d<4, 16, 3>,
    #[input]
    nested: Other,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[embedding]
    embed: Embedding<256, 16>,
    #[output(tie = "embedding")]
    readout: Linear<16, 256>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[embedding(bias)]
    embed: Embedding<256, 16>,
    #[output]
    readout: Linear<16, 256>,
}

fn main() {}

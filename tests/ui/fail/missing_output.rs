use umup::umup_model;

#[umup_model]
pub struct Lm {
    #[embedding]
    embed: Embedding<256, 16>,
    #[hidden]
    fc: Linear<16, 256>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    embed: Embedding<256, 16>,
}

fn main() {}

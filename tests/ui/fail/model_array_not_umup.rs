use umup::umup_model;

pub struct Block;

#[umup_model]
pub struct M<const L: usize> {
    #[model]
    #[depth]
    blocks: [Block; L],
}

fn main() {}

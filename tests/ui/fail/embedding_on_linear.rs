use umup::umup_model;

#[umup_model]
pub struct M {
    #[embedding]
    embed: Linear<256, 16>,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub enum M {
    A,
    B,
}

fn main() {}

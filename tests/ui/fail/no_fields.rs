use umup::umup_model;

#[umup_model]
pub struct M {}

fn main() {}

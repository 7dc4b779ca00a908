use umup::umup_model;

#[umup_model]
pub struct M(Linear<16, 16>);

fn main() {}

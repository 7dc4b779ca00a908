use umup::umup_model;

#[umup_model]
pub union M {
    a: u32,
    b: f32,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fcs: [Linear<16, 16>; 3],
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    #[depth(3)]
    fcs: [Linear<16, 16>; 3],
}

fn main() {}

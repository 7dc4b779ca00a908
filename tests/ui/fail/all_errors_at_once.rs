use umup::umup_model;

#[umup_model]
pub struct M {
    #[hiden]
    a: Linear<16, 16>,
    #[embedding]
    b: Linear<16, 16>,
    c: Linear<16, 16>,
    #[hidden(constraint = "gmaen")]
    d: Linear<16, 0>,
}

fn main() {}

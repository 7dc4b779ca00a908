use umup::umup_model;

// The inner model's mistake is reported once; the outer model does not add
// "`Inner` is not a `#[umup_model]` struct".
#[umup_model]
pub struct Inner {
    #[hiden]
    fc: Linear<16, 16>,
}

#[umup_model]
pub struct Outer {
    #[model]
    inner: Inner,
}

fn main() {}

use umup::umup_model;

#[umup_model]
pub struct M {
    #[hidden]
    fc: Linear<16, 16>,
    #[cfg(any())]
    #[hidden]
    extra: Linear<16, 16>,
}

fn main() {}

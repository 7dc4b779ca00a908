//! A const parameter with a default, struct attributes that are not derives, and `pub(crate)`
//! fields with doc comments and lint attributes.
use umup::umup_model;

#[umup_model]
#[allow(dead_code)]
/// A documented model.
pub(crate) struct M<const D: usize = 8> {
    /// The first layer.
    #[hidden]
    #[allow(unused)]
    pub(crate) fc: Linear<D, D>,
    #[norm]
    pub norm: RmsNorm<D>,
}

fn main() {
    let dev = umup::dfdx::tensor::Cpu::default();
    let m = <M>::build(&dev).unwrap();
    let _ = m.clone();
    assert_eq!(<M>::param_table().unwrap().rows.len(), 2);
    assert_eq!(<M<4>>::param_table().unwrap().rows[0].spec.shape, vec![4, 4]);
}

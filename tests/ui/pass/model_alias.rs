//! A `#[model]` field may name its model through a type alias; fields may carry doc comments,
//! lint attributes and any visibility.
use umup::umup_model;

#[umup_model]
pub struct Block<const D: usize> {
    /// The block's one layer.
    #[hidden]
    pub(crate) fc: Linear<D, D>,
}

type Block16 = Block<16>;

#[umup_model]
pub struct M {
    /// A block through an alias.
    #[model]
    #[allow(dead_code)]
    pub(crate) inner: Block16,
    #[model]
    #[depth]
    pub(crate) blocks: [Block16; 2],
    #[output]
    readout: Linear<16, 4>,
}

fn main() {
    let dev = umup::dfdx::tensor::Cpu::default();
    let m = <M>::build(&dev).unwrap();
    let table = <M>::param_table().unwrap();
    assert_eq!(table.rows.len(), 4);
    assert_eq!(m.blocks.len(), 2);
}

use umup::dfdx::prelude::*;
use umup::umup_model;

#[umup_model]
pub struct ConvStack<const C: usize> {
    #[hidden]
    plain: Conv1d<C, C, 3>,
    #[hidden(stride = 2, padding = 1, dilation = 2, groups = 4, bias, constraint = "gmean")]
    grouped: Conv1d<8, 12, 5>,
    #[model]
    #[depth]
    blocks: [Block; 2],
}

#[umup_model]
pub struct Block {
    #[hidden(padding = 1, bias)]
    conv: Conv1d<8, 8, 3>,
}

fn main() {
    let dev = Cpu::default();
    let m = ConvStack::<8>::build(&dev).unwrap();
    let x: Tensor<(usize, Const<8>, usize), f32, Cpu> = dev.zeros_like(&(2, Const::<8>, 20));
    let y: Tensor<(usize, Const<12>, usize), f32, Cpu> = m.grouped.try_forward(x).unwrap();
    assert_eq!(y.shape().2, 7);
    assert_eq!(m.grouped.weight.shape().concrete(), [12, 2, 5]);
    let table = ConvStack::<8>::param_table().unwrap();
    assert_eq!(table.rows.len(), 7);
}

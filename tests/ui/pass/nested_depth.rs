//! Nested models, depth stacks in three spellings, doc comments and lint attributes on fields,
//! and more than six fields.
use umup::dfdx::nn::modules::Repeated;
use umup::nn::Stack;
use umup::umup_model;

/// An attention-free block.
#[umup_model]
pub struct Block<const D: usize> {
    /// The up projection.
    #[hidden]
    #[allow(dead_code)]
    up: Linear<D, D>,
    #[hidden]
    down: Linear<D, D>,
}

#[umup_model]
pub(crate) struct Net<const V: usize, const D: usize> {
    #[embedding]
    embed: Embedding<V, D>,
    #[model]
    #[depth]
    a: [Block<D>; 2],
    #[model]
    #[depth]
    b: Repeated<Block<D>, 3>,
    #[hidden(bias)]
    #[depth]
    c: Stack<Linear<D, D>, 2>,
    #[norm]
    n1: RmsNorm<D>,
    #[norm]
    n2: LayerNorm<D>,
    #[model]
    extra: Block<D>,
    #[output(bias, constraint = "to_output_scale")]
    readout: Linear<D, V>,
}

fn main() -> umup::Result<()> {
    let t = Net::<32, 8>::param_table()?;
    assert!(t.get("b.2.down.weight").is_some_and(|r| r.spec.depth == Some(3)));
    assert!(t.get("c.1.bias").is_some_and(|r| r.spec.depth == Some(2)));
    assert!(t.get("extra.up.weight").is_some_and(|r| r.spec.depth.is_none()));
    let dev = umup::dfdx::tensor::Cpu::default();
    let n = Net::<32, 8>::build(&dev)?;
    let _ = &n.a[1].up;
    let _ = n.clone();
    Ok(())
}

//! A float-input model: `#[input]` and `#[input(bias)]` patch projections, built and run.
use umup::dfdx::prelude::*;
use umup::params::Role;
use umup::umup_model;

#[umup_model]
pub struct Patches<const D: usize> {
    #[input]
    patch: Linear<48, D>,
    #[input(bias, constraint = "none")]
    frame: Linear<12, D>,
    #[hidden]
    fc: Linear<D, D>,
    #[output]
    head: Linear<D, 10>,
}

fn main() -> umup::Result<()> {
    let dev = Cpu::default();
    let m = Patches::<32>::build(&dev)?;
    let t = Patches::<32>::param_table()?;
    assert_eq!(t.get("patch.weight").map(|r| r.spec.role), Some(Role::Input));
    assert_eq!(t.get("frame.bias").map(|r| r.spec.role), Some(Role::Bias));
    let x: Tensor<(usize, Const<48>), f32, Cpu> = dev.zeros_like(&(5usize, Const::<48>));
    let f: Tensor<(usize, Const<12>), f32, Cpu> = dev.zeros_like(&(5usize, Const::<12>));
    let h = m.patch.try_forward(x)?.try_add(m.frame.try_forward(f)?).map_err(umup::Error::device)?;
    let y = m.head.try_forward(m.fc.try_forward(h)?)?;
    assert_eq!(y.shape().1, Const::<10>);
    Ok(())
}

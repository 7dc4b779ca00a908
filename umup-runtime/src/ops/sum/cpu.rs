//! The `Cpu` kernel of `add` and the residual adds: one pass forward, one accumulate per input
//! backward.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{simd, Real, CHUNK};
use crate::ops::kernels::{self, accumulate, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// `fa·a + fb·b`; backward `da += ga·G`, `db += gb·G`.
pub(crate) fn add<S: Shape, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    a: Tensor<S, E, Cpu, T>,
    b: Tensor<S, E, Cpu, T>,
    [fa, fb, ga, gb]: [f64; 4],
) -> Result<Tensor<S, E, Cpu, T>> {
    let (a, ta) = kernels::input(a).dev()?;
    let (b, tb) = kernels::input(b).dev()?;
    let mut tape = ta.merge(tb);
    let dev = a.device().clone();
    let shape = *a.shape();
    let (xa, xb) = (Buf::of(&a).dev()?, Buf::of(&b).dev()?);
    let mut y = Buf::zeros(&dev, shape.num_elements()).dev()?;
    let (fa, fb) = (elem::<E>("scale", fa)?, elem::<E>("scale", fb)?);
    time(Part::Adds, || {
        y.par_chunks_mut(CHUNK)
            .zip(xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                simd(
                    #[inline(always)]
                    || {
                        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                            *y = fa * a + fb * b;
                        }
                    },
                )
            })
    });
    drop((xa, xb));
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (ag, bg, yg) = (a.ghost(), b.ghost(), y.ghost());
        let (ga, gb) = (elem::<E>("scale", ga)?, elem::<E>("scale", gb)?);
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            time(Part::Adds, || -> std::result::Result<(), CpuError> {
                accumulate!(grads, ag, &gy, ga);
                accumulate!(grads, bg, &gy, gb);
                Ok(())
            })?;
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

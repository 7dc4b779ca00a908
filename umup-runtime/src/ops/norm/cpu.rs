//! The `Cpu` kernel of `rms_norm` and `layer_norm`: [`crate::ops::cpu::norm_fwd`] and its
//! backward as one tape op, the gain and bias gradients accumulated in place.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{norm_bwd, norm_fwd, norm_param_grads, Real};
use crate::ops::kernels::{self, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// RMSNorm (`center = false`) or LayerNorm (`center = true`) over the last dim of `x[R, K]`,
/// with optional gain and bias whose gradients are scaled by `gain_scale`.
pub(crate) fn norm<R: Dim, K: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<(R, K), E, Cpu, T>,
    gain: Option<&Tensor<(K,), E, Cpu>>,
    bias: Option<&Tensor<(K,), E, Cpu>>,
    eps: f64,
    gain_scale: f64,
    center: bool,
) -> Result<Tensor<(R, K), E, Cpu, T>> {
    let (x, mut tape) = kernels::input(x).dev()?;
    let param = |p: Option<&Tensor<(K,), E, Cpu>>| -> Result<_> {
        p.map(|p| {
            let (p, ptape) = kernels::param::<_, _, T>(p).dev()?;
            let data = Buf::of(&p).dev()?;
            Ok((p.ghost(), data, ptape))
        })
        .transpose()
    };
    let (g, b) = (param(gain)?, param(bias)?);
    let mut merge = |p: Option<(_, Buf<E>, T)>| {
        p.map(|(ghost, data, ptape)| {
            tape = std::mem::take(&mut tape).merge(ptape);
            (ghost, data)
        })
    };
    let (g, b) = (merge(g), merge(b));
    let dev = x.device().clone();
    let shape = *x.shape();
    let (rows, width) = (shape.0.size(), shape.1.size());
    let xs = Buf::of(&x).dev()?;
    let mut y = Buf::zeros(&dev, rows * width).dev()?;
    let mut inv = Buf::zeros(&dev, rows).dev()?;
    let mut mean = Buf::zeros(&dev, rows).dev()?;
    let eps = elem::<E>("scale", eps)?;
    time(Part::Norms, || {
        norm_fwd(
            &xs,
            width,
            eps,
            center,
            g.as_ref().map(|g| &*g.1),
            b.as_ref().map(|b| &*b.1),
            &mut y,
            &mut inv,
            &mut mean,
        )
    });
    let y = y.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        let gs = elem::<E>("scale", gain_scale)?;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gains = g.as_ref().map(|g| &*g.1);
            let gx = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&xg)?);
            time(Part::Norms, || {
                norm_bwd(&xs, &inv, &mean, &gy, width, center, gains, gx)
            });
            let mut dgain = match &g {
                Some((ghost, _)) => Some(kernels::take::<E>(grads.get_or_alloc_mut(ghost)?)),
                None => None,
            };
            let mut dbias = match &b {
                Some((ghost, _)) => Some(kernels::take::<E>(grads.get_or_alloc_mut(ghost)?)),
                None => None,
            };
            time(Part::Norms, || {
                norm_param_grads(
                    &xs,
                    &inv,
                    &mean,
                    &gy,
                    width,
                    gs,
                    dgain.as_deref_mut(),
                    dbias.as_deref_mut(),
                )
            });
            if let (Some((ghost, _)), Some(d)) = (&g, dgain) {
                kernels::put::<E>(grads.get_or_alloc_mut(ghost)?, d);
            }
            if let (Some((ghost, _)), Some(d)) = (&b, dbias) {
                kernels::put::<E>(grads.get_or_alloc_mut(ghost)?, d);
            }
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

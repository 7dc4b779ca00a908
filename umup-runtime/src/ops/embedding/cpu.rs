//! The `Cpu` kernel of `embedding`: a row gather forward, a scaled scatter-add into the table's
//! gradient backward.

use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Result};
use crate::ops::cpu::{embedding_bwd, embedding_fwd, Real};
use crate::ops::kernels::{self, Buf};
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// `table[ids]`; backward `dtable[ids[i]] += grad_scale·G[i]`. Ids are checked by the caller.
pub(crate) fn embedding<N: Dim, V: Dim, M: Dim, E: Real, T: Tape<E, Cpu>>(
    ids: Tensor<(N,), usize, Cpu, T>,
    table: &Tensor<(V, M), E, Cpu>,
    grad_scale: f64,
) -> Result<Tensor<(N, M), E, Cpu, T>> {
    let n_dim = ids.shape().0;
    let (ids, mut tape) = ids.split_tape();
    let (table, ttape) = kernels::param::<_, _, T>(table).dev()?;
    tape = tape.merge(ttape);
    let dev = table.device().clone();
    let ids = ids.as_vec();
    let width = table.shape().1.size();
    let ts = Buf::of(&table).dev()?;
    let mut y = Buf::zeros(&dev, ids.len() * width).dev()?;
    time(Part::Embedding, || embedding_fwd(&ts, width, &ids, &mut y));
    drop(ts);
    let y = y.into_tensor(&dev, (n_dim, table.shape().1)).dev()?;
    if T::OWNS_TAPE {
        let (tg, yg) = (table.ghost(), y.ghost());
        let scale = elem::<E>("scale", grad_scale)?;
        tape.add_backward_op(move |grads| {
            let gy = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let gt = kernels::slice_mut::<E>(grads.get_or_alloc_mut(&tg)?);
            time(Part::Embedding, || {
                embedding_bwd(&gy, width, &ids, scale, gt)
            });
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, gy);
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

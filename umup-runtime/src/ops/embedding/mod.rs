//! Unit-scaled `embedding` (spec §4.5).

use dfdx::prelude::*;

use super::{scale_grad, Backend};
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales;

pub(crate) mod cpu;

/// Embedding lookup `table[ids]` with the u-μP gradient scale (spec §4.5).
///
/// There is no forward scale: a unit-initialised table gives unit outputs. The table gradient is
/// `√(V / B_tok) · scatter_add(G)` with `B_tok = numel(ids)`; repeated ids accumulate.
/// The training tape rides on `ids` (`ids.traced(grads)`), as in dfdx's own `Embedding`.
/// An id `≥ V` is an [`Error::TokenOutOfRange`].
pub fn embedding<
    N: Dim,
    V: Dim,
    M: Dim,
    E: Dtype,
    D: Backend<E> + Storage<usize>,
    T: Tape<E, D>,
>(
    ids: Tensor<(N,), usize, D, T>,
    table: &Tensor<(V, M), E, D>,
) -> Result<Tensor<(N, M), E, D, T>> {
    let vocab = table.shape().0.size();
    // An empty id tensor is refused by `embedding_scaled`; `max(1)` only keeps the scale defined.
    let tokens = ids.shape().0.size().max(1);
    embedding_scaled(ids, table, scales::embedding_grad(vocab, tokens)?)
}

/// The lookup with an explicit table-gradient scale (1 = the plain embedding). Ids are checked.
pub(crate) fn embedding_scaled<
    N: Dim,
    V: Dim,
    M: Dim,
    E: Dtype,
    D: Backend<E> + Storage<usize>,
    T: Tape<E, D>,
>(
    ids: Tensor<(N,), usize, D, T>,
    table: &Tensor<(V, M), E, D>,
    grad_scale: f64,
) -> Result<Tensor<(N, M), E, D, T>> {
    if ids.shape().0.size() == 0 {
        return Err(crate::Error::ShapeMismatch {
            op: "embedding",
            detail: "no ids (the id tensor is empty)".into(),
        });
    }
    check_ids(&ids.as_vec(), table.shape().0.size())?;
    D::embedding_kernel(ids, table, grad_scale)
}

/// The device-generic composition of [`Backend::embedding_kernel`]: dfdx's `gather` on the
/// table with the gradient scale on the table.
pub fn embedding_generic<
    N: Dim,
    V: Dim,
    M: Dim,
    E: Dtype,
    D: Backend<E> + Storage<usize>,
    T: Tape<E, D>,
>(
    ids: Tensor<(N,), usize, D, T>,
    table: &Tensor<(V, M), E, D>,
    grad_scale: f64,
) -> Result<Tensor<(N, M), E, D, T>> {
    let (ids, tape) = ids.split_tape();
    let table = scale_grad(table.clone().put_tape(tape), 1.0, grad_scale)?;
    table.try_gather(ids).dev()
}

/// Checks that every id indexes a row of a `vocab`-row table ([`Error::TokenOutOfRange`] names
/// the first bad position).
pub fn check_ids(ids: &[usize], vocab: usize) -> Result<()> {
    match ids.iter().position(|&id| id >= vocab) {
        None => Ok(()),
        Some(position) => Err(Error::TokenOutOfRange {
            id: ids[position],
            position,
            vocab,
        }),
    }
}

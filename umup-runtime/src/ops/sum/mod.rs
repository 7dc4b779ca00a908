//! Unit-scaled `add` for non-residual sums (spec §4.8). Residual adds use
//! [`super::residual_add`].

use dfdx::prelude::*;

use super::{scale_grad, Backend};
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales;

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

/// Unit-scaled `a + b` for equal shapes (spec §4.8): `o = 2^-½`,
/// `s_a = s_b = 1`, `(o, s_a, s_b) = constraint(...)`; `output = o·(a+b)`, `grad a = s_a·G`,
/// `grad b = s_b·G`.
pub fn add<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    a: Tensor<S, E, D, T>,
    b: Tensor<S, E, D, T>,
    constraint: Constraint,
) -> Result<Tensor<S, E, D, T>> {
    let (sa, sb) = (a.shape().concrete(), b.shape().concrete());
    if sa.as_ref() != sb.as_ref() {
        return Err(mismatch(sa.as_ref(), sb.as_ref()));
    }
    let n = a.shape().num_elements();
    let [o, ga, gb] = scales::add(n, n, n, constraint)?;
    D::add_kernel(a, b, [o, o, ga, gb])
}

/// The device-generic composition of [`Backend::add_kernel`]: `scale_grad(a, fa, ga) +
/// scale_grad(b, fb, gb)`.
pub fn add_generic<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    a: Tensor<S, E, D, T>,
    b: Tensor<S, E, D, T>,
    [fa, fb, ga, gb]: [f64; 4],
) -> Result<Tensor<S, E, D, T>> {
    scale_grad(a, fa, ga)?.try_add(scale_grad(b, fb, gb)?).dev()
}

/// Unit-scaled `a + b` where `b` broadcasts to `a`'s shape along the axes `Ax` (spec §4.8):
/// `s_b = (numel(a)/numel(b))^-½`, and `grad b` is `s_b ×` `G` summed over the broadcast axes.
pub fn add_broadcast<
    S: Shape,
    Sb: Shape + BroadcastShapeTo<S, Ax>,
    Ax: Axes,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    a: Tensor<S, E, D, T>,
    b: Tensor<Sb, E, D, T>,
    constraint: Constraint,
) -> Result<Tensor<S, E, D, T>> {
    let a_dims = a.shape().concrete();
    let b_dims = b.shape().concrete();
    let axes: Vec<usize> = Ax::as_array().into_iter().map(|ax| ax as usize).collect();
    let kept: Vec<usize> = a_dims
        .as_ref()
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    if kept.as_slice() != b_dims.as_ref() {
        return Err(mismatch(a_dims.as_ref(), b_dims.as_ref()));
    }
    let shape = *a.shape();
    let [o, ga, gb] = scales::add(
        shape.num_elements(),
        shape.num_elements(),
        b.shape().num_elements(),
        constraint,
    )?;
    let b = scale_grad(b, o, gb)?
        .try_broadcast_like::<S, Ax>(&shape)
        .dev()?;
    scale_grad(a, o, ga)?.try_add(b).dev()
}

fn mismatch(a: &[usize], b: &[usize]) -> Error {
    Error::ShapeMismatch {
        op: "add",
        detail: format!("b with shape {b:?} does not broadcast to a with shape {a:?}"),
    }
}

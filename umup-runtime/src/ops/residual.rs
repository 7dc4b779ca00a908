//! Residual split / add / apply (spec §3.1).
//!
//! With `a = τ/√(1+τ²)` and `b = 1/√(1+τ²)`: the forward of a residual block is exactly
//! `a·f(x) + b·x`, `grad x` is exactly the true gradient, and parameters inside `f` see
//! `1/a ×` their true gradient (the branch scale is "delayed" from the add to the split).
//! τ for each transformer branch comes from [`crate::scales::transformer_residual_taus`].

use dfdx::prelude::*;

use super::{scale_bwd, Backend};
use crate::error::Result;
use crate::scales;

/// `residual_split(x, τ) → (residual, skip)`: both equal `x`; `grad x = a·G_residual + b·G_skip`.
pub fn residual_split<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    tau: f64,
) -> Result<(Tensor<S, E, D, T>, Tensor<S, E, D, T>)> {
    let (a, b) = scales::residual(tau)?;
    let skip = scale_bwd(x.with_empty_tape(), b)?;
    let residual = scale_bwd(x, a)?;
    Ok((residual, skip))
}

/// `residual_add(residual, skip, τ) = a·residual + b·skip`; both gradients pass unscaled.
pub fn residual_add<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    residual: Tensor<S, E, D, T>,
    skip: Tensor<S, E, D, T>,
    tau: f64,
) -> Result<Tensor<S, E, D, T>> {
    let (a, b) = scales::residual(tau)?;
    same_shape(&residual, &skip)?;
    D::add_kernel(residual, skip, [a, b, 1.0, 1.0])
}

/// `residual_apply(f, x, τ) = residual_add(f(residual), skip, τ)` with
/// `(residual, skip) = residual_split(x, τ)`.
///
/// The skip path of split-then-add is value `b·x` with gradient `b·G`, i.e. an ordinary multiply,
/// so it is computed as one; the branch keeps the delayed scale exactly as the reference does.
pub fn residual_apply<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>, F>(
    x: Tensor<S, E, D, T>,
    tau: f64,
    f: F,
) -> Result<Tensor<S, E, D, T>>
where
    F: FnOnce(Tensor<S, E, D, T>) -> Result<Tensor<S, E, D, T>>,
{
    let (a, b) = scales::residual(tau)?;
    let skip = x.with_empty_tape();
    let branch = f(scale_bwd(x, a)?)?;
    same_shape(&branch, &skip)?;
    D::add_kernel(branch, skip, [a, b, 1.0, b])
}

/// Checks that a residual's two operands have the same runtime shape.
fn same_shape<S: Shape, E: Dtype, D: Backend<E>, T, T2>(
    a: &Tensor<S, E, D, T>,
    b: &Tensor<S, E, D, T2>,
) -> Result<()> {
    let (sa, sb) = (a.shape().concrete(), b.shape().concrete());
    if sa.as_ref() == sb.as_ref() {
        Ok(())
    } else {
        Err(crate::Error::ShapeMismatch {
            op: "residual_add",
            detail: format!(
                "the branch has shape {:?}, the skip has shape {:?}",
                sa.as_ref(),
                sb.as_ref()
            ),
        })
    }
}

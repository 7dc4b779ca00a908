//! `matmul`, `linear` and `linear_readout` (spec §4.1–§4.3).

use dfdx::prelude::*;

use super::{check_dim, scale_grad, Backend};

pub(crate) mod cpu;
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Result};
use crate::scales::{self, LinearScales};

/// Unit-scaled `left[M,K] @ right[K,N]` (spec §4.1).
///
/// `(o, s_l, s_r) = constraint(K^-½, N^-½, M^-½)`; `output = o·(left@right)`,
/// `grad left = s_l·G·rightᵀ`, `grad right = s_r·leftᵀ·G`. The output scale is folded into
/// `left` and the remaining gradient ratio into `right`, so no activation-sized pass is added
/// when the constraint makes the scales equal.
pub fn matmul<M: Dim, K: Dim, N: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    left: Tensor<(M, K), E, D, T>,
    right: Tensor<(K, N), E, D, T>,
    constraint: Constraint,
) -> Result<Tensor<(M, N), E, D, T>> {
    let (m, k) = (left.shape().0.size(), left.shape().1.size());
    let (k2, n) = (right.shape().0.size(), right.shape().1.size());
    check_dim("matmul", "right.shape[0] (K)", k2, k)?;
    D::matmul_kernel(left, right, scales::matmul(m, k, n, constraint)?)
}

/// The device-generic composition of [`Backend::matmul_kernel`]: the output scale folded into
/// `left`, the remaining gradient ratio into `right`.
pub fn matmul_generic<M: Dim, K: Dim, N: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    left: Tensor<(M, K), E, D, T>,
    right: Tensor<(K, N), E, D, T>,
    [o, sl, sr]: [f64; 3],
) -> Result<Tensor<(M, N), E, D, T>> {
    let left = scale_grad(left, o, sl)?;
    let right = scale_grad(right, 1.0, sr / o)?;
    left.try_matmul(right).dev()
}

/// Batched [`matmul`]: `left[B,M,K] @ right[B,K,N]` with equal batch dims; the scales use
/// `M`, `K`, `N` only (spec §4.1: batch dims are ignored).
pub fn matmul_batched<
    B: Dim,
    M: Dim,
    K: Dim,
    N: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    left: Tensor<(B, M, K), E, D, T>,
    right: Tensor<(B, K, N), E, D, T>,
    constraint: Constraint,
) -> Result<Tensor<(B, M, N), E, D, T>> {
    let [b, m, k] = left.shape().concrete();
    let [b2, k2, n] = right.shape().concrete();
    check_dim("matmul", "right batch dim", b2, b)?;
    check_dim("matmul", "right.shape[-2] (K)", k2, k)?;
    let [o, sl, sr] = scales::matmul(m, k, n, constraint)?;
    let left = scale_grad(left, o, sl)?;
    let right = scale_grad(right, 1.0, sr / o)?;
    left.try_matmul(right).dev()
}

/// Unit-scaled linear layer `x[R, fan_in] → [R, fan_out]` (spec §4.2).
///
/// `B_tok = R`; `(o, s_x) = constraint(fan_in^-½, fan_out^-½)`; `s_w = B_tok^-½`.
/// `output = o·(x·Wᵀ + b)` (the bias is added **before** the scale, as in the reference);
/// `grad x = s_x·G·W`, `grad W = s_w·Gᵀ·x`, `grad b = s_w·Σ_rows G`.
/// The weight is stored torch-style, `W[fan_out, fan_in]`. Flatten leading dims into `R` first.
pub fn linear<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    constraint: Constraint,
) -> Result<Tensor<(R, O), E, D, T>> {
    let s = linear_scales(false, &x, weight, bias, constraint)?;
    D::linear_kernel(x, weight.retaped(), bias.map(|b| b.retaped()), s)
}

/// Unit-scaled readout layer (spec §4.3): as [`linear`] with output scale `1/fan_in`
/// (`constraint` is usually [`Constraint::None`], the reference default: the readout sits on a
/// cut edge).
pub fn linear_readout<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    constraint: Constraint,
) -> Result<Tensor<(R, O), E, D, T>> {
    let s = linear_scales(true, &x, weight, bias, constraint)?;
    D::linear_kernel(x, weight.retaped(), bias.map(|b| b.retaped()), s)
}

/// Checks the runtime dims of a linear layer and computes its scales ([`scales::linear`] or
/// [`scales::linear_readout`]).
pub(crate) fn linear_scales<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T>(
    readout: bool,
    x: &Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    constraint: Constraint,
) -> Result<LinearScales> {
    let op = if readout { "linear_readout" } else { "linear" };
    let (rows, fan_in) = (x.shape().0.size(), x.shape().1.size());
    let (fan_out, w_in) = (weight.shape().0.size(), weight.shape().1.size());
    check_dim(op, "weight.shape[1] (fan_in) vs x.shape[-1]", w_in, fan_in)?;
    if let Some(b) = bias {
        check_dim(
            op,
            "bias length vs weight.shape[0] (fan_out)",
            b.shape().0.size(),
            fan_out,
        )?;
    }
    if readout {
        scales::linear_readout(fan_in, fan_out, rows, constraint)
    } else {
        scales::linear(fan_in, fan_out, rows, constraint)
    }
}

/// The device-generic composition of [`Backend::linear_kernel`]: `o·(x·Wᵀ + b)` with the
/// scales folded into the weight and bias (`value o·W`, gradient `s_w`), plus a backward-only
/// `s_x/o` on `x` when the constraint leaves them unequal. The weight and bias carry the tape
/// type of `x` (a `retaped` parameter, or a quantised copy).
pub fn linear_generic<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(R, I), E, D, T>,
    weight: Tensor<(O, I), E, D, T>,
    bias: Option<Tensor<(O,), E, D, T>>,
    s: LinearScales,
) -> Result<Tensor<(R, O), E, D, T>> {
    let w = scale_grad(weight, s.output, s.grad_weight)?;
    let x = scale_grad(x, 1.0, s.grad_input / s.output)?;
    let y = x
        .try_matmul(w.try_permute::<(I, O), Axes2<1, 0>>().dev()?)
        .dev()?;
    match bias {
        None => Ok(y),
        Some(b) => {
            let b = scale_grad(b, s.output, s.grad_weight)?;
            let shape = *y.shape();
            y.try_add(b.try_broadcast_like::<_, Axis<0>>(&shape).dev()?)
                .dev()
        }
    }
}

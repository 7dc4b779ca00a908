//! Unit-scaled losses (spec §4.13, §4.14).

use std::fmt;
use std::str::FromStr;

use dfdx::prelude::*;

use super::{check_dim, scale_fwd, scale_grad, Backend};
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales;

pub(crate) mod cpu;

/// How a loss reduces over its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Divide the sum by the number of rows (cross entropy) or elements (MSE), forward only.
    #[default]
    Mean,
    /// The plain sum.
    Sum,
}

impl FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            _ => Err(Error::UnknownName {
                kind: "reduction",
                name: s.to_string(),
                expected: "mean, sum",
            }),
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
        })
    }
}

/// Unit-scaled cross entropy of `logits[B, V]` against class `targets` (spec §4.13).
///
/// The value is exactly the standard cross entropy of `mult·logits` (mean over rows or sum).
/// The gradient is `(softmax(mult·x) − onehot(t))·V/√(V−1)·G`: **neither `mult` (α_loss-softmax)
/// nor `1/B` enters it**, so the logits gradient has unit RMS at a uniform softmax.
/// A target `≥ V` is an [`Error::TargetOutOfRange`].
pub fn cross_entropy<R: Dim, V: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    logits: Tensor<(R, V), E, D, T>,
    targets: &[usize],
    mult: f64,
    reduction: Reduction,
) -> Result<Tensor<(), E, D, T>> {
    let (rows, classes) = (logits.shape().0.size(), logits.shape().1.size());
    check_targets(targets, rows, classes)?;
    let mult = crate::error::check_positive("mult (alpha_loss_softmax)", mult)?;
    let grad_scale = scales::cross_entropy_grad(classes)?;
    D::cross_entropy_kernel(logits, targets, mult, reduce(reduction, rows), grad_scale)
}

/// The forward factor of a reduction over `rows` rows: `1/rows` for the mean, 1 for the sum.
fn reduce(reduction: Reduction, rows: usize) -> f64 {
    match reduction {
        Reduction::Mean => 1.0 / rows as f64,
        Reduction::Sum => 1.0,
    }
}

/// The standard cross entropy of `mult·logits` with its true gradient (no u-μP scales): the
/// loss used by the μP and SP baselines.
pub fn cross_entropy_plain<R: Dim, V: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    logits: Tensor<(R, V), E, D, T>,
    targets: &[usize],
    mult: f64,
    reduction: Reduction,
) -> Result<Tensor<(), E, D, T>> {
    let (rows, classes) = (logits.shape().0.size(), logits.shape().1.size());
    check_targets(targets, rows, classes)?;
    let mult = crate::error::check_positive("mult (alpha_loss_softmax)", mult)?;
    let value_scale = reduce(reduction, rows);
    D::cross_entropy_kernel(logits, targets, mult, value_scale, mult * value_scale)
}

/// Checks class targets against `rows × classes` logits: one target per row, at least one row,
/// every target `< classes` ([`Error::TargetOutOfRange`] names the first bad row).
pub fn check_targets(targets: &[usize], rows: usize, classes: usize) -> Result<()> {
    check_dim(
        "cross_entropy",
        "number of targets vs logits rows",
        targets.len(),
        rows,
    )?;
    if rows == 0 {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy",
            detail: "no rows (the logits are empty)".into(),
        });
    }
    if let Some(row) = targets.iter().position(|&t| t >= classes) {
        return Err(Error::TargetOutOfRange {
            target: targets[row],
            row,
            classes,
        });
    }
    Ok(())
}

/// The device-generic composition of [`Backend::cross_entropy_kernel`]:
/// `value_scale · Σ_rows −log_softmax(mult·x)[t]` with the logits gradient
/// `grad_coef·(softmax(mult·x) − onehot)·G` (`scale_grad` on the logits, the reduction forward
/// only), from dfdx's `log_softmax`.
pub fn cross_entropy_generic<R: Dim, V: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    logits: Tensor<(R, V), E, D, T>,
    targets: &[usize],
    mult: f64,
    value_scale: f64,
    grad_coef: f64,
) -> Result<Tensor<(), E, D, T>> {
    let x = scale_grad(logits, mult, grad_coef)?;
    let shape = *x.shape();
    let (rows, classes) = (shape.0.size(), shape.1.size());
    let mut onehot = vec![E::default(); rows * classes];
    for (row, &t) in targets.iter().enumerate() {
        onehot[row * classes + t] = E::ONE;
    }
    let onehot = x.device().try_tensor_from_vec(onehot, shape).dev()?;
    let picked = x
        .try_log_softmax::<Axis<1>>()
        .dev()?
        .try_mul(onehot)
        .dev()?;
    if !super::low_precision::<E>() {
        let loss = picked.try_sum::<(), _>().dev()?.try_negate().dev()?;
        return scale_fwd(loss, value_scale);
    }
    // A 16-bit dtype (f16 mixed precision) cannot accumulate the batch: summing thousands of
    // rows of ≈ 5.5 in f16 (ulp 8 at 8192) loses whole units, and past 65504 it overflows. Each
    // row's value is exact (one nonzero per row), so the rows are summed on the host in f64
    // (as mixed-precision frameworks reduce losses in f32), and the on-device sum, with
    // `value_scale` applied first so that it stays finite, carries the gradient: a forward-only
    // scale turns its value into the exact one.
    let rows = picked.try_sum::<(R,), Axis<1>>().dev()?;
    let exact = -value_scale
        * rows
            .as_vec()
            .iter()
            .map(|v| v.to_f64().unwrap_or(f64::NAN))
            .sum::<f64>();
    let loss = scale_grad(rows, value_scale, 1.0)?
        .try_sum::<(), _>()
        .dev()?
        .try_negate()
        .dev()?;
    let approx = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
    let fix = exact / approx;
    scale_fwd(
        loss,
        if fix.is_finite() && fix > 0.0 {
            fix
        } else {
            1.0
        },
    )
}

/// Unit-scaled mean-squared error (spec §4.14): the value is `Σ(input−target)²` (divided by
/// `numel` for [`Reduction::Mean`], forward only); `grad input = 8^-½·2(input−target)·G` and
/// `grad target = −grad input`.
pub fn mse_loss<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
    input: Tensor<S, E, D, T>,
    target: Tensor<S, E, D, T>,
    reduction: Reduction,
) -> Result<Tensor<(), E, D, T>> {
    let (si, st) = (input.shape().concrete(), target.shape().concrete());
    if si.as_ref() != st.as_ref() {
        return Err(Error::ShapeMismatch {
            op: "mse_loss",
            detail: format!(
                "input has shape {:?}, target has shape {:?}",
                si.as_ref(),
                st.as_ref()
            ),
        });
    }
    let numel = input.shape().num_elements();
    if numel == 0 {
        return Err(Error::ShapeMismatch {
            op: "mse_loss",
            detail: "the inputs are empty".into(),
        });
    }
    let diff = input.try_sub(target).dev()?;
    let loss = scale_grad(diff, 1.0, scales::mse_grad())?
        .try_square()
        .dev()?;
    let loss = super::sum_all(loss).dev()?;
    match reduction {
        Reduction::Sum => Ok(loss),
        Reduction::Mean => scale_fwd(loss, 1.0 / numel as f64),
    }
}

//! Unit-scaled pooling over positions: `mean_pool` (spec §1, §4).
//!
//! A model that reads one vector per sequence (a classifier head over an encoder, a ViT's
//! pooled patch tokens) averages the `S` positions of each sequence. A plain mean of `S`
//! independent unit values has std `1/√S`, so unit scaling rescales it; the rule is the
//! reference's for any sum ([`crate::scales::mean_pool`]).
//!
//! There is no kernel method: the op is a reshape, dfdx's sum over the position axis and one
//! [`super::scale_grad`] (which has a `Cpu` kernel), so every device runs the same composition.

use dfdx::prelude::*;

use super::{scale_grad, Backend};
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales;

/// Unit-scaled mean over positions: rows `[batch·seq, K]` (the row layout of umup's models:
/// sequence `b`'s positions are rows `b·seq .. (b+1)·seq`) → `[batch, K]`.
///
/// With `(o, s_x) = constraint(S^-½, 1)` ([`scales::mean_pool`], spec §1.2, §1.4, §4):
/// `y[b] = o·Σ_s x[b·S + s] = o·S · mean_s x[b·S + s]`, and in the backward pass every
/// position's gradient is `grad x[b·S + s] = s_x · G[b]`.
///
/// * `to_output_scale` (the u-μP default): `y = √S · mean`, `grad x = G/√S`. The output of unit
///   (independent) inputs is unit; the gradient is `1/√S` of the output gradient's scale. This
///   is what `ops::scale_grad(mean, √S, √S)` computes, the pooling of the shipped encoder
///   example.
/// * `none`: `y = √S · mean` and `grad x = G`: unit forward *and* backward. Legal where the
///   pool sits on a cut edge (after the last residual add, before the readout; spec §1.4),
///   where the forward and backward ratios need not agree.
/// * `to_grad_input_scale`: `y = Σ_s x` (a plain sum, std `√S`) and `grad x = G`.
/// * `gmean`, `hmean`, `amean`: one scale between `S^-½` and 1 for both.
///
/// A `seq` of 1 is the identity (every scale is 1). Errors if `seq` is 0, if there are no
/// rows, or if the number of rows is not a multiple of `seq`; `to_left_grad_scale` and
/// `to_right_grad_scale` (three-scale constraints) are errors.
pub fn mean_pool<R: Dim, K: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<(R, K), E, D, T>,
    seq: usize,
    constraint: Constraint,
) -> Result<Tensor<(usize, K), E, D, T>> {
    let s = scales::mean_pool(seq, constraint)?;
    let (rows, k) = *x.shape();
    let rows = rows.size();
    if rows == 0 || !rows.is_multiple_of(seq) {
        return Err(Error::ShapeMismatch {
            op: "mean_pool",
            detail: format!(
                "rows: expected a nonzero multiple of seq = {seq} (batch·seq rows), got {rows}"
            ),
        });
    }
    let batch = rows / seq;
    let summed = x
        .try_reshape_like(&(batch, seq, k))
        .dev()?
        .try_sum::<(usize, K), Axis<1>>()
        .dev()?;
    scale_grad(summed, s.output, s.grad_input)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Tp = OwnedTape<f64, Cpu>;

    /// Two sequences of four positions, three features: x[b, s, k] = 10·b + s + k/10.
    fn input(dev: &Cpu) -> Tensor<(usize, Const<3>), f64, Cpu> {
        let data: Vec<f64> = (0..2)
            .flat_map(|b| {
                (0..4).flat_map(move |s| {
                    (0..3).map(move |k| 10.0 * b as f64 + s as f64 + k as f64 / 10.0)
                })
            })
            .collect();
        dev.tensor_from_vec(data, (8usize, Const::<3>))
    }

    #[test]
    fn forward_is_the_mean_times_root_s() {
        let dev = Cpu::default();
        let y = mean_pool(input(&dev), 4, Constraint::ToOutputScale).unwrap();
        assert_eq!(y.shape().0, 2);
        // mean over s of (10b + s + k/10) = 10b + 1.5 + k/10, times √4 = 2.
        let want = [3.0, 3.2, 3.4, 23.0, 23.2, 23.4];
        for (g, w) in y.as_vec().iter().zip(want) {
            assert!((g - w).abs() <= 1e-12, "{g} vs {w}");
        }
        // Without a tape, with `none`, the value is the same; `to_grad_input_scale` is the sum.
        let y = mean_pool(input(&dev), 4, Constraint::None).unwrap();
        assert!((y.as_vec()[4] - 23.2).abs() <= 1e-12);
        let y = mean_pool(input(&dev), 4, Constraint::ToGradInputScale).unwrap();
        assert!((y.as_vec()[4] - 46.4).abs() <= 1e-12);
    }

    #[test]
    fn each_positions_gradient_is_the_constraints_scale_times_the_output_gradient() {
        let dev = Cpu::default();
        // G[b, k] = 1 + b + k/4.
        let g = dev.tensor_from_vec(vec![1.0, 1.25, 1.5, 2.0, 2.25, 2.5], (2usize, Const::<3>));
        let cases = [
            (Constraint::ToOutputScale, 0.5, 0.5),
            (Constraint::None, 0.5, 1.0),
            (Constraint::ToGradInputScale, 1.0, 1.0),
            (Constraint::Gmean, 0.5f64.sqrt(), 0.5f64.sqrt()),
            (Constraint::Hmean, 2.0 / 3.0, 2.0 / 3.0),
            (Constraint::Amean, 0.75, 0.75),
        ];
        for (c, o, sx) in cases {
            let x = input(&dev);
            let y: Tensor<(usize, Const<3>), f64, Cpu, Tp> =
                mean_pool(x.leaky_trace(), 4, c).unwrap();
            let sums = [6.0, 6.4, 6.8, 46.0, 46.4, 46.8];
            for (v, s) in y.as_vec().iter().zip(sums) {
                assert!((v - o * s).abs() <= 1e-12, "{c}: {v} vs {}", o * s);
            }
            let grads = y.try_mul(g.clone()).unwrap().sum::<(), _>().backward();
            let gx = grads.get(&x).as_vec();
            assert_eq!(gx.len(), 24);
            for (i, v) in gx.iter().enumerate() {
                let (b, k) = (i / 12, i % 3);
                let want = sx * (1.0 + b as f64 + k as f64 / 4.0);
                assert!(
                    (v - want).abs() <= 1e-12,
                    "{c}: grad x[{i}] = {v}, want {want}"
                );
            }
        }
    }

    #[test]
    fn one_position_is_the_identity_and_bad_shapes_are_errors() {
        let dev = Cpu::default();
        let x = input(&dev);
        let y = mean_pool(x.clone(), 1, Constraint::ToOutputScale).unwrap();
        assert_eq!(y.as_vec(), x.as_vec());
        for (seq, what) in [(3, "multiple of seq = 3"), (0, "seq")] {
            let e = mean_pool(x.clone(), seq, Constraint::None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
        let empty: Tensor<(usize, Const<3>), f64, Cpu> = dev.zeros_like(&(0usize, Const::<3>));
        assert!(mean_pool(empty, 4, Constraint::None).is_err());
        assert!(mean_pool(x, 4, Constraint::ToLeftGradScale).is_err());
    }
}

//! `conv1d` (spec §4.4; conformance SCHEMA.md §3, `conv1d` row).

use dfdx::prelude::*;

use super::{check_dim, scale_grad, Backend};

pub(crate) mod cpu;
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Error, Result};
use crate::scales::{self, LinearScales};

/// The geometry of a 1-D convolution: what the kernel needs besides the scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv1dGeometry {
    /// Step between output positions (≥ 1).
    pub stride: usize,
    /// Zeros added at both ends of the time axis.
    pub padding: usize,
    /// Spacing of the kernel taps (≥ 1).
    pub dilation: usize,
    /// Channel groups (≥ 1): input channels `[g·C_in/G, (g+1)·C_in/G)` feed output channels
    /// `[g·C_out/G, (g+1)·C_out/G)` only.
    pub groups: usize,
}

impl Default for Conv1dGeometry {
    /// torch's defaults: stride 1, no padding, dilation 1, one group.
    fn default() -> Self {
        Conv1dGeometry {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv1dGeometry {
    /// `T_out = ⌊(T + 2·padding − dilation·(k−1) − 1) / stride⌋ + 1`; an error when the padded
    /// input is shorter than the dilated kernel, or stride, dilation or groups is 0.
    pub fn output_len(&self, len: usize, kernel: usize) -> Result<usize> {
        for (what, v) in [
            ("conv1d stride", self.stride),
            ("conv1d dilation", self.dilation),
            ("conv1d groups", self.groups),
            ("conv1d kernel_size", kernel),
        ] {
            if v == 0 {
                return Err(Error::InvalidValue {
                    what,
                    value: 0.0,
                    reason: "must be at least 1",
                });
            }
        }
        let span = self.dilation * (kernel - 1) + 1;
        let padded = len + 2 * self.padding;
        if padded < span {
            return Err(Error::ShapeMismatch {
                op: "conv1d",
                detail: format!(
                    "the padded input ({len} + 2·{}) is shorter than the dilated kernel ({span})",
                    self.padding
                ),
            });
        }
        Ok((padded - span) / self.stride + 1)
    }
}

/// Options of [`conv1d`]: the geometry, the constraint and the scale powers. The default is the
/// reference's: stride 1, padding 0, dilation 1, groups 1, `to_output_scale`,
/// `scale_power = [½, ½, ½]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv1dOptions {
    /// Stride, padding, dilation and groups.
    pub geometry: Conv1dGeometry,
    /// The constraint on `(o, s_x)`.
    pub constraint: Constraint,
    /// `[p_o, p_x, p_w]`, the exponents of the output, input-gradient and weight-gradient scales.
    pub scale_power: [f64; 3],
}

impl Default for Conv1dOptions {
    fn default() -> Self {
        Conv1dOptions {
            geometry: Conv1dGeometry::default(),
            constraint: Constraint::ToOutputScale,
            scale_power: [0.5; 3],
        }
    }
}

/// Unit-scaled 1-D convolution `x[B, C_in, T] → [B, C_out, T_out]` (spec §4.4).
///
/// The weight is torch's `W[C_out, C_in/groups, k]`, the optional bias `b[C_out]`.
/// `T_out = ⌊(T + 2·padding − dilation·(k−1) − 1)/stride⌋ + 1`, `B_tok = T_out·B`;
/// `o = (C_in/groups · k)^-p_o`, `s_x = (stride·groups/(C_out·k))^p_x`,
/// `(o, s_x) = constraint(o, s_x)`, `s_w = B_tok^-p_w` ([`scales::conv1d`]).
/// `output = o·(conv1d(x, W) + b)` (the bias is added **before** the scale, as in the
/// reference); `grad x = s_x ×` the true gradient, `grad W` and `grad b` `= s_w ×` the true
/// gradient. Errors on a channel mismatch, `groups` not dividing `C_in` and `C_out`, or an input
/// shorter than the dilated kernel.
pub fn conv1d<B, CI, L, O, IG, K, E, D, T>(
    x: Tensor<(B, CI, L), E, D, T>,
    weight: &Tensor<(O, IG, K), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    options: Conv1dOptions,
) -> Result<Tensor<(B, O, usize), E, D, T>>
where
    B: Dim,
    CI: Dim,
    L: Dim,
    O: Dim,
    IG: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let [b, ci, len] = x.shape().concrete();
    let s = conv1d_scales(b, ci, len, weight, bias, options)?;
    D::conv1d_kernel(
        x,
        weight.retaped(),
        bias.map(|b| b.retaped()),
        options.geometry,
        s,
    )
}

/// [`conv1d`] on an unbatched input `x[C_in, T] → [C_out, T_out]` (`B_tok = T_out`).
pub fn conv1d_unbatched<CI, L, O, IG, K, E, D, T>(
    x: Tensor<(CI, L), E, D, T>,
    weight: &Tensor<(O, IG, K), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    options: Conv1dOptions,
) -> Result<Tensor<(O, usize), E, D, T>>
where
    CI: Dim,
    L: Dim,
    O: Dim,
    IG: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let (ci, len) = *x.shape();
    let x = x.try_reshape_like(&(Const::<1>, ci, len)).dev()?;
    let y = conv1d(x, weight, bias, options)?;
    let (_, o, t) = *y.shape();
    y.try_reshape_like(&(o, t)).dev()
}

/// Checks the runtime dims of a convolution and computes its scales ([`scales::conv1d`]).
pub(crate) fn conv1d_scales<O: Dim, IG: Dim, K: Dim, E: Dtype, D: Storage<E>>(
    batch: usize,
    in_channels: usize,
    len: usize,
    weight: &Tensor<(O, IG, K), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    options: Conv1dOptions,
) -> Result<LinearScales> {
    let [co, ig, k] = weight.shape().concrete();
    let g = options.geometry;
    let t_out = g.output_len(len, k)?;
    if !in_channels.is_multiple_of(g.groups) || !co.is_multiple_of(g.groups) {
        return Err(Error::ShapeMismatch {
            op: "conv1d",
            detail: format!(
                "groups ({}) must divide in_channels ({in_channels}) and out_channels ({co})",
                g.groups
            ),
        });
    }
    check_dim(
        "conv1d",
        "weight.shape[1] (in_channels / groups)",
        ig,
        in_channels / g.groups,
    )?;
    if let Some(b) = bias {
        check_dim(
            "conv1d",
            "bias length vs weight.shape[0] (out_channels)",
            b.shape().0.size(),
            co,
        )?;
    }
    if batch == 0 {
        return Err(Error::ShapeMismatch {
            op: "conv1d",
            detail: "the batch is empty".into(),
        });
    }
    scales::conv1d(
        ig,
        co,
        k,
        g.stride,
        g.groups,
        t_out * batch,
        options.constraint,
        options.scale_power,
    )
}

/// The device-generic composition of [`Backend::conv1d_kernel`], from public dfdx ops only:
/// im2col as a matmul with a constant 0/1 selection matrix `S[T, k·T_out]`
/// (`S[τ, j·T_out + t] = 1` iff `τ = t·stride + j·dilation − padding`, so padding, stride and
/// dilation are all in `S`), then one batched matmul per group with the weight
/// (`[B, G, C_out/G, C_in/G·k] @ [B, G, C_in/G·k, T_out]`). The scales are folded into the weight
/// and bias (value `o`, gradient `s_w`) plus a backward-only `s_x/o` on `x`, as for
/// [`super::linear::linear_generic`]. Shapes are checked by the caller.
pub fn conv1d_generic<B, CI, L, O, IG, K, E, D, T>(
    x: Tensor<(B, CI, L), E, D, T>,
    weight: Tensor<(O, IG, K), E, D, T>,
    bias: Option<Tensor<(O,), E, D, T>>,
    geometry: Conv1dGeometry,
    s: LinearScales,
) -> Result<Tensor<(B, O, usize), E, D, T>>
where
    B: Dim,
    CI: Dim,
    L: Dim,
    O: Dim,
    IG: Dim,
    K: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let [b, ci, len] = x.shape().concrete();
    let [co, ig, k] = weight.shape().concrete();
    let (bd, od) = (x.shape().0, weight.shape().0);
    let g = geometry.groups;
    let t_out = geometry.output_len(len, k)?;
    let dev = x.device().clone();
    let mut sel = vec![E::default(); len * k * t_out];
    for j in 0..k {
        for t in 0..t_out {
            let tau =
                (t * geometry.stride + j * geometry.dilation) as isize - geometry.padding as isize;
            if (0..len as isize).contains(&tau) {
                sel[tau as usize * k * t_out + j * t_out + t] = E::ONE;
            }
        }
    }
    let sel = dev.try_tensor_from_vec(sel, (len, k * t_out)).dev()?;
    let x = scale_grad(x, 1.0, s.grad_input / s.output)?;
    let x = x.try_reshape_like(&(b * ci, len)).dev()?;
    let cols = x.try_matmul(sel).dev()?;
    let cols = cols.try_reshape_like(&(b, g, ig * k, t_out)).dev()?;
    let w = scale_grad(weight, s.output, s.grad_weight)?;
    let w = w.try_reshape_like(&(g, co / g, ig * k)).dev()?;
    let w = w
        .try_broadcast_like::<_, Axis<0>>(&(b, g, co / g, ig * k))
        .dev()?;
    let y = w.try_matmul(cols).dev()?;
    let y = y.try_reshape_like(&(bd, od, t_out)).dev()?;
    match bias {
        None => Ok(y),
        Some(bias) => {
            let bias = scale_grad(bias, s.output, s.grad_weight)?;
            let shape = *y.shape();
            y.try_add(bias.try_broadcast_like::<_, Axes2<0, 2>>(&shape).dev()?)
                .dev()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `o·(Σ W·x + b)` and its `s`-scaled gradients by direct loops over the definition.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        gy: &[f64],
        [nb, ci, len]: [usize; 3],
        [co, ig, k]: [usize; 3],
        geo: Conv1dGeometry,
        s: LinearScales,
    ) -> [Vec<f64>; 4] {
        let t_out = geo.output_len(len, k).unwrap();
        let og = co / geo.groups;
        let mut y = vec![0.0; nb * co * t_out];
        let (mut gx, mut gw, mut gb) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; co]);
        for bi in 0..nb {
            for o in 0..co {
                for t in 0..t_out {
                    let yi = (bi * co + o) * t_out + t;
                    let mut acc = b[o];
                    for c in 0..ig {
                        let cx = (o / og) * ig + c;
                        for j in 0..k {
                            let tau =
                                (t * geo.stride + j * geo.dilation) as isize - geo.padding as isize;
                            if tau < 0 || tau >= len as isize {
                                continue;
                            }
                            let (xi, wi) =
                                ((bi * ci + cx) * len + tau as usize, (o * ig + c) * k + j);
                            acc += w[wi] * x[xi];
                            gx[xi] += s.grad_input * w[wi] * gy[yi];
                            gw[wi] += s.grad_weight * x[xi] * gy[yi];
                        }
                    }
                    y[yi] = s.output * acc;
                    gb[o] += s.grad_weight * gy[yi];
                }
            }
        }
        [y, gx, gw, gb]
    }

    #[test]
    fn matches_the_definition_with_every_option_at_once() {
        let dev = Cpu::default();
        let mut seed = 1u64;
        let mut rand = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        };
        for (nb, ci, len, co, k, geo) in [
            (
                2,
                6,
                13,
                9,
                3,
                Conv1dGeometry {
                    stride: 2,
                    padding: 2,
                    dilation: 3,
                    groups: 3,
                },
            ),
            (
                1,
                4,
                5,
                2,
                4,
                Conv1dGeometry {
                    stride: 3,
                    padding: 3,
                    dilation: 1,
                    groups: 2,
                },
            ),
            (
                3,
                2,
                9,
                4,
                1,
                Conv1dGeometry {
                    stride: 1,
                    padding: 1,
                    dilation: 2,
                    groups: 1,
                },
            ),
        ] {
            let ig = ci / geo.groups;
            let options = Conv1dOptions {
                geometry: geo,
                constraint: Constraint::Gmean,
                scale_power: [0.25, 0.75, 1.0],
            };
            let (x, w, b) = (rand(nb * ci * len), rand(co * ig * k), rand(co));
            let xt = dev.tensor_from_vec(x.clone(), (nb, ci, len));
            let wt = dev.tensor_from_vec(w.clone(), (co, ig, k));
            let bt = dev.tensor_from_vec(b.clone(), (co,));
            let s = conv1d_scales(nb, ci, len, &wt, Some(&bt), options).unwrap();
            let y = conv1d(xt.leaky_trace(), &wt, Some(&bt), options).unwrap();
            let gy = rand(y.shape().num_elements());
            let want = naive(&x, &w, &b, &gy, [nb, ci, len], [co, ig, k], geo, s);
            let got_y = y.as_vec();
            let g = dev.tensor_from_vec(gy, *y.shape());
            let grads = (y * g).sum::<(), _>().backward();
            let got = [
                got_y,
                grads.get(&xt).as_vec(),
                grads.get(&wt).as_vec(),
                grads.get(&bt).as_vec(),
            ];
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.len(), e.len());
                for (u, v) in a.iter().zip(e) {
                    assert!((u - v).abs() < 1e-12, "tensor {i}: {u} vs {v}");
                }
            }
            // Unbatched: the same as a batch of one.
            if nb == 1 {
                let x2 = dev.tensor_from_vec(x.clone(), (ci, len));
                let y2 = conv1d_unbatched(x2, &wt, Some(&bt), options).unwrap();
                for (u, v) in y2.as_vec().iter().zip(&want[0]) {
                    assert!((u - v).abs() < 1e-12, "unbatched: {u} vs {v}");
                }
            }
        }
    }
}

//! [`Backend`]: the device side of every unit-scaled op.
//!
//! Each op's semantics and scales live in its own module (`ops/linear/mod.rs`, ...): the op
//! checks its inputs, computes its scales through [`crate::scales`], and calls one kernel method
//! of this trait with plain numbers. Every method has a default: the op's composition of public
//! dfdx tensor ops (`ops::generic`), which any dfdx device runs (`Cuda` does). A device overrides
//! the methods it has kernels for — `Cpu` overrides all of them for `f32` and `f64` with the tape
//! ops in each op's `cpu.rs` — so adding a device is one impl block here and one file per op,
//! never a second copy of a model.
//!
//! A kernel method receives its inputs with whatever tape they carry and returns its output with
//! the merged tape; parameters (weights, gains, biases) come by reference, untaped, and receive
//! their gradient through the tape.

use dfdx::prelude::*;

use super::cpu::{AttnShape, Real};
use std::sync::{Arc, Mutex};

use super::conv::{self, Conv1dGeometry};
use super::quantise::{self, Plan, Quantise};
use super::{activation, attention, embedding, linear, loss, mlp, norm, scale, sum};
use crate::error::Result;
use crate::formats::QuantStats;
use crate::scales::LinearScales;

/// A dfdx device the umup ops run on: [`Cpu`] with its kernels, or any other dfdx device
/// (`Cuda`) through the generic default methods. See the module docs.
pub trait Backend<E: Dtype>: Device<E> {
    /// Value `fwd·x`, gradient `bwd·grad_y` (spec §1.1). Callers use [`super::scale_grad`],
    /// which validates the scales and skips the identity.
    fn scale_grad_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        fwd: E,
        bwd: E,
    ) -> std::result::Result<Tensor<S, E, Self, T>, Self::Err> {
        scale::detached_scale(x, fwd, bwd)
    }

    /// Multiplies the gradient of `param` held in `grads` by `factor` in place (gradient
    /// clipping). The default moves the scaled gradient in through a one-op backward pass.
    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<E, Self>,
        param: &Tensor<S, E, Self>,
        factor: E,
    ) -> std::result::Result<(), Self::Err> {
        scale::scale_gradient_generic(grads, param, factor)
    }

    /// `s.output·(x·Wᵀ + b)` with `grad x = s.grad_input·G·W`, `grad W = s.grad_weight·Gᵀ·x`,
    /// `grad b = s.grad_weight·Σ_rows G` (spec §4.2, §4.3). The weight and bias come with the
    /// tape type of `x` (a `retaped` parameter, or a quantised copy of one). Shapes are checked
    /// by the caller.
    fn linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        linear::linear_generic(x, weight, bias, s)
    }

    /// [`Self::linear_kernel`] with simulated precision (spec §8.1): `x` rounded by `fwd[0]` and
    /// the weight by `fwd[1]` (values rounded, gradients straight through), the output gradient
    /// by `bwd` before the matmuls use it (its counts added to `stats`). Returns the forward
    /// counts. The default composes [`Self::quantise_kernel`] and [`Self::linear_kernel`].
    #[allow(clippy::too_many_arguments)]
    fn linear_quantised_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
        fwd: Option<[Quantise; 2]>,
        bwd: Option<Quantise>,
        stats: Arc<Mutex<QuantStats>>,
    ) -> Result<(Tensor<(R, O), E, Self, T>, QuantStats)> {
        let mut counts = QuantStats::default();
        let (x, weight) = match fwd {
            Some([qx, qw]) => {
                let (x, cx) = Self::quantise_kernel(x, qx, Arc::clone(&stats))?;
                let (w, cw) = Self::quantise_kernel(weight, qw, Arc::clone(&stats))?;
                counts.merge(cx);
                counts.merge(cw);
                (x, w)
            }
            None => (x, weight),
        };
        let y = Self::linear_kernel(x, weight, bias, s)?;
        let y = match bwd {
            Some(q) => Self::quantise_kernel(y, q, stats)?.0,
            None => y,
        };
        Ok((y, counts))
    }

    /// `s.output·(conv1d(x, W) + b)` over `x[B, C_in, T]`, `W[C_out, C_in/groups, k]`, with
    /// `grad x = s.grad_input ×` the true gradient, `grad W` and `grad b` `= s.grad_weight ×` the
    /// true gradient (spec §4.4). The weight and bias come with the tape type of `x`. Shapes are
    /// checked by the caller.
    fn conv1d_kernel<B: Dim, CI: Dim, L: Dim, O: Dim, IG: Dim, K: Dim, T>(
        x: Tensor<(B, CI, L), E, Self, T>,
        weight: Tensor<(O, IG, K), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        geometry: Conv1dGeometry,
        s: LinearScales,
    ) -> Result<Tensor<(B, O, usize), E, Self, T>>
    where
        T: Tape<E, Self> + Merge<T>,
    {
        conv::conv1d_generic(x, weight, bias, geometry, s)
    }

    /// `o·left@right` with `grad left = s_l·G·rightᵀ`, `grad right = s_r·leftᵀ·G`, for
    /// `[o, s_l, s_r]` (spec §4.1). Shapes are checked by the caller.
    fn matmul_kernel<M: Dim, K: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        left: Tensor<(M, K), E, Self, T>,
        right: Tensor<(K, N), E, Self, T>,
        scales: [f64; 3],
    ) -> Result<Tensor<(M, N), E, Self, T>> {
        linear::matmul_generic(left, right, scales)
    }

    /// `out_scale · softmax(logit_scale · q·kᵀ [+ causal mask]) · v` over
    /// `[batch, heads, seq, d_head]`, true gradients (spec §4.12). Shapes are checked by the
    /// caller.
    fn attention_kernel<B: Dim, H: Dim, S: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(B, H, S, K), E, Self, T>,
        k: Tensor<(B, H, S, K), E, Self, T>,
        v: Tensor<(B, H, S, K), E, Self, T>,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
    ) -> Result<Tensor<(B, H, S, K), E, Self, T>> {
        attention::attention_generic(q, k, v, logit_scale, out_scale, is_causal)
    }

    /// [`Self::attention_kernel`] on `[batch·seq, heads·d_head]` rows (the layout of the
    /// projections: no permutes). `shape` gives batch, seq, heads and d_head; shapes are checked
    /// by the caller.
    fn attention_rows_kernel<R: Dim, W: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(R, W), E, Self, T>,
        k: Tensor<(R, W), E, Self, T>,
        v: Tensor<(R, W), E, Self, T>,
        shape: AttnShape,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
    ) -> Result<Tensor<(R, W), E, Self, T>> {
        attention::attention_rows_generic(q, k, v, shape, logit_scale, out_scale, is_causal)
    }

    /// [`Self::attention_rows_kernel`] with simulated precision: `q`, `k`, `v` rounded by the
    /// plan's three forward roundings, the output gradient by its backward rounding. Returns the
    /// forward counts. The default composes [`Self::quantise_kernel`] and
    /// [`Self::attention_rows_kernel`].
    #[allow(clippy::too_many_arguments)]
    fn attention_rows_quantised_kernel<R: Dim, W: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(R, W), E, Self, T>,
        k: Tensor<(R, W), E, Self, T>,
        v: Tensor<(R, W), E, Self, T>,
        shape: AttnShape,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
        (fwd, bwd, stats): Plan<3>,
    ) -> Result<(Tensor<(R, W), E, Self, T>, QuantStats)> {
        let mut counts = QuantStats::default();
        let mut round = |t, spec: Option<Quantise>| -> Result<_> {
            match spec {
                Some(s) => {
                    let (t, c) = Self::quantise_kernel(t, s, Arc::clone(&stats))?;
                    counts.merge(c);
                    Ok(t)
                }
                None => Ok(t),
            }
        };
        let [sq, sk, sv] = fwd.map_or([None; 3], |f| f.map(Some));
        let (q, k, v) = (round(q, sq)?, round(k, sk)?, round(v, sv)?);
        let y = Self::attention_rows_kernel(q, k, v, shape, logit_scale, out_scale, is_causal)?;
        let y = match bwd {
            Some(b) => Self::quantise_kernel(y, b, Arc::clone(&stats))?.0,
            None => y,
        };
        Ok((y, counts))
    }

    /// RMSNorm over the last dim (spec §4.7), with an optional gain whose gradient is scaled by
    /// `gain_scale`. Shapes are checked by the caller.
    fn rms_norm_kernel<R: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, K), E, Self, T>,
        gain: Option<&Tensor<(K,), E, Self>>,
        eps: f64,
        gain_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        norm::rms_norm_generic(x, gain, eps, gain_scale)
    }

    /// LayerNorm over the last dim with biased variance (spec §4.6), with an optional gain and
    /// bias whose gradients are scaled by `gain_scale`. Shapes are checked by the caller.
    fn layer_norm_kernel<R: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, K), E, Self, T>,
        gain: Option<&Tensor<(K,), E, Self>>,
        bias: Option<&Tensor<(K,), E, Self>>,
        eps: f64,
        gain_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        norm::layer_norm_generic(x, gain, bias, eps, gain_scale)
    }

    /// `fa·a + fb·b` with `grad a = ga·G`, `grad b = gb·G`, for `[fa, fb, ga, gb]` (spec §4.8,
    /// §3.1). Equal shapes, checked by the caller.
    fn add_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        a: Tensor<S, E, Self, T>,
        b: Tensor<S, E, Self, T>,
        scales: [f64; 4],
    ) -> Result<Tensor<S, E, Self, T>> {
        sum::add_generic(a, b, scales)
    }

    /// `scale · x · gate·σ(mult·gate)` with true gradients (spec §4.10). Equal shapes, checked
    /// by the caller.
    fn silu_glu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        gate: Tensor<S, E, Self, T>,
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::silu_glu_generic(x, gate, mult, scale)
    }

    /// `scale · u · g·σ(mult·g)` with `u = s[0].output·x·W_upᵀ`, `g = s[1].output·x·W_gateᵀ`, and
    /// the gradients of that composition (spec §4.2, §4.9): the input side of a SwiGLU MLP. The
    /// default composes [`Self::linear_kernel`] twice and [`Self::silu_glu_kernel`]
    /// (`ops::generic::silu_glu_linear`).
    fn silu_glu_linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        w_up: Tensor<(O, I), E, Self, T>,
        w_gate: Tensor<(O, I), E, Self, T>,
        s: [LinearScales; 2],
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        mlp::silu_glu_linear_generic(x, w_up, w_gate, s, mult, scale)
    }

    /// `gelu[1] · gelu(gelu[0] · u)` with `u = s.output·(x·Wᵀ + b)`, and the gradients of that
    /// composition (spec §4.2, §4.10): the input side of a GELU MLP. The default composes
    /// [`Self::linear_kernel`] and [`Self::gelu_kernel`] (`ops::generic::gelu_linear`).
    fn gelu_linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
        gelu: [f64; 3],
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        mlp::gelu_linear_generic(x, weight, bias, s, gelu)
    }

    /// A whole SwiGLU MLP: [`Self::silu_glu_linear_kernel`] with `s[0]`, `s[1]`, then the down
    /// projection `w.2` with `s[2]`, and the gradients of that composition (the default).
    #[allow(clippy::type_complexity)]
    fn swiglu_mlp_kernel<R: Dim, I: Dim, O: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        w: (
            Tensor<(O, I), E, Self, T>,
            Tensor<(O, I), E, Self, T>,
            Tensor<(N, O), E, Self, T>,
        ),
        s: [LinearScales; 3],
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<(R, N), E, Self, T>> {
        mlp::swiglu_mlp_generic(x, w, s, mult, scale)
    }

    /// A whole GELU MLP: [`Self::gelu_linear_kernel`] with `s[0]`, then the down projection with
    /// `s[1]`, and the gradients of that composition (the default).
    fn gelu_mlp_kernel<R: Dim, I: Dim, O: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        up: mlp::LayerTaped<O, I, E, Self, T>,
        down: mlp::LayerTaped<N, O, E, Self, T>,
        s: [LinearScales; 2],
        gelu: [f64; 3],
    ) -> Result<Tensor<(R, N), E, Self, T>> {
        mlp::gelu_mlp_generic(x, up, down, s, gelu)
    }

    /// `out_scale · gelu(mult·x)` (exact erf form) with `grad x = grad_scale · gelu′(mult·x) · G`
    /// (spec §4.10).
    fn gelu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::gelu_generic(x, mult, out_scale, grad_scale)
    }

    /// `out_scale · x·σ(mult·x)` with `grad x = grad_scale · (σ(mult·x) + mult·x·σ′(mult·x)) · G`
    /// (spec §4.10).
    fn silu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::silu_generic(x, mult, out_scale, grad_scale)
    }

    /// `out_scale · softmax(mult·x)` over the last dim with
    /// `grad x = grad_scale·mult · p ⊙ (G − Σ_last(G ⊙ p))` (spec §4.11).
    fn softmax_kernel<R: Dim, K: Dim, T: Tape<E, Self>>(
        x: Tensor<(R, K), E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        activation::softmax_generic(x, mult, out_scale, grad_scale)
    }

    /// Cross entropy of `mult·logits` against `targets`: value `value_scale·Σ_rows(lse − x_t)`,
    /// `grad logits = grad_coef·(softmax(mult·x) − onehot)·G` (spec §4.13). Targets are checked
    /// by the caller.
    fn cross_entropy_kernel<R: Dim, V: Dim, T: Tape<E, Self>>(
        logits: Tensor<(R, V), E, Self, T>,
        targets: &[usize],
        mult: f64,
        value_scale: f64,
        grad_coef: f64,
    ) -> Result<Tensor<(), E, Self, T>> {
        loss::cross_entropy_generic(logits, targets, mult, value_scale, grad_coef)
    }

    /// Simulated precision (spec §8.1): with `q.forward` the value rounded to `q.format` and the
    /// gradient passed straight through, otherwise the value as is and the gradient rounded.
    /// Returns the forward counts; the backward counts are added to `stats`.
    fn quantise_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        q: Quantise,
        stats: Arc<Mutex<QuantStats>>,
    ) -> Result<(Tensor<S, E, Self, T>, QuantStats)> {
        quantise::quantise_generic(x, q, stats)
    }

    /// `table[ids]`, with `grad table = grad_scale · scatter_add(G)` (spec §4.5). Ids are
    /// checked by the caller; the tape rides on `ids`.
    fn embedding_kernel<N: Dim, V: Dim, M: Dim, T: Tape<E, Self>>(
        ids: Tensor<(N,), usize, Self, T>,
        table: &Tensor<(V, M), E, Self>,
        grad_scale: f64,
    ) -> Result<Tensor<(N, M), E, Self, T>>
    where
        Self: Storage<usize>,
    {
        embedding::embedding_generic(ids, table, grad_scale)
    }
}

/// Implements every kernel method of [`Backend`] for `Cpu` by forwarding to the tape ops of
/// each op's `cpu.rs`.
impl<E: Real> Backend<E> for Cpu
where
    Cpu: Device<E>,
{
    fn scale_grad_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        fwd: E,
        bwd: E,
    ) -> std::result::Result<Tensor<S, E, Self, T>, Self::Err> {
        scale::cpu::scale_grad(x, fwd, bwd)
    }

    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<E, Self>,
        param: &Tensor<S, E, Self>,
        factor: E,
    ) -> std::result::Result<(), Self::Err> {
        scale::cpu::scale_gradient(grads, param, factor)
    }

    fn linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        linear::cpu::linear(x, weight, bias, s)
    }

    fn linear_quantised_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
        fwd: Option<[Quantise; 2]>,
        bwd: Option<Quantise>,
        stats: Arc<Mutex<QuantStats>>,
    ) -> Result<(Tensor<(R, O), E, Self, T>, QuantStats)> {
        linear::cpu::linear_quantised(x, weight, bias, s, fwd, bwd, stats)
    }

    fn matmul_kernel<M: Dim, K: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        left: Tensor<(M, K), E, Self, T>,
        right: Tensor<(K, N), E, Self, T>,
        scales: [f64; 3],
    ) -> Result<Tensor<(M, N), E, Self, T>> {
        linear::cpu::matmul(left, right, scales)
    }

    fn conv1d_kernel<B: Dim, CI: Dim, L: Dim, O: Dim, IG: Dim, K: Dim, T>(
        x: Tensor<(B, CI, L), E, Self, T>,
        weight: Tensor<(O, IG, K), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        geometry: Conv1dGeometry,
        s: LinearScales,
    ) -> Result<Tensor<(B, O, usize), E, Self, T>>
    where
        T: Tape<E, Self> + Merge<T>,
    {
        conv::cpu::conv1d(x, weight, bias, geometry, s)
    }

    fn attention_kernel<B: Dim, H: Dim, S: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(B, H, S, K), E, Self, T>,
        k: Tensor<(B, H, S, K), E, Self, T>,
        v: Tensor<(B, H, S, K), E, Self, T>,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
    ) -> Result<Tensor<(B, H, S, K), E, Self, T>> {
        attention::cpu::attention_heads(q, k, v, logit_scale, out_scale, is_causal)
    }

    fn attention_rows_kernel<R: Dim, W: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(R, W), E, Self, T>,
        k: Tensor<(R, W), E, Self, T>,
        v: Tensor<(R, W), E, Self, T>,
        shape: AttnShape,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
    ) -> Result<Tensor<(R, W), E, Self, T>> {
        attention::cpu::attention(q, k, v, shape, logit_scale, out_scale, is_causal)
    }

    fn attention_rows_quantised_kernel<R: Dim, W: Dim, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(R, W), E, Self, T>,
        k: Tensor<(R, W), E, Self, T>,
        v: Tensor<(R, W), E, Self, T>,
        shape: AttnShape,
        logit_scale: f64,
        out_scale: f64,
        is_causal: bool,
        plan: Plan<3>,
    ) -> Result<(Tensor<(R, W), E, Self, T>, QuantStats)> {
        attention::cpu::attention_quantised(q, k, v, shape, logit_scale, out_scale, is_causal, plan)
    }

    fn rms_norm_kernel<R: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, K), E, Self, T>,
        gain: Option<&Tensor<(K,), E, Self>>,
        eps: f64,
        gain_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        norm::cpu::norm(x, gain, None, eps, gain_scale, false)
    }

    fn layer_norm_kernel<R: Dim, K: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, K), E, Self, T>,
        gain: Option<&Tensor<(K,), E, Self>>,
        bias: Option<&Tensor<(K,), E, Self>>,
        eps: f64,
        gain_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        norm::cpu::norm(x, gain, bias, eps, gain_scale, true)
    }

    fn add_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        a: Tensor<S, E, Self, T>,
        b: Tensor<S, E, Self, T>,
        scales: [f64; 4],
    ) -> Result<Tensor<S, E, Self, T>> {
        sum::cpu::add(a, b, scales)
    }

    fn silu_glu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        gate: Tensor<S, E, Self, T>,
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::cpu::silu_glu(x, gate, mult, scale)
    }

    fn silu_glu_linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        w_up: Tensor<(O, I), E, Self, T>,
        w_gate: Tensor<(O, I), E, Self, T>,
        s: [LinearScales; 2],
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        mlp::cpu::silu_glu_linear(x, w_up, w_gate, s, mult, scale)
    }

    fn gelu_linear_kernel<R: Dim, I: Dim, O: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        weight: Tensor<(O, I), E, Self, T>,
        bias: Option<Tensor<(O,), E, Self, T>>,
        s: LinearScales,
        gelu: [f64; 3],
    ) -> Result<Tensor<(R, O), E, Self, T>> {
        mlp::cpu::gelu_linear(x, weight, bias, s, gelu)
    }

    #[allow(clippy::type_complexity)]
    fn swiglu_mlp_kernel<R: Dim, I: Dim, O: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        (wu, wg, wd): (
            Tensor<(O, I), E, Self, T>,
            Tensor<(O, I), E, Self, T>,
            Tensor<(N, O), E, Self, T>,
        ),
        s: [LinearScales; 3],
        mult: f64,
        scale: f64,
    ) -> Result<Tensor<(R, N), E, Self, T>> {
        mlp::cpu::swiglu_mlp(x, wu, wg, wd, s, mult, scale)
    }

    fn gelu_mlp_kernel<R: Dim, I: Dim, O: Dim, N: Dim, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<(R, I), E, Self, T>,
        up: mlp::LayerTaped<O, I, E, Self, T>,
        down: mlp::LayerTaped<N, O, E, Self, T>,
        s: [LinearScales; 2],
        gelu: [f64; 3],
    ) -> Result<Tensor<(R, N), E, Self, T>> {
        mlp::cpu::gelu_mlp(x, up, down, s, gelu)
    }

    fn gelu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::cpu::gelu(x, mult, out_scale, grad_scale)
    }

    fn silu_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<S, E, Self, T>> {
        activation::cpu::silu(x, mult, out_scale, grad_scale)
    }

    fn softmax_kernel<R: Dim, K: Dim, T: Tape<E, Self>>(
        x: Tensor<(R, K), E, Self, T>,
        mult: f64,
        out_scale: f64,
        grad_scale: f64,
    ) -> Result<Tensor<(R, K), E, Self, T>> {
        activation::cpu::softmax(x, mult, out_scale, grad_scale)
    }

    fn cross_entropy_kernel<R: Dim, V: Dim, T: Tape<E, Self>>(
        logits: Tensor<(R, V), E, Self, T>,
        targets: &[usize],
        mult: f64,
        value_scale: f64,
        grad_coef: f64,
    ) -> Result<Tensor<(), E, Self, T>> {
        loss::cpu::cross_entropy(logits, targets, mult, value_scale, grad_coef)
    }

    fn quantise_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        q: Quantise,
        stats: Arc<Mutex<QuantStats>>,
    ) -> Result<(Tensor<S, E, Self, T>, QuantStats)> {
        quantise::cpu::quantise(x, q, stats)
    }

    fn embedding_kernel<N: Dim, V: Dim, M: Dim, T: Tape<E, Self>>(
        ids: Tensor<(N,), usize, Self, T>,
        table: &Tensor<(V, M), E, Self>,
        grad_scale: f64,
    ) -> Result<Tensor<(N, M), E, Self, T>>
    where
        Self: Storage<usize>,
    {
        embedding::cpu::embedding(ids, table, grad_scale)
    }
}

/// `f16` on `Cpu`: the scale primitive's kernel (dtype-generic), every other op by its generic
/// composition.
impl Backend<half::f16> for Cpu {
    fn scale_grad_kernel<S: Shape, T: Tape<half::f16, Self>>(
        x: Tensor<S, half::f16, Self, T>,
        fwd: half::f16,
        bwd: half::f16,
    ) -> std::result::Result<Tensor<S, half::f16, Self, T>, Self::Err> {
        scale::cpu::scale_grad(x, fwd, bwd)
    }

    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<half::f16, Self>,
        param: &Tensor<S, half::f16, Self>,
        factor: half::f16,
    ) -> std::result::Result<(), Self::Err> {
        scale::cpu::scale_gradient(grads, param, factor)
    }
}

/// `Cuda` (f32, f64, f16): the kernels of `ops/cuda` for the scale primitive, gradient scaling
/// and the adds; every other op by its generic composition (which calls the scale kernel for
/// each of its scales).
#[cfg(feature = "cuda")]
impl<E: super::cuda::CudaElem> Backend<E> for Cuda
where
    Cuda: Device<E>,
{
    fn scale_grad_kernel<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        fwd: E,
        bwd: E,
    ) -> std::result::Result<Tensor<S, E, Self, T>, Self::Err> {
        scale::cuda::scale_grad(x, fwd, bwd)
    }

    fn scale_gradient<S: Shape>(
        grads: &mut Gradients<E, Self>,
        param: &Tensor<S, E, Self>,
        factor: E,
    ) -> std::result::Result<(), Self::Err> {
        scale::cuda::scale_gradient(grads, param, factor)
    }

    fn add_kernel<S: Shape, T: Tape<E, Self> + Merge<T>>(
        a: Tensor<S, E, Self, T>,
        b: Tensor<S, E, Self, T>,
        scales: [f64; 4],
    ) -> Result<Tensor<S, E, Self, T>> {
        sum::cuda::add(a, b, scales)
    }
}

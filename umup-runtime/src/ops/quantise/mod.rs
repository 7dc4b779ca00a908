//! Simulated low-precision matmuls (spec §8.1): quantise the inputs of linear and attention
//! matmuls in the forward pass (E4M3) and the gradients of their outputs in the backward pass
//! (E5M2), with no scaling — unit scale is what keeps values in range.
//!
//! The simulation runs in the tensor's dtype: values are rounded to the format and stored back,
//! by [`Backend::quantise_kernel`]: on `Cpu` in parallel chunks inside the op's buffers (each chunk
//! with its own stream derived from the call's seed), elsewhere on the host (a round trip per
//! call, one stream), so it works on every device and each device's stochastic rounding is
//! reproducible.

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::linear::linear_scales;
use super::{scaled_dot_product_attention, Backend};
use crate::constraint::Constraint;
use crate::error::{DeviceResultExt, Result};
use crate::formats::{Format, MatmulFormats, QuantStats, Rounding};

pub(crate) mod cpu;

/// Rounds host values through `format` (via f32, as the reference's simulation does).
fn quantise_values<E: Dtype>(
    vals: Vec<E>,
    format: Format,
    rounding: Rounding,
    rng: &mut StdRng,
) -> (Vec<E>, QuantStats) {
    let mut f: Vec<f32> = vals
        .iter()
        .map(|v| v.to_f32().unwrap_or(f32::NAN))
        .collect();
    let stats = format.quantise_slice(&mut f, rounding, rng);
    let out = f
        .into_iter()
        .map(|v| E::from_f32(v).unwrap_or_default())
        .collect();
    (out, stats)
}

/// A gradient store in which `probe`'s gradient holds `values` (any device: one tiny backward
/// pass of `Σ probe ⊙ values`). Swap the buffer into another store to overwrite a gradient.
pub(crate) fn gradient_buffer<S: Shape, E: Dtype, D: Device<E>>(
    values: Tensor<S, E, D>,
) -> std::result::Result<(Gradients<E, D>, Tensor<S, E, D>), D::Err> {
    let probe = values.device().try_zeros_like(values.shape())?;
    let grads = super::sum_all(probe.clone().leaky_traced().try_mul(values)?)?.backward();
    Ok((grads, probe))
}

/// Overwrites `t`'s gradient in `grads` with `values` (same shape), through [`gradient_buffer`]:
/// the buffer is swapped in, so any device runs it.
pub(crate) fn set_gradient<S: Shape, E: Dtype, D: Device<E>>(
    grads: &mut Gradients<E, D>,
    t: &Tensor<S, E, D>,
    values: Tensor<S, E, D>,
) -> std::result::Result<(), D::Err> {
    let (mut store, probe) = gradient_buffer(values)?;
    std::mem::swap(grads.get_or_alloc_mut(t)?, store.get_or_alloc_mut(&probe)?);
    Ok(())
}

/// `o·(x·Wᵀ + b)` with the given scales ([`Backend::linear_kernel`]); with a quantiser, `x` and `W` are
/// rounded to its forward format and the output gradient to its backward format.
pub(crate) fn linear_maybe_quantised<
    R: Dim,
    I: Dim,
    O: Dim,
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
>(
    x: Tensor<(R, I), E, D, T>,
    weight: &Tensor<(O, I), E, D>,
    bias: Option<&Tensor<(O,), E, D>>,
    s: crate::scales::LinearScales,
    quantiser: Option<&mut MatmulQuantiser>,
) -> Result<Tensor<(R, O), E, D, T>> {
    let bias = bias.map(|b| b.retaped());
    match quantiser {
        None => D::linear_kernel(x, weight.retaped(), bias, s),
        Some(q) => {
            // Seeds in the order of rounding x, W, then the output gradient.
            let (fwd, bwd, stats) = q.plan::<2>(T::OWNS_TAPE);
            let (y, counts) =
                D::linear_quantised_kernel(x, weight.retaped(), bias, s, fwd, bwd, stats)?;
            q.forward_stats.merge(counts);
            Ok(y)
        }
    }
}

/// The roundings of one fused kernel call: `N` forward roundings, an optional backward rounding,
/// and where the backward counts go.
pub type Plan<const N: usize> = (
    Option<[Quantise; N]>,
    Option<Quantise>,
    Arc<Mutex<QuantStats>>,
);

/// One rounding of [`Backend::quantise_kernel`]: the format, the rounding mode, the seed of its
/// stochastic rounding, and the direction (`forward`: the value is rounded and the gradient
/// passes straight through; otherwise the value passes and the gradient is rounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantise {
    /// The number format.
    pub format: Format,
    /// Nearest or stochastic rounding.
    pub rounding: Rounding,
    /// Seeds the stochastic rounding of this call (each device draws its own reproducible
    /// stream from it).
    pub seed: u64,
    /// Round the value (`true`) or the gradient (`false`).
    pub forward: bool,
}

/// The device-generic composition of [`Backend::quantise_kernel`]: the rounding on the host
/// (one sequential stream from `q.seed`), the straight-through value built from public ops, and
/// a gradient moved in through a one-op backward pass. Returns the forward counts; the backward
/// counts go to `stats`.
pub fn quantise_generic<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    q: Quantise,
    stats: Arc<Mutex<QuantStats>>,
) -> Result<(Tensor<S, E, D, T>, QuantStats)> {
    let mut rng = StdRng::seed_from_u64(q.seed);
    let (xp, mut tape) = x.split_tape();
    if q.forward {
        let (vals, st) = quantise_values(xp.as_vec(), q.format, q.rounding, &mut rng);
        let rounded = xp.device().try_tensor_from_vec(vals, *xp.shape()).dev()?;
        // (x·1 − x·1|detached) is exactly 0 with gradient 1, so the sum is exactly q(x).
        let through = xp
            .clone()
            .put_tape(tape)
            .try_mul(E::ONE)
            .dev()?
            .try_sub(xp.try_mul(E::ONE).dev()?)
            .dev()?;
        return Ok((through.try_add(rounded).dev()?, st));
    }
    let y = xp.clone().try_mul(E::ONE).dev()?;
    let (xg, yg, shape, dev) = (xp.ghost(), y.ghost(), *xp.shape(), xp.device().clone());
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&xg)?;
        grads.try_alloc_for(&yg)?;
        let (vals, st) = quantise_values(grads.get(&yg).as_vec(), q.format, q.rounding, &mut rng);
        if let Ok(mut s) = stats.lock() {
            s.merge(st);
        }
        let rounded = dev.try_tensor_from_vec(vals, shape)?;
        let sum = grads.get(&xg).try_add(rounded)?;
        let (mut store, probe) = gradient_buffer(sum)?;
        std::mem::swap(
            grads.get_or_alloc_mut(&xg)?,
            store.get_or_alloc_mut(&probe)?,
        );
        Ok(())
    });
    Ok((y.put_tape(tape), QuantStats::default()))
}

/// Quantisation of matmul inputs and output gradients for one model, with a seeded RNG for
/// stochastic rounding and running overflow/underflow counts.
#[derive(Debug, Clone)]
pub struct MatmulQuantiser {
    formats: MatmulFormats,
    rng: StdRng,
    forward_stats: QuantStats,
    backward_stats: Arc<Mutex<QuantStats>>,
}

impl MatmulQuantiser {
    /// A quantiser for `formats`; `seed` drives stochastic rounding.
    pub fn new(formats: MatmulFormats, seed: u64) -> Self {
        MatmulQuantiser {
            formats,
            rng: StdRng::seed_from_u64(seed),
            forward_stats: QuantStats::default(),
            backward_stats: Arc::default(),
        }
    }

    /// The formats in use.
    pub fn formats(&self) -> MatmulFormats {
        self.formats
    }

    /// Counts over every forward (matmul input) value quantised so far.
    pub fn forward_stats(&self) -> QuantStats {
        self.forward_stats
    }

    /// Counts over every backward (output gradient) value quantised so far.
    pub fn backward_stats(&self) -> QuantStats {
        self.backward_stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// The roundings of one fused kernel call: `N` forward roundings (seeds drawn first, in
    /// order), then the backward rounding when `owns_tape` — the same seeds, in the same order,
    /// as `N` calls of [`Self::quantise_fwd`] followed by one of [`Self::quantise_bwd`].
    pub(crate) fn plan<const N: usize>(&mut self, owns_tape: bool) -> Plan<N> {
        let fwd = self.formats.forward.map(|(format, rounding)| {
            [(); N].map(|()| Quantise {
                format,
                rounding,
                seed: self.rng.gen(),
                forward: true,
            })
        });
        let bwd = self
            .formats
            .backward
            .filter(|_| owns_tape)
            .map(|(format, rounding)| Quantise {
                format,
                rounding,
                seed: self.rng.gen(),
                forward: false,
            });
        (fwd, bwd, Arc::clone(&self.backward_stats))
    }

    /// Adds forward counts from a fused kernel call.
    pub(crate) fn count(&mut self, counts: QuantStats) {
        self.forward_stats.merge(counts);
    }

    /// Value rounded to the forward format; the gradient passes straight through
    /// (`quantise_fwd`, spec §8.1). Identity when there is no forward format.
    pub fn quantise_fwd<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
        &mut self,
        x: Tensor<S, E, D, T>,
    ) -> Result<Tensor<S, E, D, T>> {
        let Some((format, rounding)) = self.formats.forward else {
            return Ok(x);
        };
        let q = Quantise {
            format,
            rounding,
            seed: self.rng.gen(),
            forward: true,
        };
        let (y, stats) = D::quantise_kernel(x, q, Arc::clone(&self.backward_stats))?;
        self.forward_stats.merge(stats);
        Ok(y)
    }

    /// Value unchanged; the gradient flowing back is rounded to the backward format
    /// (`quantise_bwd`, spec §8.1). Identity when there is no backward format.
    pub fn quantise_bwd<S: Shape, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
        &mut self,
        x: Tensor<S, E, D, T>,
    ) -> Result<Tensor<S, E, D, T>> {
        let Some((format, rounding)) = self.formats.backward else {
            return Ok(x);
        };
        if !T::OWNS_TAPE {
            return Ok(x);
        }
        let q = Quantise {
            format,
            rounding,
            seed: self.rng.gen(),
            forward: false,
        };
        Ok(D::quantise_kernel(x, q, Arc::clone(&self.backward_stats))?.0)
    }

    /// [`super::linear`] with its input and weight rounded to the forward format and its output
    /// gradient rounded to the backward format (the reference's `simulate_format` on `U.linear`).
    pub fn linear<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
        &mut self,
        x: Tensor<(R, I), E, D, T>,
        weight: &Tensor<(O, I), E, D>,
        bias: Option<&Tensor<(O,), E, D>>,
        constraint: Constraint,
    ) -> Result<Tensor<(R, O), E, D, T>> {
        self.linear_impl(false, x, weight, bias, constraint)
    }

    /// [`super::linear_readout`] with quantised matmul inputs and output gradient.
    pub fn linear_readout<
        R: Dim,
        I: Dim,
        O: Dim,
        E: Dtype,
        D: Backend<E>,
        T: Tape<E, D> + Merge<T>,
    >(
        &mut self,
        x: Tensor<(R, I), E, D, T>,
        weight: &Tensor<(O, I), E, D>,
        bias: Option<&Tensor<(O,), E, D>>,
        constraint: Constraint,
    ) -> Result<Tensor<(R, O), E, D, T>> {
        self.linear_impl(true, x, weight, bias, constraint)
    }

    fn linear_impl<R: Dim, I: Dim, O: Dim, E: Dtype, D: Backend<E>, T: Tape<E, D> + Merge<T>>(
        &mut self,
        readout: bool,
        x: Tensor<(R, I), E, D, T>,
        weight: &Tensor<(O, I), E, D>,
        bias: Option<&Tensor<(O,), E, D>>,
        constraint: Constraint,
    ) -> Result<Tensor<(R, O), E, D, T>> {
        let s = linear_scales(readout, &x, weight, bias, constraint)?;
        linear_maybe_quantised(x, weight, bias, s, Some(self))
    }

    /// [`super::scaled_dot_product_attention`] with `q`, `k`, `v` rounded to the forward format
    /// and the output gradient rounded to the backward format.
    pub fn scaled_dot_product_attention<
        B: Dim,
        H: Dim,
        S: Dim,
        K: Dim,
        E: Dtype,
        D: Backend<E>,
        T: Tape<E, D> + Merge<T>,
    >(
        &mut self,
        q: Tensor<(B, H, S, K), E, D, T>,
        k: Tensor<(B, H, S, K), E, D, T>,
        v: Tensor<(B, H, S, K), E, D, T>,
        mult: f64,
        is_causal: bool,
    ) -> Result<Tensor<(B, H, S, K), E, D, T>> {
        let (q, k, v) = (
            self.quantise_fwd(q)?,
            self.quantise_fwd(k)?,
            self.quantise_fwd(v)?,
        );
        let y = scaled_dot_product_attention(q, k, v, mult, is_causal)?;
        self.quantise_bwd(y)
    }
}

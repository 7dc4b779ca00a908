//! The `Cpu` kernels of attention: [`crate::ops::cpu::attention_fwd`] and
//! [`crate::ops::cpu::attention_bwd_into`] as one tape op (causal blocks skip the masked keys;
//! `logit_scale` and `out_scale` are the matmuls' `alpha`s; the probabilities are kept for the
//! backward pass).

use dfdx::prelude::*;

use std::sync::{Arc, Mutex};

use crate::error::{DeviceResultExt, Result};
use crate::formats::QuantStats;
use crate::ops::cpu::{attention_bwd_into, attention_fwd, AttnLayout, AttnShape, Real};
use crate::ops::kernels::{self, accumulate, Buf};
use crate::ops::quantise::cpu::{round, rounded_gradient};
use crate::ops::quantise::Plan;
use crate::ops::scale::elem;
use crate::profile::{time, Part};

/// Attention on `[batch·seq, heads·d_head]` rows (`shape.layout` is taken as
/// [`AttnLayout::Rows`]).
pub(crate) fn attention<R: Dim, W: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    q: Tensor<(R, W), E, Cpu, T>,
    k: Tensor<(R, W), E, Cpu, T>,
    v: Tensor<(R, W), E, Cpu, T>,
    shape: AttnShape,
    logit_scale: f64,
    out_scale: f64,
    is_causal: bool,
) -> Result<Tensor<(R, W), E, Cpu, T>> {
    let plan = (None, None, Arc::new(Mutex::new(QuantStats::default())));
    Ok(attention_quantised(q, k, v, shape, logit_scale, out_scale, is_causal, plan)?.0)
}

/// [`attention`] with simulated precision: the kernel's own copies of `q`, `k`, `v` rounded in
/// place by `fwd`, the output gradient by `bwd` before the backward reads it (the same values,
/// from the same seeds, as rounding each through `quantise_kernel`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_quantised<R: Dim, W: Dim, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    q: Tensor<(R, W), E, Cpu, T>,
    k: Tensor<(R, W), E, Cpu, T>,
    v: Tensor<(R, W), E, Cpu, T>,
    shape: AttnShape,
    logit_scale: f64,
    out_scale: f64,
    is_causal: bool,
    quant: Plan<3>,
) -> Result<(Tensor<(R, W), E, Cpu, T>, QuantStats)> {
    let sh = AttnShape {
        layout: AttnLayout::Rows,
        ..shape
    };
    run(q, k, v, sh, [logit_scale, out_scale], is_causal, quant)
}

/// Attention on `[batch, heads, seq, d_head]` (inputs made contiguous first).
pub(crate) fn attention_heads<
    B: Dim,
    H: Dim,
    S: Dim,
    K: Dim,
    E: Real,
    T: Tape<E, Cpu> + Merge<T>,
>(
    q: Tensor<(B, H, S, K), E, Cpu, T>,
    k: Tensor<(B, H, S, K), E, Cpu, T>,
    v: Tensor<(B, H, S, K), E, Cpu, T>,
    logit_scale: f64,
    out_scale: f64,
    is_causal: bool,
) -> Result<Tensor<(B, H, S, K), E, Cpu, T>> {
    let [batch, heads, seq, d_head] = q.shape().concrete();
    let sh = AttnShape {
        batch,
        seq,
        heads,
        d_head,
        layout: AttnLayout::Heads,
    };
    let stats = Arc::new(Mutex::new(QuantStats::default()));
    Ok(run(
        q,
        k,
        v,
        sh,
        [logit_scale, out_scale],
        is_causal,
        (None, None, stats),
    )?
    .0)
}

fn run<S: Shape, E: Real, T: Tape<E, Cpu> + Merge<T>>(
    q: Tensor<S, E, Cpu, T>,
    k: Tensor<S, E, Cpu, T>,
    v: Tensor<S, E, Cpu, T>,
    sh: AttnShape,
    [logit_scale, out_scale]: [f64; 2],
    causal: bool,
    (fwd, bwd, stats): Plan<3>,
) -> Result<(Tensor<S, E, Cpu, T>, QuantStats)> {
    let (q, tq) = kernels::input(q).dev()?;
    let (k, tk) = kernels::input(k).dev()?;
    let (v, tv) = kernels::input(v).dev()?;
    let mut tape = tq.merge(tk).merge(tv);
    let dev = q.device().clone();
    let shape = *q.shape();
    let (mut qs, mut ks, mut vs) = (Buf::of(&q).dev()?, Buf::of(&k).dev()?, Buf::of(&v).dev()?);
    let mut counts = QuantStats::default();
    if let Some([a, b, c]) = fwd {
        counts.merge(round(&mut qs, a, a.seed));
        counts.merge(round(&mut ks, b, b.seed));
        counts.merge(round(&mut vs, c, c.seed));
    }
    let mut out = Buf::zeros(&dev, sh.numel()).dev()?;
    let mut probs = Buf::zeros(&dev, sh.probs_numel()).dev()?;
    let (ls, os) = (
        elem::<E>("scale", logit_scale)?,
        elem::<E>("scale", out_scale)?,
    );
    time(Part::Attention, || {
        attention_fwd(sh, &qs, &ks, &vs, ls, os, causal, &mut out, &mut probs)
    });
    let y = out.into_tensor(&dev, shape).dev()?;
    if T::OWNS_TAPE {
        let (qg, kg, vg, yg) = (q.ghost(), k.ghost(), v.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let taken = kernels::take::<E>(grads.get_or_alloc_mut(&yg)?);
            let (rounded, kept) = rounded_gradient(taken, bwd, &stats);
            let gy = &rounded[..];
            let n = sh.numel();
            let inputs = [&qs[..], &ks, &vs, &probs, gy];
            // Straight into the three gradient buffers, unless two inputs are one tensor (then
            // a buffer comes out empty: put them back, last taken first, and go through temps).
            let mut gq = kernels::take::<E>(grads.get_or_alloc_mut(&qg)?);
            let mut gk = kernels::take::<E>(grads.get_or_alloc_mut(&kg)?);
            let mut gv = kernels::take::<E>(grads.get_or_alloc_mut(&vg)?);
            if [gq.len(), gk.len(), gv.len()] == [n; 3] {
                time(Part::Attention, || {
                    attention_bwd_into(
                        sh,
                        inputs,
                        ls,
                        os,
                        causal,
                        true,
                        [&mut gq, &mut gk, &mut gv],
                    )
                });
                kernels::put::<E>(grads.get_or_alloc_mut(&qg)?, gq);
                kernels::put::<E>(grads.get_or_alloc_mut(&kg)?, gk);
                kernels::put::<E>(grads.get_or_alloc_mut(&vg)?, gv);
            } else {
                kernels::put::<E>(grads.get_or_alloc_mut(&vg)?, gv);
                kernels::put::<E>(grads.get_or_alloc_mut(&kg)?, gk);
                kernels::put::<E>(grads.get_or_alloc_mut(&qg)?, gq);
                let (mut dq, mut dk, mut dv) = (
                    Buf::zeros(&dev, n)?,
                    Buf::zeros(&dev, n)?,
                    Buf::zeros(&dev, n)?,
                );
                time(Part::Attention, || -> std::result::Result<(), CpuError> {
                    attention_bwd_into(
                        sh,
                        inputs,
                        ls,
                        os,
                        causal,
                        false,
                        [&mut dq, &mut dk, &mut dv],
                    );
                    accumulate!(grads, qg, &dq, E::one());
                    accumulate!(grads, kg, &dk, E::one());
                    accumulate!(grads, vg, &dv, E::one());
                    Ok(())
                })?;
            }
            kernels::done::<E>(&dev, grads.get_or_alloc_mut(&yg)?, kept.unwrap_or(rounded));
            Ok(())
        });
    }
    Ok((y.put_tape(tape), counts))
}

//! The fused `Cpu` training step of [`TransformerLm`]: the whole forward pass and, with a
//! training tape, one backward op that computes every parameter gradient, built from the slice
//! kernels of [`umup::ops::cpu`](crate::ops::cpu).
//!
//! It computes the same function with the same gradients as the device-generic path (the
//! composition of umup's dfdx ops in `lm.rs`, which `Cuda` runs): every scale comes from the same
//! functions (`linear_layer_scales`, `attention_scales`, `residual_scales`, ...), and the tests
//! compare the two paths' losses and gradients. What it saves: no mask, permute, or scale passes
//! (scales are folded into the matmuls' `alpha` and the kernels already running), causal
//! attention skips the masked half, elementwise and row-wise work runs on every core, and
//! parameter gradients are accumulated in place by the matmuls that produce them.
//!
//! Used for `f32` and `f64` on `Cpu` without a quantiser, a scale log or RoPE; everything else
//! takes the generic path.

use std::any::Any;

use dfdx::prelude::*;

use super::lm::{LmOptions, TransformerLm};
use crate::nn::functional::{
    attention_scales, cross_entropy_grad_coef, residual_scales, residual_taus, swiglu_scale,
};
use crate::nn::{embedding_grad_scale, Hyper, LinearRole, Param, UnitLinear};
use crate::ops::cpu::AttnLayout;
use crate::ops::cpu::{self, gemm, AttnShape, Real, Threads, View, ViewMut};
use crate::profile::{time, Part};
use crate::scales::LinearScales;
use crate::{Error, Result};

/// `Ok(b)` when `A` and `B` are the same type, `Err(a)` otherwise (a no-op move either way).
pub(super) fn cast<A: 'static, B: 'static>(a: A) -> std::result::Result<B, A> {
    let mut slot = Some(a);
    let taken = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take);
    match (taken, slot) {
        (Some(b), _) => Ok(b),
        (None, Some(a)) => Err(a),
        // `slot` is only emptied when the downcast succeeded, which returns above.
        (None, None) => unreachable!("cast: the value was taken but not returned"),
    }
}

/// The input of [`TransformerLm::loss`] handed to the fused path.
pub(super) struct LossArgs<'a> {
    pub targets: &'a [usize],
    pub shape: (usize, usize),
    pub hp: &'a Hyper,
    pub opts: &'a LmOptions,
}

type Attempt<E, Dev, T> =
    std::result::Result<Result<Tensor<(), E, Dev, T>>, Tensor<(usize,), usize, Dev, T>>;

/// Runs the fused path when the model lives on `Cpu` in `f32` or `f64` (with or without a
/// training tape); otherwise gives `ids` back for the generic path.
pub(super) fn try_loss<
    const V: usize,
    const D: usize,
    const F: usize,
    const L: usize,
    E,
    Dev,
    P,
    T,
>(
    model: &TransformerLm<V, D, F, L, E, Dev, P>,
    ids: Tensor<(usize,), usize, Dev, T>,
    args: &LossArgs<'_>,
) -> Attempt<E, Dev, T>
where
    E: Dtype,
    Dev: Device<E> + Storage<usize> + 'static,
    P: Param,
    T: 'static,
{
    let ids = match attempt::<V, D, F, L, f32, OwnedTape<f32, Cpu>, E, Dev, P, T>(model, ids, args)
    {
        Ok(r) => return Ok(r),
        Err(ids) => ids,
    };
    let ids = match attempt::<V, D, F, L, f32, NoneTape, E, Dev, P, T>(model, ids, args) {
        Ok(r) => return Ok(r),
        Err(ids) => ids,
    };
    let ids = match attempt::<V, D, F, L, f64, OwnedTape<f64, Cpu>, E, Dev, P, T>(model, ids, args)
    {
        Ok(r) => return Ok(r),
        Err(ids) => ids,
    };
    attempt::<V, D, F, L, f64, NoneTape, E, Dev, P, T>(model, ids, args)
}

/// The fused loss when the model is a `(E2, Cpu)` model and the ids carry a `T2` tape (that is,
/// when `(E, Dev, T) = (E2, Cpu, T2)`); `Err(ids)` untouched otherwise.
fn attempt<const V: usize, const D: usize, const F: usize, const L: usize, E2, T2, E, Dev, P, T>(
    model: &TransformerLm<V, D, F, L, E, Dev, P>,
    ids: Tensor<(usize,), usize, Dev, T>,
    args: &LossArgs<'_>,
) -> Attempt<E, Dev, T>
where
    E2: Real,
    T2: Tape<E2, Cpu> + 'static,
    E: Dtype,
    Dev: Device<E> + Storage<usize> + 'static,
    P: Param,
    T: 'static,
{
    let Some(m) = (model as &dyn Any).downcast_ref::<TransformerLm<V, D, F, L, E2, Cpu, P>>()
    else {
        return Err(ids);
    };
    let ids = cast::<_, Tensor<(usize,), usize, Cpu, T2>>(ids)?;
    Ok(loss::<V, D, F, L, E2, P, T2>(m, ids, args).and_then(|t| {
        cast::<_, Tensor<(), E, Dev, T>>(t)
            .map_err(|_| Error::Invalid("fused path: result type differs from the input's".into()))
    }))
}

type Slot<E> = Box<
    dyn for<'g> Fn(
        &'g mut Gradients<E, Cpu>,
    ) -> std::result::Result<&'g mut [E], <Cpu as HasErr>::Err>,
>;

/// A parameter's gradient buffer, fetched (allocated on first use) in the backward pass.
fn slot<S: Shape, E: Real>(t: &Tensor<S, E, Cpu>) -> Slot<E> {
    let g = t.ghost();
    Box::new(move |grads| Ok(grads.get_or_alloc_mut(&g)?.as_mut_slice()))
}

fn copy_of<S: Shape, E: Real>(t: &Tensor<S, E, Cpu>) -> Vec<E> {
    let mut v = vec![E::zero(); t.shape().num_elements()];
    t.copy_into(&mut v);
    v
}

fn zeros<E: Real>(n: usize) -> Vec<E> {
    vec![E::zero(); n]
}

/// One linear layer: its weight `[o, i]`, its scales for this batch and its gradient slot.
struct Lin<E: Real> {
    /// `W[o, i]` (the dx matmul reads it as is).
    w: Vec<E>,
    /// `Wᵀ[i, o]`: the forward matmul with both operands row-major runs ≈1.8× faster than with a
    /// transposed right operand (BENCHMARKS.md), far more than the transpose costs.
    wt: Vec<E>,
    o: usize,
    i: usize,
    s: LinearScales,
    grad: Slot<E>,
    /// Where its matmuls count in [`crate::profile`].
    part: Part,
}

impl<E: Real> Lin<E> {
    fn new<const I: usize, const O: usize, R: LinearRole, P: Param>(
        layer: &UnitLinear<I, O, R, E, Cpu, P>,
        rows: usize,
        part: Part,
    ) -> Result<Self> {
        let (w, wt) = time(Part::Copies, || {
            let w = copy_of(&layer.weight);
            let wt = cpu::transpose(&w, O, I);
            (w, wt)
        });
        Ok(Self {
            wt,
            w,
            o: O,
            i: I,
            s: crate::nn::linear_layer_scales::<R, P>(rows, I, O)?,
            grad: slot(&layer.weight),
            part,
        })
    }

    /// `y = output · x·Wᵀ`.
    fn fwd(&self, x: &[E], rows: usize) -> Vec<E> {
        time(self.part, || {
            let mut y = zeros(rows * self.o);
            gemm(
                ViewMut::rows(&mut y, rows, self.o),
                false,
                View::rows(x, rows, self.i),
                View::rows(&self.wt, self.i, self.o),
                E::of(self.s.output),
                Threads::All,
            );
            y
        })
    }

    /// `dx (+)= grad_input · dy·W`.
    fn bwd_input(&self, dy: &[E], rows: usize, dx: &mut [E], accumulate: bool) {
        time(self.part, || {
            gemm(
                ViewMut::rows(dx, rows, self.i),
                accumulate,
                View::rows(dy, rows, self.o),
                View::rows(&self.w, self.o, self.i),
                E::of(self.s.grad_input),
                Threads::All,
            )
        });
    }

    /// `grad W += grad_weight · dyᵀ·x`, straight into the gradient buffer.
    fn bwd_weight(
        &self,
        grads: &mut Gradients<E, Cpu>,
        dy: &[E],
        x: &[E],
        rows: usize,
    ) -> std::result::Result<(), <Cpu as HasErr>::Err> {
        let g = (self.grad)(grads)?;
        time(self.part, || {
            gemm(
                ViewMut::rows(g, self.o, self.i),
                true,
                View::rows(dy, rows, self.o).t(),
                View::rows(x, rows, self.i),
                E::of(self.s.grad_weight),
                Threads::All,
            )
        });
        Ok(())
    }
}

struct LayerParams<E: Real> {
    q: Lin<E>,
    k: Lin<E>,
    v: Lin<E>,
    o: Lin<E>,
    up: Lin<E>,
    gate: Lin<E>,
    down: Lin<E>,
    /// `(a, b)` of the attention and MLP branches.
    res_attn: (E, E),
    res_mlp: (E, E),
}

/// What the backward pass needs of one layer's forward.
struct LayerActs<E> {
    x_a: Vec<E>,
    inv_a: Vec<E>,
    h_a: Vec<E>,
    q: Vec<E>,
    k: Vec<E>,
    v: Vec<E>,
    probs: Vec<E>,
    att: Vec<E>,
    x_m: Vec<E>,
    inv_m: Vec<E>,
    h_m: Vec<E>,
    up: Vec<E>,
    gate: Vec<E>,
    act: Vec<E>,
}

/// The mean cross-entropy loss of the LM on `Cpu`, fused (see the module docs). Inputs other
/// than the ids' range and the targets are checked by the caller.
fn loss<const V: usize, const D: usize, const F: usize, const L: usize, E, P, T>(
    m: &TransformerLm<V, D, F, L, E, Cpu, P>,
    ids: Tensor<(usize,), usize, Cpu, T>,
    args: &LossArgs<'_>,
) -> Result<Tensor<(), E, Cpu, T>>
where
    E: Real,
    P: Param,
    T: Tape<E, Cpu>,
{
    let (batch, seq) = args.shape;
    let n = batch * seq;
    let hp = args.hp;
    let (ids, mut tape) = ids.split_tape();
    let ids = ids.as_vec();
    crate::ops::check_ids(&ids, V)?;
    crate::ops::check_targets(args.targets, n, V)?;
    let heads = args.opts.heads;
    let sh = AttnShape {
        batch,
        seq,
        heads,
        d_head: D / heads,
        layout: AttnLayout::Rows,
    };
    let taus = residual_taus(hp, L)?;
    let (logit_scale, out_scale) = attention_scales::<P>(seq, D / heads, hp, true)?;
    let (logit_scale, out_scale) = (E::of(logit_scale), E::of(out_scale));
    let (ffn_mult, ffn_scale) = (E::of(hp.alpha_ffn_act), E::of(swiglu_scale::<P>(hp)?));
    let eps = E::of(super::lm::NORM_EPS);
    let pair = |(a, b): (f64, f64)| (E::of(a), E::of(b));

    let mut x = zeros(n * D);
    time(Part::Embedding, || {
        cpu::embedding_fwd(&copy_of(&m.embed.weight), D, &ids, &mut x)
    });
    let mut params = Vec::with_capacity(L);
    let mut acts = Vec::with_capacity(L);
    for (i, layer) in m.layers.iter().enumerate() {
        let (at, mlp) = (&layer.attn, &layer.mlp);
        let p = LayerParams {
            q: Lin::new(&at.q, n, Part::Matmuls)?,
            k: Lin::new(&at.k, n, Part::Matmuls)?,
            v: Lin::new(&at.v, n, Part::Matmuls)?,
            o: Lin::new(&at.o, n, Part::Matmuls)?,
            up: Lin::new(&mlp.up, n, Part::Matmuls)?,
            gate: Lin::new(&mlp.gate, n, Part::Matmuls)?,
            down: Lin::new(&mlp.down, n, Part::Matmuls)?,
            res_attn: pair(residual_scales::<P>(taus[2 * i])?),
            res_mlp: pair(residual_scales::<P>(taus[2 * i + 1])?),
        };
        let x_a = x;
        let (mut inv_a, mut h_a) = (zeros(n), zeros(n * D));
        time(Part::Norms, || {
            cpu::rms_norm_fwd(&x_a, D, eps, &mut h_a, &mut inv_a)
        });
        let (q, k, v) = (p.q.fwd(&h_a, n), p.k.fwd(&h_a, n), p.v.fwd(&h_a, n));
        let (mut att, mut probs) = (zeros(n * D), zeros(sh.probs_numel()));
        time(Part::Attention, || {
            cpu::attention_fwd(
                sh,
                &q,
                &k,
                &v,
                logit_scale,
                out_scale,
                true,
                &mut att,
                &mut probs,
            )
        });
        let branch = p.o.fwd(&att, n);
        let mut x_m = zeros(n * D);
        time(Part::Adds, || {
            cpu::lincomb(&mut x_m, p.res_attn.0, &branch, p.res_attn.1, &x_a)
        });
        let (mut inv_m, mut h_m) = (zeros(n), zeros(n * D));
        time(Part::Norms, || {
            cpu::rms_norm_fwd(&x_m, D, eps, &mut h_m, &mut inv_m)
        });
        let (up, gate) = (p.up.fwd(&h_m, n), p.gate.fwd(&h_m, n));
        let mut act = zeros(n * F);
        time(Part::Activations, || {
            cpu::swiglu_fwd(&up, &gate, ffn_mult, ffn_scale, &mut act)
        });
        let branch = p.down.fwd(&act, n);
        x = zeros(n * D);
        time(Part::Adds, || {
            cpu::lincomb(&mut x, p.res_mlp.0, &branch, p.res_mlp.1, &x_m)
        });
        params.push(p);
        acts.push(LayerActs {
            x_a,
            inv_a,
            h_a,
            q,
            k,
            v,
            probs,
            att,
            x_m,
            inv_m,
            h_m,
            up,
            gate,
            act,
        });
    }
    let (mut inv_f, mut h_f) = (zeros(n), zeros(n * D));
    time(Part::Norms, || {
        cpu::rms_norm_fwd(&x, D, eps, &mut h_f, &mut inv_f)
    });
    let readout = Lin::new(&m.readout, n, Part::Loss)?;
    let logits = readout.fwd(&h_f, n);
    let mut dlogits = zeros(n * V);
    let (loss_mult, loss_coef) = (
        E::of(hp.alpha_loss_softmax),
        E::of(cross_entropy_grad_coef::<P>(n, V, hp)?),
    );
    let losses = time(Part::Loss, || {
        cpu::cross_entropy_fwd_bwd(&logits, V, args.targets, loss_mult, loss_coef, &mut dlogits)
    });
    drop(logits);
    let total: f64 = losses.iter().map(|l| l.to_f64().unwrap_or(f64::NAN)).sum();
    let dev = m.embed.weight.device().clone();
    let out = dev
        .try_tensor(E::of(total / n as f64))
        .map_err(Error::device)?;
    if !T::OWNS_TAPE {
        return Ok(out.put_tape(tape));
    }

    let emb_scale = E::of(embedding_grad_scale::<P>(V, n)?);
    let emb_grad = slot(&m.embed.weight);
    let loss_ghost = out.ghost();
    tape.add_backward_op(move |grads| {
        let g0 = grads.get_or_alloc_mut(&loss_ghost)?.as_slice()[0];
        let mut dl = dlogits;
        if g0 != E::one() {
            dl.iter_mut().for_each(|v| *v *= g0);
        }
        readout.bwd_weight(grads, &dl, &h_f, n)?;
        let mut dh = zeros(n * D);
        readout.bwd_input(&dl, n, &mut dh, false);
        drop(dl);
        let mut g = zeros(n * D);
        time(Part::Norms, || {
            cpu::rms_norm_bwd(&x, &inv_f, &dh, D, E::zero(), E::one(), &mut g)
        });
        let (mut d_act, mut d_up, mut d_gate) = (zeros(n * F), zeros(n * F), zeros(n * F));
        let (mut dq, mut dk, mut dv, mut d_att) =
            (zeros(n * D), zeros(n * D), zeros(n * D), zeros(n * D));
        for (a, p) in acts.iter().zip(&params).rev() {
            // MLP branch: the branch output's gradient is g itself (the delayed residual scale).
            p.down.bwd_weight(grads, &g, &a.act, n)?;
            p.down.bwd_input(&g, n, &mut d_act, false);
            time(Part::Activations, || {
                cpu::swiglu_bwd(
                    &a.up,
                    &a.gate,
                    &d_act,
                    ffn_mult,
                    ffn_scale,
                    &mut d_up,
                    &mut d_gate,
                )
            });
            p.up.bwd_weight(grads, &d_up, &a.h_m, n)?;
            p.gate.bwd_weight(grads, &d_gate, &a.h_m, n)?;
            p.up.bwd_input(&d_up, n, &mut dh, false);
            p.gate.bwd_input(&d_gate, n, &mut dh, true);
            let (ra, rb) = p.res_mlp;
            time(Part::Norms, || {
                cpu::rms_norm_bwd(&a.x_m, &a.inv_m, &dh, D, rb, ra, &mut g)
            });
            // Attention branch.
            p.o.bwd_weight(grads, &g, &a.att, n)?;
            p.o.bwd_input(&g, n, &mut d_att, false);
            time(Part::Attention, || {
                cpu::attention_bwd(
                    sh,
                    &a.q,
                    &a.k,
                    &a.v,
                    &a.probs,
                    &d_att,
                    logit_scale,
                    out_scale,
                    true,
                    &mut dq,
                    &mut dk,
                    &mut dv,
                )
            });
            p.q.bwd_weight(grads, &dq, &a.h_a, n)?;
            p.k.bwd_weight(grads, &dk, &a.h_a, n)?;
            p.v.bwd_weight(grads, &dv, &a.h_a, n)?;
            p.q.bwd_input(&dq, n, &mut dh, false);
            p.k.bwd_input(&dk, n, &mut dh, true);
            p.v.bwd_input(&dv, n, &mut dh, true);
            let (ra, rb) = p.res_attn;
            time(Part::Norms, || {
                cpu::rms_norm_bwd(&a.x_a, &a.inv_a, &dh, D, rb, ra, &mut g)
            });
        }
        let table = emb_grad(grads)?;
        time(Part::Embedding, || {
            cpu::embedding_bwd(&g, D, &ids, emb_scale, table)
        });
        Ok(())
    });
    Ok(out.put_tape(tape))
}

/// Whether [`try_loss`] takes the fused path for these types.
pub(super) fn applies<E: 'static, Dev: 'static, T: 'static>() -> bool {
    use std::any::TypeId;
    let is = |e: TypeId, t: TypeId| {
        TypeId::of::<E>() == e
            && TypeId::of::<Dev>() == TypeId::of::<Cpu>()
            && (TypeId::of::<T>() == t || TypeId::of::<T>() == TypeId::of::<NoneTape>())
    };
    is(TypeId::of::<f32>(), TypeId::of::<OwnedTape<f32, Cpu>>())
        || is(TypeId::of::<f64>(), TypeId::of::<OwnedTape<f64, Cpu>>())
}

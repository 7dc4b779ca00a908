//! A decoder-only transformer language model that mirrors the reference `uu.TransformerDecoder`
//! (spec §5): embedding → `L` pre-norm layers (RMSNorm without gain → causal multi-head
//! self-attention with `mult/d_head` logits; RMSNorm → SwiGLU MLP), each branch added through the
//! residual τ rule → final RMSNorm → readout. No biases, no positional encoding by default
//! (NoPE, as the reference); RoPE is an option.
//!
//! The reference fuses q, k and v into one `Linear(d, 3d)`; here they are three `Linear(d, d)`
//! with the same init, scales and LR (every rule depends on `fan_in = d` only), so the model is
//! the same function with the same training dynamics. Widths are compile-time shapes; the number
//! of heads, RoPE and every hyperparameter are run-time settings.

use dfdx::prelude::*;

use crate::analysis::{tap, ScaleLog};
use crate::data::TokenBatch;
use crate::device::TrainDevice;
use crate::family::{Step, Trainable};
use crate::nn::{functional::residual_taus, swiglu_mlp, Hyper, Param, UnitLinear};
use crate::ops::{self, Backend, MatmulQuantiser};
use crate::rand_distr::{Distribution, StandardNormal};
use crate::{umup_model, Error, Result};

/// Causal self-attention projections.
#[umup_model]
pub struct Attention<const D: usize> {
    /// Query projection.
    #[hidden]
    pub q: Linear<D, D>,
    /// Key projection.
    #[hidden]
    pub k: Linear<D, D>,
    /// Value projection.
    #[hidden]
    pub v: Linear<D, D>,
    /// Output projection.
    #[hidden]
    pub o: Linear<D, D>,
}

/// SwiGLU MLP: `down(silu_glu(up(x), gate(x)))`; all three linears unconstrained, as in the
/// reference (their forward and backward scales mirror each other along the path).
#[umup_model]
pub struct SwiGlu<const D: usize, const F: usize> {
    /// `linear_1` of the reference.
    #[hidden(constraint = "none")]
    pub up: Linear<D, F>,
    /// `linear_gate` of the reference.
    #[hidden(constraint = "none")]
    pub gate: Linear<D, F>,
    /// `linear_2` of the reference.
    #[hidden(constraint = "none")]
    pub down: Linear<F, D>,
}

/// One pre-norm decoder layer.
#[umup_model]
pub struct DecoderLayer<const D: usize, const F: usize> {
    /// Self-attention.
    #[model]
    pub attn: Attention<D>,
    /// MLP.
    #[model]
    pub mlp: SwiGlu<D, F>,
}

/// The language model: vocabulary `V`, width `D`, MLP width `F` (4·D in the reference), depth
/// `L`.
#[umup_model]
pub struct TransformerLm<const V: usize, const D: usize, const F: usize, const L: usize> {
    /// Token embedding.
    #[embedding]
    pub embed: Embedding<V, D>,
    /// The decoder layers (depth `L`).
    #[model]
    #[depth]
    pub layers: [DecoderLayer<D, F>; L],
    /// Readout to logits.
    #[output]
    pub readout: Linear<D, V>,
}

/// Run-time options of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmOptions {
    /// Attention heads; the width must be a multiple (`d_head = D / heads`).
    pub heads: usize,
    /// Rotary position embeddings on q and k (off: NoPE, as the reference).
    pub rope: bool,
}

const NORM_EPS: f64 = 1e-5;

type Rows<const K: usize, E, Dev, T> = Tensor<(usize, Const<K>), E, Dev, T>;

fn lin<const I: usize, const O: usize, R, E, Dev, P, T>(
    layer: &UnitLinear<I, O, R, E, Dev, P>,
    x: Rows<I, E, Dev, T>,
    quant: &mut Option<&mut MatmulQuantiser>,
) -> Result<Rows<O, E, Dev, T>>
where
    R: crate::nn::LinearRole,
    E: Dtype,
    Dev: Backend<E>,
    P: Param,
    T: Tape<E, Dev> + Merge<T>,
{
    match quant {
        Some(q) => layer.forward_quantised(x, q),
        None => layer.try_forward(x),
    }
}

/// Rotates pairs `(x[i], x[i + d/2])` of every head by `pos·θ_i`, `θ_i = 10000^(−2i/d)`.
fn rope<E: Dtype, Dev: Backend<E>, T: Tape<E, Dev> + Merge<T>>(
    x: Tensor<(usize, usize, usize, usize), E, Dev, T>,
) -> Result<Tensor<(usize, usize, usize, usize), E, Dev, T>> {
    let shape = *x.shape();
    let (seq, d) = (shape.2, shape.3);
    let half = d / 2;
    if d % 2 != 0 {
        return Err(Error::InvalidValue {
            what: "d_head (RoPE)",
            value: d as f64,
            reason: "RoPE needs an even head dimension",
        });
    }
    let conv = |v: f64| E::from_f64(v).unwrap_or_default();
    let (mut cos, mut sin) = (
        Vec::with_capacity(seq * half),
        Vec::with_capacity(seq * half),
    );
    for p in 0..seq {
        for i in 0..half {
            let theta = p as f64 * 10000f64.powf(-2.0 * i as f64 / d as f64);
            cos.push(conv(theta.cos()));
            sin.push(conv(theta.sin()));
        }
    }
    let dev = x.device().clone();
    let hshape = (shape.0, shape.1, seq, half);
    let table = |v: Vec<E>| -> Result<_> {
        dev.try_tensor_from_vec(v, (seq, half))
            .map_err(Error::device)?
            .try_broadcast_like::<_, Axes2<0, 1>>(&hshape)
            .map_err(Error::device)
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let x1 = x
        .with_empty_tape()
        .try_slice((.., .., .., ..half))
        .map_err(Error::device)?;
    let x2 = x.try_slice((.., .., .., half..)).map_err(Error::device)?;
    let a = x1
        .with_empty_tape()
        .try_mul(cos.clone())
        .map_err(Error::device)?
        - x2.with_empty_tape()
            .try_mul(sin.clone())
            .map_err(Error::device)?;
    let b = x1.try_mul(sin).map_err(Error::device)? + x2.try_mul(cos).map_err(Error::device)?;
    let out = (a, b).try_concat_along(Axis::<3>).map_err(Error::device)?;
    out.try_reshape_like(&shape).map_err(Error::device)
}

impl<const V: usize, const D: usize, const F: usize, const L: usize, E, Dev, P>
    TransformerLm<V, D, F, L, E, Dev, P>
where
    E: Dtype,
    Dev: Backend<E> + Storage<usize> + 'static,
    P: Param,
    StandardNormal: Distribution<E>,
{
    /// Logits `[batch·seq, V]` for `ids` (`batch·seq` token ids, row-major), with the training
    /// tape riding on `ids`. With a quantiser, every linear and attention matmul runs in its
    /// simulated formats.
    pub fn logits<T: Tape<E, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        shape: (usize, usize),
        hp: &Hyper,
        opts: &LmOptions,
        quant: Option<&mut MatmulQuantiser>,
    ) -> Result<Rows<V, E, Dev, T>> {
        self.logits_logged(ids, shape, hp, opts, quant, None)
    }

    /// [`Self::logits`], recording the RMS of every intermediate activation (and, in the
    /// backward pass, of its gradient) in `log`: `embed`, `layers.{i}.attn.{in,q,k,v,sdpa,out}`,
    /// `layers.{i}.mlp.{in,act,out}`, `layers.{i}.residual`, `final_norm`, `logits`.
    pub fn logits_logged<T: Tape<E, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        (batch, seq): (usize, usize),
        hp: &Hyper,
        opts: &LmOptions,
        mut quant: Option<&mut MatmulQuantiser>,
        log: Option<&ScaleLog>,
    ) -> Result<Rows<V, E, Dev, T>> {
        check_inputs::<D>(ids.shape().0, (batch, seq), hp, opts)?;
        let taus = residual_taus(hp, L)?;
        let mut x = tap(self.embed.try_forward(ids)?, log, || "embed".into())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let name = |s: &str| format!("layers.{i}.{s}");
            x = P::residual(x, taus[2 * i], |r| {
                let h = tap(ops::rms_norm(r, None, NORM_EPS)?, log, || name("attn.in"))?;
                let y =
                    self.attention(&layer.attn, h, (batch, seq), hp, opts, &mut quant, log, i)?;
                tap(y, log, || name("attn.out"))
            })?;
            x = P::residual(x, taus[2 * i + 1], |r| {
                let h = tap(ops::rms_norm(r, None, NORM_EPS)?, log, || name("mlp.in"))?;
                let m = &layer.mlp;
                let q = quant.as_deref_mut();
                let out = swiglu_mlp([&m.up, &m.gate], &m.down, h, hp, q, log, || name("mlp.act"))?;
                tap(out, log, || name("mlp.out"))
            })?;
            x = tap(x, log, || name("residual"))?;
        }
        let x = tap(ops::rms_norm(x, None, NORM_EPS)?, log, || {
            "final_norm".into()
        })?;
        tap(lin(&self.readout, x, &mut quant)?, log, || "logits".into())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention<T: Tape<E, Dev> + Merge<T>>(
        &self,
        attn: &Attention<D, E, Dev, P>,
        h: Rows<D, E, Dev, T>,
        (batch, seq): (usize, usize),
        hp: &Hyper,
        opts: &LmOptions,
        quant: &mut Option<&mut MatmulQuantiser>,
        log: Option<&ScaleLog>,
        layer: usize,
    ) -> Result<Rows<D, E, Dev, T>> {
        let name = |s: &str| format!("layers.{layer}.attn.{s}");
        let heads = opts.heads;
        let q = tap(lin(&attn.q, h.with_empty_tape(), quant)?, log, || name("q"))?;
        let k = tap(lin(&attn.k, h.with_empty_tape(), quant)?, log, || name("k"))?;
        let v = tap(lin(&attn.v, h, quant)?, log, || name("v"))?;
        let y = if opts.rope {
            self.attention_heads(q, k, v, (batch, seq), hp, opts, quant)?
        } else {
            // The projections' `[batch·seq, heads·d_head]` layout, attended in place.
            match quant {
                Some(qz) => {
                    crate::nn::functional::multi_head_attention_quantised::<P, _, _, _, _, _>(
                        q, k, v, seq, heads, hp, true, qz,
                    )?
                }
                None => crate::nn::functional::multi_head_attention::<P, _, _, _, _, _>(
                    q, k, v, seq, heads, hp, true,
                )?,
            }
        };
        let y = tap(y, log, || name("sdpa"))?;
        lin(&attn.o, y, quant)
    }

    /// The attention core on `[batch, heads, seq, d_head]`, the layout RoPE acts on.
    #[allow(clippy::too_many_arguments)]
    fn attention_heads<T: Tape<E, Dev> + Merge<T>>(
        &self,
        q: Rows<D, E, Dev, T>,
        k: Rows<D, E, Dev, T>,
        v: Rows<D, E, Dev, T>,
        (batch, seq): (usize, usize),
        hp: &Hyper,
        opts: &LmOptions,
        quant: &mut Option<&mut MatmulQuantiser>,
    ) -> Result<Rows<D, E, Dev, T>> {
        let (heads, d_head) = (opts.heads, D / opts.heads);
        let split =
            |t: Rows<D, E, Dev, T>| -> Result<Tensor<(usize, usize, usize, usize), E, Dev, T>> {
                t.try_reshape_like(&(batch, seq, heads, d_head))
                    .map_err(Error::device)?
                    .try_permute::<_, Axes4<0, 2, 1, 3>>()
                    .map_err(Error::device)
            };
        let (mut q, mut k, v) = (split(q)?, split(k)?, split(v)?);
        if opts.rope {
            q = rope(q)?;
            k = rope(k)?;
        }
        let y = match quant {
            Some(qz) => {
                let (q, k, v) = (
                    qz.quantise_fwd(q)?,
                    qz.quantise_fwd(k)?,
                    qz.quantise_fwd(v)?,
                );
                qz.quantise_bwd(P::attention(q, k, v, hp, true)?)?
            }
            None => P::attention(q, k, v, hp, true)?,
        };
        y.try_permute::<_, Axes4<0, 2, 1, 3>>()
            .map_err(Error::device)?
            .try_reshape_like(&(batch * seq, Const::<D>))
            .map_err(Error::device)
    }

    /// Mean next-token cross entropy of a batch (`P::cross_entropy` with α_loss-softmax): the
    /// composition of umup's ops, each running its device's kernel (`Cpu`: the kernels behind
    /// [`Backend`]; any other device: the generic compositions).
    pub fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        targets: &[usize],
        shape: (usize, usize),
        hp: &Hyper,
        opts: &LmOptions,
        quant: Option<&mut MatmulQuantiser>,
    ) -> Result<Tensor<(), E, Dev, T>> {
        let logits = self.logits(ids, shape, hp, opts, quant)?;
        P::cross_entropy(logits, targets, hp)
    }
}

/// Checks the run-time settings of a forward pass: heads divide the width, one id per
/// position, valid hyperparameters.
fn check_inputs<const D: usize>(
    ids: usize,
    (batch, seq): (usize, usize),
    hp: &Hyper,
    opts: &LmOptions,
) -> Result<()> {
    if opts.heads == 0 || !D.is_multiple_of(opts.heads) {
        return Err(Error::InvalidValue {
            what: "number of heads",
            value: opts.heads as f64,
            reason: "the width must be a positive multiple of it",
        });
    }
    if ids != batch * seq {
        return Err(Error::ShapeMismatch {
            op: "TransformerLm::logits",
            detail: format!("{ids} ids for batch {batch} × seq {seq}"),
        });
    }
    hp.validate()
}

impl LmOptions {
    /// The options a [`Step`] names: `heads` or `d_head` ([`Step::heads`]: by default one head
    /// per 64 channels) and the flag `rope`; any other option is an error naming it.
    pub fn of(step: &Step<'_>, width: usize) -> Result<Self> {
        step.options.check_known(&["heads", "d_head", "rope"])?;
        Ok(LmOptions {
            heads: step.heads(width)?,
            rope: step.options.flag("rope")?,
        })
    }
}

// Not listed as a suggestion in the error for a model without `Trainable`.
#[diagnostic::do_not_recommend]
impl<const V: usize, const D: usize, const F: usize, const L: usize, E, Dev, P> Trainable<Dev, E>
    for TransformerLm<V, D, F, L, E, Dev, P>
where
    E: Dtype,
    Dev: TrainDevice + Backend<E>,
    P: Param,
    StandardNormal: Distribution<E>,
{
    /// Token windows with the next token as target ([`crate::data::NextToken`]): bytes at
    /// `V = 256`, a tokenizer's ids at its vocabulary.
    type Batch = TokenBatch;

    /// [`TransformerLm::loss`], with every activation tapped for the scale check
    /// ([`TransformerLm::logits_logged`]). Options: `heads`, `rope` ([`LmOptions::of`]).
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &TokenBatch,
        tape: T,
        step: &mut Step<'_>,
    ) -> Result<Tensor<(), E, Dev, T>> {
        let opts = LmOptions::of(step, D)?;
        let ids = batch.ids(self.embed.weight.device(), V)?.put_tape(tape);
        let log = step.log;
        let hp = step.hp;
        let logits =
            self.logits_logged(ids, (batch.batch, batch.seq), hp, &opts, step.quant(), log)?;
        P::cross_entropy(logits, &batch.targets, hp)
    }

    /// The last position's logits × α_loss-softmax (the loss's softmax sees `α·logits`).
    fn next_token_logits(
        &self,
        context: &[usize],
        step: &mut Step<'_>,
    ) -> Result<Option<Vec<f64>>> {
        let dev = self.embed.weight.device().clone();
        let ids = dev
            .try_tensor_from_vec(context.to_vec(), (context.len(),))
            .map_err(Error::device)?;
        let opts = LmOptions::of(step, D)?;
        let logits = self
            .logits(ids, (1, context.len()), step.hp, &opts, None)?
            .as_vec();
        let last = &logits[(context.len() - 1) * V..];
        let alpha = step.hp.alpha_loss_softmax;
        Ok(Some(
            last.iter()
                .map(|l| l.to_f64().unwrap_or(f64::NAN) * alpha)
                .collect(),
        ))
    }
}

/// The byte vocabulary of the shipped families.
pub const VOCAB: usize = 256;

/// The byte-level language model at width `D`, MLP width `F`, depth `L`, parametrization `P`,
/// on `Cpu`.
pub type Lm<const D: usize, const F: usize, const L: usize, P> = LmOn<D, F, L, P, Cpu>;

/// [`Lm`] on the device `Dev` (e.g. `Cuda`).
pub type LmOn<const D: usize, const F: usize, const L: usize, P, Dev> =
    TransformerLm<VOCAB, D, F, L, f32, Dev, P>;

crate::family! {
    /// The language model [`TransformerLm`] on BPE tokens of a [`BPE_VOCAB`]-token vocabulary
    /// (`train_lm --tokenizer bpe --vocab 1024`; MLP width 4 × width).
    pub struct BpeLmFamily = TransformerLm<BPE_VOCAB, W, {4 * W}, L>
        for (W, L) in [(64, 2), (128, 2), (128, 4), (256, 2)];
}

/// The BPE vocabulary the shipped LM is compiled at ([`BpeLmFamily`]).
pub const BPE_VOCAB: usize = 1024;

crate::family! {
    /// The byte-level language model [`TransformerLm`] (vocabulary 256, MLP width 4 × width) at
    /// the sizes `train_lm`, `scale_check` and `lr_sweep` offer (depths 8 and 16 at width 128, for
    /// `lr_sweep --vary depth=...`).
    pub struct LmFamily = TransformerLm<VOCAB, W, {4 * W}, L>
        for (W, L) in [(64, 2), (64, 4), (128, 2), (128, 4), (128, 8), (128, 16), (256, 2), (256, 4), (512, 2), (512, 4), (1024, 4)];
}

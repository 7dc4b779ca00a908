//! A masked-byte encoder (BERT-style) on bytes, written as a user would write their own model:
//! `#[umup_model]`, umup's public ops, a [`Trainable`] impl and a `family!` line. Nothing here
//! is special to the library.
//!
//! Token embedding (256 bytes + the mask token) + learned position embedding → `L` pre-norm
//! layers (LayerNorm with gain and bias → non-causal multi-head attention with biased
//! projections; LayerNorm → GELU MLP ×4 with biases), each branch added through the residual
//! τ rule → the rows of the masked positions → LayerNorm → readout to the 256 bytes. The task
//! ([`crate::data::MaskedTokens`] on bytes): 15% of the positions are chosen, and the model
//! predicts their original bytes.

use dfdx::prelude::*;

use crate::data::{TokenBatch, MASK};
use crate::device::TrainDevice;
use crate::family::{Step, Trainable};
use crate::nn::{functional, gelu_mlp, Param};
use crate::ops::Backend;
use crate::tape::{Fork, TracedLike};
use crate::{ops, umup_model, Constraint, Error, Result};

/// The fraction of positions whose bytes the encoder predicts (BERT's 15%).
pub const MASK_FRACTION: f64 = 0.15;

/// One pre-norm encoder layer: attention and a GELU MLP, every linear with a bias.
#[umup_model]
pub struct EncoderLayer<const D: usize, const F: usize> {
    /// Norm before attention.
    #[norm]
    pub ln1: LayerNorm<D>,
    /// Query projection.
    #[hidden(bias)]
    pub q: Linear<D, D>,
    /// Key projection.
    #[hidden(bias)]
    pub k: Linear<D, D>,
    /// Value projection.
    #[hidden(bias)]
    pub v: Linear<D, D>,
    /// Output projection.
    #[hidden(bias)]
    pub o: Linear<D, D>,
    /// Norm before the MLP.
    #[norm]
    pub ln2: LayerNorm<D>,
    /// MLP up-projection.
    #[hidden(bias)]
    pub up: Linear<D, F>,
    /// MLP down-projection.
    #[hidden(bias)]
    pub down: Linear<F, D>,
}

/// The masked-byte encoder: `S` positions at most, width `D`, MLP width `F`, depth `L`.
#[umup_model]
pub struct MaskedEncoder<const S: usize, const D: usize, const F: usize, const L: usize> {
    /// Byte embedding; id 256 is the mask token ([`MASK`]).
    #[embedding]
    pub tok: Embedding<257, D>,
    /// Learned position embedding.
    #[embedding]
    pub pos: Embedding<S, D>,
    /// The encoder layers (depth `L`).
    #[model]
    #[depth]
    pub layers: [EncoderLayer<D, F>; L],
    /// Final norm.
    #[norm]
    pub ln_f: LayerNorm<D>,
    /// Readout to the 256 bytes.
    #[output]
    pub readout: Linear<D, 256>,
}

/// Rows `[batch·seq, D]`: one row per position.
pub type Rows<const D: usize, Dev, T, E = f32> = Tensor<(usize, Const<D>), E, Dev, T>;

impl<const D: usize, const F: usize, E, Dev, P> EncoderLayer<D, F, E, Dev, P>
where
    E: Dtype,
    Dev: TrainDevice + Backend<E>,
    P: Param,
{
    /// One pre-norm layer on the rows of sequences of `seq` positions: `x + attn(ln1(x))`, then
    /// `x + mlp(ln2(x))`, each through the residual τ rule (`taus`: this layer's two entries of
    /// `functional::residual_taus`), the attention non-causal with [`Step::heads`] heads, the MLP
    /// `down(gelu(up(h)))` with α_ffn-act. Tapped as `layers.{index}.attn.{in,q,k,v,sdpa,out}`,
    /// `layers.{index}.mlp.{in,act,out}` and `layers.{index}.residual`.
    pub fn forward<T: Tape<E, Dev> + Merge<T>>(
        &self,
        x: Rows<D, Dev, T, E>,
        seq: usize,
        taus: [f64; 2],
        index: usize,
        step: &mut Step<'_>,
    ) -> Result<Rows<D, Dev, T, E>> {
        let (hp, heads) = (step.hp, step.heads(D)?);
        let name = |s: &str| format!("layers.{index}.{s}");
        let x = P::residual(x, taus[0], |r| {
            let h = step.tap(self.ln1.try_forward(r)?, || name("attn.in"))?;
            let [hq, hk, hv] = h.fork();
            let q = lin!(self.q, hq, step)?;
            let q = step.tap(q, || name("attn.q"))?;
            let k = lin!(self.k, hk, step)?;
            let k = step.tap(k, || name("attn.k"))?;
            let v = lin!(self.v, hv, step)?;
            let v = step.tap(v, || name("attn.v"))?;
            let a = match step.quant() {
                Some(qz) => functional::multi_head_attention_quantised::<P, _, _, _, _, _>(
                    q, k, v, seq, heads, hp, false, qz,
                )?,
                None => functional::multi_head_attention::<P, _, _, _, _, _>(
                    q, k, v, seq, heads, hp, false,
                )?,
            };
            let a = step.tap(a, || name("attn.sdpa"))?;
            let out = lin!(self.o, a, step)?;
            step.tap(out, || name("attn.out"))
        })?;
        let x = P::residual(x, taus[1], |r| {
            let h = step.tap(self.ln2.try_forward(r)?, || name("mlp.in"))?;
            let gelu = (hp.alpha_ffn_act, Constraint::ToOutputScale);
            let log = step.log;
            let out = gelu_mlp(&self.up, &self.down, h, gelu, step.quant(), log, || {
                name("mlp.act")
            })?;
            step.tap(out, || name("mlp.out"))
        })?;
        step.tap(x, || name("residual"))
    }
}

// Not listed as a suggestion in the error for a model without `Trainable`.
#[diagnostic::do_not_recommend]
impl<const S: usize, const D: usize, const F: usize, const L: usize, E, Dev, P> Trainable<Dev, E>
    for MaskedEncoder<S, D, F, L, E, Dev, P>
where
    E: Dtype,
    Dev: TrainDevice + Backend<E>,
    P: Param,
    crate::rand_distr::StandardNormal: crate::rand_distr::Distribution<E>,
{
    /// Masked byte windows ([`crate::data::MaskedTokens`] on bytes, [`MASK_FRACTION`]).
    type Batch = TokenBatch;

    /// Mean cross entropy of the original bytes at the masked positions. Tapped activations:
    /// `embed`, `layers.{i}.attn.{in,q,k,v,sdpa,out}`, `layers.{i}.mlp.{in,act,out}`,
    /// `layers.{i}.residual`, `final_norm`, `logits`. Options: `heads` or `d_head` ([`Step::heads`]).
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &TokenBatch,
        tape: T,
        step: &mut Step<'_>,
    ) -> Result<Tensor<(), E, Dev, T>> {
        step.options.check_known(&Step::HEAD_OPTIONS)?;
        let (b, seq) = (batch.batch, batch.seq);
        let n = batch.inputs.len();
        if seq > S || n != b * seq || batch.positions.is_empty() {
            return Err(Error::ShapeMismatch {
                op: "MaskedEncoder::loss",
                detail: format!(
                    "{n} ids for batch {b} × seq {seq} (at most {S} positions), {} masked positions",
                    batch.positions.len()
                ),
            });
        }
        let ids = batch
            .ids(self.tok.weight.device(), MASK + 1)?
            .put_tape(tape);
        let dev = ids.device().clone();
        let hp = step.hp;
        // x = (tok(ids) + pos(positions)) / √2 (a unit-scaled add, spec §4.8).
        let tok = self.tok.try_forward(ids)?;
        let positions = (0..b * seq).map(|i| i % seq).collect();
        let positions = dev
            .try_tensor_from_vec(positions, (b * seq,))
            .map_err(Error::device)?;
        let pos = self.pos.try_forward(positions.traced_like(&tok))?;
        let x = ops::add(tok, pos, Constraint::ToOutputScale)?;
        let mut x = step.tap(x, || "embed".into())?;
        let taus = functional::residual_taus(hp, L)?;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x, seq, [taus[2 * i], taus[2 * i + 1]], i, step)?;
        }
        // Only the masked rows reach the readout.
        let rows = dev
            .try_tensor_from_vec(batch.positions.clone(), (batch.positions.len(),))
            .map_err(Error::device)?;
        let x: Rows<D, Dev, T, E> = x.try_gather(rows).map_err(Error::device)?;
        let x = step.tap(self.ln_f.try_forward(x)?, || "final_norm".into())?;
        let logits = lin!(self.readout, x, step)?;
        let logits = step.tap(logits, || "logits".into())?;
        P::cross_entropy(logits, &batch.targets, hp)
    }
}

crate::family! {
    /// The masked-byte encoder [`MaskedEncoder`] (128 positions, MLP width 4 × width) at the sizes
    /// `train_encoder`, `scale_check --model encoder` and `lr_sweep --model encoder` offer.
    pub struct EncoderFamily = MaskedEncoder<128, W, {4 * W}, L>
        for W in [64, 128, 256, 512], L in [2, 4];
}

//! The encoder classifier of the step benchmark, written as a user would: `#[umup_model]` and
//! umup's public ops only, no hand-written kernels. Vocab 256, width 256, 4 layers, 4 heads,
//! seq 128, non-causal attention, LayerNorm with gain and bias, a GELU MLP (×4) with biases, a
//! learned position embedding, and a mean-pooled readout (`ops::mean_pool`) to 16 classes. The
//! same model from stock dfdx modules is [`PlainEncoder`].

use umup::device::TrainDevice;
use umup::dfdx::nn::builders as nnb;
use umup::dfdx::prelude::*;
use umup::family::{Options, Step};
// The layer of the shipped masked-byte encoder: LayerNorm, biased q/k/v/o, GELU MLP.
use umup::models::EncoderLayer;
use umup::nn::{functional, Hyper, Param};
use umup::{ops, umup_model, Constraint};

pub const CLASSES: usize = 16;

/// Token + learned position embeddings → `L` layers → LayerNorm → mean over positions →
/// readout to `C` classes.
#[umup_model]
pub struct Encoder<
    const V: usize,
    const S: usize,
    const D: usize,
    const F: usize,
    const L: usize,
    const C: usize,
> {
    #[embedding]
    pub tok: Embedding<V, D>,
    #[embedding]
    pub pos: Embedding<S, D>,
    #[model]
    #[depth]
    pub layers: [EncoderLayer<D, F>; L],
    #[norm]
    pub ln_f: LayerNorm<D>,
    #[output]
    pub head: Linear<D, C>,
}

impl<
        const V: usize,
        const S: usize,
        const D: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        Dev: TrainDevice,
        P: Param,
    > Encoder<V, S, D, F, L, C, f32, Dev, P>
{
    /// Mean cross entropy of the class `labels` of `batch` sequences of `S` ids.
    pub fn loss<T: Tape<f32, Dev> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Dev, T>,
        labels: &[usize],
        heads: usize,
        hp: &Hyper,
    ) -> umup::Result<Tensor<(), f32, Dev, T>> {
        let err = umup::Error::device;
        let batch = ids.shape().0 / S;
        let x = self.tok.try_forward(ids)?;
        let x = x
            .try_reshape_like(&(batch, Const::<S>, Const::<D>))
            .map_err(err)?;
        // The learned position embedding: its table, broadcast over the batch.
        let x = ops::add_broadcast::<_, _, Axis<0>, _, _, _>(
            x,
            self.pos.weight.retaped::<T>(),
            Constraint::None,
        )?;
        let mut x = x.try_reshape_like(&(batch * S, Const::<D>)).map_err(err)?;
        let taus = functional::residual_taus(hp, L)?;
        let options = Options::new().with("heads", heads);
        let mut step = Step::new(hp, &options);
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x, S, [taus[2 * i], taus[2 * i + 1]], i, &mut step)?;
        }
        let x = self.ln_f.try_forward(x)?;
        // The mean of each sequence's S positions, unit-scaled: √S·mean, gradient G/√S.
        let pooled = ops::mean_pool(x, S, Constraint::ToOutputScale)?;
        P::cross_entropy(self.head.try_forward(pooled)?, labels, hp)
    }
}

pub type PlainLayer<const D: usize, const F: usize> = (
    (
        nnb::LayerNorm1D<D>,
        nnb::Linear<D, D>,
        nnb::Linear<D, D>,
        nnb::Linear<D, D>,
        nnb::Linear<D, D>,
    ),
    (nnb::LayerNorm1D<D>, nnb::Linear<D, F>, nnb::Linear<F, D>),
);

/// The same encoder from stock dfdx modules, no scaling: `Embedding`, `LayerNorm1D`, biased
/// `Linear`, softmax attention with `1/√d_head`, `accurate_gelu`, residual adds,
/// `cross_entropy_with_logits_loss`.
pub type PlainEncoder<
    const V: usize,
    const S: usize,
    const D: usize,
    const F: usize,
    const L: usize,
    const C: usize,
> = (
    (nnb::Embedding<V, D>, nnb::Embedding<S, D>),
    nnb::Repeated<PlainLayer<D, F>, L>,
    (nnb::LayerNorm1D<D>, nnb::Linear<D, C>),
);

type Rows<const K: usize> = Tensor<(usize, Const<K>), f32, Cpu, OwnedTape<f32, Cpu>>;

/// The plain encoder's loss (f32 on `Cpu`).
pub fn plain_loss<
    const V: usize,
    const S: usize,
    const D: usize,
    const F: usize,
    const L: usize,
    const C: usize,
>(
    m: &<PlainEncoder<V, S, D, F, L, C> as BuildOnDevice<Cpu, f32>>::Built,
    ids: &[usize],
    labels: &[usize],
    heads: usize,
    grads: Gradients<f32, Cpu>,
) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>> {
    let ((tok, pos), layers, (ln_f, head)) = m;
    let dev = tok.weight.device().clone();
    let (n, batch, dh) = (ids.len(), ids.len() / S, D / heads);
    let x = tok.forward(dev.tensor_from_vec(ids.to_vec(), (n,)).traced(grads));
    let positions: Vec<usize> = (0..n).map(|i| i % S).collect();
    let (x, tape) = x.split_tape();
    let p = pos.forward(dev.tensor_from_vec(positions, (n,)).put_tape(tape));
    let mut x: Rows<D> = p + x;
    for ((ln1, q, k, v, o), (ln2, up, down)) in layers.modules.iter() {
        let h = ln1.forward(x.with_empty_tape());
        let split = |t: Rows<D>| {
            t.reshape_like(&(batch, S, heads, dh))
                .permute::<_, Axes4<0, 2, 1, 3>>()
        };
        let (qh, kh, vh) = (
            split(q.forward(h.with_empty_tape())),
            split(k.forward(h.with_empty_tape())),
            split(v.forward(h)),
        );
        let att = (qh.matmul(kh.permute::<_, Axes4<0, 1, 3, 2>>()) * (1.0 / (dh as f32).sqrt()))
            .softmax::<Axis<3>>()
            .matmul(vh)
            .permute::<_, Axes4<0, 2, 1, 3>>()
            .reshape_like(&(n, Const::<D>));
        x = x + o.forward(att);
        let h = ln2.forward(x.with_empty_tape());
        x = x + down.forward(up.forward(h).accurate_gelu());
    }
    let pooled = ln_f
        .forward(x)
        .reshape_like(&(batch, Const::<S>, Const::<D>))
        .mean::<(usize, Const<D>), Axis<1>>();
    let logits = head.forward(pooled);
    let mut onehot = vec![0f32; batch * C];
    for (i, &t) in labels.iter().enumerate() {
        onehot[i * C + t] = 1.0;
    }
    cross_entropy_with_logits_loss(logits, dev.tensor_from_vec(onehot, (batch, Const::<C>)))
}

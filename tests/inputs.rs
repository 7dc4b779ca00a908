//! Inputs that read like the math: a GPT-2-style model with token and learned position
//! embeddings (`h = tok(ids) + pos(positions)`), a skip connection from `x0` several layers
//! later and one input shared by q, k and v, written with `umup::tape::{Fork, TracedLike}`;
//! its loss and every gradient match the same model written with dfdx's tape plumbing.
#![allow(clippy::type_complexity)]

use umup::dfdx::nn::ZeroGrads;
use umup::dfdx::prelude::*;
use umup::nn::{functional, Hyper, Param, Sp};
use umup::tape::{Fork, TracedLike};
use umup::{ops, umup_model, Constraint};

const V: usize = 8;
const S: usize = 8;
const D: usize = 16;
const L: usize = 2;
const HEADS: usize = 2;
const EPS: f64 = 1e-5;

/// One attention layer.
#[umup_model]
pub struct Block<const D: usize> {
    #[hidden]
    q: Linear<D, D>,
    #[hidden]
    k: Linear<D, D>,
    #[hidden]
    v: Linear<D, D>,
    #[hidden]
    o: Linear<D, D>,
}

/// Token + learned position embeddings → `L` attention layers → `+ x0` → readout.
#[umup_model]
pub struct Gpt<const V: usize, const S: usize, const D: usize, const L: usize> {
    #[embedding]
    tok: Embedding<V, D>,
    #[embedding]
    pos: Embedding<S, D>,
    #[model]
    #[depth]
    blocks: [Block<D>; L],
    #[output]
    head: Linear<D, V>,
}

type Model<P> = Gpt<V, S, D, L, f64, Cpu, P>;

impl<P: Param> Gpt<V, S, D, L, f64, Cpu, P> {
    /// The forward pass as the math reads.
    fn loss<T: Tape<f64, Cpu> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Cpu, T>,
        positions: Tensor<(usize,), usize, Cpu>,
        targets: &[usize],
        hp: &Hyper,
    ) -> umup::Result<Tensor<(), f64, Cpu, T>> {
        let x = self.tok.try_forward(ids)?;
        let p = self.pos.try_forward(positions.traced_like(&x))?;
        let h = ops::add(x, p, Constraint::None)?; // h = tok(ids) + pos(positions)
        let (mut x, x0) = h.share();
        let taus = functional::residual_taus(hp, L)?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = P::residual(x, taus[2 * i], |r| {
                let [hq, hk, hv] = ops::rms_norm(r, None, EPS)?.fork();
                let (q, k, v) = (
                    b.q.try_forward(hq)?,
                    b.k.try_forward(hk)?,
                    b.v.try_forward(hv)?,
                );
                let a = functional::multi_head_attention::<P, _, _, _, _, _>(
                    q, k, v, S, HEADS, hp, true,
                )?;
                b.o.try_forward(a)
            })?;
        }
        let x = ops::add(x, x0, Constraint::None)?; // the skip from x0
        let logits = self.head.try_forward(ops::rms_norm(x, None, EPS)?)?;
        P::cross_entropy(logits, targets, hp)
    }

    /// The same computation with dfdx's tape plumbing (`split_tape`, `put_tape`,
    /// `with_empty_tape`), as it had to be written before `umup::tape`.
    fn loss_plumbed<T: Tape<f64, Cpu> + Merge<T>>(
        &self,
        ids: Tensor<(usize,), usize, Cpu, T>,
        positions: Tensor<(usize,), usize, Cpu>,
        targets: &[usize],
        hp: &Hyper,
    ) -> umup::Result<Tensor<(), f64, Cpu, T>> {
        let x = self.tok.try_forward(ids)?;
        let (x, tape) = x.split_tape();
        let p = self.pos.try_forward(positions.put_tape(tape))?;
        let h = ops::add(x.put_tape(T::default()), p, Constraint::None)?;
        let x0 = h.with_empty_tape();
        let mut x = h;
        let taus = functional::residual_taus(hp, L)?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = P::residual(x, taus[2 * i], |r| {
                let h = ops::rms_norm(r, None, EPS)?;
                let q = b.q.try_forward(h.with_empty_tape())?;
                let k = b.k.try_forward(h.with_empty_tape())?;
                let v = b.v.try_forward(h)?;
                let a = functional::multi_head_attention::<P, _, _, _, _, _>(
                    q, k, v, S, HEADS, hp, true,
                )?;
                b.o.try_forward(a)
            })?;
        }
        let x = ops::add(x, x0, Constraint::None)?;
        let logits = self.head.try_forward(ops::rms_norm(x, None, EPS)?)?;
        P::cross_entropy(logits, targets, hp)
    }
}

/// Two sequences of the same permutation of the vocabulary, so that token `PERM[s]` is always
/// at position `s`.
const PERM: [usize; S] = [3, 0, 6, 1, 7, 2, 5, 4];

fn batch(
    dev: &Cpu,
) -> (
    Tensor<(usize,), usize, Cpu>,
    Tensor<(usize,), usize, Cpu>,
    Vec<usize>,
) {
    let ids: Vec<usize> = PERM.iter().chain(PERM.iter()).copied().collect();
    let positions: Vec<usize> = (0..S).chain(0..S).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i + 1) % V).collect();
    let n = ids.len();
    (
        dev.tensor_from_vec(ids, (n,)),
        dev.tensor_from_vec(positions, (n,)),
        targets,
    )
}

/// Every gradient of `m` as (name, values).
fn grads_of<P: Param>(m: &Model<P>, g: &Gradients<f64, Cpu>) -> Vec<(String, Vec<f64>)> {
    let mut out = vec![
        ("tok".to_string(), g.get(&m.tok.weight).as_vec()),
        ("pos".to_string(), g.get(&m.pos.weight).as_vec()),
        ("head".to_string(), g.get(&m.head.weight).as_vec()),
    ];
    for (i, b) in m.blocks.iter().enumerate() {
        for (name, w) in [("q", &b.q), ("k", &b.k), ("v", &b.v), ("o", &b.o)] {
            out.push((format!("blocks.{i}.{name}"), g.get(&w.weight).as_vec()));
        }
    }
    out
}

fn check_model<P: Param>() -> umup::Result<()> {
    let dev = Cpu::seed_from_u64(7);
    let m = Model::<P>::build(&dev)?;
    let hp = Hyper::default();
    let (ids, positions, targets) = batch(&dev);

    let loss = m.loss(ids.trace(m.alloc_grads()), positions.clone(), &targets, &hp)?;
    let value = loss.array();
    let natural = grads_of(&m, &loss.backward());
    let loss = m.loss_plumbed(ids.trace(m.alloc_grads()), positions.clone(), &targets, &hp)?;
    assert_eq!(loss.array(), value);
    let plumbed = grads_of(&m, &loss.backward());
    // Inference: `traced_like` gives the positions a `NoneTape`; the same loss.
    let inference = m.loss(ids.clone(), positions, &targets, &hp)?;
    assert_eq!(inference.array(), value);
    assert!(value.is_finite() && value > 0.5, "loss {value}");

    for ((name, a), (_, b)) in natural.iter().zip(&plumbed) {
        assert_eq!(a.len(), b.len());
        let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 1e-6, "{name}: no gradient");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                "{name}: {x} vs {y}"
            );
        }
    }

    // The position table receives its gradient, and it is the token table's: `h = tok + pos`
    // passes one gradient to both lookups, token `PERM[s]` always sits at position `s`, and
    // both tables have 8 rows (the same u-μP gradient scale √(8/16)).
    let tok = &natural[0].1;
    let pos = &natural[1].1;
    for (s, &id) in PERM.iter().enumerate() {
        let row = |t: &[f64], r: usize| t[r * D..(r + 1) * D].to_vec();
        let (p, t) = (row(pos, s), row(tok, id));
        assert!(
            p.iter().any(|v| v.abs() > 1e-6),
            "position {s}: no gradient"
        );
        for (a, b) in p.iter().zip(&t) {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "position {s}: {a} vs {b}"
            );
        }
    }
    Ok(())
}

#[test]
fn gpt_with_positions_skip_and_shared_qkv_reads_like_the_math() -> umup::Result<()> {
    check_model::<umup::nn::Umup>()
}

#[test]
fn the_same_under_standard_parametrization() -> umup::Result<()> {
    check_model::<Sp>()
}

#[test]
fn fork_and_share_add_up_gradients() {
    let dev = Cpu::default();
    let w: Tensor<Rank1<3>, f64, Cpu> = dev.tensor([1.0, -2.0, 0.5]);
    // y = Σ (2a + b² + c + 4·x0) with a = b = c = x0 = w: dy/dw = 2 + 2w + 1 + 4.
    let (x, x0) = w.trace(Gradients::leaky()).share();
    let [a, b, c] = x.fork();
    let y = (a * 2.0 + b.square() + c + x0 * 4.0).sum();
    let g = y.backward();
    assert_eq!(g.get(&w).array(), [9.0, 3.0, 8.0]);
}

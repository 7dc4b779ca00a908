//! Fused multi-head attention, causal or not, on `[batch·seq, heads·d_head]` rows
//! ([`AttnLayout::Rows`]) or `[batch, heads, seq, d_head]` ([`AttnLayout::Heads`]).
//!
//! Forward: `O = out_scale · softmax(logit_scale · Q·Kᵀ [+ causal mask]) · V` per (batch, head),
//! in blocks of query rows; a causal block computes only the keys it can see (`j ≤ i`), so the
//! fully masked half of `Q·Kᵀ` and of `P·V` is never computed, and no mask is materialised. The
//! probabilities are kept for the backward pass. Backward (true gradients of that forward):
//! `dV = out_scale·Pᵀ·dO`, `dP = out_scale·dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
//! `dQ = logit_scale·dS·K`, `dK = logit_scale·dSᵀ·Q` — with the same block skipping. Batches run
//! in parallel; each (batch, head) is a sequence of small single-threaded matmuls.

use rayon::prelude::*;

use super::gemm::{gemm, Threads, View, ViewMut};
use super::{max_by, simd, sum_by, sum_by2, Real};

/// Query rows per block of causal attention: small enough that a block skips most of the masked
/// keys.
const CAUSAL_BLOCK: usize = 32;

/// Query rows per block of non-causal attention, which has nothing to skip: large blocks mean
/// fewer, larger matmuls (each small matmul pays gemm's packing and dispatch), while the block's
/// logits (`rows × seq`) stay in cache.
const FULL_BLOCK: usize = 128;

/// `dst = srcᵀ` for the `rows × cols` block at the start of `src` (row stride `rs`); `dst` is
/// `cols × rows`, row-major.
///
/// `Q·Kᵀ` and `dO·Vᵀ` read `K` and `V` of a head through their transpose; gemm packs a right
/// operand stored by columns element by element (a 128×128×64 product took 28.6 µs that way
/// against 21.4 µs from rows). One transpose per head serves every query block.
fn transpose<E: Real>(src: &[E], rows: usize, cols: usize, rs: usize, dst: &mut [E]) {
    for r in 0..rows {
        let row = &src[r * rs..r * rs + cols];
        for (d, &v) in dst.chunks_exact_mut(rows).zip(row) {
            d[r] = v;
        }
    }
}

/// How `q`, `k`, `v` and the output are laid out in memory (row-major either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttnLayout {
    /// `[batch·seq, heads·d_head]`: the output of a linear projection, heads side by side.
    #[default]
    Rows,
    /// `[batch, heads, seq, d_head]`: each head's `seq × d_head` matrix contiguous.
    Heads,
}

/// The shape of an attention problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub d_head: usize,
    /// The memory layout of `q`, `k`, `v` and the output.
    pub layout: AttnLayout,
}

impl AttnShape {
    /// `heads · d_head`.
    pub fn width(&self) -> usize {
        self.heads * self.d_head
    }

    /// Elements of `q`, `k`, `v` or the output: `batch·seq·width`.
    pub fn numel(&self) -> usize {
        self.batch * self.seq * self.width()
    }

    /// Elements of the probabilities: `batch·heads·seq²`.
    pub fn probs_numel(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }

    /// `(row stride, head stride)` of one batch element's `q`/`k`/`v`/output block.
    fn strides(&self) -> (usize, usize) {
        match self.layout {
            AttnLayout::Rows => (self.width(), self.d_head),
            AttnLayout::Heads => (self.d_head, self.seq * self.d_head),
        }
    }

    /// Query rows per block.
    fn block_rows(causal: bool) -> usize {
        if causal {
            CAUSAL_BLOCK
        } else {
            FULL_BLOCK
        }
    }

    /// The query blocks `(first row, end row, keys visible to the block)`.
    fn blocks(&self, causal: bool) -> impl Iterator<Item = (usize, usize, usize)> {
        let seq = self.seq;
        let block = Self::block_rows(causal);
        (0..seq.div_ceil(block)).map(move |b| {
            let (r0, r1) = (b * block, ((b + 1) * block).min(seq));
            (r0, r1, if causal { r1 } else { seq })
        })
    }

    fn check(&self, what: &str, lens: &[usize], probs: usize) {
        assert!(
            lens.iter().all(|&l| l == self.numel()) && probs == self.probs_numel(),
            "{what}: buffer lengths do not match {self:?}"
        );
    }
}

/// Attention forward; writes `out` (`[batch·seq, width]`) and `probs`
/// (`[batch, heads, seq, seq]`, zero where masked).
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd<E: Real>(
    sh: AttnShape,
    q: &[E],
    k: &[E],
    v: &[E],
    logit_scale: E,
    out_scale: E,
    causal: bool,
    out: &mut [E],
    probs: &mut [E],
) {
    sh.check(
        "attention_fwd",
        &[q.len(), k.len(), v.len(), out.len()],
        probs.len(),
    );
    let (s, w, dh) = (sh.seq, sh.width(), sh.d_head);
    let (rs, hs) = sh.strides();
    if sh.numel() == 0 {
        return;
    }
    out.par_chunks_mut(s * w)
        .zip(probs.par_chunks_mut(sh.heads * s * s))
        .enumerate()
        .for_each(|(b, (ob, pb))| {
            let (qb, kb, vb) = (
                &q[b * s * w..(b + 1) * s * w],
                &k[b * s * w..(b + 1) * s * w],
                &v[b * s * w..(b + 1) * s * w],
            );
            let mut kt = vec![E::zero(); dh * s];
            for (h, ph) in pb.chunks_mut(s * s).enumerate() {
                transpose(&kb[h * hs..], s, dh, rs, &mut kt);
                for (r0, r1, kend) in sh.blocks(causal) {
                    let rows = r1 - r0;
                    gemm(
                        ViewMut::block(ph, r0 * s, rows, kend, s),
                        false,
                        View::block(qb, r0 * rs + h * hs, rows, dh, rs),
                        View::block(&kt, 0, dh, kend, s),
                        logit_scale,
                        Threads::One,
                    );
                    // The block's softmax, vectorised (gemm dispatches on its own).
                    simd(
                        #[inline(always)]
                        || {
                            for i in r0..r1 {
                                let valid = if causal { i + 1 } else { s };
                                let row = &mut ph[i * s..(i + 1) * s];
                                let max = max_by(&row[..valid], |x| x);
                                row[..valid]
                                    .iter_mut()
                                    .for_each(|x| *x = (*x - max).exp_v());
                                let sum = sum_by(&row[..valid], |x| x);
                                let inv = E::one() / sum;
                                row[..valid].iter_mut().for_each(|x| *x *= inv);
                                row[valid..].iter_mut().for_each(|x| *x = E::zero());
                            }
                        },
                    );
                    gemm(
                        ViewMut::block(ob, r0 * rs + h * hs, rows, dh, rs),
                        false,
                        View::block(ph, r0 * s, rows, kend, s),
                        View::block(vb, h * hs, kend, dh, rs),
                        out_scale,
                        Threads::One,
                    );
                }
            }
        });
}

/// Attention backward from the forward's `probs`: adds to `dq`, `dk`, `dv` when `accumulate`
/// (straight into gradient buffers) and overwrites them otherwise.
pub fn attention_bwd_into<E: Real>(
    sh: AttnShape,
    [q, k, v, probs, dout]: [&[E]; 5],
    logit_scale: E,
    out_scale: E,
    causal: bool,
    accumulate: bool,
    [dq, dk, dv]: [&mut [E]; 3],
) {
    sh.check(
        "attention_bwd",
        &[
            q.len(),
            k.len(),
            v.len(),
            dout.len(),
            dq.len(),
            dk.len(),
            dv.len(),
        ],
        probs.len(),
    );
    let (s, w, dh) = (sh.seq, sh.width(), sh.d_head);
    let (rs, hs) = sh.strides();
    if sh.numel() == 0 {
        return;
    }
    dq.par_chunks_mut(s * w)
        .zip(dk.par_chunks_mut(s * w))
        .zip(dv.par_chunks_mut(s * w))
        .enumerate()
        .for_each(|(b, ((dqb, dkb), dvb))| {
            let span = b * s * w..(b + 1) * s * w;
            let (qb, kb, vb, gb) = (
                &q[span.clone()],
                &k[span.clone()],
                &v[span.clone()],
                &dout[span],
            );
            let pb = &probs[b * sh.heads * s * s..(b + 1) * sh.heads * s * s];
            let mut ds = vec![E::zero(); AttnShape::block_rows(causal).min(s) * s];
            let mut vt = vec![E::zero(); dh * s];
            for (h, ph) in pb.chunks(s * s).enumerate() {
                transpose(&vb[h * hs..], s, dh, rs, &mut vt);
                for (n, (r0, r1, kend)) in sh.blocks(causal).enumerate() {
                    let rows = r1 - r0;
                    // dP = out_scale · dO · Vᵀ  (rows × kend, row stride kend)
                    gemm(
                        ViewMut::rows(&mut ds[..rows * kend], rows, kend),
                        false,
                        View::block(gb, r0 * rs + h * hs, rows, dh, rs),
                        View::block(&vt, 0, dh, kend, s),
                        out_scale,
                        Threads::One,
                    );
                    simd(
                        #[inline(always)]
                        || {
                            for i in 0..rows {
                                let valid = if causal { r0 + i + 1 } else { s };
                                let p = &ph[(r0 + i) * s..(r0 + i) * s + kend];
                                let d = &mut ds[i * kend..(i + 1) * kend];
                                let dot = sum_by2(&p[..valid], &d[..valid], |p, d| p * d);
                                for (d, &p) in d[..valid].iter_mut().zip(p) {
                                    *d = p * (*d - dot);
                                }
                                d[valid..].iter_mut().for_each(|x| *x = E::zero());
                            }
                        },
                    );
                    let ds_v = View::rows(&ds[..rows * kend], rows, kend);
                    // dQ = logit_scale · dS · K
                    gemm(
                        ViewMut::block(dqb, r0 * rs + h * hs, rows, dh, rs),
                        accumulate,
                        ds_v,
                        View::block(kb, h * hs, kend, dh, rs),
                        logit_scale,
                        Threads::One,
                    );
                    // dK[..kend] += logit_scale · dSᵀ · Q;  dV[..kend] += out_scale · Pᵀ · dO.
                    // The first block of a causal head sees the fewest keys, so the rows a later
                    // block adds to are always initialised: overwrite on block 0, then
                    // accumulate; a non-causal head has every block see every key.
                    let first = n == 0 && !accumulate;
                    let zero_tail = |buf: &mut [E]| {
                        if causal && first {
                            for r in kend..s {
                                buf[r * rs + h * hs..r * rs + h * hs + dh]
                                    .iter_mut()
                                    .for_each(|x| *x = E::zero());
                            }
                        }
                    };
                    zero_tail(dkb);
                    zero_tail(dvb);
                    gemm(
                        ViewMut::block(dkb, h * hs, kend, dh, rs),
                        !first,
                        ds_v.t(),
                        View::block(qb, r0 * rs + h * hs, rows, dh, rs),
                        logit_scale,
                        Threads::One,
                    );
                    gemm(
                        ViewMut::block(dvb, h * hs, kend, dh, rs),
                        !first,
                        View::block(ph, r0 * s, rows, kend, s).t(),
                        View::block(gb, r0 * rs + h * hs, rows, dh, rs),
                        out_scale,
                        Threads::One,
                    );
                }
            }
        });
}

//! Tape helpers, so that a forward pass reads like the math.
//!
//! In dfdx the training tape (`OwnedTape`) rides on one tensor and is moved along the
//! computation; two operands of a binary op must carry the same tape type, and a tape cannot be
//! cloned. Three patterns of ordinary models need more than one handle on the graph:
//!
//! * **a second input** (position ids next to token ids): [`TracedLike::traced_like`] gives the
//!   ids an empty tape of the type an existing tensor carries, so the lookup is recorded and the
//!   table receives its gradient;
//! * **a skip connection from an earlier tensor** (`x0` reused layers later):
//!   [`Fork::share`] gives two handles of one tensor;
//! * **one input to several layers** (`q`, `k` and `v` of attention): [`Fork::fork`] gives `N`
//!   handles.
//!
//! ```
//! use umup_runtime::dfdx::prelude::*;
//! use umup_runtime::tape::{Fork, TracedLike};
//! use umup_runtime::{ops, Constraint};
//!
//! let dev = Cpu::default();
//! let (tok, pos): (Tensor<Rank2<8, 4>, f64, Cpu>, Tensor<Rank2<3, 4>, f64, Cpu>) =
//!     (dev.sample_normal(), dev.sample_normal());
//! let ids = dev.tensor_from_vec(vec![5usize, 1, 7], (3,)).traced(Gradients::leaky());
//! let positions = dev.tensor_from_vec(vec![0usize, 1, 2], (3,));
//!
//! let x = ops::embedding(ids, &tok)?;
//! let p = ops::embedding(positions.traced_like(&x), &pos)?; // (1) a second input
//! let h = ops::add(x, p, Constraint::None)?; //                  h = tok(ids) + pos(positions)
//! let (h, h0) = h.share(); //                                   (2) h0 for a skip connection
//! let [a, b] = h.fork(); //                                     (3) one input, two uses
//! let y = ops::add(a.square() + b, h0, Constraint::None)?; // (h² + h) + h0, unit-scaled
//! let g = y.sum::<Rank0, _>().backward();
//! assert!(g.get(&pos).array().iter().flatten().all(|v| *v != 0.0)); // pos is trained
//! # Ok::<(), umup_runtime::Error>(())
//! ```
//!
//! Every handle records into the same graph, and the gradients of all uses add up in the
//! tensor's gradient. The tape itself stays on one handle (the first); the others carry an empty
//! tape that merges back when two handles meet in an op, so every handle should flow into the
//! result, as it does in the patterns above. In inference (`NoneTape`) all of this is free.

use dfdx::prelude::*;

/// More than one handle on one tensor of the graph.
pub trait Fork: Sized {
    /// Two handles of `self`: the first carries the tape, the second an empty tape of the same
    /// type. Both are the same tensor (the same id and data, no copy), so the gradients of their
    /// uses add up in the gradient of `self`.
    ///
    /// ```
    /// # use umup_runtime::dfdx::prelude::*;
    /// # use umup_runtime::tape::Fork;
    /// let dev = Cpu::default();
    /// let w: Tensor<Rank1<2>, f32, Cpu> = dev.tensor([1.0, -2.0]);
    /// let (x, x0) = w.trace(Gradients::leaky()).share();
    /// let y = (x * 3.0) + x0; // a skip connection: y = 3x + x
    /// let g = y.sum().backward();
    /// assert_eq!(g.get(&w).array(), [4.0, 4.0]);
    /// ```
    fn share(self) -> (Self, Self);

    /// `N ≥ 1` handles of `self` (`N` is usually inferred from the pattern, as in
    /// `let [q_in, k_in, v_in] = h.fork();`): the first carries the tape, the others an empty
    /// tape of the same type. A `fork` into 0 handles does not compile.
    ///
    /// ```
    /// # use umup_runtime::dfdx::prelude::*;
    /// # use umup_runtime::tape::Fork;
    /// let dev = Cpu::default();
    /// let h: Tensor<Rank1<2>, f32, Cpu> = dev.tensor([1.0, 2.0]);
    /// let [a, b, c] = h.trace(Gradients::leaky()).fork();
    /// let y = (a * 1.0) + (b * 2.0) + (c * 3.0);
    /// let g = y.sum().backward();
    /// assert_eq!(g.get(&h).array(), [6.0, 6.0]);
    /// ```
    fn fork<const N: usize>(self) -> [Self; N];
}

impl<S: Shape, E, D: Storage<E>, T: Default> Fork for Tensor<S, E, D, T> {
    fn share(self) -> (Self, Self) {
        let other = self.with_empty_tape();
        (self, other)
    }

    fn fork<const N: usize>(self) -> [Self; N] {
        const { assert!(N >= 1, "`fork` makes at least one handle") };
        let mut handles: [Self; N] = std::array::from_fn(|_| self.with_empty_tape());
        handles[0] = self;
        handles
    }
}

/// Gives a tensor without a tape (ids, a constant, a table) the tape type of another tensor.
pub trait TracedLike<S: Shape, E, D: Storage<E>> {
    /// `self` with an empty tape of the type `like` carries (`OwnedTape` in training,
    /// `NoneTape` in inference), whatever `like`'s dtype and shape. The tape merges with
    /// `like`'s when the two meet in an op, so a second input joins the graph:
    ///
    /// ```
    /// # use umup_runtime::dfdx::prelude::*;
    /// # use umup_runtime::tape::TracedLike;
    /// # use umup_runtime::ops;
    /// let dev = Cpu::default();
    /// let table: Tensor<Rank2<4, 2>, f64, Cpu> = dev.ones();
    /// let x: Tensor<Rank2<2, 2>, f64, Cpu> = dev.ones();
    /// let x = x.traced(Gradients::leaky()); // e.g. the token embedding, with the tape
    /// let positions: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(vec![1, 3], (2,));
    /// // the lookup is recorded on a tape of x's type, so the table gets a gradient
    /// let p = ops::embedding(positions.traced_like(&x), &table)?;
    /// let g = (x.realize::<(usize, Const<2>)>() + p).sum().backward();
    /// // rows 1 and 3 were looked up; u-μP scales the table gradient by √(V/tokens) = √2
    /// let r = std::f64::consts::SQRT_2;
    /// assert_eq!(g.get(&table).array(), [[0.0, 0.0], [r, r], [0.0, 0.0], [r, r]]);
    /// # Ok::<(), umup_runtime::Error>(())
    /// ```
    ///
    /// Only an untaped tensor can be re-taped this way (a tape that recorded ops is never
    /// dropped silently); for the `usize` ids of an embedding this is the one way, since dfdx's
    /// `retaped` needs a tape of the tensor's own dtype.
    fn traced_like<S2: Shape, E2, T: Default>(
        &self,
        like: &Tensor<S2, E2, D, T>,
    ) -> Tensor<S, E, D, T>
    where
        D: Storage<E2>;
}

impl<S: Shape, E, D: Storage<E>> TracedLike<S, E, D> for Tensor<S, E, D, NoneTape> {
    fn traced_like<S2: Shape, E2, T: Default>(
        &self,
        _like: &Tensor<S2, E2, D, T>,
    ) -> Tensor<S, E, D, T>
    where
        D: Storage<E2>,
    {
        self.with_empty_tape().put_tape(T::default())
    }
}

//! Walks over a model's tensors by name: dfdx's `TensorVisitor` and `RecursiveWalker` behind
//! one call.
//!
//! Code that reads or rewrites every tensor of a model by its dotted path (the parameter
//! table's path, e.g. `layers.0.attn.q.weight`) implements [`Visit`] or [`VisitMut`], one
//! method, and calls [`tensors`] or [`tensors_mut`]. The optimizer's step and clipping, the
//! checkpoint's save and load, the scale log and the init multipliers all walk this way.
//!
//! ```
//! use umup_runtime::dfdx::prelude::*;
//! use umup_runtime::walk::{self, Visit};
//!
//! /// The number of trainable values of a model.
//! struct Count(usize);
//!
//! impl<E: Dtype, D: Device<E>> Visit<E, D> for Count {
//!     fn tensor<S: Shape>(
//!         &mut self,
//!         _: String,
//!         t: &Tensor<S, E, D>,
//!         trainable: bool,
//!     ) -> umup_runtime::Result<()> {
//!         if trainable {
//!             self.0 += t.shape().num_elements();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let dev = Cpu::default();
//! let layer = dev.build_module::<Linear<4, 3>, f32>(); // weight [3, 4], bias [3]
//! let mut count = Count(0);
//! walk::tensors(&layer, &mut count)?;
//! assert_eq!(count.0, 15);
//! # Ok::<(), umup_runtime::Error>(())
//! ```

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::prelude::*;

use crate::{Error, Result};

/// A read-only visit of every tensor of a model (see [`tensors`]).
pub trait Visit<E: Dtype, D: Device<E>> {
    /// Called once per tensor, in field order: `name` is its dotted path, `trainable` whether
    /// the optimizer updates it (dfdx's `do_gradient_update`). An error stops the walk.
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        t: &Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()>;
}

/// A visit of every tensor of a model that may rewrite it in place (see [`tensors_mut`]).
pub trait VisitMut<E: Dtype, D: Device<E>> {
    /// As [`Visit::tensor`], with the tensor mutable.
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        t: &mut Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()>;
}

/// Calls `v` on every tensor of `model`, in field order, with its dotted path.
pub fn tensors<E: Dtype, D: Device<E>, M: TensorCollection<E, D>>(
    model: &M,
    v: &mut impl Visit<E, D>,
) -> Result<()> {
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut Ref(v),
    })
    .map(|_| ())
}

/// Calls `v` on every tensor of `model`, mutable, in field order, with its dotted path.
pub fn tensors_mut<E: Dtype, D: Device<E>, M: TensorCollection<E, D>>(
    model: &mut M,
    v: &mut impl VisitMut<E, D>,
) -> Result<()> {
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut Mut(v),
    })
    .map(|_| ())
}

/// dfdx's visitor over a [`Visit`].
struct Ref<'a, V>(&'a mut V);

impl<E: Dtype, D: Device<E>, V: Visit<E, D>> TensorVisitor<E, D> for Ref<'_, V> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = Error;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        (t, name): (&Tensor<S, E, D>, String),
    ) -> Result<Option<Tensor<S, E, D>>> {
        self.0.tensor(name, t, opts.do_gradient_update)?;
        Ok(None)
    }
}

/// dfdx's visitor over a [`VisitMut`].
struct Mut<'a, V>(&'a mut V);

impl<E: Dtype, D: Device<E>, V: VisitMut<E, D>> TensorVisitor<E, D> for Mut<'_, V> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = Error;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        (t, name): (&mut Tensor<S, E, D>, String),
    ) -> Result<Option<Tensor<S, E, D>>> {
        self.0.tensor(name, t, opts.do_gradient_update)?;
        Ok(None)
    }
}

//! Mixed precision: f32 master weights for a model computed in a lower-precision dtype (f16).
//!
//! Each step the trainer copies the f32 master parameters to the compute dtype
//! (`dfdx::nn::ToDtype`), runs the forward and backward passes in it, and hands the gradients to
//! [`master_gradients`], which converts them to f32 and keys them by the master's tensors, so
//! that the [`super::Optimizer`] updates (and checkpoints) f32 weights and moments. u-μP needs
//! no loss scaling: its unit scales keep activations and gradients near RMS 1, well inside f16's
//! range (spec §8).

use std::collections::BTreeMap;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;

use crate::error::{DeviceResultExt, Error, Result};
use crate::ops::Backend;
use crate::walk::{self, Visit};

/// The f32 gradients of `master`'s trainable tensors from `grads`, the gradients of `copy`
/// (`master` in the dtype `E`: the same tensors under the same names). Each gradient is widened
/// to f32 (exact from f16) and moved into a new store keyed by the master's tensors, ready for
/// [`super::Optimizer::update`] on `master`. A trainable tensor of `copy` without a gradient
/// in `grads` gets zeros.
pub fn master_gradients<M, C, E, D>(
    master: &M,
    copy: &C,
    grads: &mut Gradients<E, D>,
) -> Result<Gradients<f32, D>>
where
    M: TensorCollection<f32, D>,
    C: TensorCollection<E, D>,
    E: Dtype,
    D: Backend<f32> + Backend<E>,
{
    let mut collect = Collect {
        grads,
        out: BTreeMap::new(),
    };
    walk::tensors(copy, &mut collect)?;
    let mut place = Place {
        by_name: collect.out,
        out: Gradients::leaky(),
    };
    walk::tensors(master, &mut place)?;
    if let Some(name) = place.by_name.keys().next() {
        return Err(Error::BadParameter {
            path: name.clone(),
            reason: "a gradient of the compute copy has no tensor in the master model".into(),
        });
    }
    Ok(place.out)
}

/// Walks the compute copy: each trainable tensor's gradient, widened to f32 and flattened.
struct Collect<'a, E: Dtype, D: Backend<E> + Backend<f32>> {
    grads: &'a mut Gradients<E, D>,
    out: BTreeMap<String, Tensor<(usize,), f32, D>>,
}

impl<E: Dtype, D: Backend<E> + Backend<f32>> Visit<E, D> for Collect<'_, E, D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &Tensor<S, E, D>,
        trainable: bool,
    ) -> Result<()> {
        if trainable {
            self.grads.try_alloc_for(p).dev()?;
            let n = p.shape().num_elements();
            let g = self.grads.get(p).try_to_dtype::<f32>().dev()?;
            self.out.insert(name, g.try_reshape_like(&(n,)).dev()?);
        }
        Ok(())
    }
}

/// Walks the master model: moves each collected gradient into the store under its tensor.
struct Place<D: Backend<f32>> {
    by_name: BTreeMap<String, Tensor<(usize,), f32, D>>,
    out: Gradients<f32, D>,
}

impl<D: Backend<f32>> Visit<f32, D> for Place<D> {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        p: &Tensor<S, f32, D>,
        trainable: bool,
    ) -> Result<()> {
        if !trainable {
            return Ok(());
        }
        let g = self
            .by_name
            .remove(&name)
            .ok_or_else(|| Error::BadParameter {
                path: name.clone(),
                reason: "no gradient in the compute copy (is it the master model's copy?)".into(),
            })?;
        if g.shape().0 != p.shape().num_elements() {
            return Err(Error::BadParameter {
                path: name,
                reason: format!(
                    "{} gradient values in the compute copy, the tensor has {}",
                    g.shape().0,
                    p.shape().num_elements()
                ),
            });
        }
        let g = g.try_reshape_like(p.shape()).dev()?;
        crate::ops::quantise::set_gradient(&mut self.out, p, g).dev()?;
        Ok(())
    }
}

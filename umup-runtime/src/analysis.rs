//! Scale tracking: the RMS of every parameter, activation and gradient of a forward/backward
//! pass — the core debugging tool of unit scaling (the reference's `track_scales`, spec §9).
//!
//! [`probe`] is an identity op that records the RMS of its value in the forward pass and of its
//! gradient in the backward pass; [`record_params`] and [`record_param_grads`] walk a model.

use std::fmt;
use std::sync::{Arc, Mutex};

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DeviceResultExt, Result};

/// What a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A parameter tensor.
    Param,
    /// An op output in the forward pass.
    Activation,
    /// A gradient: of a parameter (named by its path) or of an activation.
    Grad,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Param => "param",
            Kind::Activation => "activation",
            Kind::Grad => "grad",
        })
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What it measures.
    pub kind: Kind,
    /// The tensor path or activation name, e.g. `layers.0.mlp.up.weight`, `layers.3.attn.out`.
    pub name: String,
    /// Root mean square of the values.
    pub rms: f64,
}

/// A shared, append-only list of [`Record`]s (cheap to clone; backward ops append to it).
#[derive(Debug, Clone, Default)]
pub struct ScaleLog(Arc<Mutex<Vec<Record>>>);

impl ScaleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a record.
    pub fn push(&self, kind: Kind, name: impl Into<String>, rms: f64) {
        if let Ok(mut v) = self.0.lock() {
            v.push(Record {
                kind,
                name: name.into(),
                rms,
            });
        }
    }

    /// Everything recorded so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Ok(mut v) = self.0.lock() {
            v.clear();
        }
    }
}

/// RMS of values (accumulated in f64).
pub fn rms<E: Dtype>(values: &[E]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let ss: f64 = values
        .iter()
        .map(|v| v.to_f64().unwrap_or(f64::NAN).powi(2))
        .sum();
    (ss / values.len() as f64).sqrt()
}

/// Identity op that records the RMS of `x` (kind [`Kind::Activation`]) now and the RMS of its
/// gradient (kind [`Kind::Grad`], same name) when the backward pass reaches it.
pub fn probe<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    name: &str,
    log: &ScaleLog,
) -> Result<Tensor<S, E, D, T>> {
    log.push(Kind::Activation, name, rms(&x.as_vec()));
    if !T::OWNS_TAPE {
        return Ok(x);
    }
    // A new tensor, so that its gradient is exactly what flows back into this point.
    let (y, mut tape) = x.try_mul(E::ONE).dev()?.split_tape();
    let (yg, log, name) = (y.ghost(), log.clone(), name.to_string());
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&yg)?;
        log.push(Kind::Grad, name, rms(&grads.get(&yg).as_vec()));
        Ok(())
    });
    Ok(y.put_tape(tape))
}

/// [`probe`] under `name` when a log is given, the identity otherwise; `name` is only built
/// when recording.
pub fn tap<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    log: Option<&ScaleLog>,
    name: impl FnOnce() -> String,
) -> Result<Tensor<S, E, D, T>> {
    match log {
        Some(l) => probe(x, &name(), l),
        None => Ok(x),
    }
}

struct ParamVisitor<'a, E: Dtype, D: Device<E>> {
    log: &'a ScaleLog,
    grads: Option<&'a mut Gradients<E, D>>,
}

impl<E: Dtype, D: Device<E>> crate::walk::Visit<E, D> for ParamVisitor<'_, E, D> {
    fn tensor<S: Shape>(&mut self, name: String, t: &Tensor<S, E, D>, _: bool) -> Result<()> {
        match &mut self.grads {
            None => self.log.push(Kind::Param, name, rms(&t.as_vec())),
            Some(g) => {
                g.try_alloc_for(t).dev()?;
                self.log.push(Kind::Grad, name, rms(&g.get(t).as_vec()));
            }
        }
        Ok(())
    }
}

/// Records the RMS of every tensor of `model` (kind [`Kind::Param`]).
pub fn record_params<E: Dtype, D: Device<E>, M: TensorCollection<E, D>>(
    model: &M,
    log: &ScaleLog,
) -> Result<()> {
    crate::walk::tensors(model, &mut ParamVisitor { log, grads: None })
}

/// Records the RMS of the gradient of every tensor of `model` (kind [`Kind::Grad`], named by
/// the tensor path); a tensor without a gradient records 0.
pub fn record_param_grads<E: Dtype, D: Device<E>, M: TensorCollection<E, D>>(
    model: &M,
    grads: &mut Gradients<E, D>,
    log: &ScaleLog,
) -> Result<()> {
    crate::walk::tensors(
        model,
        &mut ParamVisitor {
            log,
            grads: Some(grads),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_records_value_and_gradient_and_is_the_identity() {
        let dev = Cpu::default();
        let x = dev.tensor([3.0f64, -4.0]);
        let log = ScaleLog::new();
        let y = probe(x.leaky_trace(), "h", &log).unwrap();
        assert_eq!(y.as_vec(), x.as_vec());
        let g = (y * dev.tensor([2.0, 2.0])).sum().backward();
        assert_eq!(g.get(&x).as_vec(), vec![2.0, 2.0]);
        let r = log.records();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].kind, r[0].rms), (Kind::Activation, (12.5f64).sqrt()));
        assert_eq!(
            (r[1].kind, r[1].name.as_str(), r[1].rms),
            (Kind::Grad, "h", 2.0)
        );
    }
}

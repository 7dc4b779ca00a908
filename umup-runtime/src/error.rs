//! The one error type of the umup runtime.
//!
//! Every fallible public function returns [`Result<T>`]. Bad input (a shape that does not match at
//! run time, a token id outside the vocabulary, a non-finite scale, an unknown name) is reported as
//! an [`Error`] that says what was wrong, never as a panic.

use std::fmt;

/// Errors raised by the umup runtime.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two tensors that must agree on a dimension do not.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch {
        /// The op or function that found the mismatch.
        op: &'static str,
        /// What was expected and what was found.
        detail: String,
    },
    /// A token id is not a row of the embedding table.
    #[error("token id {id} at position {position} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The offending id.
        id: usize,
        /// Its flat position in the id tensor.
        position: usize,
        /// The vocabulary size (rows of the table).
        vocab: usize,
    },
    /// A class target is not a valid class index.
    #[error("class target {target} at row {row} is out of range for {classes} classes")]
    TargetOutOfRange {
        /// The offending target.
        target: usize,
        /// The row that holds it.
        row: usize,
        /// The number of classes (last dim of the logits).
        classes: usize,
    },
    /// A constraint name that is not one of the reference library's names.
    #[error("unknown constraint `{0}`; expected one of: none, gmean, hmean, amean, to_output_scale, to_grad_input_scale, to_left_grad_scale, to_right_grad_scale")]
    UnknownConstraint(String),
    /// A constraint that needs more scales than the op has (e.g. `to_grad_input_scale` on a unary scale set).
    #[error("constraint `{constraint}` needs at least {needed} scales, got {got}")]
    ConstraintArity {
        /// The constraint's name.
        constraint: &'static str,
        /// How many scales it needs.
        needed: usize,
        /// How many were given.
        got: usize,
    },
    /// A scale, multiplier or hyperparameter that is NaN, infinite, or out of its valid range.
    #[error("invalid value for {what}: {value} ({reason})")]
    InvalidValue {
        /// The name of the value.
        what: &'static str,
        /// The value given.
        value: f64,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A name (format, optimizer, role, reduction, ...) that is not known.
    #[error("unknown {kind} `{name}`; expected one of: {expected}")]
    UnknownName {
        /// What kind of name it is.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// A parameter tensor that has no u-μP role (and the caller did not opt in to raw parameters).
    #[error("parameter `{path}` has no u-μP role; give it a role or allow non-u-μP parameters explicitly")]
    MissingRole {
        /// The tensor path, e.g. `layers.0.fc1.weight`.
        path: String,
    },
    /// A parameter shape the rules cannot handle (e.g. a 4-D weight for the fan-in rule).
    #[error("parameter `{path}`: {reason}")]
    BadParameter {
        /// The tensor path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An error from the dfdx device (allocation failure, CUDA error, ...).
    #[error("device error: {0}")]
    Device(String),
    /// Training produced a non-finite loss.
    #[error("the loss became {loss} at step {step}; training stopped. The last good checkpoint is {checkpoint}; metrics up to the failing step are kept. Resume from the checkpoint with a lower learning rate")]
    Diverged {
        /// The step whose loss was not finite.
        step: usize,
        /// The loss value (NaN or ±inf).
        loss: f64,
        /// Where the last good checkpoint is.
        checkpoint: String,
    },
    /// An invalid setting (a command-line flag, a training configuration).
    #[error("{0}")]
    Invalid(String),
    /// A malformed conformance fixture or other input file.
    #[error("bad input file: {0}")]
    BadInput(String),
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a device error (any dfdx `D::Err`).
    pub fn device(e: impl fmt::Display) -> Self {
        Error::Device(e.to_string())
    }
}

/// Converts device results (`Result<T, D::Err>`) into [`Result<T>`].
pub trait DeviceResultExt<T> {
    /// Maps the device error into [`Error::Device`].
    fn dev(self) -> Result<T>;
}

impl<T, E: fmt::Display> DeviceResultExt<T> for std::result::Result<T, E> {
    fn dev(self) -> Result<T> {
        self.map_err(Error::device)
    }
}

/// Checks that a host-side scale or hyperparameter is finite (and, where asked, positive).
pub fn check_finite(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::InvalidValue {
            what,
            value,
            reason: "must be finite",
        })
    }
}

/// Checks that a value is finite and strictly positive.
pub fn check_positive(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::InvalidValue {
            what,
            value,
            reason: "must be finite and > 0",
        })
    }
}

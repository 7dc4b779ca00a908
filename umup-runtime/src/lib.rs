//! # umup-runtime
//!
//! The runtime half of [umup](https://docs.rs/umup): u-μP (the Unit-Scaled Maximal Update
//! Parametrization, Blake et al. 2024) on [`dfdx`].
//!
//! * [`constraint`]: the scale constraints (`gmean`, `to_output_scale`, ...), spec §1.2.
//! * [`scales`]: every scale rule of every op, computed in one place (spec §1–§4).
//! * [`ops`]: unit-scaled ops on dfdx tensors, generic over dtype and device, with custom
//!   backward scales (spec §1.1, §4); each op runs its device's kernel through [`ops::Backend`]
//!   (`Cpu`: tape ops over the slice kernels of [`ops::cpu`]; other devices: the op's
//!   composition of public dfdx ops, [`ops::generic`]).
//! * [`profile`]: an opt-in per-op wall-clock breakdown of the `Cpu` kernels.
//! * [`params`]: parameter roles and the per-parameter learning-rate and weight-decay rules
//!   (spec §2, §7).
//! * [`optim`]: Adam, AdamW and SGD with per-parameter LR multipliers, LR schedules and
//!   gradient clipping (spec §7).
//! * [`nn`]: layer types with their role and parametrization in their type, depth stacks,
//!   the parameter table, and the parametrization-aware forward pieces (what `#[umup_model]`
//!   generates code for).
//! * [`formats`]: FP8 (OCP and the reference's simulation formats), f16 and bf16 rounding (spec §8).
//! * [`analysis`]: scale tracking (RMS of every parameter, activation and gradient).
//! * [`tape`]: `share`/`fork` handles of one tensor and `traced_like` for a second input, so
//!   that skip connections, shared inputs and position ids read like the math.
//! * [`checkpoint`]: safetensors checkpoints with the u-μP metadata.
//! * [`threads`]: the calling thread as one of the `Cpu` kernels' threads (call [`threads::init`]
//!   first thing in `main`).
//! * [`walk`]: every tensor of a model by its dotted path, read-only or mutable.
//! * [`conformance`]: a runner for the reference library's float64 fixture files.
//!
//! The reference is the Python library `unit-scaling` 0.3.5; `spec §N` in these docs refers to
//! the project's normative specification of it (`UMUP.md`).
// `deny`, not `forbid`: `ops::cpu::gemm` (the bounds-checked front end to the `gemm` crate) and
// `ops::cuda` (the launch front end of umup's CUDA kernels, `cuda` feature) are the only modules
// allowed to use `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]
// Tensor types with const-generic shapes, dtype, device and tape are long by nature.
#![allow(clippy::type_complexity)]

pub mod analysis;
pub mod checkpoint;
pub mod conformance;
pub mod constraint;
pub mod error;
pub mod formats;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod profile;
pub mod scales;
pub mod tape;
pub mod threads;
pub mod walk;

pub use constraint::Constraint;
pub use error::{Error, Result};
pub use ops::Backend;

/// Re-export of the dfdx version this runtime is built on.
pub use dfdx;
#[doc(hidden)]
pub use rand_distr;

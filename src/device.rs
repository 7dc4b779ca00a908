//! The devices a training run can use: `Cpu` always, `Cuda` with the `cuda` feature.
//!
//! [`DeviceKind`] is the run-time choice (`--device cpu|cuda`); [`TrainDevice`] is what the
//! training loop needs from a dfdx device, including a way to open it that returns an error
//! instead of panicking when there is no GPU.

use std::fmt;
use std::str::FromStr;

use dfdx::prelude::*;

use crate::ops::Backend;
use crate::{Error, Result};

/// Which device a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// dfdx's `Cpu` (umup's `Cpu` kernels behind every op).
    #[default]
    Cpu,
    /// dfdx's `Cuda`, GPU 0 (needs the `cuda` feature).
    Cuda,
}

impl DeviceKind {
    /// `"cpu"` or `"cuda"`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// Whether this build can run on the device (`Cuda` needs the `cuda` feature).
    pub fn compiled(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The error for a device this build cannot use.
    pub(crate) fn not_compiled(self) -> Error {
        Error::Invalid(format!(
            "--device {} needs a build with the `{}` feature (e.g. `cargo run --release \
             --features cuda --example train_lm -- --device cuda`)",
            self.name(),
            self.name()
        ))
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(Error::UnknownName {
                kind: "device",
                name: other.to_string(),
                expected: "cpu, cuda",
            }),
        }
    }
}

/// A dfdx device the training loop runs on, in f32 and (for mixed precision, `--precision f16`)
/// in f16.
pub trait TrainDevice:
    Backend<f32> + Backend<dfdx::dtypes::f16> + Storage<usize> + Cache + 'static
{
    /// Which device this is.
    const KIND: DeviceKind;

    /// Opens the device with its random generator seeded by `seed`.
    fn open(seed: u64) -> Result<Self>;
}

impl TrainDevice for Cpu {
    const KIND: DeviceKind = DeviceKind::Cpu;

    fn open(seed: u64) -> Result<Self> {
        Ok(Cpu::seed_from_u64(seed))
    }
}

#[cfg(feature = "cuda")]
impl TrainDevice for Cuda {
    const KIND: DeviceKind = DeviceKind::Cuda;

    /// Opens GPU 0. cudarc 0.9 *panics* (rather than returning an error) when the driver finds
    /// no device, so the panic is caught here and its message returned as an error; the panic
    /// hook is silenced for the duration of the call.
    fn open(seed: u64) -> Result<Self> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| Cuda::try_build(0, seed));
        std::panic::set_hook(hook);
        match opened {
            Ok(Ok(dev)) => Ok(dev),
            Ok(Err(e)) => Err(Error::device(format!("cannot open CUDA device 0: {e:?}"))),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown reason");
                Err(Error::device(format!(
                    "cannot open CUDA device 0 (no usable driver or GPU): {why}"
                )))
            }
        }
    }
}

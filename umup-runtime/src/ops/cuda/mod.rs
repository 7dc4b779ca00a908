//! The `Cuda` launch front end: umup's own CUDA kernels (`elementwise.cu`), compiled at run time
//! with NVRTC on first use per device (as dfdx compiles some of its own), and launched on
//! gradient buffers.
//!
//! dfdx 0.13 keeps a tensor's device buffer private and has no custom-op API (DFDX_NOTES §2), but
//! it lends the buffers of a [`Gradients`](dfdx::prelude::Gradients) store
//! (`get_or_alloc_mut`, a `CachableCudaSlice` that derefs to cudarc's `CudaSlice`). So the
//! `Cuda` kernels here are the backward passes of ops whose backward needs only gradients (the
//! scale primitive, the scaled adds) and in-place updates of a parameter's gradient; their
//! forward passes are single dfdx kernels. `tools/cuda/nvrtc_check.py` compiles the sources
//! without a GPU.
//!
//! # Safety
//! A CUDA launch is `unsafe` in cudarc: the driver cannot check a kernel's arguments against its
//! signature or its accesses against the buffers. This module is the one place that launches
//! (the `Cpu` side's only other `unsafe` is the gemm front end): each launch passes the
//! arguments of its `extern "C"` signature in `elementwise.cu`, in order and with those types
//! ([`CudaElem::Scalar`] is `float` for f16), and every buffer it passes holds at least the `n`
//! elements the kernel touches (checked before the launch).
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{
    CudaDevice, CudaFunction, CudaSlice, DeviceRepr, DeviceSlice, DriverError, LaunchAsync,
    LaunchConfig,
};
use dfdx::prelude::*;
use dfdx::tensor::{CudaError, Storage};

/// The module name the kernels are loaded under on a device.
const MODULE: &str = "umup_elementwise";
/// The kernel sources (NVRTC, no headers).
const SRC: &str = include_str!("elementwise.cu");
/// Every kernel in [`SRC`], loaded together.
const KERNELS: [&str; 6] = [
    "umup_axpy_f32",
    "umup_axpy_f64",
    "umup_axpy_f16",
    "umup_scal_f32",
    "umup_scal_f64",
    "umup_scal_f16",
];
/// Threads per block of every launch.
const BLOCK: u32 = 256;
/// Most blocks per launch (the kernels are grid-stride loops).
const MAX_GRID: u32 = 4096;

/// A dtype the `Cuda` kernels run on: its kernel-name suffix and the type the kernels take
/// scales in (f32 for f16: the f16 kernels compute in f32).
pub(crate) trait CudaElem: Dtype + DeviceRepr {
    /// The suffix of this dtype's kernels (`umup_axpy_<NAME>`).
    const NAME: &'static str;
    /// The scale argument's type.
    type Scalar: DeviceRepr;
    /// A scale as the kernels take it.
    fn scalar(self) -> Self::Scalar;
}

impl CudaElem for f32 {
    const NAME: &'static str = "f32";
    type Scalar = f32;
    fn scalar(self) -> f32 {
        self
    }
}

impl CudaElem for f64 {
    const NAME: &'static str = "f64";
    type Scalar = f64;
    fn scalar(self) -> f64 {
        self
    }
}

impl CudaElem for half::f16 {
    const NAME: &'static str = "f16";
    type Scalar = f32;
    fn scalar(self) -> f32 {
        self.to_f32()
    }
}

/// A gradient buffer of `Cuda` as cudarc's slice. Bounded by `E: CudaElem` only (not
/// `Cuda: Device<E>`), so the compiler normalises `<Cuda as Storage<E>>::Vec`.
pub(crate) fn slice<E: CudaElem>(v: &mut <Cuda as Storage<E>>::Vec) -> &mut CudaSlice<E> {
    v
}

/// Moves a gradient buffer's data out, leaving an empty slice (put it back with [`put`]): dfdx
/// lends one gradient buffer at a time, and a kernel that reads one while writing another needs
/// both.
pub(crate) fn take<E: CudaElem>(
    v: &mut <Cuda as Storage<E>>::Vec,
) -> Result<CudaSlice<E>, CudaError> {
    let dev = v.device();
    Ok(std::mem::replace(&mut **v, dev.null()?))
}

/// Puts data moved out by [`take`] back into its gradient buffer.
pub(crate) fn put<E: CudaElem>(v: &mut <Cuda as Storage<E>>::Vec, data: CudaSlice<E>) {
    **v = data;
}

/// The kernel `name`, compiling and loading [`SRC`] on first use on `dev`.
fn kernel(dev: &Arc<CudaDevice>, name: &str) -> Result<CudaFunction, CudaError> {
    if !dev.has_func(MODULE, name) {
        let ptx = cudarc::nvrtc::compile_ptx(SRC).map_err(|e| {
            // Our own fixed source failed to compile: an NVRTC/driver mismatch. The driver error
            // below is all dfdx's error type can carry, so the compiler's log goes to stderr.
            eprintln!("umup: NVRTC could not compile ops/cuda/elementwise.cu: {e:?}");
            DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_SOURCE)
        })?;
        dev.load_ptx(ptx, MODULE, &KERNELS)?;
    }
    dev.get_func(MODULE, name)
        .ok_or(CudaError::Driver(DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND,
        )))
}

/// A grid covering `n` elements (at most [`MAX_GRID`] blocks; the kernels stride).
fn config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).min(MAX_GRID as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Errors unless two buffers have the lengths a kernel expects.
fn check_len(got: usize, expected: usize) -> Result<(), CudaError> {
    if got == expected {
        Ok(())
    } else {
        Err(CudaError::Driver(DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE,
        )))
    }
}

/// `acc[i] += s·x[i]` over equal-length buffers, one launch.
pub(crate) fn axpy<E: CudaElem>(
    acc: &mut CudaSlice<E>,
    x: &CudaSlice<E>,
    s: E,
) -> Result<(), CudaError> {
    let n = acc.len();
    check_len(x.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = kernel(&acc.device(), &format!("umup_axpy_{}", E::NAME))?;
    // SAFETY: `umup_axpy_<E>(n, s, x, acc)` reads `x[..n]` and read-writes `acc[..n]`; both hold
    // `n` elements (checked above) and the arguments match its signature (module docs).
    unsafe { f.launch(config(n), (n, s.scalar(), x, acc)) }?;
    Ok(())
}

/// `x[i] *= s` in place, one launch.
pub(crate) fn scal<E: CudaElem>(x: &mut CudaSlice<E>, s: E) -> Result<(), CudaError> {
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let f = kernel(&x.device(), &format!("umup_scal_{}", E::NAME))?;
    // SAFETY: `umup_scal_<E>(n, s, x)` read-writes `x[..n]`, and `x` holds `n` elements; the
    // arguments match its signature (module docs).
    unsafe { f.launch(config(n), (n, s.scalar(), x)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel sources compile with cudarc's NVRTC, and every kernel the launches name is in
    /// the PTX. Runs without a GPU (NVRTC needs no driver) where the `cuda` feature links, e.g. in
    /// `tools/cuda/build.sh`'s toolkit; CI only type-checks it.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let ptx = cudarc::nvrtc::compile_ptx(SRC)
            .expect("elementwise.cu compiles")
            .to_src();
        for name in KERNELS {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{name} missing from the PTX"
            );
        }
        for dtype in [f32::NAME, f64::NAME, half::f16::NAME] {
            for op in ["axpy", "scal"] {
                let name = format!("umup_{op}_{dtype}");
                assert!(KERNELS.contains(&name.as_str()), "{name} not in KERNELS");
            }
        }
    }
}

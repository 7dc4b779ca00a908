//! Plumbing between dfdx's `Cpu` tensors and the slice kernels of [`super::cpu`]: buffers from
//! the device's allocator, copies of tensor data, and gradient-buffer access inside backward ops.
//!
//! dfdx 0.13 lends no view of a tensor's data, so a `Cpu` kernel copies each input it reads into
//! a [`Buf`] (one `memcpy`, timed as [`Part::Copies`](crate::profile::Part::Copies)) and builds its
//! output tensor from a buffer it filled. Buffers come from the device's allocator
//! (`Storage::try_alloc_len`), so with dfdx's allocation cache enabled they are taken from and
//! returned to the cache like dfdx's own: an output's buffer is detached from its cache handle
//! and moved into the output tensor, which gives it back to the cache when dropped.
//!
//! dfdx's `Cpu` buffers are `<Cpu as Storage<E>>::Vec` (a caching wrapper around `Vec<E>`). Inside
//! an impl bounded by `Cpu: Device<E>` the compiler does not normalise that projection, so these
//! helpers, bounded only by `E: Dtype`, do the unwrapping.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use dfdx::prelude::*;
use dfdx::tensor::{CpuError, Storage};

use crate::profile::{time, Part};

/// `acc[i] += s·x[i]`.
///
/// Single-threaded on purpose: the loop is memory-bound, and splitting it across threads
/// measured 1.5× slower on 2 cores (first-touch page faults of fresh gradient buffers contend).
pub(crate) fn axpy<E: Dtype>(acc: &mut [E], x: &[E], s: E) {
    debug_assert_eq!(acc.len(), x.len());
    crate::ops::cpu::simd(
        #[inline(always)]
        || {
            if s == E::ONE {
                acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
            } else {
                acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b * s);
            }
        },
    )
}

static KEEP: AtomicBool = AtomicBool::new(false);

/// Whether the gradient of every op output is kept until the end of the backward pass (`true`)
/// or freed as soon as the op that produced the output has used it (`false`, the default).
///
/// With the default, a `Cpu` kernel gives its output's gradient back to the device's allocation
/// cache (frees it, without the cache) inside its own backward op: every
/// consumer of the output has run by then (dfdx runs backward ops in reverse creation order), so
/// nothing reads it again during the pass, and the step needs less memory and memory traffic
/// (one activation-sized buffer per op less at the end of the pass). The gradients of inputs
/// you trace and of parameters are always complete; only the gradient of an *op output* read
/// from a leaky `Gradients` after `backward` is empty. Set `true` to read those (analysis code).
/// Process-wide.
pub fn keep_intermediate_gradients(keep: bool) {
    KEEP.store(keep, Ordering::Relaxed);
}

/// Whether [`keep_intermediate_gradients`] is set.
pub(crate) fn keeping() -> bool {
    KEEP.load(Ordering::Relaxed)
}

/// Ends an op's use of its output gradient `data` (moved out of `slot` by [`take`]): puts it
/// back when [`keep_intermediate_gradients`] is set, hands it to [`recycle`] otherwise.
pub(crate) fn done<E: Dtype>(dev: &Cpu, slot: &mut <Cpu as Storage<E>>::Vec, data: Vec<E>) {
    if keeping() {
        put::<E>(slot, data);
    } else {
        recycle(dev, data);
    }
}

/// Gives a buffer back to the device's allocation cache, where the next allocation of its size
/// (often the next op's input gradient, in the same backward pass) takes it; frees it when the
/// cache is off. Freed to `malloc` instead, an activation-sized buffer above glibc's `mmap`
/// threshold is unmapped, and the next one of its size is mapped and faulted in again, page by
/// page.
pub(crate) fn recycle<E: Dtype>(dev: &Cpu, data: Vec<E>) {
    let n = data.len();
    // A tensor built from the vector owns it as a cached buffer: dropping the tensor files it.
    drop(dev.try_tensor_from_vec(data, (n,)));
}

/// Moves the data out of a gradient buffer, leaving it empty (see [`put`]).
pub(crate) fn take<E: Dtype>(v: &mut <Cpu as Storage<E>>::Vec) -> Vec<E> {
    std::mem::take(&mut **v)
}

/// Moves data back into a gradient buffer emptied by [`take`].
pub(crate) fn put<E: Dtype>(v: &mut <Cpu as Storage<E>>::Vec, data: Vec<E>) {
    **v = data;
}

/// Borrows a gradient buffer as a slice.
pub(crate) fn slice_mut<E: Dtype>(v: &mut <Cpu as Storage<E>>::Vec) -> &mut [E] {
    v.as_mut_slice()
}

/// A buffer of the `Cpu` device (from its allocation cache when that is enabled).
pub(crate) struct Buf<E: Dtype>(<Cpu as Storage<E>>::Vec);

impl<E: Dtype> Buf<E> {
    /// `len` zeros.
    pub(crate) fn zeros(dev: &Cpu, len: usize) -> Result<Self, CpuError> {
        Ok(Buf(dev.try_alloc_len(len)?))
    }

    /// A copy of a contiguous tensor's data (callers make inputs contiguous first).
    pub(crate) fn of<S: Shape, T>(t: &Tensor<S, E, Cpu, T>) -> Result<Self, CpuError> {
        let mut b = Self::zeros(t.device(), t.shape().num_elements())?;
        time(Part::Copies, || t.copy_into(&mut b));
        Ok(b)
    }

    /// The buffer as a tensor of `shape` (the data moves; the tensor returns it to the cache).
    pub(crate) fn into_tensor<S: Shape>(
        mut self,
        dev: &Cpu,
        shape: S,
    ) -> Result<Tensor<S, E, Cpu>, CpuError> {
        dev.try_tensor_from_vec(std::mem::take(&mut *self.0), shape)
    }
}

impl<E: Dtype> Deref for Buf<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        self.0.as_slice()
    }
}

impl<E: Dtype> DerefMut for Buf<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        self.0.as_mut_slice()
    }
}

/// A taped input made contiguous (free when it already is; otherwise dfdx copies it, with the
/// gradient routed back), split from its tape.
pub(crate) fn input<S: Shape, E: Dtype, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
) -> Result<(Tensor<S, E, Cpu>, T), CpuError> {
    Ok(x.try_contiguous()?.split_tape())
}

/// A layer's input, weight and optional bias as contiguous inputs (see [`input`]), with their
/// tapes merged into one.
#[allow(clippy::type_complexity)]
pub(crate) fn layer_inputs<X: Shape, W: Shape, B: Shape, E: Dtype, T: Tape<E, Cpu> + Merge<T>>(
    x: Tensor<X, E, Cpu, T>,
    weight: Tensor<W, E, Cpu, T>,
    bias: Option<Tensor<B, E, Cpu, T>>,
) -> Result<
    (
        Tensor<X, E, Cpu>,
        Tensor<W, E, Cpu>,
        Option<Tensor<B, E, Cpu>>,
        T,
    ),
    CpuError,
> {
    let (x, tape) = input(x)?;
    let (w, wtape) = input(weight)?;
    let mut tape = tape.merge(wtape);
    let b = match bias {
        Some(b) => {
            let (b, btape) = input(b)?;
            tape = tape.merge(btape);
            Some(b)
        }
        None => None,
    };
    Ok((x, w, b, tape))
}

/// A parameter as a contiguous input whose gradient flows through a `T` tape (merge the
/// returned tape into the op's).
pub(crate) fn param<S: Shape, E: Dtype, T: Tape<E, Cpu>>(
    p: &Tensor<S, E, Cpu>,
) -> Result<(Tensor<S, E, Cpu>, T), CpuError> {
    input(p.retaped::<T>())
}

/// `grads[t] += s·x` for a tensor's ghost (allocating the buffer on first use).
macro_rules! accumulate {
    ($grads:expr, $ghost:expr, $x:expr, $s:expr) => {{
        let g = $crate::ops::kernels::slice_mut($grads.get_or_alloc_mut(&$ghost)?);
        $crate::ops::kernels::axpy(g, $x, $s);
    }};
}
pub(crate) use accumulate;

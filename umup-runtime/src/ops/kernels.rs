//! Small CPU kernels shared by the fused ops.

use dfdx::prelude::Dtype;

/// `acc[i] += s·x[i]`.
///
/// Single-threaded on purpose: the loop is memory-bound, and splitting it across threads
/// measured 1.5× slower on 2 cores (first-touch page faults of fresh gradient buffers contend).
pub(crate) fn axpy<E: Dtype>(acc: &mut [E], x: &[E], s: E) {
    debug_assert_eq!(acc.len(), x.len());
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b * s);
}

// dfdx's `Cpu` buffers are `<Cpu as Storage<E>>::Vec` (a caching wrapper around `Vec<E>`). Inside
// an impl bounded by `Cpu: Device<E>` the compiler does not normalise that projection, so these
// helpers, bounded only by `E: Dtype`, do the unwrapping.

/// Moves the data out of a gradient buffer, leaving it empty (see [`put`]).
pub(crate) fn take<E: Dtype>(
    v: &mut <dfdx::tensor::Cpu as dfdx::tensor::Storage<E>>::Vec,
) -> Vec<E> {
    std::mem::take(&mut **v)
}

/// Moves data back into a gradient buffer emptied by [`take`].
pub(crate) fn put<E: Dtype>(
    v: &mut <dfdx::tensor::Cpu as dfdx::tensor::Storage<E>>::Vec,
    data: Vec<E>,
) {
    **v = data;
}

/// Borrows a gradient buffer as a slice.
pub(crate) fn slice_mut<E: Dtype>(
    v: &mut <dfdx::tensor::Cpu as dfdx::tensor::Storage<E>>::Vec,
) -> &mut [E] {
    v.as_mut_slice()
}

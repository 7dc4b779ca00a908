//! A bounds-checked, safe front end to the `gemm` crate.
//!
//! This is the one module of umup that contains `unsafe` code: `gemm::gemm` takes raw pointers
//! and strides. [`gemm`] checks, before the call, that every element the strides can reach lies
//! inside the slices it was given, that the shapes agree, and Rust's borrow rules already
//! guarantee that the destination (`&mut`) does not alias the inputs (`&`). Under those
//! conditions the call reads and writes only inside the given slices.
#![allow(unsafe_code)]

use super::Real;

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a, E> {
    /// The backing elements.
    pub data: &'a [E],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, E> View<'a, E> {
    /// A row-major `rows × cols` matrix (`rs = cols`, `cs = 1`).
    pub fn rows(data: &'a [E], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A `rows × cols` block with row stride `rs` starting at `offset` (a column block of a
    /// wider row-major matrix).
    pub fn block(data: &'a [E], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data: data.get(offset..).unwrap_or(&[]),
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn in_bounds(&self) -> bool {
        reach(self.rows, self.cols, self.rs, self.cs).is_none_or(|last| last < self.data.len())
    }
}

/// A writable strided matrix view (see [`View`]).
#[derive(Debug)]
pub struct ViewMut<'a, E> {
    /// The backing elements.
    pub data: &'a mut [E],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, E> ViewMut<'a, E> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a mut [E], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A `rows × cols` block with row stride `rs` starting at `offset`.
    pub fn block(data: &'a mut [E], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        let data = match data.get_mut(offset..) {
            Some(d) => d,
            None => &mut [],
        };
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    fn in_bounds(&self) -> bool {
        reach(self.rows, self.cols, self.rs, self.cs).is_none_or(|last| last < self.data.len())
    }
}

/// The largest offset a `rows × cols` view with these strides touches (`None` when empty).
fn reach(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return None;
    }
    let r = (rows - 1).checked_mul(rs)?;
    let c = (cols - 1).checked_mul(cs)?;
    // Overflow would make the view unaddressable: report it as out of bounds.
    Some(r.saturating_add(c))
}

/// How many threads a matmul may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (inside work that is already parallel).
    One,
    /// rayon's pool.
    All,
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`.
///
/// # Panics
/// If the shapes disagree or a view reaches outside its slice: a bug in the calling kernel,
/// never a consequence of user input (the ops check user shapes before calling a kernel).
pub fn gemm<E: Real>(
    dst: ViewMut<'_, E>,
    accumulate: bool,
    lhs: View<'_, E>,
    rhs: View<'_, E>,
    scale: E,
    threads: Threads,
) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "gemm: [{}x{}] = [{}x{}]·[{}x{}]",
        dst.rows,
        dst.cols,
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    assert!(
        dst.in_bounds() && lhs.in_bounds() && rhs.in_bounds(),
        "gemm: a view reaches outside its slice"
    );
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = E::zero();
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    let isz = |v: usize| v as isize;
    // SAFETY: the asserts above establish that every index `i·rs + j·cs` the kernel forms
    // (i < rows, j < cols) lies inside the corresponding slice; strides are non-negative and
    // fit in isize (they are bounded by the slice lengths). `dst` is a unique borrow, so it does
    // not overlap `lhs` or `rhs`. `E` is f32 or f64 ([`Real`] is sealed to them), the types the
    // `gemm` crate dispatches on.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            isz(dst.cs),
            isz(dst.rs),
            accumulate,
            lhs.data.as_ptr(),
            isz(lhs.cs),
            isz(lhs.rs),
            rhs.data.as_ptr(),
            isz(rhs.cs),
            isz(rhs.rs),
            E::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_transposes_blocks_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1.0; m * n];
        gemm(
            ViewMut::rows(&mut c, m, n),
            true,
            View::rows(&a, m, k),
            View::rows(&b, k, n),
            2.0,
            Threads::All,
        );
        for (x, w) in c.iter().zip(&want) {
            assert!((x - (1.0 + 2.0 * w)).abs() < 1e-12);
        }
        // bᵀ stored row-major as [n, k], read through a transposed view.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c2 = vec![9.0; m * n];
        gemm(
            ViewMut::rows(&mut c2, m, n),
            false,
            View::rows(&a, m, k),
            View::rows(&bt, n, k).t(),
            1.0,
            Threads::One,
        );
        for (x, w) in c2.iter().zip(&want) {
            assert!((x - w).abs() < 1e-12);
        }
        // A column block of a wider matrix: columns 2..5 of a [m, 8] matrix.
        let wide: Vec<f64> = (0..m * 8).map(|i| i as f64).collect();
        let blk = View::block(&wide, 2, m, 3, 8);
        let eye: Vec<f64> = (0..9).map(|i| if i % 4 == 0 { 1.0 } else { 0.0 }).collect();
        let mut c3 = vec![0.0; m * 3];
        gemm(
            ViewMut::rows(&mut c3, m, 3),
            false,
            blk,
            View::rows(&eye, 3, 3),
            1.0,
            Threads::One,
        );
        for i in 0..m {
            for j in 0..3 {
                assert_eq!(c3[i * 3 + j], wide[i * 8 + 2 + j]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn refuses_a_view_past_the_end() {
        let a = vec![0f32; 6];
        let mut c = vec![0f32; 4];
        gemm(
            ViewMut::rows(&mut c, 2, 2),
            false,
            View::rows(&a, 2, 4),
            View::rows(&a, 4, 2),
            1.0,
            Threads::One,
        );
    }
}

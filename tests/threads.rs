//! `umup::threads::init`: the calling thread becomes one of rayon's pool threads, once. A binary
//! of its own: the global pool is built once per process.

use umup::ops::cpu::norm_fwd;

#[test]
fn init_makes_the_caller_a_pool_thread_once() {
    assert_eq!(umup::threads::init(2).unwrap(), 2);

    // The kernels' parallel loops run with the caller in the pool: an RMSNorm over 64 rows of
    // 1024 (four parallel tasks) gives every row's analytic value.
    let (rows, width) = (64, 1024);
    let x: Vec<f64> = (0..rows * width).map(|i| (i % 5) as f64 - 2.0).collect();
    let (mut y, mut inv, mut mean) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
    norm_fwd(
        &x, width, 0.0, false, None, None, &mut y, &mut inv, &mut mean,
    );
    for (r, (&ir, yr)) in inv.iter().zip(y.chunks(width)).enumerate() {
        let row = &x[r * width..(r + 1) * width];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / width as f64;
        assert!((ir - 1.0 / ms.sqrt()).abs() < 1e-12, "row {r}");
        for (a, b) in yr.iter().zip(row) {
            assert!((a - b / ms.sqrt()).abs() < 1e-12);
        }
    }

    // The pool exists now: a second call is an error that says where to call it.
    let e = umup::threads::init(2).unwrap_err().to_string();
    assert!(e.contains("first thing in main"), "{e}");
}

//! Compile-time probe: the 4-layer transformer LM instantiated at four widths (each width is a
//! separate monomorphisation), one training step each. See BENCHMARKS.md for the measured build
//! times and the share of macro expansion.
//!
//! ```text
//! cargo run --release --example compile_widths
//! ```

use umup::dfdx::prelude::*;
use umup::models::Lm;
use umup::models::LmOptions;
use umup::nn::{Hyper, Umup};
use umup::optim::{OptimConfig, Optimizer};

fn step<const D: usize, const F: usize>() -> umup::Result<f32> {
    let dev = Cpu::seed_from_u64(0);
    let mut m = Lm::<D, F, 4, Umup>::build(&dev)?;
    let mut opt = Optimizer::for_table(
        OptimConfig::adamw(1.0),
        &Lm::<D, F, 4, Umup>::param_table()?,
    )?;
    let ids: Vec<usize> = (0..64).map(|i| (i * 7) % 256).collect();
    let x = dev.tensor_from_vec(ids.clone(), (64,));
    let opts = LmOptions {
        heads: 1,
        rope: false,
    };
    let loss = m.loss(
        x.leaky_trace(),
        &ids,
        (2, 32),
        &Hyper::default(),
        &opts,
        None,
    )?;
    let v = loss.array();
    let mut g = loss.backward();
    opt.update(&mut m, &mut g)?;
    Ok(v)
}

fn main() -> umup::Result<()> {
    for (w, l) in [
        (64, step::<64, 256>()?),
        (128, step::<128, 512>()?),
        (256, step::<256, 1024>()?),
        (512, step::<512, 2048>()?),
    ] {
        println!(
            "width {w}: loss at init {l:.4} (ln 256 = {:.4})",
            256f32.ln()
        );
    }
    Ok(())
}

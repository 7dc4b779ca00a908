//! The fused CPU path against the device-generic composition of umup's ops: every fused kernel
//! on random inputs (several shapes, causal and not) and the whole LM (loss and every parameter
//! gradient, all three parametrizations, non-default α's).

use umup::dfdx::prelude::*;
use umup::models::{LmOptions, TransformerLm};
use umup::nn::{Hyper, Mup, Param, Sp, Umup};

/// `max|a − b| / max|b|`: the error relative to the tensor's scale.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "reference tensor is all zeros");
    err / scale
}

fn hyper() -> Hyper {
    Hyper {
        eta: 1.0,
        alpha_ffn_act: 1.7,
        alpha_attn_softmax: 0.6,
        alpha_res: 1.3,
        alpha_res_attn_ratio: 0.8,
        alpha_loss_softmax: 1.4,
    }
}

type Model<E, P> = TransformerLm<64, 32, 96, 2, E, Cpu, P>;

/// Loss and every parameter gradient, fused (`loss`) or generic (`loss_generic`).
fn run<E, P>(m: &Model<E, P>, fused: bool, batch: usize, seq: usize) -> Vec<Vec<f64>>
where
    E: Dtype,
    P: Param,
    Cpu: Device<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    let n = batch * seq;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 11) % 64).collect();
    let targets: Vec<usize> = (0..n).map(|i| (i * 13 + 5) % 64).collect();
    let dev = m.embed.weight.device().clone();
    let x = dev.tensor_from_vec(ids, (n,)).traced(m.alloc_grads());
    let opts = LmOptions {
        heads: 4,
        rope: false,
    };
    let loss = if fused {
        m.loss(x, &targets, (batch, seq), &hyper(), &opts, None)
    } else {
        m.loss_generic(x, &targets, (batch, seq), &hyper(), &opts, None)
    }
    .unwrap();
    let value = loss.array().to_f64().unwrap();
    let grads = loss.backward();
    let f = |v: Vec<E>| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let mut out = vec![vec![value], f(grads.get(&m.embed.weight).as_vec())];
    for l in m.layers.iter() {
        for w in [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o] {
            out.push(f(grads.get(&w.weight).as_vec()));
        }
        for w in [&l.mlp.up, &l.mlp.gate] {
            out.push(f(grads.get(&w.weight).as_vec()));
        }
        out.push(f(grads.get(&l.mlp.down.weight).as_vec()));
    }
    out.push(f(grads.get(&m.readout.weight).as_vec()));
    out
}

fn whole_model<E, P>(tol: f64)
where
    E: Dtype,
    P: Param,
    Cpu: Device<E>,
    umup::rand_distr::StandardNormal: umup::rand_distr::Distribution<E>,
{
    let dev = Cpu::seed_from_u64(3);
    let m = Model::<E, P>::build(&dev).unwrap();
    let opts = LmOptions {
        heads: 4,
        rope: false,
    };
    assert!(Model::<E, P>::uses_fused_step::<OwnedTape<E, Cpu>>(
        &opts, false
    ));
    assert!(!Model::<E, P>::uses_fused_step::<OwnedTape<E, Cpu>>(
        &opts, true
    ));
    // seq 40: one full 32-row attention block and a partial one.
    for (batch, seq) in [(3, 40), (2, 7)] {
        let fused = run(&m, true, batch, seq);
        let generic = run(&m, false, batch, seq);
        for (i, (a, b)) in fused.iter().zip(&generic).enumerate() {
            let r = rel(a, b);
            assert!(
                r < tol,
                "{:?} batch {batch} seq {seq}: tensor {i} differs by {r:e} (relative)",
                P::parametrization()
            );
        }
    }
}

#[test]
fn whole_lm_f64_matches_the_generic_path() {
    whole_model::<f64, Umup>(1e-10);
    whole_model::<f64, Mup<16>>(1e-10);
    whole_model::<f64, Sp>(1e-10);
}

#[test]
fn whole_lm_f32_matches_the_generic_path() {
    whole_model::<f32, Umup>(1e-4);
    whole_model::<f32, Sp>(1e-4);
}

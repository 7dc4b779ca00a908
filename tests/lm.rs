//! The shipped transformer LM against the reference's `TransformerDecoder` numbers (spec §5, §7.3).

use umup::dfdx::prelude::*;
use umup::models::Lm;
use umup::models::LmOptions;
use umup::nn::{Hyper, Umup};

type Small = Lm<128, 512, 4, Umup>;

#[test]
fn lr_table_matches_the_reference_decoder_at_width_128_depth_4() {
    // Measured `uu.optim.AdamW(lr=1)` on TransformerDecoder(width 128, L=4) (spec §7.3).
    let t = Small::param_table().unwrap();
    let lr = |p: &str| t.get(p).unwrap_or_else(|| panic!("{p}")).adam_lr;
    // The reference values are printed to 6 decimals.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(close(lr("embed.weight"), 0.088388));
    for p in ["q", "k", "v", "o"] {
        assert!(close(lr(&format!("layers.2.attn.{p}.weight")), 0.044194));
    }
    for p in ["up", "gate"] {
        assert!(close(lr(&format!("layers.0.mlp.{p}.weight")), 0.044194));
    }
    assert!(close(lr("layers.3.mlp.down.weight"), 0.022097));
    assert_eq!(lr("readout.weight"), 1.0);
    // No biases, no gains: 1 + 4·7 + 1 tensors.
    assert_eq!(t.rows.len(), 30);
}

fn logits(rope: bool, ids: &[usize]) -> Vec<f32> {
    let dev = Cpu::seed_from_u64(5);
    let m = Small::build(&dev).unwrap();
    let x = dev.tensor_from_vec(ids.to_vec(), (ids.len(),));
    let opts = LmOptions { heads: 2, rope };
    m.logits(x, (1, ids.len()), &Hyper::default(), &opts, None)
        .unwrap()
        .as_vec()
}

#[test]
fn init_loss_is_ln_vocab_and_logits_are_small() {
    let dev = Cpu::seed_from_u64(9);
    let m = Small::build(&dev).unwrap();
    let ids: Vec<usize> = (0..4 * 64).map(|i| (i * 31 + 7) % 256).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i + 1) % 256).collect();
    let x = dev.tensor_from_vec(ids.clone(), (ids.len(),));
    let opts = LmOptions {
        heads: 2,
        rope: false,
    };
    let loss = m
        .loss(
            x.leaky_trace(),
            &targets,
            (4, 64),
            &Hyper::default(),
            &opts,
            None,
        )
        .unwrap();
    assert!((f64::from(loss.array()) - 256f64.ln()).abs() < 0.05);
    let grads = loss.backward();
    // Every tensor gets a finite, non-zero gradient.
    for g in [
        grads.get(&m.embed.weight).as_vec(),
        grads.get(&m.layers[3].attn.q.weight).as_vec(),
        grads.get(&m.readout.weight).as_vec(),
    ] {
        let rms = (g.iter().map(|v| v * v).sum::<f32>() / g.len() as f32).sqrt();
        assert!(rms.is_finite() && rms > 1e-3, "{rms}");
    }
    // Logits std ≈ 1/√width (spec §10).
    let l = m
        .logits(x, (4, 64), &Hyper::default(), &opts, None)
        .unwrap()
        .as_vec();
    let std = (l.iter().map(|v| v * v).sum::<f32>() / l.len() as f32).sqrt();
    assert!(
        std > 0.5 / 128f32.sqrt() && std < 2.0 / 128f32.sqrt(),
        "{std}"
    );
}

#[test]
fn rope_leaves_position_zero_alone_and_changes_the_rest() {
    let ids = [3usize, 17, 200, 42, 9, 77];
    let (a, b) = (logits(false, &ids), logits(true, &ids));
    // Position 0 attends only to itself, and a rotation by 0 is the identity.
    for (x, y) in a[..256].iter().zip(&b[..256]) {
        assert!((x - y).abs() < 1e-6);
    }
    let diff: f32 = a[256..]
        .iter()
        .zip(&b[256..])
        .map(|(x, y)| (x - y).abs())
        .sum();
    assert!(diff > 1e-3);
}

#[test]
fn bad_head_counts_are_errors() {
    let dev = Cpu::default();
    let m = Small::build(&dev).unwrap();
    for heads in [0, 3] {
        let x = dev.tensor_from_vec(vec![1usize, 2], (2,));
        let opts = LmOptions { heads, rope: false };
        assert!(m.logits(x, (1, 2), &Hyper::default(), &opts, None).is_err());
    }
    let x = dev.tensor_from_vec(vec![1usize, 2, 3], (3,));
    let opts = LmOptions {
        heads: 2,
        rope: false,
    };
    assert!(m.logits(x, (1, 2), &Hyper::default(), &opts, None).is_err());
}

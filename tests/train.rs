//! The training loop at a tiny size: bit-exact resume, divergence handling, output files.

use std::path::{Path, PathBuf};

use umup::data::{Corpus, MaskedTokens, NextToken, TokenCorpus};
use umup::device::DeviceKind;
use umup::family::{Family, Options};
use umup::models::{EncoderFamily, Lm, LmFamily};
use umup::nn::Umup;
use umup::train::{self, Precision, RunOptions, TrainConfig};

/// Windows of 16 bytes of a 45-byte cycle, next byte as target.
fn corpus() -> NextToken {
    let text: Vec<u8> = (0..20_000u32)
        .map(|i| b"the quick brown fox jumps over the lazy dog. "[(i % 45) as usize])
        .collect();
    NextToken::new(
        TokenCorpus::bytes(&Corpus::from_bytes(text, 0.1).unwrap()),
        16,
    )
}

/// The same text, masked (the encoder's task).
fn masked() -> MaskedTokens {
    MaskedTokens::new(corpus().corpus, 16, 0.15)
}

/// The final validation loss of the finished run of `cfg` in `out`.
fn finished(cfg: &TrainConfig, out: &Path) -> umup::Result<Option<f64>> {
    Ok(train::finished_result(cfg, out)?.map(|r| r.val_loss))
}

fn cfg() -> TrainConfig {
    TrainConfig {
        width: 64,
        depth: 2,
        options: Options::new().with("heads", 2),
        steps: 6,
        batch: 2,
        warmup: 2,
        eval_every: 3,
        eval_batches: 2,
        precision: Precision::Fp8Sim,
        ..TrainConfig::default()
    }
}

/// The ViT at width 32, depth 2, batch 16, f32, one warm-up step.
fn vit_cfg() -> TrainConfig {
    TrainConfig {
        model: "vit".into(),
        width: 32,
        depth: 2,
        options: Options::new(),
        batch: 16,
        warmup: 1,
        precision: Precision::F32,
        ..TrainConfig::default()
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umup-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts(out: &Path, resume: bool, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        stop_at,
        sample_len: 0,
        device: Default::default(),
    }
}

/// (step, tokens, train_loss, val_loss, lr) of every row: everything but the wall time.
fn rows(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(5).map(String::from).collect())
        .collect()
}

#[test]
fn stopping_and_resuming_gives_the_losses_of_an_uninterrupted_run() {
    let (c, cfg) = (corpus(), cfg());
    let a = dir("a");
    let full = LmFamily::train(&cfg, &c, &opts(&a, false, None), &mut |_| {}).unwrap();
    assert_eq!(full.step, 6);
    let l0 = full.initial_loss.unwrap();
    assert!((l0 - 256f64.ln()).abs() < 0.05, "step-0 loss {l0}");

    let b = dir("b");
    let half = LmFamily::train(&cfg, &c, &opts(&b, false, Some(3)), &mut |_| {}).unwrap();
    assert!(half.stopped && half.step == 3);
    // A run stopped early is not finished; a missing run neither.
    assert_eq!(finished(&cfg, &b).unwrap(), None);
    assert_eq!(finished(&cfg, &dir("none")).unwrap(), None);
    let rest = LmFamily::train(&cfg, &c, &opts(&b, true, None), &mut |_| {}).unwrap();
    assert_eq!(rest.step, 6);
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(ra[0], ["step", "tokens", "train_loss", "val_loss", "lr"]);
    assert_eq!(ra.len(), 8);
    assert_eq!(ra, rb, "resumed metrics differ");
    assert_eq!(full.final_val_loss, rest.final_val_loss);
    assert_eq!(finished(&cfg, &a).unwrap(), Some(full.final_val_loss));
    // The files the run promises.
    for f in [
        "config.json",
        "model.safetensors",
        "optim.safetensors",
        "state.json",
    ] {
        assert!(a.join(f).exists(), "{f}");
    }
    let meta = umup::checkpoint::metadata(a.join("model.safetensors")).unwrap();
    assert_eq!(meta["umup.parametrization"], "umup");
    assert_eq!(meta["step"], "6");

    // Resuming with other settings is refused.
    let other = TrainConfig { lr: 0.5, ..cfg };
    let e = LmFamily::train(&other, &c, &opts(&b, true, None), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("settings differ"), "{e}");
    // ... and so is reading its result as another run's.
    let e = finished(&other, &a).unwrap_err();
    assert!(e.to_string().contains("settings differ"), "{e}");
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn frozen_parameters_do_not_move_and_are_part_of_the_run_settings() {
    let c = corpus();
    let q = "layers.0.attn.q.weight";
    let cfg = TrainConfig {
        freeze: vec![q.into()],
        precision: Precision::F32,
        ..cfg()
    };
    let weights = |out: &Path| {
        umup::checkpoint::load_named::<f32>(out.join("model.safetensors"))
            .unwrap()
            .0
    };
    let out = dir("freeze");
    let run = |cfg: &TrainConfig, resume, stop_at| {
        LmFamily::train(cfg, &c, &opts(&out, resume, stop_at), &mut |_| {})
    };
    run(&cfg, false, Some(3)).unwrap();
    let at3 = weights(&out);
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains(q), "{config}");
    // Resuming without the freeze is another run.
    let unfrozen = TrainConfig {
        freeze: Vec::new(),
        ..cfg.clone()
    };
    let e = run(&unfrozen, true, None).unwrap_err();
    assert!(e.to_string().contains("settings differ"), "{e}");
    run(&cfg, true, None).unwrap();
    let at6 = weights(&out);
    assert_eq!(at3[q], at6[q], "the frozen tensor moved");
    let k = "layers.0.attn.k.weight";
    assert_ne!(at3[k], at6[k], "an unfrozen tensor did not move");
    // A path that is not in the table is an error.
    let typo = TrainConfig {
        freeze: vec!["layers.0.attn.query.weight".into()],
        ..cfg.clone()
    };
    std::fs::remove_dir_all(&out).unwrap();
    let e = run(&typo, false, None).unwrap_err().to_string();
    assert!(
        e.contains("layers.0.attn.query.weight") && e.contains(q),
        "{e}"
    );
    // Without a freeze, config.json has no `freeze` key (runs from before the option resume).
    run(&unfrozen, false, Some(1)).unwrap();
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(!config.contains("freeze"), "{config}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_what_was_written() {
    let c = corpus();
    let cfg = TrainConfig {
        lr: 1e30,
        warmup: 0,
        param: "sp".into(),
        precision: Precision::F32,
        eval_every: 1,
        ..cfg()
    };
    let out = dir("nan");
    let e = LmFamily::train(&cfg, &c, &opts(&out, false, None), &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, umup::Error::Diverged { step, .. } if step >= 1),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
    // Rows before the failure are on disk.
    assert!(rows(&out).len() >= 2);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn bad_settings_are_errors() {
    let c = corpus();
    let bad = TrainConfig {
        options: Options::new().with("heads", 3),
        ..cfg()
    };
    let out = dir("bad");
    let e = LmFamily::train(&bad, &c, &opts(&out, false, None), &mut |_| {});
    assert!(e.unwrap_err().to_string().contains("heads 3"));
    assert!(
        !out.exists(),
        "nothing is written for a model that refuses its settings"
    );
    let wrong_size = TrainConfig { width: 96, ..cfg() };
    let e = LmFamily::train(&wrong_size, &c, &opts(&out, false, None), &mut |_| {});
    assert!(e.unwrap_err().to_string().contains("width"));
    assert!("fp9".parse::<Precision>().is_err());
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn devices_parse_and_a_device_the_build_lacks_is_an_error() {
    assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
    assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
    let e = "gpu".parse::<DeviceKind>().unwrap_err().to_string();
    assert!(e.contains("gpu") && e.contains("cpu, cuda"), "{e}");
    let (c, out) = (corpus(), dir("device"));
    // The Cpu loop refuses a run that asks for another device.
    let cuda_run = RunOptions {
        device: DeviceKind::Cuda,
        ..opts(&out, false, None)
    };
    let e = train::train_model::<Lm<64, 256, 2, Umup>, umup::dfdx::prelude::Cpu, _>(
        &cfg(),
        &c,
        &cuda_run,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cuda") && e.contains("cpu"), "{e}");
    assert_eq!(DeviceKind::Cuda.compiled(), cfg!(feature = "cuda"));
    if !DeviceKind::Cuda.compiled() {
        let e = LmFamily::train(&cfg(), &c, &cuda_run, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("`cuda` feature"), "{e}");
    }
    assert!(
        !out.exists(),
        "nothing is written before the device is known"
    );
}

#[test]
fn every_listed_compiled_size_dispatches_and_others_are_refused() {
    use umup::family::param_table;
    for &(width, depth) in LmFamily::SIZES {
        for param in ["umup", "mup", "sp"] {
            let table = param_table::<LmFamily>(width, depth, param).unwrap();
            // embedding + 7 linears per layer + readout.
            assert_eq!(table.rows.len(), 2 + 7 * depth, "{width}×{depth} {param}");
        }
    }
    let err = param_table::<LmFamily>(1024, 2, "umup")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--width 1024 --depth 2")
            && err.contains("1024×4")
            && err.contains("LmFamily"),
        "{err}"
    );
    // The encoder family: its own sizes and table (2 embeddings, 8 layer tensors with biases
    // and 2 norms × (gain, bias) per layer, final norm, readout).
    let err = param_table::<EncoderFamily>(1024, 2, "umup")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("EncoderFamily") && err.contains("512×4"),
        "{err}"
    );
    let table = param_table::<EncoderFamily>(64, 2, "umup").unwrap();
    assert_eq!(table.rows.len(), 2 + 16 * 2 + 2 + 1);
}

/// Flips one byte in the middle of `path` (inside the tensor data of a checkpoint file).
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupted_checkpoint_is_refused_on_resume_naming_the_file() {
    let (c, cfg) = (
        corpus(),
        TrainConfig {
            precision: Precision::F32,
            ..cfg()
        },
    );
    for file in ["model.safetensors", "optim.safetensors"] {
        let out = dir(&format!("corrupt-{file}"));
        LmFamily::train(&cfg, &c, &opts(&out, false, Some(3)), &mut |_| {}).unwrap();
        let state = std::fs::read_to_string(out.join("state.json")).unwrap();
        assert!(
            state.contains(file),
            "state.json records a checksum of {file}: {state}"
        );
        let pristine = std::fs::read(out.join(file)).unwrap();
        flip_middle_byte(&out.join(file));
        let e = LmFamily::train(&cfg, &c, &opts(&out, true, None), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(file) && e.contains("corrupted"), "{e}");
        // Restored, the same checkpoint resumes.
        std::fs::write(out.join(file), pristine).unwrap();
        let s = LmFamily::train(&cfg, &c, &opts(&out, true, None), &mut |_| {}).unwrap();
        assert_eq!(s.step, cfg.steps);
        std::fs::remove_dir_all(out).unwrap();
    }
}

#[test]
fn the_encoder_trains_through_the_same_loop_and_resumes_bit_exactly() {
    let c = masked();
    let cfg = TrainConfig {
        model: "encoder".into(),
        precision: Precision::F32,
        steps: 8,
        ..cfg()
    };
    let (a, b) = (dir("enc-a"), dir("enc-b"));
    let s = EncoderFamily::train(&cfg, &c, &opts(&a, false, None), &mut |_| {}).unwrap();
    // Unit scale at init: the loss is ≈ ln 256 (the 256 bytes equally likely), up to the
    // spread of a few dozen masked targets with logits of RMS ≈ 0.12 at width 64.
    let l0 = s.initial_loss.unwrap();
    assert!((l0 - 256f64.ln()).abs() < 0.1, "{l0}");
    let losses: Vec<f64> = rows(&a)[1..]
        .iter()
        .map(|r| r[2].parse().unwrap())
        .collect();
    assert!(losses.last().unwrap() < &(l0 - 0.5), "{losses:?}");
    assert!(s.sample.is_empty(), "the encoder does not generate");
    EncoderFamily::train(&cfg, &c, &opts(&b, false, Some(4)), &mut |_| {}).unwrap();
    EncoderFamily::train(&cfg, &c, &opts(&b, true, None), &mut |_| {}).unwrap();
    assert_eq!(rows(&a), rows(&b));
    let saved = std::fs::read_to_string(a.join("config.json")).unwrap();
    assert!(saved.contains("\"model\": \"encoder\""), "{saved}");
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn mup_multipliers_scale_the_init_and_the_embedding_lr_and_are_refused_under_umup() {
    use umup::dfdx::prelude::*;
    use umup::nn::Mup;
    use umup::optim::{OptimConfig, Optimizer};
    use umup::params::Multipliers;
    type M = Lm<64, 256, 2, Mup<64>>;
    let table = M::param_table().unwrap();
    let build = || M::build(&Cpu::seed_from_u64(3)).unwrap();
    let (plain, mut scaled) = (build(), build());
    let mult = Multipliers {
        input: 0.25,
        init: 2.0,
    };
    let opt = |multipliers| {
        let cfg = OptimConfig {
            multipliers,
            ..OptimConfig::adamw(0.01)
        };
        Optimizer::<f32, Cpu>::for_table(cfg, &table).unwrap()
    };
    let (base, opt) = (opt(Multipliers::default()), opt(mult));
    umup::nn::apply_init_multipliers(&mut scaled, &table, &mult).unwrap();
    let same = |a: Vec<f32>, b: Vec<f32>, f: f32| {
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| *y == *x * f));
    };
    same(
        plain.embed.weight.as_vec(),
        scaled.embed.weight.as_vec(),
        0.25,
    );
    same(
        plain.layers[1].mlp.up.weight.as_vec(),
        scaled.layers[1].mlp.up.weight.as_vec(),
        2.0,
    );
    same(
        plain.readout.weight.as_vec(),
        scaled.readout.weight.as_vec(),
        2.0,
    );
    for (g, b) in opt.groups().iter().zip(base.groups()) {
        let f = if g.path == "embed.weight" { 0.25 } else { 1.0 };
        assert_eq!(g.lr, b.lr * f, "{}", g.path);
    }

    // Through the trainer: recorded in config.json only when not 1, refused under u-μP.
    let cfg = TrainConfig {
        param: "sp".into(),
        alpha_input: 2.0,
        sigma_init: 0.5,
        ..TrainConfig::default()
    };
    cfg.validate().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"alpha_input\":2.0") && json.contains("\"sigma_init\":0.5"));
    assert!(!serde_json::to_string(&TrainConfig::default())
        .unwrap()
        .contains("alpha_input"));
    let e = TrainConfig {
        param: "umup".into(),
        ..cfg.clone()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("u-μP"), "{e}");
    // A run with multipliers resumes bit-exactly: the checkpoint holds the scaled tensors, the
    // LRs keep their factor; the multipliers are part of the run's settings.
    let (corpus, run) = (
        corpus(),
        TrainConfig {
            param: "sp".into(),
            lr: 0.003,
            alpha_input: 4.0,
            sigma_init: 0.5,
            precision: Precision::F32,
            ..self::cfg()
        },
    );
    let (a, b) = (dir("mult-a"), dir("mult-b"));
    let t = |out: &Path, resume, stop| {
        LmFamily::train(&run, &corpus, &opts(out, resume, stop), &mut |_| {}).unwrap()
    };
    t(&a, false, None);
    t(&b, false, Some(3));
    t(&b, true, None);
    assert_eq!(rows(&a), rows(&b));
    let plain = dir("mult-plain");
    let unscaled = TrainConfig {
        alpha_input: 1.0,
        sigma_init: 1.0,
        ..run.clone()
    };
    LmFamily::train(&unscaled, &corpus, &opts(&plain, false, None), &mut |_| {}).unwrap();
    assert_ne!(
        rows(&a)[1],
        rows(&plain)[1],
        "the multipliers change the run"
    );
    let e = LmFamily::train(&unscaled, &corpus, &opts(&a, true, None), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("settings differ"), "{e}");
    for d in [a, b, plain] {
        std::fs::remove_dir_all(d).unwrap();
    }

    let mut c = TrainConfig::default();
    for (i, name) in TrainConfig::hyper_names().enumerate() {
        c.set_hyper(name, (i + 2) as f64).unwrap();
        assert_eq!(c.get_hyper(name).unwrap(), (i + 2) as f64, "{name}");
    }
    assert_eq!((c.lr, c.alpha_input, c.sigma_init), (2.0, 8.0, 9.0));
    assert!(c.set_hyper("beta", 1.0).is_err() && c.set_hyper("sigma_init", -1.0).is_err());
}

#[test]
fn master_gradients_are_the_f16_copys_gradients_widened_and_keyed_by_the_master() {
    use umup::dfdx::nn::ZeroGrads;
    use umup::dfdx::prelude::*;
    use umup::family::{Mixed, Step};
    use umup::nn::Hyper;
    type M = Lm<64, 256, 2, Umup>;
    let dev = Cpu::seed_from_u64(0);
    let master = M::build(&dev).unwrap();
    let half = master.to_half().unwrap();
    // The copy holds the master's values rounded to f16.
    let w = master.layers[0].mlp.up.weight.as_vec();
    let h = half.layers[0].mlp.up.weight.as_vec();
    assert!(w
        .iter()
        .zip(&h)
        .all(|(a, b)| umup::dfdx::dtypes::f16::from_f32(*a) == *b));

    use umup::data::Data;
    let batch = corpus().batch(umup::data::Split::Train, 0, 2, 0).unwrap();
    let hp = Hyper::default();
    let options = Options::new().with("heads", 2);
    let step = || Step::new(&hp, &options);
    use umup::family::{training_tape, Trainable};
    let tape = training_tape(&dev, master.alloc_grads());
    let l32 = Trainable::loss(&master, &batch, tape, &mut step()).unwrap();
    let g32 = l32.backward();
    let tape = training_tape(&dev, half.alloc_grads());
    let l16 = Trainable::loss(&half, &batch, tape, &mut step()).unwrap();
    assert!((l16.as_vec()[0].to_f32() - 256f32.ln()).abs() < 0.05);
    let mut g16 = l16.backward();
    let from_half = umup::optim::master_gradients(&master, &half, &mut g16).unwrap();
    // Exactly the f16 gradients, widened, under the master's tensors; close to the f32 ones.
    let exact = g16.get(&half.layers[1].attn.k.weight).as_vec();
    let got = from_half.get(&master.layers[1].attn.k.weight).as_vec();
    assert!(exact.iter().zip(&got).all(|(a, b)| a.to_f32() == *b));
    fn close<S: Shape>(
        name: &str,
        t: &Tensor<S, f32, Cpu>,
        a: &Gradients<f32, Cpu>,
        b: &Gradients<f32, Cpu>,
    ) {
        let (x, y) = (a.get(t).as_vec(), b.get(t).as_vec());
        let num: f32 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum();
        let d = (num / y.iter().map(|q| q * q).sum::<f32>()).sqrt();
        assert!(d < 1e-2, "{name}: f16 gradient off by {d} (norm-wise)");
    }
    close("embed", &master.embed.weight, &from_half, &g32);
    close("up", &master.layers[0].mlp.up.weight, &from_half, &g32);
    close("q", &master.layers[1].attn.q.weight, &from_half, &g32);
    close("readout", &master.readout.weight, &from_half, &g32);
    // The copy of another model is refused, naming a tensor.
    let other = Lm::<64, 256, 1, Umup>::build(&dev).unwrap();
    assert!(umup::optim::master_gradients(&other, &half, &mut g16).is_err());
}

#[test]
fn f16_mixed_precision_trains_close_to_f32_keeps_f32_masters_and_resumes_bit_exactly() {
    let c = corpus();
    let f32_cfg = TrainConfig {
        precision: Precision::F32,
        steps: 8,
        eval_every: 4,
        ..cfg()
    };
    let f16_cfg = TrainConfig {
        precision: Precision::F16,
        ..f32_cfg.clone()
    };
    let (a, b, r) = (dir("f32"), dir("f16"), dir("f16-resume"));
    let full = LmFamily::train(&f32_cfg, &c, &opts(&a, false, None), &mut |_| {}).unwrap();
    let mixed = LmFamily::train(&f16_cfg, &c, &opts(&b, false, None), &mut |_| {}).unwrap();
    let (l32, l16) = (full.final_val_loss, mixed.final_val_loss);
    assert!(
        l16 < mixed.initial_loss.unwrap() - 0.3,
        "f16 run did not learn: {l16}"
    );
    assert!((l16 - l32).abs() < 0.02 * l32, "f16 {l16} vs f32 {l32}");
    // The checkpoint holds f32 master weights (not f16 values widened).
    let (tensors, _) = umup::checkpoint::load_named::<f32>(&b.join("model.safetensors")).unwrap();
    let w = &tensors["layers.0.mlp.up.weight"];
    assert!(w
        .iter()
        .any(|&x| f32::from(umup::dfdx::dtypes::f16::from_f32(x)) != x));
    // Stop at 4 and resume: the same rows as the uninterrupted f16 run.
    LmFamily::train(&f16_cfg, &c, &opts(&r, false, Some(4)), &mut |_| {}).unwrap();
    LmFamily::train(&f16_cfg, &c, &opts(&r, true, None), &mut |_| {}).unwrap();
    assert_eq!(rows(&b), rows(&r));
    // The names: `f16` is the real mode, `f16-sim` the simulated one.
    assert_eq!("f16".parse::<Precision>().unwrap(), Precision::F16);
    assert_eq!("f16-sim".parse::<Precision>().unwrap(), Precision::F16Sim);
    for d in [a, b, r] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_vit_trains_on_the_digits_resumes_bit_exactly_and_reports_accuracy() {
    use umup::models::{vit, VitFamily};
    let data = vit::digits(0.1, 0).unwrap();
    let cfg = TrainConfig {
        steps: 8,
        lr: 0.25,
        eval_every: 4,
        eval_batches: 20,
        ..vit_cfg()
    };
    let (a, b) = (dir("vit-a"), dir("vit-b"));
    let s = VitFamily::train(&cfg, &data, &opts(&a, false, None), &mut |_| {}).unwrap();
    // Unit scale at init: the loss is ≈ ln 10.
    let l0 = s.initial_loss.unwrap();
    assert!((l0 - 10f64.ln()).abs() < 0.05, "{l0}");
    let acc = s.val_metrics["accuracy"];
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    // 180 validation images in batches of 16: the accuracy is a multiple of 1/180.
    assert!(
        ((acc * 180.0) - (acc * 180.0).round()).abs() < 1e-9,
        "{acc}"
    );
    let text = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(text.starts_with("step,tokens,train_loss,val_loss,lr,seconds,val_accuracy\n"));
    VitFamily::train(&cfg, &data, &opts(&b, false, Some(4)), &mut |_| {}).unwrap();
    VitFamily::train(&cfg, &data, &opts(&b, true, None), &mut |_| {}).unwrap();
    assert_eq!(rows(&a), rows(&b));
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_image_data_is_refused_naming_what_is_wrong() {
    use umup::data::{Array, Labels};
    use umup::models::vit::vit_data;
    let images = |shape: Vec<usize>| {
        let n = shape.iter().product();
        Array::new(shape, vec![1.0; n], "x.npy").unwrap()
    };
    let labels = |v: Vec<usize>| Labels::new(vec![v.len()], v, "y.npy").unwrap();
    let ok = (0..20).map(|i| i % 10).collect::<Vec<_>>();
    let e = vit_data(&images(vec![20, 7, 7]), &labels(ok.clone()), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.npy") && e.contains("[7, 7]") && e.contains("[8, 8]"),
        "{e}"
    );
    let mut big = ok.clone();
    big[3] = 10;
    let e = vit_data(&images(vec![20, 8, 8]), &labels(big), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 10") && e.contains("10 classes"), "{e}");
    let e = vit_data(&images(vec![20, 8, 8]), &labels(ok[..19].to_vec()), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("19") && e.contains("20"), "{e}");
    // Too few images for a validation split.
    let e = vit_data(&images(vec![2, 8, 8]), &labels(vec![0, 1]), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(vit_data(&images(vec![20, 8, 8]), &labels(ok), 0.1, 0).is_ok());
}

#[test]
fn the_lm_trains_on_bpe_tokens_and_resumes_bit_exactly() {
    use umup::data::tokenizer::BpeTokenizer;
    use umup::models::{BpeLmFamily, BPE_VOCAB};
    let text = Corpus::shakespeare(0.1)
        .unwrap()
        .split(umup::data::Split::Train)[..200_000]
        .to_vec();
    let corpus = Corpus::from_bytes(text, 0.1).unwrap();
    let tok = BpeTokenizer::train_bpe(corpus.split(umup::data::Split::Train), BPE_VOCAB).unwrap();
    let tokens = TokenCorpus::tokenized(&corpus, &tok).unwrap();
    assert_eq!(tokens.vocab(), BPE_VOCAB);
    assert!(
        tokens.bytes_per_token() > 1.5,
        "{}",
        tokens.bytes_per_token()
    );
    let data = NextToken::new(tokens, 16);
    let cfg = TrainConfig {
        precision: Precision::F32,
        ..cfg()
    };
    let (a, b) = (dir("bpe-a"), dir("bpe-b"));
    let s = BpeLmFamily::train(&cfg, &data, &opts(&a, false, None), &mut |_| {}).unwrap();
    let l0 = s.initial_loss.unwrap();
    assert!((l0 - (BPE_VOCAB as f64).ln()).abs() < 0.05, "{l0}");
    // Bits per byte: the loss per token over ln 2, per byte of text.
    let bpb = s.final_val_bpb.unwrap();
    let want = s.final_val_loss / 2f64.ln() / data.corpus.bytes_per_token();
    assert!((bpb - want).abs() < 1e-12, "{bpb} {want}");
    let header = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(header.starts_with("step,tokens,train_loss,val_loss,lr,seconds,val_bpb\n"));
    BpeLmFamily::train(&cfg, &data, &opts(&b, false, Some(3)), &mut |_| {}).unwrap();
    BpeLmFamily::train(&cfg, &data, &opts(&b, true, None), &mut |_| {}).unwrap();
    assert_eq!(rows(&a), rows(&b));
    // The same run on bytes is other data: the resume is refused, naming both.
    let bytes = NextToken::new(TokenCorpus::bytes(&corpus), 16);
    let e = LmFamily::train(&cfg, &bytes, &opts(&b, true, None), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bpe 1024 (crc32") && e.contains(", bytes ·"),
        "{e}"
    );
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn umup_keeps_norm_parameters_at_init_by_default_and_the_rules_are_part_of_the_run() {
    use umup::models::{vit, VitFamily};
    use umup::nn::AttentionScale;
    use umup::params::NormParams;
    let data = vit::digits(0.1, 0).unwrap();
    let cfg = TrainConfig {
        steps: 4,
        eval_every: 2,
        eval_batches: 2,
        ..vit_cfg()
    };
    assert_eq!(
        (cfg.attention, cfg.norm_params),
        (AttentionScale::Auto, NormParams::Auto)
    );
    let weights = |out: &Path| {
        umup::checkpoint::load_named::<f32>(out.join("model.safetensors"))
            .unwrap()
            .0
    };
    // Each norm: its gain, its bias, and the linear bias beside it that must keep training.
    let norms = ["layers.0.ln1", "layers.1.ln2", "ln_f"];
    let moved = |w: &std::collections::BTreeMap<String, Vec<f32>>, name: &str, init: f32| {
        w[name].iter().any(|&x| x != init)
    };
    let out = dir("norms");
    let run = |cfg: &TrainConfig, resume: bool, stop_at| {
        VitFamily::train(cfg, &data, &opts(&out, resume, stop_at), &mut |_| {})
    };
    for (param, norm_params, trained) in [
        ("umup", NormParams::Auto, false),
        ("umup", NormParams::Trained, true),
        ("sp", NormParams::Auto, true),
        ("sp", NormParams::Fixed, false),
    ] {
        let c = TrainConfig {
            param: param.into(),
            lr: if param == "sp" { 1e-2 } else { 1.0 },
            norm_params,
            ..cfg.clone()
        };
        run(&c, false, None).unwrap();
        let w = weights(&out);
        for n in norms {
            let case = format!("{param} {norm_params}: {n}");
            assert_eq!(moved(&w, &format!("{n}.weight"), 1.0), trained, "{case}");
            assert_eq!(moved(&w, &format!("{n}.bias"), 0.0), trained, "{case}");
        }
        // Linear biases are not norm parameters: they train either way.
        assert!(moved(&w, "layers.0.q.bias", 0.0), "{param} {norm_params}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    // A resume with another attention rule or norm setting is refused, naming both.
    run(&cfg, false, Some(2)).unwrap();
    let saved = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        saved.contains("\"attention\": \"auto\"") && saved.contains("\"norm_params\": \"auto\""),
        "{saved}"
    );
    let others = [
        (
            TrainConfig {
                attention: AttentionScale::Reference,
                ..cfg.clone()
            },
            ["attention scale `auto`", "`reference`"],
        ),
        (
            TrainConfig {
                norm_params: NormParams::Trained,
                ..cfg.clone()
            },
            ["`auto`", "`trained`"],
        ),
    ];
    for (other, names) in others {
        let e = run(&other, true, None).unwrap_err().to_string();
        assert!(names.iter().all(|n| e.contains(n)), "{e}");
    }
    run(&cfg, true, None).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

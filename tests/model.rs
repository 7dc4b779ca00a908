//! `#[umup_model]`: generated parameter tables, init, parametrizations and checkpoints.

use std::collections::BTreeMap;

use umup::checkpoint;
use umup::conformance;
use umup::dfdx::prelude::*;
use umup::nn::{Mup, Sp};
use umup::optim::{OptimConfig, Optimizer};
use umup::params::{self, Init, LrRule, Parametrization, Role};
use umup::umup_model;
use umup::Constraint;

/// The reference's optimizer test model (spec §7.3): Embedding(256,16) → DepthSequential(3 ×
/// Linear(16,16,bias)) → RMSNorm(16, gain) → LinearReadout(16,1024).
#[umup_model]
pub struct RefModel {
    #[embedding]
    embedding: Embedding<256, 16>,
    #[hidden(bias)]
    #[depth]
    stack: [Linear<16, 16>; 3],
    #[norm]
    norm: RmsNorm<16>,
    #[output]
    readout: Linear<16, 1024>,
}

#[umup_model]
pub struct Mlp<const D: usize, const F: usize> {
    #[hidden(constraint = "none")]
    up: Linear<D, F>,
    #[hidden(constraint = "none")]
    down: Linear<F, D>,
}

#[umup_model]
pub struct Layer<const D: usize, const F: usize> {
    #[norm]
    norm: LayerNorm<D>,
    #[model]
    mlp: Mlp<D, F>,
}

#[umup_model]
pub struct Net<const V: usize, const D: usize, const F: usize> {
    #[embedding]
    embed: Embedding<V, D>,
    #[model]
    #[depth]
    layers: [Layer<D, F>; 2],
    #[output(bias)]
    readout: Linear<D, V>,
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

#[test]
fn reference_test_model_gets_the_reference_lrs_and_weight_decays() {
    let table = <RefModel>::param_table().unwrap();
    let paths: Vec<&str> = table.rows.iter().map(|r| r.spec.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "embedding.weight",
            "stack.0.weight",
            "stack.0.bias",
            "stack.1.weight",
            "stack.1.bias",
            "stack.2.weight",
            "stack.2.bias",
            "norm.weight",
            "readout.weight"
        ]
    );
    let cfg = OptimConfig {
        weight_decay: 0.001,
        ..OptimConfig::adamw(0.1)
    };
    let opt = Optimizer::<f32, Cpu>::for_table(cfg, &table).unwrap();
    let s3 = 3f64.sqrt();
    let want = [
        0.1 / 4.0,
        0.1 / 4.0 / s3,
        0.1 / s3,
        0.1 / 4.0 / s3,
        0.1 / s3,
        0.1 / 4.0 / s3,
        0.1 / s3,
        0.1,
        0.1,
    ];
    for (g, w) in opt.groups().iter().zip(want) {
        assert!(close(g.lr, w, 1e-6), "{}: {} vs {w}", g.path, g.lr);
        assert!(close(g.weight_decay, 0.001 / w, 1e-6), "{}", g.path);
    }
    // SGD with the readout constrained to its output scale: the embedding and stack LRs × 16.
    let sgd = OptimConfig {
        sgd_readout_constraint: Constraint::ToOutputScale,
        ..OptimConfig::sgd(0.1)
    };
    let opt = Optimizer::<f32, Cpu>::for_table(sgd, &table).unwrap();
    for (g, w) in opt.groups().iter().zip(want).take(3) {
        assert!(close(g.lr, w * 16.0, 1e-6), "{}", g.path);
    }
    assert!(close(opt.groups()[8].lr, 0.1, 1e-6));
}

#[test]
fn the_conformance_optimizer_lr_case_passes_through_a_generated_table() {
    let file =
        conformance::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/public.json")).unwrap();
    let case = file
        .cases
        .iter()
        .find(|c| c.name.starts_with("optimizer_lr/adamw/test_model"))
        .unwrap();
    let table = <RefModel>::param_table().unwrap();
    let specs = table.specs();
    // Every parameter the fixture lists is in the generated table with the same role, shape and
    // depth (the fixture's embedding is the reference's mup_type "weight").
    for p in case.params["parameters"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let row = table
            .get(name)
            .unwrap_or_else(|| panic!("{name} not generated"));
        let mup_type = p["mup_type"].as_str().unwrap();
        assert_eq!(row.spec.role.mup_type(), mup_type, "{name}");
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(row.spec.shape, shape, "{name}");
        assert_eq!(
            row.spec.depth,
            p["depth"].as_u64().map(|d| d as usize),
            "{name}"
        );
    }
    let groups = params::param_groups(
        &specs,
        Parametrization::Umup,
        LrRule::Adam,
        case.params["lr"].as_f64().unwrap(),
        case.params["weight_decay"].as_f64().unwrap(),
        case.params["independent_weight_decay"].as_bool().unwrap(),
        &params::Multipliers::default(),
    )
    .unwrap();
    let expected = case.expected.param_groups.as_ref().unwrap();
    for e in expected {
        let g = groups.iter().find(|g| g.path == e.name).unwrap();
        assert!(close(g.lr, e.lr, case.tol.rel), "{}", e.name);
        assert!(
            close(g.weight_decay, e.weight_decay, case.tol.rel),
            "{}",
            e.name
        );
    }
}

fn std_of(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn unit_init_at_width_256_and_after_reset() {
    let dev = Cpu::seed_from_u64(7);
    let mut net = Net::<256, 256, 512>::build(&dev).unwrap();
    let check = |net: &Net<256, 256, 512>| {
        for w in [
            net.embed.weight.as_vec(),
            net.layers[0].mlp.up.weight.as_vec(),
            net.layers[1].mlp.down.weight.as_vec(),
            net.readout.weight.as_vec(),
        ] {
            let s = std_of(&w);
            assert!((s - 1.0).abs() <= 0.02, "weight std {s}");
        }
        assert!(net.readout.bias.as_vec().iter().all(|&b| b == 0.0));
        assert!(net.layers[1].norm.bias.as_vec().iter().all(|&b| b == 0.0));
        assert!(net.layers[0].norm.weight.as_vec().iter().all(|&g| g == 1.0));
    };
    check(&net);
    let before = net.layers[0].mlp.up.weight.as_vec();
    net.readout.bias = net.readout.bias.clone() + 3.0;
    net.reset_params();
    assert_ne!(net.layers[0].mlp.up.weight.as_vec(), before);
    check(&net);
}

#[test]
fn baselines_init_and_lr_by_their_own_rules() {
    let dev = Cpu::seed_from_u64(7);
    let sp = Net::<256, 256, 512, f32, Cpu, Sp>::build(&dev).unwrap();
    let s = std_of(&sp.layers[0].mlp.down.weight.as_vec());
    assert!(close(s, 1.0 / 512f64.sqrt(), 0.02), "{s}");
    assert!(close(std_of(&sp.embed.weight.as_vec()), 1.0, 0.02));
    let t = Net::<256, 256, 512, f32, Cpu, Sp>::param_table().unwrap();
    assert!(t
        .rows
        .iter()
        .all(|r| r.adam_lr == 1.0 && r.forward_multiplier == 1.0));

    let t = Net::<256, 256, 512, f32, Cpu, Mup<64>>::param_table().unwrap();
    assert_eq!(t.parametrization, Parametrization::Mup { base_width: 64 });
    let down = t.get("layers.1.mlp.down.weight").unwrap();
    assert!(close(down.adam_lr, 64.0 / 512.0, 1e-12));
    match down.init {
        Init::Normal(s) => assert!(close(s, 1.0 / 512f64.sqrt(), 1e-12)),
        other => panic!("{other:?}"),
    }
    let readout = t.get("readout.weight").unwrap();
    assert!(close(readout.forward_multiplier, 64.0 / 256.0, 1e-12));
    assert_eq!(readout.adam_lr, 1.0);
}

#[test]
fn nested_paths_depth_and_the_printed_table() {
    let table = Net::<64, 32, 48>::param_table().unwrap();
    let up = table.get("layers.1.mlp.up.weight").unwrap();
    assert_eq!(up.spec.role, Role::Weight);
    assert_eq!(up.spec.shape, vec![48, 32]);
    assert_eq!(up.spec.depth, Some(2));
    assert!(close(up.adam_lr, 1.0 / 32f64.sqrt() / 2f64.sqrt(), 1e-12));
    assert!(close(up.forward_multiplier, 1.0 / 32f64.sqrt(), 1e-12));
    let bias = table.get("readout.bias").unwrap();
    assert_eq!((bias.spec.role, bias.spec.depth), (Role::Bias, None));
    assert!(close(bias.forward_multiplier, 1.0 / 32.0, 1e-12));
    assert_eq!(
        table.get("layers.0.norm.bias").unwrap().spec.role,
        Role::Bias
    );
    assert_eq!(
        table.num_params(),
        64 * 32 + 2 * (2 * 32 + 2 * 32 * 48) + 64 * 32 + 64
    );
    let text = table.to_string();
    assert!(text.contains("layers.1.mlp.down.weight"));
    assert!(text.lines().count() == table.rows.len() + 2, "{text}");
    // The dfdx visitor sees exactly the paths of the table.
    let dev = Cpu::default();
    let net = Net::<64, 32, 48>::build(&dev).unwrap();
    assert_eq!(net.num_trainable_params(), table.num_params());
}

/// Every tensor's path, shape and trainable flag, in visiting order.
struct Paths(Vec<(String, Vec<usize>, bool)>);

impl<E: Dtype, D: Device<E>> umup::walk::Visit<E, D> for Paths {
    fn tensor<S: Shape>(
        &mut self,
        name: String,
        t: &Tensor<S, E, D>,
        trainable: bool,
    ) -> umup::Result<()> {
        let shape = t.shape().concrete().into_iter().collect();
        self.0.push((name, shape, trainable));
        Ok(())
    }
}

#[test]
fn the_named_walk_visits_the_tables_rows_in_order() {
    let dev = Cpu::default();
    let mut net = Net::<64, 32, 48>::build(&dev).unwrap();
    let mut seen = Paths(Vec::new());
    umup::walk::tensors(&net, &mut seen).unwrap();
    let table = Net::<64, 32, 48>::param_table().unwrap();
    let want: Vec<_> = table
        .rows
        .iter()
        .map(|r| (r.spec.path.clone(), r.spec.shape.clone(), true))
        .collect();
    assert_eq!(seen.0, want);

    /// Sets every tensor to its index in the walk, to be read back by name.
    struct Number(f32);
    impl umup::walk::VisitMut<f32, Cpu> for Number {
        fn tensor<S: Shape>(
            &mut self,
            _: String,
            t: &mut Tensor<S, f32, Cpu>,
            _: bool,
        ) -> umup::Result<()> {
            t.copy_from(&vec![self.0; t.shape().num_elements()]);
            self.0 += 1.0;
            Ok(())
        }
    }
    umup::walk::tensors_mut(&mut net, &mut Number(0.0)).unwrap();
    let up = net.layers[1].mlp.up.weight.as_vec();
    let i = want
        .iter()
        .position(|w| w.0 == "layers.1.mlp.up.weight")
        .unwrap() as f32;
    assert!(i > 0.0 && up.iter().all(|&v| v == i), "{i} {:?}", &up[..4]);
}

#[test]
fn a_forward_pass_is_unit_scaled_and_trains() {
    let dev = Cpu::seed_from_u64(3);
    let mut net = Net::<64, 128, 256>::build(&dev).unwrap();
    let table = Net::<64, 128, 256>::param_table().unwrap();
    let mut opt = Optimizer::for_table(OptimConfig::adamw(0.5), &table).unwrap();
    let ids: Vec<usize> = (0..512).map(|i| (i * 13) % 64).collect();
    let targets: Vec<usize> = ids.iter().map(|i| (i + 3) % 64).collect();
    let mut grads = net.alloc_grads();
    let mut losses = vec![];
    for _ in 0..5 {
        let x = net
            .embed
            .forward(dev.tensor_from_vec(ids.clone(), (ids.len(),)).traced(grads));
        assert!((std_of(&x.as_vec()) - 1.0).abs() < 0.1);
        let x = net.layers[0].mlp.up.forward(x);
        let x = net.layers[0].mlp.down.forward(x);
        let logits = net.readout.forward(x);
        let loss =
            umup::ops::cross_entropy(logits, &targets, 1.0, umup::ops::Reduction::Mean).unwrap();
        losses.push(loss.array());
        grads = loss.backward();
        opt.update(&mut net, &mut grads).unwrap();
        net.zero_grads(&mut grads);
    }
    assert!((losses[0] - 64f32.ln()).abs() < 0.1, "{losses:?}");
    assert!(losses[4] < losses[0], "{losses:?}");
}

#[umup_model]
pub struct RolesSwapped {
    #[embedding]
    embedding: Embedding<256, 16>,
    #[output(bias)]
    #[depth]
    stack: [Linear<16, 16>; 3],
    #[norm]
    norm: RmsNorm<16>,
    #[hidden]
    readout: Linear<16, 1024>,
}

#[umup_model]
pub struct Wider {
    #[embedding]
    embedding: Embedding<256, 32>,
    #[output]
    readout: Linear<32, 1024>,
}

#[test]
fn checkpoints_round_trip_with_metadata_and_refuse_mismatches() {
    let dir = std::env::temp_dir().join(format!("umup-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let dev = Cpu::seed_from_u64(11);
    let model = <RefModel>::build(&dev).unwrap();
    let extra = BTreeMap::from([("step".to_string(), "42".to_string())]);
    checkpoint::save(&model, &path, &extra).unwrap();
    let meta = checkpoint::metadata(&path).unwrap();
    assert_eq!(meta["step"], "42");
    assert_eq!(meta[checkpoint::KEY_PARAMETRIZATION], "umup");
    assert!(meta[checkpoint::KEY_PARAMS].contains("\"role\":\"embedding\""));

    let mut other = <RefModel>::build(&Cpu::seed_from_u64(12)).unwrap();
    assert_ne!(other.readout.weight.as_vec(), model.readout.weight.as_vec());
    checkpoint::load(&mut other, &path).unwrap();
    assert_eq!(other.readout.weight.as_vec(), model.readout.weight.as_vec());
    assert_eq!(other.stack[2].bias.as_vec(), model.stack[2].bias.as_vec());

    // Same shapes, different role: refused, naming the tensor; the model is unchanged.
    let mut swapped = <RolesSwapped>::build(&dev).unwrap();
    let before = swapped.embedding.weight.as_vec();
    let e = checkpoint::load(&mut swapped, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stack.0.weight") && e.contains("role"), "{e}");
    assert_eq!(swapped.embedding.weight.as_vec(), before);
    // Different shapes.
    let mut wider = <Wider>::build(&dev).unwrap();
    let e = checkpoint::load(&mut wider, &path).unwrap_err().to_string();
    assert!(e.contains("embedding.weight") && e.contains("shape"), "{e}");
    // Different parametrization.
    let mut sp = RefModel::<f32, Cpu, Sp>::build(&dev).unwrap();
    let e = checkpoint::load(&mut sp, &path).unwrap_err().to_string();
    assert!(e.contains("parametrization"), "{e}");
    // Reserved metadata keys.
    let bad = BTreeMap::from([("umup.x".to_string(), String::new())]);
    assert!(checkpoint::save(&model, dir.join("x.safetensors"), &bad).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Conv1d fields.

#[umup_model]
pub struct DeepBlock {
    #[hidden]
    w_deep: Linear<64, 128>,
    #[norm]
    gain: RmsNorm<64>,
}

#[umup_model]
pub struct ConvBlock {
    #[hidden(stride = 2, groups = 2)]
    conv: Conv1d<8, 8, 3>,
}

/// Mirrors `optimizer_lr/adam/mixed/...`: the fixture's `conv [8, 4, 3]` (depth 2) is a grouped
/// `Conv1d<8, 8, 3>` (groups 2) inside a depth-2 stack.
#[umup_model]
pub struct AdamMirror {
    #[hidden]
    w_in: Linear<32, 64>,
    #[model]
    #[depth]
    deep: [DeepBlock; 4],
    #[model]
    #[depth]
    convs: [ConvBlock; 2],
    #[output]
    out: Linear<64, 10>,
}

/// Mirrors `optimizer_lr/sgd/readout_to_output_scale/...`: `conv [6, 2, 5]` is a
/// `Conv1d<6, 6, 5>` with groups 3.
#[umup_model]
pub struct SgdMirror {
    #[embedding]
    emb: Embedding<100, 24>,
    #[hidden(bias)]
    #[depth]
    w: [Linear<24, 48>; 3],
    #[norm]
    gain: RmsNorm<24>,
    #[hidden(groups = 3, dilation = 2, padding = 4)]
    conv: Conv1d<6, 6, 5>,
    #[output]
    out: Linear<24, 100>,
}

/// Checks a fixture's `optimizer_lr` case against a generated table: every fixture parameter
/// (`name → path`) has the fixture's role, shape and depth, and its LR and weight decay.
fn lr_case_through_table(
    prefix: &str,
    table: &params::ParamTable,
    paths: &[(&str, &str)],
    rule: LrRule,
) {
    let file =
        conformance::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/public.json")).unwrap();
    let case = file
        .cases
        .iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap();
    let path_of = |name: &str| {
        paths
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("{name} not mapped"))
    };
    for p in case.params["parameters"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let row = table
            .get(path_of(name))
            .unwrap_or_else(|| panic!("{name} not generated"));
        assert_eq!(row.spec.role.mup_type(), p["mup_type"].as_str().unwrap());
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(row.spec.shape, shape, "{name}");
        assert_eq!(
            row.spec.depth,
            p["depth"].as_u64().map(|d| d as usize),
            "{name}"
        );
    }
    let groups = params::param_groups(
        &table.specs(),
        Parametrization::Umup,
        rule,
        case.params["lr"].as_f64().unwrap(),
        case.params["weight_decay"].as_f64().unwrap(),
        case.params["independent_weight_decay"].as_bool().unwrap(),
        &params::Multipliers::default(),
    )
    .unwrap();
    let expected = case.expected.param_groups.as_ref().unwrap();
    assert!(expected.iter().any(|e| e.name == "conv"));
    for e in expected {
        let g = groups.iter().find(|g| g.path == path_of(&e.name)).unwrap();
        assert!(
            close(g.lr, e.lr, case.tol.rel),
            "{}: {} vs {}",
            e.name,
            g.lr,
            e.lr
        );
        assert!(
            close(g.weight_decay, e.weight_decay, case.tol.rel),
            "{}",
            e.name
        );
        // The table's own multiplier gives the same LR.
        let row = table.get(path_of(&e.name)).unwrap();
        let m = match rule {
            LrRule::Adam => row.adam_lr,
            LrRule::SgdConstrainedReadout => row.sgd_lr,
        };
        assert!(close(case.params["lr"].as_f64().unwrap() * m, e.lr, 1e-12));
    }
}

#[test]
fn conv_parameters_of_the_optimizer_lr_cases_pass_through_generated_tables() {
    let table = <AdamMirror>::param_table().unwrap();
    let conv = table.get("convs.1.conv.weight").unwrap();
    assert_eq!(conv.fan_in, 12);
    assert!(close(conv.forward_multiplier, 12f64.powf(-0.5), 1e-15));
    lr_case_through_table(
        "optimizer_lr/adam/mixed",
        &table,
        &[
            ("w_in", "w_in.weight"),
            ("w_deep", "deep.0.w_deep.weight"),
            ("conv", "convs.0.conv.weight"),
            ("gain", "deep.0.gain.weight"),
            ("out", "out.weight"),
        ],
        LrRule::Adam,
    );
    let table = <SgdMirror>::param_table().unwrap();
    assert_eq!(table.get("conv.weight").unwrap().fan_in, 10);
    lr_case_through_table(
        "optimizer_lr/sgd/readout_to_output_scale",
        &table,
        &[
            ("emb", "emb.weight"),
            ("w", "w.1.weight"),
            ("b", "w.1.bias"),
            ("gain", "gain.weight"),
            ("conv", "conv.weight"),
            ("out", "out.weight"),
        ],
        LrRule::for_sgd(Constraint::ToOutputScale).unwrap(),
    );
}

#[umup_model]
pub struct ConvNet<const C: usize> {
    #[hidden(padding = 1, bias)]
    conv: Conv1d<C, C, 3>,
    #[hidden(stride = 2, dilation = 2, groups = 4, constraint = "none")]
    down: Conv1d<64, 32, 3>,
}

fn std_of64(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt()
}

#[test]
fn conv_fields_run_the_op_with_their_geometry_and_are_unit_scaled() {
    use umup::ops::{self, Conv1dGeometry, Conv1dOptions};
    let dev = Cpu::seed_from_u64(3);
    let net = ConvNet::<64, f64>::build(&dev).unwrap();
    // Unit init: N(0,1) weights, zero bias.
    assert!((std_of64(&net.conv.weight.as_vec()) - 1.0).abs() < 0.05);
    assert!(net.conv.bias.as_vec().iter().all(|&b| b == 0.0));
    assert_eq!(net.down.weight.shape().concrete(), [32, 16, 3]);
    let x: Tensor<(usize, Const<64>, usize), f64, Cpu> =
        dev.sample_normal_like(&(4, Const::<64>, 96));
    let y = net.conv.try_forward(x.leaky_trace()).unwrap();
    assert_eq!(y.shape().concrete(), [4, 64, 96]);
    let want = ops::conv1d(
        x.clone(),
        &net.conv.weight,
        Some(&net.conv.bias),
        Conv1dOptions {
            geometry: Conv1dGeometry {
                padding: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(y.as_vec(), want.as_vec());
    // Unit output, unit weight gradient for a unit output gradient.
    assert!((std_of64(&y.as_vec()) - 1.0).abs() < 0.1);
    let g = dev.sample_normal_like(y.shape());
    let grads = (y * g).sum::<(), _>().backward();
    assert!((std_of64(&grads.get(&net.conv.weight).as_vec()) - 1.0).abs() < 0.1);
    assert!((std_of64(&grads.get(&x).as_vec()) - 1.0).abs() < 0.15);
    // The grouped, strided, dilated, unconstrained layer.
    let z = net.down.try_forward(x.clone()).unwrap();
    let want = ops::conv1d(
        x,
        &net.down.weight,
        None,
        Conv1dOptions {
            geometry: Conv1dGeometry {
                stride: 2,
                padding: 0,
                dilation: 2,
                groups: 4,
            },
            constraint: Constraint::None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(z.shape().concrete(), [4, 32, 46]);
    assert_eq!(z.as_vec(), want.as_vec());
    // Unbatched `[C_in, T]`: the batch of one, reshaped.
    let x1: Tensor<(Const<64>, usize), f64, Cpu> = dev.sample_normal_like(&(Const::<64>, 40));
    let y1 = net.conv.try_forward(x1.clone()).unwrap();
    assert_eq!(y1.shape().concrete(), [64, 40]);
    let batched = net
        .conv
        .try_forward(x1.clone().reshape_like(&(1, Const::<64>, 40)))
        .unwrap();
    assert_eq!(y1.as_vec(), batched.as_vec());
    let z1 = net.down.try_forward(x1.leaky_trace()).unwrap();
    assert_eq!(z1.shape().concrete(), [32, 18]);
    // A too-short input is an error, not a panic.
    let short: Tensor<(usize, Const<64>, usize), f64, Cpu> = dev.zeros_like(&(1, Const::<64>, 4));
    assert!(net.down.try_forward(short).is_err());
    // The table: fan-in C_in/groups·k; SP inits by 1/√fan_in.
    let table = ConvNet::<64>::param_table().unwrap();
    let paths: Vec<&str> = table.rows.iter().map(|r| r.spec.path.as_str()).collect();
    assert_eq!(paths, ["conv.weight", "conv.bias", "down.weight"]);
    assert_eq!(table.get("down.weight").unwrap().fan_in, 48);
    assert_eq!(table.get("conv.weight").unwrap().fan_in, 192);
    let sp = ConvNet::<64, f32, Cpu, Sp>::param_table().unwrap();
    assert_eq!(
        sp.get("down.weight").unwrap().init,
        Init::Normal(48f64.powf(-0.5))
    );
}

/// A float-input model (a ViT's patch projection and a biased frame projection, fan_in 16, then
/// a hidden layer and a readout).
#[umup_model]
pub struct PatchNet<const D: usize> {
    #[input]
    patch: Linear<16, D>,
    #[input(bias)]
    frame: Linear<16, D>,
    #[hidden]
    fc: Linear<D, D>,
    #[output]
    head: Linear<D, 10>,
}

fn normal_std(init: Init) -> f64 {
    match init {
        Init::Normal(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn input_fields_get_the_input_rules_at_every_width() {
    fn check<const D: usize>() {
        let d = D as f64;
        // u-μP: forward 1/√16, init 1, Adam LR η/√D (SGD η·√D), as the embedding's rule.
        let t = PatchNet::<D>::param_table().unwrap();
        let patch = t.get("patch.weight").unwrap();
        assert_eq!(patch.spec.role, Role::Input);
        assert_eq!(patch.spec.role.mup_type(), "weight");
        assert_eq!((patch.spec.shape.clone(), patch.fan_in), (vec![D, 16], 16));
        assert_eq!(patch.init, Init::Normal(1.0));
        assert_eq!(patch.forward_multiplier, 0.25);
        assert!(
            close(patch.adam_lr, 1.0 / d.sqrt(), 1e-12),
            "{}",
            patch.adam_lr
        );
        assert!(close(patch.sgd_lr, d.sqrt(), 1e-12));
        let bias = t.get("frame.bias").unwrap();
        assert_eq!((bias.spec.role, bias.adam_lr), (Role::Bias, 1.0));
        assert_eq!(bias.forward_multiplier, 0.25);
        assert_eq!(t.get("frame.weight").unwrap().spec.role, Role::Input);
        let fc = t.get("fc.weight").unwrap();
        assert!(close(fc.adam_lr, 1.0 / d.sqrt(), 1e-12));
        let text = t.to_string();
        assert!(
            text.lines()
                .any(|l| l.starts_with("patch.weight") && l.contains(" input ")),
            "{text}"
        );
        let opt = Optimizer::<f32, Cpu>::for_table(OptimConfig::adamw(0.1), &t).unwrap();
        assert!(close(opt.groups()[0].lr, 0.1 / d.sqrt(), 1e-6));

        // μP (base 64): LR η and init 1/√16 at every width; the hidden layer gets base/D.
        let t = PatchNet::<D, f32, Cpu, Mup<64>>::param_table().unwrap();
        let patch = t.get("patch.weight").unwrap();
        assert_eq!((patch.adam_lr, patch.forward_multiplier), (1.0, 1.0));
        assert_eq!(patch.sgd_lr, d / 64.0);
        assert_eq!(normal_std(patch.init), 0.25);
        assert!(close(t.get("fc.weight").unwrap().adam_lr, 64.0 / d, 1e-12));

        // SP: as a hidden weight.
        let t = PatchNet::<D, f32, Cpu, Sp>::param_table().unwrap();
        let patch = t.get("patch.weight").unwrap();
        assert_eq!((patch.adam_lr, normal_std(patch.init)), (1.0, 0.25));
    }
    check::<64>();
    check::<256>();
}

#[test]
fn an_input_projection_of_unit_features_is_unit_scaled_in_umup_and_mup() {
    let dev = Cpu::seed_from_u64(11);
    let x: Tensor<(usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(1024usize, Const));
    // u-μP: W ~ N(0,1), forward 1/√16.
    let net = PatchNet::<256>::build(&dev).unwrap();
    assert!((std_of(&net.patch.weight.as_vec()) - 1.0).abs() < 0.02);
    let y = net.patch.forward(x.leaky_trace());
    assert!(
        (std_of(&y.as_vec()) - 1.0).abs() < 0.03,
        "{}",
        std_of(&y.as_vec())
    );
    // The weight gradient of a unit output gradient is unit (1/√B_tok), as for any linear.
    let g: Tensor<(usize, Const<256>), f32, Cpu> = dev.sample_normal_like(y.shape());
    let grads = (y * g).sum::<(), _>().backward();
    let gw = std_of(&grads.get(&net.patch.weight).as_vec());
    assert!((gw - 1.0).abs() < 0.03, "{gw}");
    // μP: W ~ N(0, 1/16), no multiplier: the same unit output.
    let net = PatchNet::<256, f32, Cpu, Mup<64>>::build(&dev).unwrap();
    assert!((std_of(&net.patch.weight.as_vec()) - 0.25).abs() < 0.005);
    let y = net.patch.forward(x);
    assert!((std_of(&y.as_vec()) - 1.0).abs() < 0.03);
}

/// The conformance runner's parameter rules read a role by name: a fixture parameter named
/// `"mup_type": "input"` runs the input rule (the fixture file itself is the reference's and
/// names no input role; this edits a copy of one of its cases in memory).
#[test]
fn the_conformance_runner_accepts_the_input_role() {
    let file =
        conformance::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/public.json")).unwrap();
    let reference = file
        .cases
        .iter()
        .find(|c| c.name == "optimizer_lr/adam/mixed/lr0.5_wd0")
        .unwrap();
    assert!(conformance::run_case(reference).passed);
    let mut case = reference.clone();
    let params = case.params["parameters"].as_array_mut().unwrap();
    assert_eq!(params[0]["name"], "w_in");
    assert_eq!(params[0]["shape"], serde_json::json!([64, 32]));
    params[0]["mup_type"] = "input".into();
    // As "weight" (the reference): η/√32; as "input": η/√fan_out = 0.5/8.
    let r = conformance::run_case(&case);
    assert!(!r.passed, "{r}");
    let groups = case.expected.param_groups.as_mut().unwrap();
    assert!(close(groups[0].lr, 0.5 / 32f64.sqrt(), 1e-12));
    groups[0].lr = 0.0625;
    let r = conformance::run_case(&case);
    assert!(r.passed, "{r}");
    case.params["parameters"][0]["mup_type"] = "inptu".into();
    let r = conformance::run_case(&case);
    assert!(r.message.unwrap_or_default().contains("input"));
}

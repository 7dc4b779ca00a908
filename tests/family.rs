//! A user's own model through the whole workflow: `#[umup_model]` + `Trainable` + `family!`,
//! then the library's trainer, scale check and η sweep at sizes chosen at run time.

use umup::data::{Corpus, NextToken, TokenBatch, TokenCorpus};
use umup::dfdx::prelude::*;
use umup::family::{self, Family, Step, TrainDevice, Trainable};
use umup::nn::Param;
use umup::rand_distr::{Distribution, StandardNormal};
use umup::scale_check::{scale_check_family, Settings};
use umup::sweep::{train_flags, Axis, AxisSweep, EqualBudget, Event, Stage, Sweep};
use umup::train::{self, RunOptions, TrainConfig};
use umup::{ops, umup_model, Backend, Constraint};

/// A GELU MLP block.
#[umup_model]
pub struct Block<const D: usize, const F: usize> {
    #[hidden(bias)]
    up: Linear<D, F>,
    #[hidden(bias)]
    down: Linear<F, D>,
}

/// A byte-level model that predicts the next byte from the current one: embedding → `L`
/// residual MLP blocks → RMSNorm → readout.
#[umup_model]
pub struct BigramMlp<const D: usize, const F: usize, const L: usize> {
    #[embedding]
    embed: Embedding<256, D>,
    #[model]
    #[depth]
    blocks: [Block<D, F>; L],
    #[output]
    readout: Linear<D, 256>,
}

impl<
        const D: usize,
        const F: usize,
        const L: usize,
        E: Dtype,
        Dev: TrainDevice + Backend<E>,
        P: Param,
    > Trainable<Dev, E> for BigramMlp<D, F, L, E, Dev, P>
where
    StandardNormal: Distribution<E>,
{
    type Batch = TokenBatch;

    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &TokenBatch,
        tape: T,
        step: &mut Step<'_>,
    ) -> umup::Result<Tensor<(), E, Dev, T>> {
        let hp = step.hp;
        let ids = batch.ids(self.embed.weight.device(), 256)?.put_tape(tape);
        let mut x = step.tap(self.embed.try_forward(ids)?, || "embed".into())?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = P::residual(x, 0.5, |h| {
                let u = ops::gelu(
                    b.up.try_forward(h)?,
                    hp.alpha_ffn_act,
                    Constraint::ToOutputScale,
                )?;
                let u = step.tap(u, || format!("blocks.{i}.act"))?;
                b.down.try_forward(u)
            })?;
        }
        let x = ops::rms_norm(x, None, 1e-5)?;
        let logits = step.tap(self.readout.try_forward(x)?, || "logits".into())?;
        P::cross_entropy(logits, &batch.targets, hp)
    }
}

umup::family! {
    /// The bigram MLP at two widths and two depths.
    pub struct Bigram = BigramMlp<W, {2 * W}, L> for W in [32, 64], L in [1, 2];
}

umup::family! {
    /// An explicit list of sizes.
    pub struct BigramPairs = BigramMlp<W, W, L> for (W, L) in [(16, 1), (48, 3)];
}

/// Next-byte windows of `seq` bytes of a 45-byte cycle.
fn corpus(seq: usize) -> NextToken {
    let text: Vec<u8> = (0..20_000u32)
        .map(|i| b"the quick brown fox jumps over the lazy dog. "[(i % 45) as usize])
        .collect();
    NextToken::new(
        TokenCorpus::bytes(&Corpus::from_bytes(text, 0.1).unwrap()),
        seq,
    )
}

#[test]
fn a_family_lists_its_sizes_and_instantiates_each_in_every_parametrization() {
    assert_eq!(Bigram::SIZES, &[(32, 1), (32, 2), (64, 1), (64, 2)]);
    assert_eq!(BigramPairs::SIZES, &[(16, 1), (48, 3)]);
    for &(w, l) in Bigram::SIZES {
        for param in ["umup", "mup", "sp"] {
            let t = family::param_table::<Bigram>(w, l, param).unwrap();
            // embedding + 2 tensors × 2 linears per block + readout.
            assert_eq!(t.rows.len(), 2 + 4 * l, "{w}×{l} {param}");
            let up = t
                .rows
                .iter()
                .find(|r| r.spec.path == "blocks.0.up.weight")
                .unwrap();
            assert_eq!(up.spec.shape, vec![2 * w, w]);
            assert_eq!(t.parametrization.name(), param);
        }
    }
    let t = family::param_table::<BigramPairs>(48, 3, "umup").unwrap();
    assert_eq!(t.rows.len(), 2 + 4 * 3);
    let e = family::param_table::<Bigram>(128, 1, "umup")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--width 128") && e.contains("32×1, 32×2, 64×1, 64×2"),
        "{e}"
    );
    let e = family::param_table::<Bigram>(32, 1, "ntk")
        .unwrap_err()
        .to_string();
    assert!(e.contains("umup, mup, sp"), "{e}");
}

#[test]
fn the_trainer_and_the_scale_check_run_a_users_family() {
    let c = corpus(32);
    let out = std::env::temp_dir().join(format!("umup-family-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = TrainConfig {
        model: "bigram".into(),
        width: 64,
        depth: 2,
        steps: 30,
        batch: 4,
        warmup: 3,
        eval_every: 10,
        eval_batches: 2,
        ..TrainConfig::default()
    };
    let run = RunOptions {
        out: out.clone(),
        resume: false,
        stop_at: None,
        sample_len: 0,
        device: Default::default(),
    };
    let s = train::train_family::<Bigram, _>(&cfg, &c, &run, &mut |_| {}).unwrap();
    let l0 = s.initial_loss.unwrap();
    assert!((l0 - 256f64.ln()).abs() < 0.05, "unit scale at init: {l0}");
    // The text is a cycle of 45 bytes in which most bytes have one successor: the bigram
    // model learns it far below the 256-way guess.
    assert!(s.final_val_loss < 2.0, "{}", s.final_val_loss);
    for f in [
        "metrics.csv",
        "model.safetensors",
        "optim.safetensors",
        "config.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&out).unwrap();
    // A size the family lacks is refused before anything is written.
    let e =
        train::train_family::<Bigram, _>(&TrainConfig { width: 48, ..cfg }, &c, &run, &mut |_| {})
            .unwrap_err()
            .to_string();
    assert!(e.contains("Bigram") && e.contains("48"), "{e}");
    assert!(!out.exists());

    let settings = Settings {
        batch: 4,
        steps: 1,
        ..Settings::default()
    };
    let (mut rows, mut loss) = (Vec::new(), Vec::new());
    for w in [32, 64] {
        scale_check_family::<Bigram, _>(w, 2, "umup", &c, &settings, &mut rows, &mut loss).unwrap();
    }
    // Two steps (init and after one update) at two widths.
    assert_eq!(loss.len(), 4);
    for name in ["embed", "blocks.1.act", "logits", "blocks.0.up.weight"] {
        assert!(
            rows.iter()
                .filter(|r| r.name == name && r.step == 0)
                .count()
                >= 2,
            "{name} measured at both widths"
        );
    }
    let embed: Vec<f64> = rows
        .iter()
        .filter(|r| r.name == "embed" && r.step == 0 && r.kind == umup::analysis::Kind::Activation)
        .map(|r| r.rms)
        .collect();
    assert!(embed.iter().all(|v| (v - 1.0).abs() < 0.1), "{embed:?}");
}

#[test]
fn a_sweep_of_a_users_family_runs_each_point_once_and_names_the_best_eta_per_width() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let c = corpus(16);
    let out = std::env::temp_dir().join(format!("umup-family-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let sweep = Sweep {
        model: "bigram".into(),
        out: out.clone(),
        widths: vec![32, 64],
        depth: 1,
        params: vec!["umup".into()],
        umup_lr_exps: vec![-3, 1],
        steps: 20,
        batch: 4,
        eval_batches: 2,
        jobs: 2,
        ..Sweep::default()
    };
    sweep.validate().unwrap();
    sweep.check_family::<Bigram>().unwrap();
    let e = Sweep {
        widths: vec![32, 48],
        ..sweep.clone()
    }
    .check_family::<Bigram>()
    .unwrap_err()
    .to_string();
    assert!(e.contains("48"), "{e}");

    let points = sweep.eta_points();
    let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "eta/umup/w32/log2lr-3",
            "eta/umup/w32/log2lr1",
            "eta/umup/w64/log2lr-3",
            "eta/umup/w64/log2lr1"
        ]
    );
    for (p, (w, lr)) in points
        .iter()
        .zip([(32, 0.125), (32, 2.0), (64, 0.125), (64, 2.0)])
    {
        assert_eq!(
            (p.cfg.model.as_str(), p.cfg.width, p.cfg.depth, p.cfg.lr),
            ("bigram", w, 1, lr)
        );
        assert_eq!((p.cfg.steps, p.cfg.warmup, p.cfg.eval_every), (20, 2, 20));
    }

    let plan = |s: &Sweep| {
        s.plan(&[Stage::Eta], |p, dir| {
            format!("my_trainer {}", train_flags(&p.cfg, dir))
        })
    };
    let before = plan(&sweep).unwrap();
    assert_eq!(before.len(), 4);
    assert!(
        before[1].starts_with(
            "my_trainer --quiet --sample-len 0 --param umup --width 32 --depth 1 --steps 20 "
        ) && before[1].contains(" --lr 2 ")
            && before[1].ends_with(&format!(
                "--out {}",
                out.join("eta/umup/w32/log2lr1").display()
            )),
        "{}",
        before[1]
    );

    let runs = AtomicUsize::new(0);
    let train = |cfg: &TrainConfig, run: &RunOptions| {
        runs.fetch_add(1, Ordering::SeqCst);
        train::train_family::<Bigram, _>(cfg, &c, run, &mut |_| {})
    };
    // One point first: the plan then lists the three others.
    sweep.run_points(&points[..1], train, |_| {}).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(plan(&sweep).unwrap(), before[1..].to_vec());

    let finished = Mutex::new(Vec::new());
    let summary = sweep
        .run(&[Stage::Eta], train, |e| {
            if let Event::Finished { point, loss } = e {
                finished.lock().unwrap().push((point.label.clone(), loss));
            }
        })
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let mut finished = finished.into_inner().unwrap();
    finished.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        finished.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        labels[1..].to_vec()
    );

    // Everything finished: a second sweep trains nothing and rewrites no run.
    let metrics = out.join("eta/umup/w64/log2lr1/metrics.csv");
    let mtime = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    let again = sweep.run(&[Stage::Eta], train, |_| {}).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(again, summary);
    assert!(plan(&sweep).unwrap().is_empty());
    assert_eq!(sweep.collect(&[Stage::Eta]).unwrap(), summary);
    // Other settings in the same directory are refused, not reused.
    let e = plan(&Sweep {
        steps: 21,
        ..sweep.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("settings differ"), "{e}");

    // The summary names, per width, the η of the lower final loss.
    let results = sweep.results(&points).unwrap();
    let loss: Vec<f64> = results.iter().map(|(_, l)| l.unwrap()).collect();
    for (i, w) in [32, 64].into_iter().enumerate() {
        let (lo, hi) = (loss[2 * i], loss[2 * i + 1]);
        assert!(lo.is_finite() && hi.is_finite(), "{lo} {hi}");
        let (e, best) = if hi < lo { (1, hi) } else { (-3, lo) };
        let row = format!("| umup | {w} | 2^{e} | {best:.4} |");
        assert!(summary.contains(&row), "{row} in\n{summary}");
        // 20 steps learn the 45-byte cycle well below the 256-way guess (ln 256 = 5.55).
        assert!(best < 4.0, "{best}");
    }
    assert!(summary.contains("| umup | drift | "), "{summary}");
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv
        .lines()
        .nth(2)
        .unwrap()
        .starts_with("eta/umup/w32/log2lr1,umup,32,2,0,1,1,1,1,1,"));
    for f in ["summary.md", "transfer.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn an_axis_sweep_runs_the_eta_stage_at_each_depth_and_reports_the_drift() {
    let c = corpus(16);
    let out = std::env::temp_dir().join(format!("umup-family-axis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let base = Sweep {
        model: "bigram".into(),
        out: out.clone(),
        widths: vec![32],
        params: vec!["umup".into(), "sp".into()],
        umup_lr_exps: vec![-3, 1],
        sp_lr_exps: vec![-9, -4],
        steps: 20,
        batch: 4,
        eval_batches: 2,
        jobs: 2,
        ..Sweep::default()
    };
    let axis = AxisSweep::new(Axis::Depth, vec![1, 2], base.clone()).unwrap();
    axis.check_family::<Bigram>().unwrap();
    let e = AxisSweep::new(Axis::Depth, vec![1, 3], base)
        .unwrap()
        .check_family::<Bigram>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--width 32 --depth 3"), "{e}");
    assert_eq!(axis.plan(|p, _| p.label.clone()).unwrap().len(), 8);

    let train = |cfg: &TrainConfig, run: &RunOptions| {
        train::train_family::<Bigram, _>(cfg, &c, run, &mut |_| {})
    };
    let summary = axis.run(train, |_| {}).unwrap();
    assert!(axis.plan(|p, _| p.label.clone()).unwrap().is_empty());
    assert_eq!(axis.collect().unwrap(), summary);

    // Each depth's best η, read from its own sweep directory, is the summary's.
    let mut best = Vec::new();
    for (depth, dir) in [(1, "depth1"), (2, "depth2")] {
        let csv = std::fs::read_to_string(out.join(dir).join("sweep.csv")).unwrap();
        let mut cells = format!("| {depth} |");
        for param in ["umup", "sp"] {
            let (lr, loss) = csv
                .lines()
                .skip(1)
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f[1] == param)
                .map(|f| (f[3].parse::<f64>().unwrap(), f[10].parse::<f64>().unwrap()))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            cells += &format!(" 2^{} ({loss:.4}) |", lr.log2().round());
            if param == "umup" {
                // The position in the grid [-3, 1].
                best.push(i32::from(lr.log2().round() as i32 == 1));
            }
        }
        assert!(summary.contains(&cells), "{cells} in\n{summary}");
    }
    let row = format!("| drift | {:+} grid steps first → last;", best[1] - best[0]);
    assert!(summary.contains(&row), "{row} in\n{summary}");
    let csv = std::fs::read_to_string(out.join("axis.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 4);
    assert!(
        csv.lines().any(|l| l.starts_with("depth,2,sp,-4,")),
        "{csv}"
    );
    assert!(out.join("transfer_depth.png").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_equal_budget_spends_the_same_runs_per_scheme_and_trains_each_winner_at_the_target() {
    use umup::sweep::budget::baseline_space;
    let c = corpus(16);
    let out = std::env::temp_dir().join(format!("umup-family-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let budget = EqualBudget {
        proxy: Sweep {
            model: "bigram".into(),
            out: out.clone(),
            widths: vec![32],
            depth: 1,
            params: vec!["umup".into(), "mup".into(), "sp".into()],
            umup_lr_exps: vec![-1, 0],
            alpha_exps: vec![1],
            steps: 10,
            batch: 4,
            eval_batches: 2,
            jobs: 2,
            ..Sweep::default()
        },
        target_width: 64,
        target_seeds: 2,
        baseline_lr: 1e-3,
    };
    budget.validate().unwrap();
    // u-μP: 2 η + 5 α × 1 value + the combined run.
    assert_eq!(budget.budget(), 8);
    let bad = EqualBudget {
        proxy: Sweep {
            alpha_exps: vec![0, 1],
            ..budget.proxy.clone()
        },
        ..budget.clone()
    };
    assert!(bad.validate().is_err());

    // The random search: as many runs, inside the scheme's ranges, the same on every call.
    for param in ["mup", "sp"] {
        let pts = budget.random_points(param);
        assert_eq!(pts.len(), 8);
        assert_eq!(pts, budget.random_points(param));
        for p in &pts {
            for r in baseline_space(param) {
                let e = p.cfg.get_hyper(&r.name).unwrap().log2();
                let quarter = (e * 4.0).round() / 4.0;
                assert!((e - quarter).abs() < 1e-9, "{e}");
                assert!(quarter >= r.lo && quarter <= r.hi, "{e}");
            }
        }
    }

    // The phases, as a cluster runs them: η grid + random searches, α grid, combined, target.
    let train = |cfg: &TrainConfig, run: &RunOptions| {
        train::train_family::<Bigram, _>(cfg, &c, run, &mut |_| {})
    };
    let mut sizes = Vec::new();
    loop {
        let plan = budget.plan(|p, _| p.label.clone()).unwrap();
        if plan.is_empty() {
            break;
        }
        sizes.push(plan.len());
        let todo = budget.pending().unwrap();
        let labels: Vec<String> = todo.iter().map(|p| p.label.clone()).collect();
        assert_eq!(labels, plan);
        budget.proxy.run_points(&todo, train, |_| {}).unwrap();
    }
    assert_eq!(sizes, [2 + 8 + 8, 5, 1, 3 * 2 * 2]);
    let summary = budget.report().unwrap();
    // Everything finished: a run trains nothing and reports the same.
    assert_eq!(budget.run(train, |_| {}).unwrap(), summary);
    let csv = std::fs::read_to_string(out.join("budget.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 8 + 12);
    for param in ["umup", "mup", "sp"] {
        let proxy = budget.proxy_results(param).unwrap();
        assert_eq!(proxy.len(), 8, "{param}");
        let (win, loss) = budget.winner(param, &proxy).unwrap();
        let min = proxy
            .iter()
            .map(|(_, l)| l.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(loss, min);
        assert!(
            summary.contains(&format!("| {param} | {loss:.4} |")),
            "{summary}"
        );
        // The target runs the winner's hyperparameters at the target width.
        let tuned: Vec<_> = budget
            .target_points()
            .unwrap()
            .into_iter()
            .filter(|p| p.label.starts_with(&format!("target/{param}/tuned/")))
            .collect();
        assert_eq!(tuned.len(), 2);
        for (s, t) in tuned.iter().enumerate() {
            let want = TrainConfig {
                width: 64,
                seed: s as u64,
                ..win.cfg.clone()
            };
            assert_eq!(t.cfg, want);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

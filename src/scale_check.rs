//! The scale check (μP's "coord check"): RMS of every parameter, activation and gradient of any
//! model family on any data, per width and per training step ([`scale_check_family`]; one
//! model: [`scale_check_model`]). A model shows its activations to the check by tapping them
//! ([`crate::family::Step::tap`]). Across widths, seeds and parametrizations: [`measure`], then
//! [`render`], [`write_json`] / [`load_json`] and [`plot_reports`].

use std::collections::BTreeMap;
use std::path::Path;

use dfdx::nn::ZeroGrads;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analysis::{record_param_grads, record_params, Kind, ScaleLog};
use crate::data::{Data, Split};
use crate::family::{training_tape, Family, Instance, Options, Step, Trainable, Visitor};
use crate::nn::{AttentionScale, Hyper};
use crate::optim::{OptimConfig, Optimizer};
use crate::params::NormParams;
use crate::{Error, Result};

/// One measurement (the `rows` of the JSON output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Model width.
    pub width: usize,
    /// Training step the measurement was taken at (0 = init).
    pub step: usize,
    /// `param`, `activation` or `grad`.
    pub kind: Kind,
    /// Tensor path or activation name.
    pub name: String,
    /// Root mean square.
    pub rms: f64,
    /// For a parameter: its number of elements times the number of seeds combined in `rms`
    /// (the sample the weight check's tolerance depends on). Absent in reports of earlier
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

/// The loss at one width and step (the `loss` entries of the JSON output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    /// Model width.
    pub width: usize,
    /// Training step.
    pub step: usize,
    /// Mean loss of the step's batch.
    pub value: f64,
}

/// The JSON document: `{"parametrization", "classes", "rows": [...], "loss": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `umup`, `mup` or `sp`.
    pub parametrization: String,
    /// The classes of the data's target ([`Data::classes`]): the loss at init is expected at
    /// `ln(classes)`; `None`, no expectation (a loss other than a cross entropy).
    #[serde(default)]
    pub classes: Option<usize>,
    /// Every measurement.
    pub rows: Vec<Row>,
    /// Loss per width and step.
    pub loss: Vec<LossRow>,
}

/// Settings of a scale check.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Examples per batch.
    pub batch: usize,
    /// Training steps to measure after init (0: init only).
    pub steps: usize,
    /// Seed of init and of the batches (the same batches at every width).
    pub seed: u64,
    /// η for the training steps.
    pub lr: f64,
    /// The family's run-time settings ([`Options`]; e.g. `heads`, by default one per 64
    /// channels).
    pub options: Options,
    /// Attention's output rule ([`AttentionScale`], default `auto`).
    pub attention: AttentionScale,
    /// Whether the training steps train the norms' gains and biases ([`NormParams`]).
    pub norm_params: NormParams,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch: 8,
            steps: 0,
            seed: 0,
            lr: 1.0,
            options: Options::default(),
            attention: AttentionScale::Auto,
            norm_params: NormParams::Auto,
        }
    }
}

/// [`scale_check_model`] for the model of the family `F` at `width`, `depth` and `param`
/// (`umup`, `mup` or `sp`); an error lists `F`'s compiled sizes when it has no such model.
#[allow(clippy::too_many_arguments)]
pub fn scale_check_family<F: Family, D: Data<Batch = F::Batch> + ?Sized>(
    width: usize,
    depth: usize,
    param: &str,
    data: &D,
    settings: &Settings,
    rows: &mut Vec<Row>,
    losses: &mut Vec<LossRow>,
) -> Result<()> {
    struct Check<'a, D: ?Sized> {
        data: &'a D,
        settings: &'a Settings,
        rows: &'a mut Vec<Row>,
        losses: &'a mut Vec<LossRow>,
    }
    impl<D: Data + ?Sized> Visitor<D::Batch> for Check<'_, D> {
        type Output = ();
        fn visit<I: Instance<Batch = D::Batch>>(self) -> Result<()> {
            scale_check_model::<I::Model<Cpu>, D>(
                self.data,
                self.settings,
                I::WIDTH,
                self.rows,
                self.losses,
            )
        }
    }
    F::visit(
        width,
        depth,
        param,
        Check {
            data,
            settings,
            rows,
            losses,
        },
    )
}

/// Measures the model `M` (of width `width`, the rows' label) on `Cpu`: at init and after each
/// of `settings.steps` AdamW steps, the RMS of every parameter, every activation and gradient
/// the model taps ([`crate::family::Step::tap`]), and every parameter gradient, on the training
/// batches of `data` (the same batches at every width).
pub fn scale_check_model<M: Trainable<Cpu>, D: Data<Batch = M::Batch> + ?Sized>(
    data: &D,
    settings: &Settings,
    width: usize,
    rows: &mut Vec<Row>,
    losses: &mut Vec<LossRow>,
) -> Result<()> {
    let dev = Cpu::seed_from_u64(settings.seed);
    let mut model = M::try_build(&dev).map_err(Error::device)?;
    let table = M::param_table()?;
    let optim = OptimConfig {
        norm_params: settings.norm_params,
        ..OptimConfig::adamw(settings.lr)
    };
    let mut opt = Optimizer::for_table(optim, &table)?;
    let hp = Hyper {
        attention: settings.attention,
        ..Hyper::default()
    };
    let mut grads = model.alloc_grads();
    let numel = |name: &str| {
        table
            .get(name)
            .map(|r| r.spec.shape.iter().product::<usize>())
    };
    for step in 0..=settings.steps {
        let b = data.batch(Split::Train, step as u64, settings.batch, settings.seed)?;
        let log = ScaleLog::new();
        record_params(&model, &log)?;
        let mut cx = Step {
            log: Some(&log),
            ..Step::new(&hp, &settings.options)
        };
        let loss = model.loss(&b, training_tape(&dev, grads), &mut cx)?;
        losses.push(LossRow {
            width,
            step,
            value: f64::from(loss.array()),
        });
        grads = loss.backward();
        record_param_grads(&model, &mut grads, &log)?;
        rows.extend(log.records().into_iter().map(|r| Row {
            width,
            step,
            samples: (r.kind == Kind::Param).then(|| numel(&r.name)).flatten(),
            kind: r.kind,
            name: r.name,
            rms: r.rms,
        }));
        if step < settings.steps {
            opt.update(&mut model, &mut grads)?;
        }
        model.zero_grads(&mut grads);
    }
    Ok(())
}

/// RMS by `(step, kind, name)` and width, for tables and checks.
pub fn by_tensor(rows: &[Row]) -> BTreeMap<(usize, Kind, String), BTreeMap<usize, f64>> {
    let mut m: BTreeMap<(usize, Kind, String), BTreeMap<usize, f64>> = BTreeMap::new();
    for r in rows {
        m.entry((r.step, r.kind, r.name.clone()))
            .or_default()
            .insert(r.width, r.rms);
    }
    m
}

/// The u-μP acceptance checks of a report's step-0 rows (spec §10): weights RMS 1 ± 0.02, or
/// ± [`weight_tolerance`] for a small tensor (biases, `*.bias`, start at exactly 0), loss `ln(classes)` ± 0.05 (for data with classes), and every activation and gradient
/// within `[0.8, 1.25]×` of its value at the narrowest width (the logits are exempt: they fall as
/// 1/√width; so are gradients that are zero up to rounding at every width, such as a key bias's,
/// which the softmax cancels) unless its [`finite_width_verdict`] passes it as a finite-width
/// term. Returns the violations.
pub fn umup_violations(report: &Report) -> Vec<String> {
    let mut bad = Vec::new();
    for r in report
        .rows
        .iter()
        .filter(|r| r.step == 0 && r.kind == Kind::Param)
    {
        if r.name.ends_with(".bias") {
            if r.rms != 0.0 {
                bad.push(format!(
                    "width {}: {} has RMS {:.4} (biases start at 0)",
                    r.width, r.name, r.rms
                ));
            }
        } else if (r.rms - 1.0).abs() > weight_tolerance(r.samples) {
            bad.push(format!(
                "width {}: {} has RMS {:.4}",
                r.width, r.name, r.rms
            ));
        }
    }
    if let Some(classes) = report.classes {
        let want = (classes as f64).ln();
        for l in report.loss.iter().filter(|l| l.step == 0) {
            if (l.value - want).abs() > 0.05 {
                bad.push(format!(
                    "width {}: loss at init {:.4}, not ln {classes} = {want:.4}",
                    l.width, l.value
                ));
            }
        }
    }
    for ((kind, name), by_width) in out_of_band(report) {
        if finite_width_verdict(&by_width).passes() {
            continue;
        }
        let Some((&w0, &base)) = by_width.iter().next() else {
            continue;
        };
        for (&w, &v) in &by_width {
            let ratio = v / base;
            if !BAND.contains(&ratio) {
                bad.push(format!(
                    "{kind} {name}: {v:.4} at width {w} is {ratio:.3}× its {base:.4} at width {w0}"
                ));
            }
        }
    }
    bad
}

/// How far a unit-initialised weight's RMS may be from 1: 0.02 (spec §10), or, for a tensor of
/// few entries, three standard deviations of the RMS of `n` N(0, 1) samples, `3/√(2n)` (the
/// RMS of `n` unit normals has a standard deviation of about `1/√(2n)`: 0.028 for a `[10, 64]`
/// readout). `samples`: the entries (times the seeds combined); unknown: 0.02.
pub fn weight_tolerance(samples: Option<usize>) -> f64 {
    samples.map_or(0.02, |n| (3.0 / (2.0 * n.max(1) as f64).sqrt()).max(0.02))
}

/// The band of spec §10: at init every activation and gradient stays within this factor of its
/// value at the narrowest width.
pub const BAND: std::ops::RangeInclusive<f64> = 0.8..=1.25;

/// Below this RMS (at every width) a tensor is zero up to rounding, and [`out_of_band`] leaves it
/// out.
pub const ZERO_RMS: f64 = 1e-6;

/// The activations and gradients (logits exempt) whose step-0 RMS leaves [`BAND`] of their
/// narrowest-width value at some width, with their RMS by width.
pub fn out_of_band(report: &Report) -> Vec<((Kind, String), BTreeMap<usize, f64>)> {
    by_tensor(&report.rows)
        .into_iter()
        .filter(|((step, kind, name), by_width)| {
            let exempt = *step != 0
                || *kind == Kind::Param
                || (*kind == Kind::Activation && name == "logits");
            let zero = by_width.values().all(|v| v.abs() < ZERO_RMS);
            let base = by_width.values().next().copied().unwrap_or(f64::NAN);
            !exempt && !zero && by_width.values().any(|v| !BAND.contains(&(v / base)))
        })
        .map(|((_, kind, name), by_width)| ((kind, name), by_width))
        .collect()
}

/// A least-squares fit of `RMS(width)² = a + b / width` to one tensor's RMS across widths.
///
/// This is the form of a finite-width correction: a term that falls as `1/width` on top of a
/// width-independent limit `√a`. It tells such a correction (which every parametrization shares
/// and which vanishes as the model widens) apart from a scaling-rule error, which is a power law
/// in width (μP's gradients fall as `1/width`, SP's as `1/√width`) and does not fit this form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FiniteWidthFit {
    /// `√a`: the RMS the fit converges to as width → ∞ (NaN when the fit's `a ≤ 0`, i.e. the
    /// data fall towards zero: no width-independent limit).
    pub limit: f64,
    /// The narrowest width's fitted RMS over the limit: `√(1 + b / (a · width_min))`.
    pub narrowest_over_limit: f64,
    /// The largest relative deviation of the fitted RMS from a measured one.
    pub max_residual: f64,
    /// `a` over the widest width's measured RMS²: the share of that RMS² the width-independent
    /// limit carries (1 when the tensor has converged; ≤ 0 when the fit has no positive limit).
    pub limit_share: f64,
}

impl FiniteWidthFit {
    /// Whether the limit is positive with a margin: at least [`FIT_MIN_LIMIT_SHARE`] of the
    /// widest width's RMS².
    pub fn has_limit(&self) -> bool {
        self.limit_share >= FIT_MIN_LIMIT_SHARE
    }
}

/// Fits `RMS² = a + b / width` by least squares (see [`FiniteWidthFit`]); `None` with fewer than
/// three widths or a non-positive width or RMS.
pub fn finite_width_fit(by_width: &BTreeMap<usize, f64>) -> Option<FiniteWidthFit> {
    let usable = |(&w, &v): (&usize, &f64)| w > 0 && v.is_finite() && v > 0.0;
    if by_width.len() < 3 || !by_width.iter().all(usable) {
        return None;
    }
    let pts: Vec<(f64, f64)> = by_width
        .iter()
        .map(|(&w, &v)| (1.0 / w as f64, v * v))
        .collect();
    let n = pts.len() as f64;
    let (mx, my) = pts
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x / n, sy + y / n));
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = sxy / sxx;
    let a = my - b * mx;
    let max_residual = pts
        .iter()
        .map(|(x, y)| ((a + b * x).max(0.0).sqrt() / y.sqrt() - 1.0).abs())
        .fold(0.0, f64::max);
    let x_narrowest = pts[0].0;
    let limit_share = a / pts[pts.len() - 1].1;
    Some(if a > 0.0 {
        FiniteWidthFit {
            limit: a.sqrt(),
            narrowest_over_limit: (1.0 + b * x_narrowest / a).max(0.0).sqrt(),
            max_residual,
            limit_share,
        }
    } else {
        FiniteWidthFit {
            limit: f64::NAN,
            narrowest_over_limit: f64::INFINITY,
            max_residual,
            limit_share,
        }
    })
}

/// The fewest widths a [`Verdict::FiniteWidth`] needs (issue 15's decision: a line through two
/// points always fits).
pub const FIT_MIN_WIDTHS: usize = 3;

/// The largest relative residual of a [`finite_width_fit`] that passes as a finite-width term.
pub const FIT_TOLERANCE: f64 = 0.10;

/// The least [`FiniteWidthFit::limit_share`] of a positive limit. A power law in width has the
/// limit 0, but with seed noise its fitted `a` scatters around 0: `a > 0` alone passes a
/// `1/√width` law (SP's gradients under a μP rule) 20–51% of the time at 3–6% noise per width.
/// Requiring the limit to carry half of the widest width's RMS² passes it at most 2% of the
/// time, and keeps 98–100% (3% noise) or 78–96% (6%) of `1/width` terms whose width-64 RMS is up
/// to 1.7× the limit (`docs/attention/verdict_sim.py`, `docs/results.md` §9e). A weak power law
/// (`width^-¼`) is a finite-width term over a narrow range of widths; more widths tell them apart.
pub const FIT_MIN_LIMIT_SHARE: f64 = 0.5;

/// The scale check's verdict on one tensor outside [`BAND`] (issue 26, item 4; spec §10).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Passes as a finite-width term: `RMS² = a + b/width` fits every width within
    /// [`FIT_TOLERANCE`] with a positive limit `a` (at least [`FIT_MIN_LIMIT_SHARE`] of the
    /// widest width's RMS²), so the drift vanishes as the model widens.
    FiniteWidth(FiniteWidthFit),
    /// Fails: fewer than [`FIT_MIN_WIDTHS`] widths (the number measured), so no fit can tell a
    /// finite-width term from a scaling error.
    TooFewWidths(usize),
    /// Fails: no positive limit (a power law in width) or the fit misses a width by more than
    /// [`FIT_TOLERANCE`].
    NotFiniteWidth(FiniteWidthFit),
}

impl Verdict {
    /// Whether the tensor passes the u-μP check despite leaving the band.
    pub fn passes(&self) -> bool {
        matches!(self, Verdict::FiniteWidth(_))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fit = |f: &mut std::fmt::Formatter<'_>, x: &FiniteWidthFit| {
            if x.limit.is_nan() {
                write!(f, "RMS² = a + b/width: a ≤ 0")?;
            } else {
                write!(
                    f,
                    "RMS² = a + b/width: limit √a {:.4} ({:.0}% of the widest width's RMS²), narrowest width {:.3}× the limit",
                    x.limit,
                    100.0 * x.limit_share,
                    x.narrowest_over_limit,
                )?;
            }
            write!(f, ", largest residual {:.1}%", 100.0 * x.max_residual)
        };
        match self {
            Verdict::FiniteWidth(x) => {
                write!(f, "passes as a finite-width term (")?;
                fit(f, x)?;
                write!(f, ")")
            }
            Verdict::TooFewWidths(n) => write!(
                f,
                "fails: {n} widths, a finite-width term needs a fit over at least {FIT_MIN_WIDTHS}"
            ),
            Verdict::NotFiniteWidth(x) => {
                let why = if !x.has_limit() {
                    "no positive limit (a power law in width)"
                } else {
                    "the fit misses a width by more than 10%: no 1/width trend (seed noise at one width, or a scaling error; --repeats averages more seeds)"
                };
                write!(f, "fails: {why} (")?;
                fit(f, x)?;
                write!(f, ")")
            }
        }
    }
}

/// The [`Verdict`] on a tensor's RMS by width (measured widths with a positive, finite RMS).
pub fn finite_width_verdict(by_width: &BTreeMap<usize, f64>) -> Verdict {
    match finite_width_fit(by_width) {
        None => Verdict::TooFewWidths(by_width.len()),
        Some(x) if x.has_limit() && x.max_residual <= FIT_TOLERANCE => Verdict::FiniteWidth(x),
        Some(x) => Verdict::NotFiniteWidth(x),
    }
}

/// A scale check across widths and parametrizations ([`measure`]): what the `scale_check`
/// example's flags set.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Widths to measure (in any order; the reports list them ascending).
    pub widths: Vec<usize>,
    /// Number of layers.
    pub depth: usize,
    /// Parametrizations (`umup`, `mup`, `sp`): one [`Report`] each, in this order.
    pub params: Vec<String>,
    /// Seeds per width (`settings.seed`, `settings.seed + 1`, ...); their RMS are combined as
    /// √(mean of squares) and their losses averaged.
    pub repeats: u64,
    /// Batch, steps, seed and head dimension of every check. Its `lr` is replaced by `lr`.
    pub settings: Settings,
    /// η of the training steps; `None`: [`default_lr`] of each parametrization.
    pub lr: Option<f64>,
}

impl Default for Measurement {
    /// The `scale_check` example's defaults: u-μP at widths 64 to 1024, depth 4, one seed, at
    /// init only.
    fn default() -> Self {
        Measurement {
            widths: vec![64, 128, 256, 512, 1024],
            depth: 4,
            params: vec!["umup".into()],
            repeats: 1,
            settings: Settings::default(),
            lr: None,
        }
    }
}

/// The η of a scale check's training steps when none is given: 1 for u-μP, 2⁻⁷ for μP and SP.
pub fn default_lr(param: &str) -> f64 {
    if param == "umup" {
        1.0
    } else {
        2f64.powi(-7)
    }
}

/// Runs the scale check ([`scale_check_family`]) of the family `F` in every parametrization of
/// `m` at every width, `m.repeats` seeds each, and returns one [`Report`] per parametrization
/// (rows by ascending width, each the repeats' √(mean of squares); losses their mean).
/// `progress(param, width)` is called before each width.
pub fn measure<F: Family, D: Data<Batch = F::Batch> + ?Sized>(
    data: &D,
    m: &Measurement,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Vec<Report>> {
    let repeats = m.repeats.max(1);
    let mut widths = m.widths.clone();
    widths.sort_unstable();
    let mut reports = Vec::new();
    for param in &m.params {
        let settings = Settings {
            lr: m.lr.unwrap_or_else(|| default_lr(param)),
            ..m.settings.clone()
        };
        let (mut rows, mut loss) = (Vec::new(), Vec::new());
        for &w in &widths {
            progress(param, w);
            let (mut r_rows, mut r_loss) = (Vec::new(), Vec::new());
            for r in 0..repeats {
                let s = Settings {
                    seed: settings.seed + r,
                    ..settings.clone()
                };
                scale_check_family::<F, D>(w, m.depth, param, data, &s, &mut r_rows, &mut r_loss)?;
            }
            rows.extend(average(r_rows, repeats as usize));
            loss.extend(average_loss(r_loss, repeats as usize));
        }
        reports.push(Report {
            parametrization: param.clone(),
            classes: data.classes(),
            rows,
            loss,
        });
    }
    Ok(reports)
}

/// Combines the rows of `repeats` seeds measured one after the other (the same tensors in the
/// same order each time): √(mean of squares) of the repeats of each (width, step, kind, name),
/// in first-seen order. What [`measure`] reports for `repeats > 1`.
pub fn average(rows: Vec<Row>, repeats: usize) -> Vec<Row> {
    let repeats = repeats.max(1);
    let n = rows.len() / repeats;
    let mut out: Vec<Row> = rows[..n].to_vec();
    for (i, o) in out.iter_mut().enumerate() {
        let ss: f64 = (0..repeats).map(|r| rows[r * n + i].rms.powi(2)).sum();
        o.rms = (ss / repeats as f64).sqrt();
        o.samples = o.samples.map(|s| s * repeats);
    }
    out
}

/// The mean over `repeats` seeds measured one after the other of each (width, step) loss, in
/// first-seen order (as [`average`]).
pub fn average_loss(loss: Vec<LossRow>, repeats: usize) -> Vec<LossRow> {
    let repeats = repeats.max(1);
    let n = loss.len() / repeats;
    let mut out: Vec<LossRow> = loss[..n].to_vec();
    for (i, o) in out.iter_mut().enumerate() {
        o.value = (0..repeats).map(|r| loss[r * n + i].value).sum::<f64>() / repeats as f64;
    }
    out
}

/// A report as text: a header line `== param ==`, then at init (and after the last step, if
/// any) an aligned table with one row per tensor (kind, name), one column per width, the spread
/// max/min across widths and a loss row; for u-μP, the checks of [`umup_violations`] and the
/// [`finite_width_verdict`] on every tensor [`out_of_band`]. Starts with a blank line.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let widths: Vec<usize> = report
        .rows
        .iter()
        .map(|r| r.width)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let steps = report.rows.iter().map(|r| r.step).max().unwrap_or(0);
    let mut o = String::new();
    writeln!(o, "\n== {} ==", report.parametrization).ok();
    let table = by_tensor(&report.rows);
    let name_w = table
        .keys()
        .map(|(_, _, n)| n.len())
        .max()
        .unwrap_or(4)
        .max(4);
    for step in [0, steps]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        writeln!(o, "step {step}").ok();
        write!(o, "{:<10} {:<name_w$}", "kind", "name").ok();
        for w in &widths {
            write!(o, " {:>9}", format!("w={w}")).ok();
        }
        writeln!(o, " {:>8}", "spread").ok();
        for ((s, kind, name), by_w) in &table {
            if *s != step {
                continue;
            }
            write!(o, "{:<10} {:<name_w$}", kind.to_string(), name).ok();
            for w in &widths {
                match by_w.get(w) {
                    Some(v) => write!(o, " {v:>9.4}"),
                    None => write!(o, " {:>9}", "-"),
                }
                .ok();
            }
            let (lo, hi) = by_w
                .values()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            writeln!(o, " {:>8.3}", hi / lo).ok();
        }
        write!(o, "{:<10} {:<name_w$}", "loss", "").ok();
        for w in &widths {
            let l = report
                .loss
                .iter()
                .find(|l| l.width == *w && l.step == step)
                .map_or(f64::NAN, |l| l.value);
            write!(o, " {l:>9.4}").ok();
        }
        writeln!(o).ok();
    }
    if report.parametrization == "umup" {
        let bad = umup_violations(report);
        if bad.is_empty() {
            let loss = report
                .classes
                .map_or(String::new(), |c| format!("loss ln {c} ± 0.05, "));
            writeln!(o, "u-μP checks (spec §10): every weight RMS 1 ± 0.02, {loss}every activation and gradient within [0.8, 1.25]× of its narrowest-width value or a finite-width term (logits exempt): all pass").ok();
        } else {
            writeln!(o, "u-μP checks (spec §10): {} violations", bad.len()).ok();
            for b in bad {
                writeln!(o, "  {b}").ok();
            }
        }
        let flagged = out_of_band(report);
        if !flagged.is_empty() {
            writeln!(o, "verdicts on the tensors out of the band: a tensor passes as a finite-width term when RMS² = a + b/width fits it within 10% over at least 3 widths with a positive limit a (at least half of the widest width's RMS²); a power law in width (a scaling-rule error) fails:").ok();
            for ((kind, name), by_w) in flagged {
                writeln!(o, "  {kind} {name}: {}", finite_width_verdict(&by_w)).ok();
            }
            writeln!(o, "note: at width 64 a tensor's RMS varies from seed to seed by about as much as the band (average more seeds with --repeats). Attention's q/k-path gradients carry a finite-width term, in the reference library too (docs/results.md §1b, §1c, §7a, §9e)").ok();
        }
    }
    o
}

/// Writes `reports` to `path` as pretty JSON: the one [`Report`] object when there is one, an
/// array of them otherwise (what [`load_json`] reads back).
pub fn write_json(path: &Path, reports: &[Report]) -> Result<()> {
    let text = if reports.len() == 1 {
        serde_json::to_string_pretty(&reports[0])
    } else {
        serde_json::to_string_pretty(reports)
    }
    .map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The reports of a file written by [`write_json`]: one object, or an array of them.
pub fn load_json(path: &Path) -> Result<Vec<Report>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_str::<Vec<Report>>(&text)
        .or_else(|_| serde_json::from_str::<Report>(&text).map(|r| vec![r]))
        .map_err(|e| {
            Error::Invalid(format!(
                "{}: not a scale-check report (as written by --json): {e}",
                path.display()
            ))
        })
}

/// Draws `reports` into a PNG at `path` (creating its directory): RMS vs width, log-log, one
/// series per tensor; for each report one row of panels (param, activation, grad) at init and,
/// when it measured training steps, one after the last step.
pub fn plot_reports(path: &Path, reports: &[Report]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    }
    let mut panels = Vec::new();
    for r in reports {
        let last = r.rows.iter().map(|row| row.step).max().unwrap_or(0);
        let steps: std::collections::BTreeSet<usize> = [0, last].into();
        let table = by_tensor(&r.rows);
        for at in steps {
            for kind in [Kind::Param, Kind::Activation, Kind::Grad] {
                let series = table
                    .iter()
                    .filter(|((step, k, _), _)| *step == at && *k == kind)
                    .map(|((_, _, name), by_w)| {
                        let pts = by_w.iter().map(|(&w, &v)| (w as f64, v)).collect();
                        (name.clone(), pts)
                    })
                    .collect();
                let when = match at {
                    0 => "at init".to_string(),
                    n => format!("after {n} steps"),
                };
                panels.push(crate::plot::Panel {
                    title: format!("{}: {kind} RMS {when}", r.parametrization),
                    x_label: "width".into(),
                    y_label: "RMS".into(),
                    series,
                    log_y: true,
                    legend: false,
                });
            }
        }
    }
    crate::plot::draw(path, &panels, 3)
}

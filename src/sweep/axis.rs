//! η transfer along an axis other than width: depth, batch size or training length.
//!
//! μP's promise is about width; practitioners also change depth, batch size and the number of
//! steps between the proxy they sweep and the model they train. An [`AxisSweep`] runs the η
//! stage of one [`Sweep`] (one width, every parametrization, every seed) at each value of an
//! [`Axis`], in `out/<axis><value>/`, and reports where each parametrization's best η lands
//! along the axis and how many grid steps it drifts (`lr_sweep --vary depth=2,4,8,16`).
//!
//! ```ignore
//! let base = Sweep { widths: vec![128], depth: 4, out: "runs/depth".into(), ..Sweep::default() };
//! let axis = AxisSweep::new(Axis::Depth, vec![2, 4, 8, 16], base)?;
//! let summary = axis.run(train, |_| {})?;   // or axis.plan(...), axis.collect()
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::{io, Event, Point, Stage, Sweep};
use crate::family::Family;
use crate::plot::{self, Panel};
use crate::train::{RunOptions, Summary, TrainConfig};
use crate::{Error, Result};

/// A setting of the runs, other than width, along which η transfer is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Number of layers ([`Sweep::depth`]).
    Depth,
    /// Sequences per batch ([`Sweep::batch`]).
    Batch,
    /// Training length in optimizer steps ([`Sweep::steps`]; warm-up stays the same fraction).
    Steps,
}

impl Axis {
    /// Every axis.
    pub const ALL: [Axis; 3] = [Axis::Depth, Axis::Batch, Axis::Steps];

    /// `depth`, `batch` or `steps`.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Depth => "depth",
            Axis::Batch => "batch",
            Axis::Steps => "steps",
        }
    }

    /// Parses `--vary` values: `depth=2,4,8,16`, `batch=4,8,16`, `steps=150,300,600`.
    pub fn parse(spec: &str) -> Result<(Axis, Vec<usize>)> {
        let bad = |why: &str| Error::Invalid(format!("--vary {spec}: {why}"));
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected <axis>=<v1>,<v2>,... (axis: depth, batch or steps)"))?;
        let axis = Axis::ALL
            .into_iter()
            .find(|a| a.name() == name.trim())
            .ok_or_else(|| bad("the axis must be depth, batch or steps"))?;
        let values = values
            .split(',')
            .map(|v| v.trim().parse::<usize>().ok().filter(|&v| v > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("every value must be a positive integer"))?;
        Ok((axis, values))
    }

    /// `sweep`'s value of this axis.
    pub fn get(self, sweep: &Sweep) -> usize {
        match self {
            Axis::Depth => sweep.depth,
            Axis::Batch => sweep.batch,
            Axis::Steps => sweep.steps,
        }
    }

    /// `sweep` with this axis at `value`, its output in `<sweep.out>/<axis><value>`.
    pub fn at(self, sweep: &Sweep, value: usize) -> Sweep {
        let mut s = sweep.clone();
        match self {
            Axis::Depth => s.depth = value,
            Axis::Batch => s.batch = value,
            Axis::Steps => s.steps = value,
        }
        s.out = sweep.out.join(format!("{}{value}", self.name()));
        s
    }
}

/// The η stage of a one-width [`Sweep`] at every value of an [`Axis`] (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisSweep {
    /// The axis.
    pub axis: Axis,
    /// Its values, in the order the report's drift reads them (first → last).
    pub values: Vec<usize>,
    /// Everything else; its value of `axis` is ignored, its `out` holds one directory per value.
    pub base: Sweep,
}

impl AxisSweep {
    /// Checks that `base` has exactly one width and that `values` are distinct (and at least
    /// two), then [`Sweep::validate`] at every value.
    pub fn new(axis: Axis, values: Vec<usize>, base: Sweep) -> Result<Self> {
        if base.widths.len() != 1 {
            return Err(Error::Invalid(format!(
                "--vary {}: give exactly one width (--widths), got {:?}",
                axis.name(),
                base.widths
            )));
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != values.len() || values.len() < 2 {
            return Err(Error::Invalid(format!(
                "--vary {}: expected at least two distinct values, got {values:?}",
                axis.name()
            )));
        }
        let s = AxisSweep { axis, values, base };
        for (_, sweep) in s.sweeps() {
            sweep.validate()?;
        }
        Ok(s)
    }

    /// The sweep at each value ([`Axis::at`]).
    pub fn sweeps(&self) -> Vec<(usize, Sweep)> {
        self.values
            .iter()
            .map(|&v| (v, self.axis.at(&self.base, v)))
            .collect()
    }

    /// Errors unless `F` was compiled at every size the sweeps need.
    pub fn check_family<F: Family>(&self) -> Result<()> {
        self.sweeps()
            .iter()
            .try_for_each(|(_, s)| s.check_family::<F>())
    }

    /// Trains the pending η points of every value in turn ([`Sweep::run_points`]), then writes
    /// the report ([`AxisSweep::report`]) and returns its summary.
    pub fn run<T, O>(&self, train: T, observe: O) -> Result<String>
    where
        T: Fn(&TrainConfig, &RunOptions) -> Result<Summary> + Sync,
        O: Fn(Event<'_>) + Sync,
    {
        for (_, s) in self.sweeps() {
            let points = s.eta_points();
            observe(Event::Stage {
                stage: Stage::Eta,
                points: points.len(),
            });
            s.run_points(&points, &train, &observe)?;
        }
        self.report()
    }

    /// One shell command per pending η point of every value ([`Sweep::plan`]).
    pub fn plan(&self, command: impl Fn(&Point, &Path) -> String) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for (_, s) in self.sweeps() {
            all.extend(s.plan(&[Stage::Eta], &command)?);
        }
        Ok(all)
    }

    /// Trains nothing: [`AxisSweep::report`] of what finished.
    pub fn collect(&self) -> Result<String> {
        self.report()
    }

    /// Writes `<out>/axis.csv` (`axis,value,param,log2_lr,mean_final_val_loss`),
    /// `<out>/transfer_<axis>.png` (loss vs η, one curve per value, one panel per
    /// parametrization) and `<out>/summary.md`: the best η of each parametrization at each value,
    /// and its drift in grid steps from the first value to the last and over all values
    /// ([`drift`]). Each value's own reports are in its directory ([`Sweep::report`]).
    pub fn report(&self) -> Result<String> {
        // The mean final loss (over the seeds) of every finished η point, by parametrization,
        // axis value and log2 η; each value's own reports on the way.
        let mut means = BTreeMap::new();
        for (v, s) in self.sweeps() {
            let results = s.results(&s.eta_points())?;
            if s.out.exists() {
                s.report(&results)?;
            }
            for ((param, w, e), l) in s.eta_means(&results) {
                if let (true, Some(l)) = (w == s.widths[0], l) {
                    means.insert((param, v, e), l);
                }
            }
        }
        let out = &self.base.out;
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let name = self.axis.name();
        let mut csv = String::from("axis,value,param,log2_lr,mean_final_val_loss\n");
        for ((param, v, e), l) in &means {
            writeln!(csv, "{name},{v},{param},{e},{l}").ok();
        }
        std::fs::write(out.join("axis.csv"), csv).map_err(|e| io(out, e))?;

        let seeds = match self.base.seeds {
            1 => String::new(),
            n => format!(", mean over {n} seeds"),
        };
        let mut summary = format!(
            "## η transfer across {name} (width {}{seeds})\n\n| {name} |",
            self.base.widths[0]
        );
        for p in &self.base.params {
            write!(summary, " {p}: best η (loss) |").ok();
        }
        summary += "\n|---:|";
        summary += &"---|".repeat(self.base.params.len());
        summary += "\n";
        let mut best: BTreeMap<&str, Vec<Option<i32>>> = BTreeMap::new();
        for &v in &self.values {
            write!(summary, "| {v} |").ok();
            for p in &self.base.params {
                // A best η only once every point of the grid finished.
                let grid = self.base.lr_exps(p).len();
                let done = means
                    .range((p.clone(), v, i32::MIN)..=(p.clone(), v, i32::MAX))
                    .count();
                let b = best_exp(&means, p, v).filter(|_| done == grid);
                let exps = self.base.lr_exps(p);
                best.entry(p)
                    .or_default()
                    .push(b.and_then(|b| super::grid_index(exps, b.0)));
                match b {
                    Some((e, l)) => write!(summary, " 2^{e} ({l:.4}) |").ok(),
                    None => write!(summary, " - ({done} of {grid} points) |").ok(),
                };
            }
            summary += "\n";
        }
        write!(summary, "| drift |").ok();
        for p in &self.base.params {
            match drift(&best[p.as_str()]) {
                Some((end, range)) => {
                    write!(summary, " {end:+} grid steps first → last; range {range} |").ok()
                }
                None => write!(summary, " - |").ok(),
            };
        }
        summary += "\n";

        let panels: Vec<Panel> = self
            .base
            .params
            .iter()
            .map(|p| Panel {
                title: format!("{p}: final validation loss vs η across {name}{seeds}"),
                x_label: "η".into(),
                y_label: "validation loss".into(),
                series: self
                    .values
                    .iter()
                    .map(|&v| {
                        let pts = means
                            .range((p.clone(), v, i32::MIN)..=(p.clone(), v, i32::MAX))
                            .map(|((_, _, e), l)| (2f64.powi(*e), *l))
                            .collect();
                        (format!("{name} {v}"), pts)
                    })
                    .collect(),
                log_y: false,
                legend: true,
            })
            .collect();
        plot::draw(
            &out.join(format!("transfer_{name}.png")),
            &panels,
            panels.len(),
        )?;
        std::fs::write(out.join("summary.md"), &summary).map_err(|e| io(out, e))?;
        Ok(summary)
    }
}

/// The log2 η with the lowest finite mean loss of `param` at axis value `v`, and that loss.
fn best_exp(
    means: &BTreeMap<(String, usize, i32), f64>,
    param: &str,
    v: usize,
) -> Option<(i32, f64)> {
    means
        .range((param.to_string(), v, i32::MIN)..=(param.to_string(), v, i32::MAX))
        .filter(|(_, l)| l.is_finite())
        .map(|((_, _, e), l)| (*e, *l))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The drift of a sequence of best η's given as positions in their grid
/// ([`super::grid_index`]), in grid steps: `(last − first, max − min)`; `None` unless every
/// value has a best η.
pub fn drift(best: &[Option<i32>]) -> Option<(i32, i32)> {
    let best: Vec<i32> = best.iter().copied().collect::<Option<_>>()?;
    let (first, last) = (*best.first()?, *best.last()?);
    let (lo, hi) = (*best.iter().min()?, *best.iter().max()?);
    Some((last - first, hi - lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_the_axis_and_refuses_bad_specs() {
        assert_eq!(
            Axis::parse("depth=2,4,8,16").unwrap(),
            (Axis::Depth, vec![2, 4, 8, 16])
        );
        assert_eq!(
            Axis::parse("batch= 4, 16").unwrap(),
            (Axis::Batch, vec![4, 16])
        );
        for bad in ["width=1,2", "depth", "steps=0,10", "batch=4,x"] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_value_is_its_own_sweep_in_its_own_directory() {
        let base = Sweep {
            widths: vec![128],
            out: "runs/x".into(),
            steps: 300,
            warmup_fraction: 0.1,
            ..Sweep::default()
        };
        let a = AxisSweep::new(Axis::Steps, vec![150, 600], base.clone()).unwrap();
        let s = a.sweeps();
        assert_eq!(s[1].1.out, Path::new("runs/x/steps600"));
        let p = &s[1].1.eta_points()[0];
        // The warm-up stays a fraction of the run.
        assert_eq!((p.cfg.steps, p.cfg.warmup), (600, 60));
        assert_eq!(Axis::Depth.at(&base, 16).eta_points()[0].cfg.depth, 16);
        assert_eq!(Axis::Batch.at(&base, 32).eta_points()[0].cfg.batch, 32);
        // One width only; distinct values.
        let two = Sweep {
            widths: vec![64, 128],
            ..base.clone()
        };
        assert!(AxisSweep::new(Axis::Depth, vec![2, 4], two).is_err());
        assert!(AxisSweep::new(Axis::Depth, vec![2, 2], base.clone()).is_err());
        assert!(AxisSweep::new(Axis::Depth, vec![2], base).is_err());
    }

    #[test]
    fn drift_counts_grid_steps_first_to_last_and_over_the_range() {
        assert_eq!(drift(&[Some(0), Some(-1), Some(1)]), Some((1, 2)));
        assert_eq!(drift(&[Some(-8), Some(-9), Some(-10)]), Some((-2, 2)));
        assert_eq!(drift(&[Some(0), None]), None);
    }
}

//! Learning-rate schedules. A schedule scales only the global η; the per-parameter u-μP factors
//! and the independent weight decay follow it (spec §7.3).

use crate::error::{Error, Result};

/// The shape of the decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Decay {
    /// Keep η after warm-up.
    #[default]
    Constant,
    /// Cosine from η down to `final_fraction·η` at `total_steps`.
    Cosine,
    /// Linear from η down to `final_fraction·η` at `total_steps`.
    Linear,
}

/// Warm-up then decay: `factor(step)` multiplies η at update number `step` (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Linear warm-up length: update `s < warmup_steps` uses `(s+1)/warmup_steps`.
    pub warmup_steps: usize,
    /// The step at which the decay reaches `final_fraction` (ignored by [`Decay::Constant`]).
    pub total_steps: usize,
    /// Decay shape after warm-up.
    pub decay: Decay,
    /// Final LR as a fraction of η.
    pub final_fraction: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::constant()
    }
}

impl LrSchedule {
    /// A constant η, no warm-up.
    pub fn constant() -> Self {
        LrSchedule {
            warmup_steps: 0,
            total_steps: 0,
            decay: Decay::Constant,
            final_fraction: 1.0,
        }
    }

    /// Linear warm-up over `warmup` steps, then cosine decay to `final_fraction·η` at `total`
    /// (the reference demo's schedule with `final_fraction = 0`).
    pub fn warmup_cosine(warmup: usize, total: usize, final_fraction: f64) -> Result<Self> {
        LrSchedule {
            warmup_steps: warmup,
            total_steps: total,
            decay: Decay::Cosine,
            final_fraction,
        }
        .validated()
    }

    /// Linear warm-up, then linear decay to `final_fraction·η` at `total`.
    pub fn warmup_linear(warmup: usize, total: usize, final_fraction: f64) -> Result<Self> {
        LrSchedule {
            warmup_steps: warmup,
            total_steps: total,
            decay: Decay::Linear,
            final_fraction,
        }
        .validated()
    }

    /// Checks the fields: `final_fraction` in `[0, 1]`, `total_steps ≥ warmup_steps` when decaying.
    pub fn validated(self) -> Result<Self> {
        if !(0.0..=1.0).contains(&self.final_fraction) {
            return Err(Error::InvalidValue {
                what: "final LR fraction",
                value: self.final_fraction,
                reason: "must be in [0, 1]",
            });
        }
        if self.decay != Decay::Constant && self.total_steps < self.warmup_steps {
            return Err(Error::InvalidValue {
                what: "total steps",
                value: self.total_steps as f64,
                reason: "must be at least the warm-up length",
            });
        }
        Ok(self)
    }

    /// The η multiplier at update `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let f = self.final_fraction;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => f + (1.0 - f) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => 1.0 - (1.0 - f) * progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule::warmup_cosine(4, 14, 0.0).unwrap();
        assert_eq!(s.factor(0), 0.25);
        assert_eq!(s.factor(3), 1.0);
        assert_eq!(s.factor(4), 1.0);
        assert!((s.factor(9) - 0.5).abs() < 1e-12);
        assert!(s.factor(14).abs() < 1e-12);
        assert!(s.factor(100).abs() < 1e-12);
    }

    #[test]
    fn linear_and_constant() {
        let s = LrSchedule::warmup_linear(0, 10, 0.1).unwrap();
        assert!((s.factor(5) - 0.55).abs() < 1e-12);
        assert_eq!(LrSchedule::constant().factor(1000), 1.0);
        assert!(LrSchedule::warmup_cosine(10, 5, 0.0).is_err());
        assert!(LrSchedule::warmup_cosine(1, 5, 1.5).is_err());
    }
}

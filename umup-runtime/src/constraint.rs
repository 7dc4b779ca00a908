//! Scale constraints (spec §1.2, §1.4).
//!
//! A unit-scaled op has an output scale and one backward scale per input. A constraint replaces
//! **every** scale of the group by one value so that forward and backward agree where the graph
//! needs it (inside residual branches). Weight-gradient scales are never constrained.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A scale constraint, as named in the reference library (`unit_scaling.constraints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Constraint {
    /// No constraint: each scale keeps its own value (reference: `None` or `""`).
    None,
    /// Geometric mean `(∏ s)^(1/n)` (the Unit Scaling paper's default).
    Gmean,
    /// Harmonic mean `n / Σ(1/s)` (Glorot).
    Hmean,
    /// Arithmetic mean `Σ s / n`.
    Amean,
    /// Every scale becomes the output scale `s[0]`: the u-μP default everywhere.
    #[default]
    ToOutputScale,
    /// Every scale becomes the input-gradient scale `s[1]` (binary scale groups only).
    ToGradInputScale,
    /// Every scale becomes the left-gradient scale `s[1]` (ternary scale groups only).
    ToLeftGradScale,
    /// Every scale becomes the right-gradient scale `s[2]` (ternary scale groups only).
    ToRightGradScale,
}

impl Constraint {
    /// All constraints, in the order the reference lists them.
    pub const ALL: [Constraint; 8] = [
        Constraint::None,
        Constraint::Gmean,
        Constraint::Hmean,
        Constraint::Amean,
        Constraint::ToOutputScale,
        Constraint::ToGradInputScale,
        Constraint::ToLeftGradScale,
        Constraint::ToRightGradScale,
    ];

    /// A small integer naming the constraint (its index in [`Constraint::ALL`]), used as a const
    /// generic by layer types.
    pub const fn code(self) -> u8 {
        match self {
            Constraint::None => 0,
            Constraint::Gmean => 1,
            Constraint::Hmean => 2,
            Constraint::Amean => 3,
            Constraint::ToOutputScale => 4,
            Constraint::ToGradInputScale => 5,
            Constraint::ToLeftGradScale => 6,
            Constraint::ToRightGradScale => 7,
        }
    }

    /// The constraint with [`Self::code`] `c`. Codes come from `code()` (the macro validates
    /// names at compile time); an out-of-range code means the u-μP default, `to_output_scale`.
    pub const fn from_code(c: u8) -> Self {
        match c {
            0 => Constraint::None,
            1 => Constraint::Gmean,
            2 => Constraint::Hmean,
            3 => Constraint::Amean,
            5 => Constraint::ToGradInputScale,
            6 => Constraint::ToLeftGradScale,
            7 => Constraint::ToRightGradScale,
            _ => Constraint::ToOutputScale,
        }
    }

    /// The reference library's name (`"none"` for no constraint).
    pub fn name(self) -> &'static str {
        match self {
            Constraint::None => "none",
            Constraint::Gmean => "gmean",
            Constraint::Hmean => "hmean",
            Constraint::Amean => "amean",
            Constraint::ToOutputScale => "to_output_scale",
            Constraint::ToGradInputScale => "to_grad_input_scale",
            Constraint::ToLeftGradScale => "to_left_grad_scale",
            Constraint::ToRightGradScale => "to_right_grad_scale",
        }
    }

    /// Parses an optional name as the reference does: `None` or `""` means no constraint.
    pub fn from_option(name: Option<&str>) -> Result<Self> {
        match name {
            None => Ok(Constraint::None),
            Some(s) => s.parse(),
        }
    }

    /// Applies the constraint to a group of scales `[output, grad_input_0, ...]` and returns the
    /// constrained group (`apply_constraint` in the reference): every entry becomes `f(scales)`.
    ///
    /// Errors if a scale is not finite and positive, or if a selector constraint needs a scale the
    /// group does not have (`to_grad_input_scale` needs exactly 2, the left/right selectors exactly 3).
    pub fn apply<const N: usize>(self, scales: [f64; N]) -> Result<[f64; N]> {
        for &s in &scales {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::InvalidValue {
                    what: "op scale",
                    value: s,
                    reason: "scales must be finite and > 0",
                });
            }
        }
        let n = N as f64;
        let v = match self {
            Constraint::None => return Ok(scales),
            Constraint::Gmean => scales.iter().product::<f64>().powf(1.0 / n),
            Constraint::Hmean => n / scales.iter().map(|s| 1.0 / s).sum::<f64>(),
            Constraint::Amean => scales.iter().sum::<f64>() / n,
            Constraint::ToOutputScale => scales[0],
            Constraint::ToGradInputScale => self.select::<N>(&scales, 2, 1)?,
            Constraint::ToLeftGradScale => self.select::<N>(&scales, 3, 1)?,
            Constraint::ToRightGradScale => self.select::<N>(&scales, 3, 2)?,
        };
        Ok([v; N])
    }

    fn select<const N: usize>(self, scales: &[f64; N], arity: usize, index: usize) -> Result<f64> {
        if N == arity {
            Ok(scales[index])
        } else {
            Err(Error::ConstraintArity {
                constraint: self.name(),
                needed: arity,
                got: N,
            })
        }
    }
}

impl FromStr for Constraint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "none" | "None" | "null" => Ok(Constraint::None),
            _ => Constraint::ALL
                .into_iter()
                .find(|c| c.name() == s)
                .ok_or_else(|| Error::UnknownConstraint(s.to_string())),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-7 * b.abs()
    }

    // Values from the reference's tests/test_constraints.py (spec §1.2).
    #[test]
    fn reference_values() {
        assert_eq!(Constraint::Gmean.apply([8.0, 2.0]).unwrap(), [4.0, 4.0]);
        let g = Constraint::Gmean.apply([12.75, 55.0, 0.001]).unwrap();
        assert!(close(g[0], 0.8884322) && g[0] == g[2]);
        assert!(close(Constraint::Hmean.apply([8.0, 2.0]).unwrap()[1], 3.2));
        assert_eq!(Constraint::Amean.apply([8.0, 2.0]).unwrap(), [5.0, 5.0]);
        assert_eq!(
            Constraint::ToOutputScale.apply([2.0, 3.0]).unwrap(),
            [2.0, 2.0]
        );
        assert_eq!(
            Constraint::ToOutputScale.apply([2.0, 3.0, 4.0]).unwrap(),
            [2.0; 3]
        );
        assert_eq!(
            Constraint::ToGradInputScale.apply([2.0, 3.0]).unwrap(),
            [3.0, 3.0]
        );
        assert_eq!(Constraint::Gmean.apply([1.0, 4.0, 2.0]).unwrap(), [2.0; 3]);
        assert_eq!(
            Constraint::ToLeftGradScale.apply([1.0, 4.0, 2.0]).unwrap(),
            [4.0; 3]
        );
        assert_eq!(
            Constraint::ToRightGradScale.apply([1.0, 4.0, 2.0]).unwrap(),
            [2.0; 3]
        );
        assert_eq!(Constraint::None.apply([1.0, 4.0]).unwrap(), [1.0, 4.0]);
    }

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for (i, c) in Constraint::ALL.into_iter().enumerate() {
            assert_eq!(c.name().parse::<Constraint>().unwrap(), c);
            assert_eq!(c.code() as usize, i);
            assert_eq!(Constraint::from_code(c.code()), c);
        }
        assert_eq!(Constraint::from_option(None).unwrap(), Constraint::None);
        assert_eq!(Constraint::from_option(Some("")).unwrap(), Constraint::None);
        let err = "gmaen".parse::<Constraint>().unwrap_err();
        assert_eq!(err, Error::UnknownConstraint("gmaen".into()));
        assert!(err.to_string().contains("gmaen"));
    }

    #[test]
    fn bad_arity_and_bad_scales_are_errors() {
        assert!(matches!(
            Constraint::ToGradInputScale.apply([1.0, 2.0, 3.0]),
            Err(Error::ConstraintArity {
                needed: 2,
                got: 3,
                ..
            })
        ));
        assert!(Constraint::ToRightGradScale.apply([1.0, 2.0]).is_err());
        assert!(Constraint::Gmean.apply([f64::NAN, 2.0]).is_err());
        assert!(Constraint::None.apply([1.0, 0.0]).is_err());
    }
}

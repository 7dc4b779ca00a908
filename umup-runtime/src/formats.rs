//! Number formats: FP8 rounding (OCP and the reference library's simulation formats) and the
//! 16-bit round trips.
//!
//! FP8 rounding follows SCHEMA §5 exactly (spec §8.1 for the library formats):
//!
//! 1. clamp `x` to `±max` (saturating);
//! 2. `e = max(floor(log2|x|), emin)` and `ulp = 2^(e−M)`;
//! 3. round `|x|/ulp` to an integer (ties to even for the OCP formats, ties toward zero for the
//!    `gc_*` formats, which add `2^(k−1)−1` to the f32 bits before truncating), multiply back by
//!    `ulp` and restore the sign (`−0.0` stays `−0.0`).
//!
//! Stochastic rounding (spec §8.1) writes `|x| = k·ulp + r` with `0 ≤ r < ulp` and rounds up with
//! probability `r/ulp`, so representable values never move.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::{Error, Result};

const FORMAT_NAMES: &str = "e4m3fn, e5m2, gc_e4m3, gc_e5m2, bf16, f16";

/// An 8-bit floating-point format (SCHEMA §5, spec §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OCP E4M3FN (`torch.float8_e4m3fn`): M = 3, emin = −6, max 448, ties to even.
    E4m3fn,
    /// OCP E5M2 (`torch.float8_e5m2`): M = 2, emin = −14, max 57344, ties to even.
    E5m2,
    /// Library `FPFormat(4, 3)`: M = 3, emin = −7, max 240, "nearest" ties toward zero.
    GcE4m3,
    /// Library `FPFormat(5, 2)`: M = 2, emin = −15, max 57344, "nearest" ties toward zero.
    GcE5m2,
    /// bfloat16 for simulation: M = 7, emin = −126, ties to even, saturating at its max.
    Bf16,
    /// IEEE half for simulation: M = 10, emin = −14, max 65504, ties to even, saturating.
    F16,
}

/// Exact `2^n` for `−1022 ≤ n ≤ 1023`.
fn pow2(n: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&n));
    f64::from_bits(((n + 1023) as u64) << 52)
}

/// Exact `floor(log2 a)` for finite `a ≥ 0`, read from the f64 bits (no float `log2`); `0` gives
/// −1075, below every format's `emin`.
fn floor_log2(a: f64) -> i32 {
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // f64 subnormal: a = m · 2^-1074.
        let m = bits & ((1u64 << 52) - 1);
        63 - m.leading_zeros() as i32 - 1074
    } else {
        biased - 1023
    }
}

impl Format {
    /// All four formats, in the order of their names.
    pub const ALL: [Format; 4] = [Format::E4m3fn, Format::E5m2, Format::GcE4m3, Format::GcE5m2];

    /// The format's name, as used in fixtures and configs (`e4m3fn`, `e5m2`, `gc_e4m3`, `gc_e5m2`).
    pub fn name(self) -> &'static str {
        match self {
            Format::E4m3fn => "e4m3fn",
            Format::E5m2 => "e5m2",
            Format::GcE4m3 => "gc_e4m3",
            Format::GcE5m2 => "gc_e5m2",
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
        }
    }

    /// Number of explicit mantissa bits `M` (3 for E4M3 formats, 2 for E5M2 formats).
    pub fn mantissa_bits(self) -> i32 {
        match self {
            Format::E4m3fn | Format::GcE4m3 => 3,
            Format::E5m2 | Format::GcE5m2 => 2,
            Format::Bf16 => 7,
            Format::F16 => 10,
        }
    }

    /// Exponent of the smallest normal value, `emin` (−6, −14, −7, −15; SCHEMA §5).
    pub fn min_normal_exp(self) -> i32 {
        match self {
            Format::E4m3fn => -6,
            Format::E5m2 => -14,
            Format::GcE4m3 => -7,
            Format::GcE5m2 => -15,
            Format::Bf16 => -126,
            Format::F16 => -14,
        }
    }

    /// Largest finite magnitude (448, 57344, 240, 57344); larger inputs saturate to it.
    pub fn max(self) -> f64 {
        match self {
            Format::E4m3fn => 448.0,
            Format::E5m2 | Format::GcE5m2 => 57344.0,
            Format::GcE4m3 => 240.0,
            Format::Bf16 => (2.0 - pow2(-7)) * pow2(127),
            Format::F16 => 65504.0,
        }
    }

    /// Smallest normal magnitude, `2^emin`.
    pub fn min_normal(self) -> f64 {
        pow2(self.min_normal_exp())
    }

    /// Smallest subnormal magnitude, `2^(emin−M)` (2^-9, 2^-16, 2^-10, 2^-17).
    pub fn min_subnormal(self) -> f64 {
        pow2(self.min_normal_exp() - self.mantissa_bits())
    }

    /// Whether exact ties round toward zero (the `gc_*` formats) rather than to even (OCP).
    pub fn ties_toward_zero(self) -> bool {
        matches!(self, Format::GcE4m3 | Format::GcE5m2)
    }

    /// Clamps `|x|` to `max`, writes it as `(k + r)·ulp` with `ulp = 2^(e−M)`,
    /// `e = max(floor(log2|x|), emin)` and `0 ≤ r < 1` (all exact), takes `k + 1` iff `up(k, r)`,
    /// and restores the sign. `NaN` passes through.
    fn round_by(self, x: f64, up: impl FnOnce(f64, f64) -> bool) -> f64 {
        if x.is_nan() {
            return x;
        }
        let a = x.abs().min(self.max());
        let e = floor_log2(a).max(self.min_normal_exp());
        let ulp = pow2(e - self.mantissa_bits());
        let q = a / ulp;
        let k = q.floor();
        let n = if up(k, q - k) { k + 1.0 } else { k };
        (n * ulp).copysign(x)
    }

    /// Round-to-nearest FP8 quantisation of `x` (SCHEMA §5): clamp to `±max`, `ulp =
    /// 2^(max(floor(log2|x|), emin) − M)`, round `|x|/ulp` (ties to even for OCP, toward zero for
    /// `gc_*`), multiply by `ulp`, restore the sign. `±0` and `NaN` pass through.
    pub fn quantise(self, x: f64) -> f64 {
        let toward_zero = self.ties_toward_zero();
        self.round_by(x, |k, r| {
            r > 0.5 || (r == 0.5 && !toward_zero && k % 2.0 == 1.0)
        })
    }

    /// Stochastic FP8 quantisation of `x` given a uniform draw `u ∈ [0, 1)` (spec §8.1): after
    /// clamping, `|x| = k·ulp + r` rounds up to `(k+1)·ulp` iff `u < r/ulp`, so with probability
    /// `r/ulp`. Representable values (`r = 0`) never move. `±0` and `NaN` pass through.
    pub fn quantise_stochastic(self, x: f64, u: f64) -> f64 {
        self.round_by(x, |_, r| u < r)
    }

    /// Quantises `x` with the given rounding mode, drawing from `rng` when stochastic.
    pub fn quantise_with<R: Rng + ?Sized>(self, x: f64, rounding: Rounding, rng: &mut R) -> f64 {
        match rounding {
            Rounding::Nearest => self.quantise(x),
            Rounding::Stochastic => self.quantise_stochastic(x, rng.gen::<f64>()),
        }
    }

    /// [`Format::quantise`] on an f32 (exact: every FP8 value is an f32).
    pub fn quantise_f32(self, x: f32) -> f32 {
        self.quantise(f64::from(x)) as f32
    }

    /// Quantises `xs` in place with `rounding` (one uniform draw per element when stochastic) and
    /// returns the overflow/underflow counts ([`QuantStats`]).
    pub fn quantise_slice<R: Rng + ?Sized>(
        self,
        xs: &mut [f32],
        rounding: Rounding,
        rng: &mut R,
    ) -> QuantStats {
        let max = self.max();
        let mut stats = QuantStats {
            total: xs.len() as u64,
            ..QuantStats::default()
        };
        for x in xs.iter_mut() {
            let v = f64::from(*x);
            let y = self.quantise_with(v, rounding, rng);
            if v.abs() > max {
                stats.overflow += 1;
            } else if v != 0.0 && y == 0.0 {
                stats.underflow += 1;
            }
            *x = y as f32;
        }
        stats
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Format::ALL
            .into_iter()
            .chain([Format::Bf16, Format::F16])
            .find(|f| f.name() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "number format",
                name: s.to_string(),
                expected: FORMAT_NAMES,
            })
    }
}

/// How a value between two representables is rounded (spec §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// Round to nearest, with the format's tie rule (SCHEMA §5).
    #[default]
    Nearest,
    /// Round up with probability `r/ulp` where `|x| = k·ulp + r` (the library's default for its
    /// simulation formats).
    Stochastic,
}

impl Rounding {
    /// The mode's name (`nearest` or `stochastic`, as in the reference library).
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::Stochastic => "stochastic",
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Rounding {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(Rounding::Nearest),
            "stochastic" => Ok(Rounding::Stochastic),
            _ => Err(Error::UnknownName {
                kind: "rounding mode",
                name: s.to_string(),
                expected: "nearest, stochastic",
            }),
        }
    }
}

/// Overflow/underflow counts of a quantised slice, for training diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QuantStats {
    /// Number of values quantised.
    pub total: u64,
    /// Values with `|x| > max` (clamped to `±max`; infinities included).
    pub overflow: u64,
    /// Nonzero values that rounded to zero.
    pub underflow: u64,
}

impl QuantStats {
    /// Adds another slice's counts to these.
    pub fn merge(&mut self, other: QuantStats) {
        self.total += other.total;
        self.overflow += other.overflow;
        self.underflow += other.underflow;
    }

    /// `overflow / total` (0 when `total` is 0).
    pub fn overflow_fraction(&self) -> f64 {
        fraction(self.overflow, self.total)
    }

    /// `underflow / total` (0 when `total` is 0).
    pub fn underflow_fraction(&self) -> f64 {
        fraction(self.underflow, self.total)
    }
}

fn fraction(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

/// Rounds `x` to IEEE f16 and back (`half::f16::from_f32(x).to_f32()`); overflow gives ±inf.
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Rounds `x` to bfloat16 and back (`half::bf16::from_f32(x).to_f32()`).
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// [`round_f16`] on every element, in place.
pub fn round_f16_slice(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = round_f16(*x));
}

/// [`round_bf16`] on every element, in place.
pub fn round_bf16_slice(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = round_bf16(*x));
}

/// Which formats the inputs of linear/attention matmuls go through (`forward`) and which their
/// gradients go through (`backward`); `None` leaves them in f32 (spec §8). Just data: the tensor
/// ops that apply it live elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MatmulFormats {
    /// Format and rounding for matmul inputs (activations, weights, q/k/v).
    pub forward: Option<(Format, Rounding)>,
    /// Format and rounding for the gradients of matmul outputs.
    pub backward: Option<(Format, Rounding)>,
}

impl MatmulFormats {
    /// No quantisation (full f32).
    pub fn none() -> Self {
        MatmulFormats {
            forward: None,
            backward: None,
        }
    }

    /// OCP FP8 cast (spec §8.2): E4M3FN forward, E5M2 backward, round to nearest even.
    pub fn fp8_ocp() -> Self {
        MatmulFormats {
            forward: Some((Format::E4m3fn, Rounding::Nearest)),
            backward: Some((Format::E5m2, Rounding::Nearest)),
        }
    }

    /// The reference library's `simulate_fp8` (spec §8.1): `FPFormat(4,3)` forward,
    /// `FPFormat(5,2)` backward, both stochastic.
    pub fn fp8_sim() -> Self {
        MatmulFormats {
            forward: Some((Format::GcE4m3, Rounding::Stochastic)),
            backward: Some((Format::GcE5m2, Rounding::Stochastic)),
        }
    }

    /// bf16 matmul inputs and gradients (round to nearest even), computed in f32.
    pub fn bf16_sim() -> Self {
        MatmulFormats {
            forward: Some((Format::Bf16, Rounding::Nearest)),
            backward: Some((Format::Bf16, Rounding::Nearest)),
        }
    }

    /// Whether neither direction is quantised.
    pub fn is_none(&self) -> bool {
        self.forward.is_none() && self.backward.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn q(f: Format, x: f64) -> f64 {
        f.quantise(x)
    }

    /// Decodes every finite code of `f` (spec §8: OCP bias 2^(E−1)−1, gc bias 2^(E−1)).
    fn representables(f: Format) -> Vec<f64> {
        let (e_bits, m) = match f {
            Format::E4m3fn | Format::GcE4m3 => (4, 3),
            _ => (5, 2),
        };
        let bias = if f.ties_toward_zero() {
            1 << (e_bits - 1)
        } else {
            (1 << (e_bits - 1)) - 1
        };
        let mut out = Vec::new();
        for code in 0u32..(1 << (e_bits + m)) {
            let (e, mant) = ((code >> m) as i32, code & ((1 << m) - 1));
            let top = e == (1 << e_bits) - 1;
            if (f == Format::E4m3fn && top && mant == (1 << m) - 1) || (f == Format::E5m2 && top) {
                continue; // NaN / inf codes
            }
            let frac = f64::from(mant) / f64::from(1u32 << m);
            let v = if e == 0 {
                frac * pow2(1 - bias)
            } else {
                (1.0 + frac) * pow2(e - bias)
            };
            out.extend([v, -v]);
        }
        out
    }

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        assert!(matches!(
            "e4m3".parse::<Format>(),
            Err(Error::UnknownName { .. })
        ));
        assert_eq!(
            "stochastic".parse::<Rounding>().unwrap(),
            Rounding::Stochastic
        );
    }

    #[test]
    fn floor_log2_is_exact_at_powers_of_two() {
        assert_eq!(floor_log2(0.0), -1075);
        assert_eq!(floor_log2(f64::from_bits(1)), -1074);
        for n in [-1022, -20, -1, 0, 1, 15] {
            let p = pow2(n);
            assert_eq!(floor_log2(p), n);
            assert_eq!(floor_log2(1.5 * p), n);
            assert_eq!(floor_log2(f64::from_bits(p.to_bits() - 1)), n - 1);
        }
    }

    #[test]
    fn constants_match_code_tables() {
        for f in Format::ALL {
            let reps = representables(f);
            let max = reps.iter().cloned().fold(0.0, f64::max);
            let pos = reps.iter().cloned().filter(|&v| v > 0.0);
            let min_pos = pos.fold(f64::INFINITY, f64::min);
            assert_eq!(max, f.max(), "{f}");
            assert_eq!(min_pos, f.min_subnormal(), "{f}");
        }
        assert_eq!(Format::GcE4m3.min_subnormal(), 2f64.powi(-10));
        assert_eq!(Format::E5m2.min_normal(), 2f64.powi(-14));
    }

    #[test]
    fn measured_round_trips() {
        use Format::*;
        assert_eq!(q(E4m3fn, 0.1), 0.1015625);
        assert_eq!(q(E4m3fn, std::f64::consts::PI), 3.25); // as 3.14159
        assert_eq!(q(E4m3fn, 1e-3), 0.001953125);
        assert_eq!(q(E5m2, 0.1), 0.09375);
        assert_eq!(q(E5m2, 57344.0), 57344.0);
        assert_eq!(q(E4m3fn, 500.0), 448.0);
        assert_eq!(q(E4m3fn, f64::NEG_INFINITY), -448.0);
        assert_eq!(q(GcE4m3, 300.0), 240.0);
        // 1.35 = 10.8 ulps of 2^-3 → 11 ulps.
        assert_eq!(q(GcE4m3, -1.35), -1.375);
        assert_eq!(E4m3fn.quantise_f32(0.1), 0.1015625);
        assert!(q(E5m2, f64::NAN).is_nan());
    }

    #[test]
    fn ties() {
        use Format::*;
        // Normal range, ulp 1/8 on [1, 2): 1.0625 is halfway between 1.0 (even) and 1.125.
        assert_eq!(q(E4m3fn, 1.0625), 1.0);
        assert_eq!(q(E4m3fn, 1.1875), 1.25); // between 1.125 (odd) and 1.25 (even)
        assert_eq!(q(E4m3fn, -1.1875), -1.25);
        assert_eq!(q(GcE4m3, 1.1875), 1.125);
        assert_eq!(q(GcE4m3, -1.0625), -1.0);
        assert_eq!(q(E4m3fn, 440.0), 448.0); // 416 (13 ulps) vs 448 (14 ulps)
        assert_eq!(q(E5m2, 1.125), 1.0);
        assert_eq!(q(GcE5m2, 1.375), 1.25);
        // Subnormal range: e4m3fn ulp 2^-9, gc_e4m3 ulp 2^-10.
        let s = 2f64.powi(-9);
        assert_eq!(q(E4m3fn, 0.5 * s), 0.0);
        assert_eq!(q(E4m3fn, 1.5 * s), 2.0 * s);
        assert_eq!(q(E4m3fn, 2.5 * s), 2.0 * s);
        let g = 2f64.powi(-10);
        assert_eq!(q(GcE4m3, 1.5 * g), g);
        assert_eq!(q(GcE4m3, 2.5 * g), 2.0 * g);
        assert_eq!(q(GcE4m3, 0.5 * g), 0.0);
    }

    #[test]
    fn signed_zero_and_fixed_points() {
        for f in Format::ALL {
            let z = f.quantise(-0.0);
            assert!(z == 0.0 && z.is_sign_negative());
            let z = f.quantise(0.0);
            assert!(z == 0.0 && z.is_sign_positive());
            // A negative underflow keeps its sign.
            assert!(f.quantise(-f.min_subnormal() / 4.0).is_sign_negative());
            for v in representables(f) {
                assert_eq!(f.quantise(v).to_bits(), v.to_bits(), "{f} {v}");
                assert_eq!(f.quantise_stochastic(v, 0.0), v);
                assert_eq!(f.quantise_stochastic(v, 0.999_999), v);
            }
        }
        // 128 magnitude codes minus the NaN code, each with both signs (±0 included).
        assert_eq!(representables(Format::E4m3fn).len(), 2 * 127);
    }

    #[test]
    fn stochastic_probability() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        for (f, x, lo, hi) in [
            (Format::GcE4m3, -1.35, -1.25, -1.375),
            (Format::E4m3fn, 0.1, 0.09375, 0.1015625),
            (Format::GcE5m2, 3.0e-6, 0.0, 2f64.powi(-17)),
        ] {
            let p = (x - lo) / (hi - lo);
            let mut ups = 0;
            for _ in 0..n {
                let y = f.quantise_with(x, Rounding::Stochastic, &mut rng);
                assert!(y == lo || y == hi, "{f} {x} -> {y}");
                ups += usize::from(y == hi);
            }
            let frac = ups as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((frac - p).abs() < 3.0 * sigma, "{f} {x}: {frac} vs {p}");
        }
        // Representable values never move, on the slice path too.
        let mut xs: Vec<f32> = representables(Format::GcE5m2)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let before = xs.clone();
        Format::GcE5m2.quantise_slice(&mut xs, Rounding::Stochastic, &mut rng);
        assert_eq!(xs, before);
    }

    #[test]
    fn stats_count_overflow_and_underflow() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut xs = [
            0.0,
            -0.0,
            1e-4,
            -1e-4,
            1e-3,
            500.0,
            -448.0,
            f32::MAX,
            1.0,
            1e-30,
        ];
        let s = Format::E4m3fn.quantise_slice(&mut xs, Rounding::Nearest, &mut rng);
        assert_eq!((s.total, s.overflow, s.underflow), (10, 2, 3));
        assert_eq!(xs[5], 448.0);
        assert_eq!(xs[7], 448.0);
        assert_eq!(xs[4], 0.001953125);
        assert!(xs[3] == 0.0 && xs[3].is_sign_negative());
        let mut all = s;
        all.merge(QuantStats {
            total: 10,
            underflow: 1,
            ..QuantStats::default()
        });
        assert_eq!(all.overflow_fraction(), 0.1);
        assert_eq!(all.underflow_fraction(), 0.2);
        assert_eq!(QuantStats::default().overflow_fraction(), 0.0);
    }

    #[test]
    fn half_round_trips() {
        assert_eq!(round_f16(0.1), 0.099975586);
        assert_eq!(round_bf16(0.1), 0.100097656);
        assert_eq!(round_f16(1e5), f32::INFINITY);
        assert_eq!(round_bf16(1e5), 99840.0);
        let mut xs = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)];
        round_f16_slice(&mut xs);
        assert_eq!(xs, [1.0, 1.0 + 4.0 * 2f32.powi(-11)]); // ties to even
        let mut ys = [1.0 + 2f32.powi(-8)];
        round_bf16_slice(&mut ys);
        assert_eq!(ys, [1.0]);
    }

    #[test]
    fn matmul_formats() {
        assert!(MatmulFormats::none().is_none());
        assert_eq!(MatmulFormats::default(), MatmulFormats::none());
        let s = MatmulFormats::fp8_sim();
        assert_eq!(s.forward, Some((Format::GcE4m3, Rounding::Stochastic)));
        assert_eq!(s.backward, Some((Format::GcE5m2, Rounding::Stochastic)));
        assert_eq!(
            MatmulFormats::fp8_ocp().backward,
            Some((Format::E5m2, Rounding::Nearest))
        );
    }

    #[test]
    fn sixteen_bit_simulation_formats_match_half() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            let x: f32 = (rng.gen::<f32>() - 0.5) * 10f32.powi(rng.gen_range(-30..30));
            assert_eq!(
                Format::Bf16.quantise_f32(x),
                half::bf16::from_f32(x).to_f32(),
                "{x}"
            );
            if x.abs() < 65504.0 {
                assert_eq!(
                    Format::F16.quantise_f32(x),
                    half::f16::from_f32(x).to_f32(),
                    "{x}"
                );
            }
        }
        assert_eq!(Format::F16.quantise(1e6), 65504.0);
        assert_eq!("bf16".parse::<Format>().unwrap(), Format::Bf16);
    }
}

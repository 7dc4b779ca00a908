//! Every u-μP scale rule, computed in one place (spec §1–§4).
//!
//! The ops in [`crate::ops`], the parameter tables and the `#[umup_model]` macro all call these
//! functions; none of them re-derives a formula. Every scale is a host-side `f64` computed from
//! static shapes and hyperparameters; only the weight-gradient scale `1/√B_tok` needs the runtime
//! number of rows.
//!
//! "Raw" functions return the reference's unconstrained empirical scales (as the conformance
//! `scale_factor` cases expect); the op-level functions apply the op's [`Constraint`].

use crate::constraint::Constraint;
use crate::error::{check_finite, check_positive, Error, Result};

/// `LI(α, lo, hi) = exp(α·ln hi + (1−α)·ln lo)`: geometric interpolation between `lo` (α = 0)
/// and `hi` (α = 1) (`logarithmic_interpolation`, spec §1.3).
pub fn logarithmic_interpolation(alpha: f64, lower: f64, upper: f64) -> f64 {
    (alpha * upper.ln() + (1.0 - alpha) * lower.ln()).exp()
}

/// An op's forward (output) scale and input-gradient scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpScales {
    /// Multiplies the op's value in the forward pass.
    pub output: f64,
    /// Multiplies the gradient of the op's input in the backward pass.
    pub grad_input: f64,
}

impl OpScales {
    /// Applies a constraint to `(output, grad_input)`.
    pub fn constrained(self, constraint: Constraint) -> Result<Self> {
        let [output, grad_input] = constraint.apply([self.output, self.grad_input])?;
        Ok(OpScales { output, grad_input })
    }
}

/// Scales of a linear layer (spec §4.2, §4.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearScales {
    /// Output scale `o` (after the constraint).
    pub output: f64,
    /// Scale of `grad x` (after the constraint).
    pub grad_input: f64,
    /// Scale of `grad W` and `grad b`: `B_tok^-½`, never constrained.
    pub grad_weight: f64,
}

fn count(what: &'static str, n: usize) -> Result<f64> {
    if n == 0 {
        Err(Error::InvalidValue {
            what,
            value: 0.0,
            reason: "must be at least 1",
        })
    } else {
        Ok(n as f64)
    }
}

/// `linear` (spec §4.2): `(o, s_x) = constraint(fan_in^-½, fan_out^-½)`, `s_w = B_tok^-½`.
pub fn linear(
    fan_in: usize,
    fan_out: usize,
    rows: usize,
    constraint: Constraint,
) -> Result<LinearScales> {
    linear_with_power(fan_in, fan_out, rows, constraint, 0.5)
}

/// `linear_readout` (spec §4.3): as [`linear`] but with output scale `1/fan_in`;
/// the reference default constraint is [`Constraint::None`].
pub fn linear_readout(
    fan_in: usize,
    fan_out: usize,
    rows: usize,
    constraint: Constraint,
) -> Result<LinearScales> {
    linear_with_power(fan_in, fan_out, rows, constraint, 1.0)
}

fn linear_with_power(
    fan_in: usize,
    fan_out: usize,
    rows: usize,
    constraint: Constraint,
    output_power: f64,
) -> Result<LinearScales> {
    let (fi, fo, b) = (
        count("fan_in", fan_in)?,
        count("fan_out", fan_out)?,
        count("rows (B_tok)", rows)?,
    );
    let s = OpScales {
        output: fi.powf(-output_power),
        grad_input: fo.powf(-0.5),
    }
    .constrained(constraint)?;
    Ok(LinearScales {
        output: s.output,
        grad_input: s.grad_input,
        grad_weight: b.powf(-0.5),
    })
}

/// `conv1d` (spec §4.4): `o = (C_in/groups · k)^-p_o` (the weight's second dim times the kernel
/// size), `s_x = (stride·groups / (C_out·k))^p_x`, `(o, s_x) = constraint(o, s_x)`, and
/// `s_w = B_tok^-p_w` with `B_tok = T_out · batch` for the weight and the bias (never
/// constrained). The reference defaults are `scale_power = [½, ½, ½]`, `to_output_scale`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    in_per_group: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    tokens: usize,
    constraint: Constraint,
    scale_power: [f64; 3],
) -> Result<LinearScales> {
    let [po, px, pw] = scale_power;
    for p in scale_power {
        check_finite("conv1d scale_power", p)?;
    }
    let (ig, co, k) = (
        count("in_channels / groups", in_per_group)?,
        count("out_channels", out_channels)?,
        count("kernel_size", kernel)?,
    );
    let (st, g) = (count("stride", stride)?, count("groups", groups)?);
    let b = count("B_tok (T_out · batch)", tokens)?;
    let s = OpScales {
        output: (ig * k).powf(-po),
        grad_input: (st * g / (co * k)).powf(px),
    }
    .constrained(constraint)?;
    Ok(LinearScales {
        output: s.output,
        grad_input: s.grad_input,
        grad_weight: b.powf(-pw),
    })
}

/// `matmul(left[M,K], right[K,N])` (spec §4.1): `(o, s_left, s_right) = constraint(K^-½, N^-½, M^-½)`.
pub fn matmul(m: usize, k: usize, n: usize, constraint: Constraint) -> Result<[f64; 3]> {
    let (m, k, n) = (count("M", m)?, count("K", k)?, count("N", n)?);
    constraint.apply([k.powf(-0.5), n.powf(-0.5), m.powf(-0.5)])
}

/// Embedding-table gradient scale `√(V / B_tok)` (spec §4.5); there is no forward scale.
pub fn embedding_grad(vocab: usize, tokens: usize) -> Result<f64> {
    Ok((count("vocab", vocab)? / count("tokens", tokens)?).sqrt())
}

/// Gradient scale of a norm gain or bias: `√(d / numel(x)) = B_tok^-½` (spec §4.6, §4.7).
pub fn norm_param_grad(normalized: usize, numel: usize) -> Result<f64> {
    Ok((count("normalized size", normalized)? / count("numel", numel)?).sqrt())
}

fn check_mult(mult: f64) -> Result<f64> {
    check_positive("mult", mult)
}

/// Raw `gelu` scales for `mult` = α_ffn-act (spec §4.10): `α = 1/(1+0.25/mult²)`,
/// `o = LI(α, 2, √(2/(1−1/π)))`, `s = LI(α, 2, √2)`.
pub fn gelu(mult: f64) -> Result<OpScales> {
    let mult = check_mult(mult)?;
    let alpha = 1.0 / (1.0 + 0.25 / (mult * mult));
    Ok(OpScales {
        output: act_output(alpha),
        grad_input: logarithmic_interpolation(alpha, 2.0, 2f64.sqrt()),
    })
}

fn act_output(alpha: f64) -> f64 {
    logarithmic_interpolation(
        alpha,
        2.0,
        (2.0 / (1.0 - 1.0 / std::f64::consts::PI)).sqrt(),
    )
}

/// Raw `silu` scales (spec §4.10): `o` as for gelu, `s = LI(1/(1+1/mult²), 2, √2)`.
pub fn silu(mult: f64) -> Result<OpScales> {
    let g = gelu(mult)?;
    Ok(OpScales {
        output: g.output,
        grad_input: silu_glu(mult)?,
    })
}

/// `silu_glu` shared scale `s = LI(1/(1+1/mult²), 2, √2)` (spec §4.10).
pub fn silu_glu(mult: f64) -> Result<f64> {
    let mult = check_mult(mult)?;
    let alpha = 1.0 / (1.0 + 1.0 / (mult * mult));
    Ok(logarithmic_interpolation(alpha, 2.0, 2f64.sqrt()))
}

/// Raw `softmax` scales over `n` classes (spec §4.11): `α = 1/(1+4/mult²)`,
/// `o = LI(α, n, √n)`, `s = LI(α, n/mult, √(n/mult))`.
pub fn softmax(n: usize, mult: f64) -> Result<OpScales> {
    let mult = check_mult(mult)?;
    let n = count("softmax size", n)?;
    let alpha = 1.0 / (1.0 + 4.0 / (mult * mult));
    Ok(OpScales {
        output: logarithmic_interpolation(alpha, n, n.sqrt()),
        grad_input: logarithmic_interpolation(alpha, n / mult, (n / mult).sqrt()),
    })
}

/// Which rule scales the output of attention (spec §4.12; docs/results.md §9).
///
/// At init, attention logits are small (`α·q·k/d_head` has std `α/√d_head`), so every query
/// averages its keys' values almost uniformly. The output of query `i` is then close to the mean
/// of `n_i` values (`n_i = S` non-causal, `i + 1` causal). With `ρ` the mean correlation of the
/// values of different positions, that mean has RMS `√(ρ + (1 − ρ)/n_i)`:
///
/// * [`AttentionScale::Reference`] is the reference library's empirical rule ([`sdpa`]), fitted
///   for `ρ = 0`: it multiplies by about `√S` (non-causal) or `√(S/ln S)` (causal). Where the
///   values are correlated it overshoots: the output has RMS about `√(ρ·S)` (8–11 in the
///   encoder's layers 1–3, the reference's open issue #84), and what it amplifies is the part of
///   the output every position shares, which carries no position information.
/// * [`AttentionScale::Mean`] keeps the output at the scale of the weighted mean it is
///   (multiplier `√(1 − p)`, i.e. 1 without dropout): a convex combination of unit values has
///   RMS at most 1, equal to 1 where the values are fully correlated. It is what μP and SP
///   compute. It is static and has no width term, so μP's width independence is untouched.
/// * [`AttentionScale::Auto`] (the default) is the measured choice per kind of attention:
///   `Reference` for causal attention (the LM trains better with it: 2.4222 against 2.4373),
///   `Mean` for non-causal attention (encoder and ViT: docs/results.md §9).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionScale {
    /// `Reference` for causal attention, `Mean` for non-causal (and masked) attention.
    #[default]
    Auto,
    /// The reference library's rule, [`sdpa`] (spec §4.12): conformance-exact.
    Reference,
    /// The output at the scale of the weighted mean of the values: multiplier `√(1 − p)`.
    Mean,
}

impl AttentionScale {
    /// The names [`std::str::FromStr`] takes, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["auto", "reference", "mean"];

    /// Every rule, in the order of [`AttentionScale::NAMES`].
    pub const ALL: [Self; 3] = [
        AttentionScale::Auto,
        AttentionScale::Reference,
        AttentionScale::Mean,
    ];

    /// The rule itself: [`AttentionScale::Auto`] resolved for causal or non-causal attention.
    pub fn resolve(self, is_causal: bool) -> AttentionScale {
        match self {
            AttentionScale::Auto if is_causal => AttentionScale::Reference,
            AttentionScale::Auto => AttentionScale::Mean,
            rule => rule,
        }
    }

    /// The rule's name (`auto`, `reference`, `mean`).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The rule runs before this field existed in a saved configuration: the reference's.
    pub fn legacy() -> Self {
        AttentionScale::Reference
    }
}

impl std::str::FromStr for AttentionScale {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "attention scale",
                name: s.to_string(),
                expected: "auto, reference, mean",
            })
    }
}

impl std::fmt::Display for AttentionScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The output scale of attention under `rule` ([`AttentionScale`]): [`sdpa`] for the reference
/// rule, `√(1 − p)` for [`AttentionScale::Mean`]; [`AttentionScale::Auto`] resolved by
/// `is_causal`. Every caller that scales attention goes through here.
pub fn attention_output(
    rule: AttentionScale,
    seq_len: usize,
    d_head: usize,
    mult: f64,
    is_causal: bool,
    dropout_p: f64,
) -> Result<f64> {
    match rule.resolve(is_causal) {
        AttentionScale::Mean => {
            let a = AttentionArgs::check(seq_len, d_head, mult, dropout_p)?;
            Ok((1.0 - a.p).sqrt())
        }
        _ => sdpa(seq_len, d_head, mult, is_causal, dropout_p),
    }
}

/// The checked arguments of an attention scale: `seq_len`, `d_head` ≥ 1, `mult` > 0,
/// `p` in [0, 1).
struct AttentionArgs {
    s: f64,
    d: f64,
    mult: f64,
    p: f64,
}

impl AttentionArgs {
    fn check(seq_len: usize, d_head: usize, mult: f64, dropout_p: f64) -> Result<Self> {
        Ok(AttentionArgs {
            mult: check_mult(mult)?,
            p: check_probability(dropout_p)?,
            s: count("seq_len", seq_len)?,
            d: count("d_head", d_head)?,
        })
    }
}

/// The shared scale of `scaled_dot_product_attention` (spec §4.12):
/// `s = √(1−p) / LI(1/(1+4·d_head/mult²), √((causal ? ln S : 1)/S), 1)`.
pub fn sdpa(
    seq_len: usize,
    d_head: usize,
    mult: f64,
    is_causal: bool,
    dropout_p: f64,
) -> Result<f64> {
    let AttentionArgs { s, d, mult, p } = AttentionArgs::check(seq_len, d_head, mult, dropout_p)?;
    let alpha = 1.0 / (1.0 + 4.0 * d / (mult * mult));
    let numer = if is_causal { s.ln() } else { 1.0 };
    if numer <= 0.0 {
        // S = 1 with a causal mask: ln 1 = 0; a single key always gets weight 1.
        return Err(Error::InvalidValue {
            what: "seq_len (causal attention)",
            value: s,
            reason: "causal attention scale needs seq_len >= 2",
        });
    }
    let lo = (numer / s).sqrt();
    Ok((1.0 - p).sqrt() / logarithmic_interpolation(alpha, lo, 1.0))
}

fn check_probability(p: f64) -> Result<f64> {
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(Error::InvalidValue {
            what: "dropout probability",
            value: p,
            reason: "must be in [0, 1)",
        })
    }
}

/// `add(a, b)` scales (spec §4.8): `o = 2^-½` (1 if either operand has one element),
/// `s_a = (numel(out)/numel(a))^-½`, `s_b` likewise; `(o, s_a, s_b)` constrained together.
pub fn add(
    numel_out: usize,
    numel_a: usize,
    numel_b: usize,
    constraint: Constraint,
) -> Result<[f64; 3]> {
    let out = count("numel(out)", numel_out)?;
    let (a, b) = (count("numel(a)", numel_a)?, count("numel(b)", numel_b)?);
    let o = if numel_a == 1 || numel_b == 1 {
        1.0
    } else {
        0.5f64.sqrt()
    };
    constraint.apply([o, (out / a).powf(-0.5), (out / b).powf(-0.5)])
}

/// `mean_pool` over `seq` positions (spec §1, §4: the output is a sum of `S` values, scaled as
/// unit scaling scales any sum): raw `o = S^-½` (a sum of `S` independent unit values has std
/// `√S`) and `s_x = 1` (each position's gradient is the output gradient, broadcast, already
/// unit); `(o, s_x) = constraint(o, s_x)`. So `to_output_scale` gives `(S^-½, S^-½)`, `none`
/// `(S^-½, 1)`, `to_grad_input_scale` `(1, 1)` (a plain sum), `gmean` `(S^-¼, S^-¼)`, `hmean`
/// `2/(√S+1)` and `amean` `(S^-½+1)/2` for both; the three-scale selectors are errors.
pub fn mean_pool(seq: usize, constraint: Constraint) -> Result<OpScales> {
    let s = count("seq (positions pooled)", seq)?;
    OpScales {
        output: s.powf(-0.5),
        grad_input: 1.0,
    }
    .constrained(constraint)
}

/// Residual branch and skip weights for a given τ (spec §3.1): `a = τ/√(1+τ²)`, `b = 1/√(1+τ²)`.
pub fn residual(tau: f64) -> Result<(f64, f64)> {
    let tau = check_positive("tau", tau)?;
    let norm = (1.0 + tau * tau).sqrt();
    Ok((tau / norm, 1.0 / norm))
}

/// `transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)` evaluated for every
/// branch of an `n_layers`-layer transformer (spec §3.2): returns `2·n_layers` taus in the order
/// attn0, mlp0, attn1, mlp1, ...
///
/// `α_mlp = mult·√(2/(1+ratio²))`, `α_attn = ratio·α_mlp`,
/// `τ_i = α_i / √(L + n_attn·α_attn² + n_mlp·α_mlp²)` with `n_attn = (i+1)//2`, `n_mlp = i//2`.
pub fn transformer_residual_taus(
    residual_mult: f64,
    residual_attn_ratio: f64,
    n_layers: usize,
) -> Result<Vec<f64>> {
    let mult = check_positive("residual_mult (alpha_res)", residual_mult)?;
    let ratio = check_positive("residual_attn_ratio", residual_attn_ratio)?;
    let l = count("n_layers", n_layers)?;
    let a_mlp = mult * (2.0 / (1.0 + ratio * ratio)).sqrt();
    let a_attn = ratio * a_mlp;
    Ok((0..2 * n_layers)
        .map(|i| {
            let n_attn = i.div_ceil(2) as f64;
            let n_mlp = (i / 2) as f64;
            let a_i = if i % 2 == 0 { a_attn } else { a_mlp };
            a_i / (l + n_attn * a_attn * a_attn + n_mlp * a_mlp * a_mlp).sqrt()
        })
        .collect())
}

/// Gradient scale of `cross_entropy` logits: `V/√(V−1)` (spec §4.13).
pub fn cross_entropy_grad(vocab: usize) -> Result<f64> {
    if vocab < 2 {
        return Err(Error::InvalidValue {
            what: "number of classes",
            value: vocab as f64,
            reason: "cross entropy needs at least 2 classes",
        });
    }
    let v = vocab as f64;
    Ok(v / (v - 1.0).sqrt())
}

/// Gradient scale of `mse_loss` inputs: `8^-½` (spec §4.14).
pub fn mse_grad() -> f64 {
    8f64.powf(-0.5)
}

/// `dropout` output and gradient scale `√(1−p)` (spec §4.9).
pub fn dropout(p: f64) -> Result<f64> {
    Ok((1.0 - check_probability(p)?).sqrt())
}

/// Checks a user-supplied scale for [`crate::ops::scale_fwd`] and friends: finite, any sign.
pub fn check_scale(what: &'static str, s: f64) -> Result<f64> {
    check_finite(what, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn attention_output_rules() {
        for (s, d, mult) in [(64, 64, 1.0), (256, 64, 1.0), (16, 32, 0.5)] {
            for causal in [false, true] {
                let reference = sdpa(s, d, mult, causal, 0.0).unwrap();
                let rule = |r| attention_output(r, s, d, mult, causal, 0.0).unwrap();
                assert_eq!(rule(AttentionScale::Reference), reference);
                assert_eq!(rule(AttentionScale::Mean), 1.0);
                // Auto: the reference's rule for causal attention, the mean's for non-causal.
                let auto = if causal { reference } else { 1.0 };
                assert_eq!(rule(AttentionScale::Auto), auto);
            }
        }
        // Spec §4.12's non-causal value (S 256, d_head 64): the reference multiplies by 15.83.
        let r = attention_output(AttentionScale::Reference, 256, 64, 1.0, false, 0.0).unwrap();
        assert!(close(r, 15.8283, 1e-5), "{r}");
        // Dropout keeps √(1 − p) in both rules; bad inputs are errors in both.
        let m = attention_output(AttentionScale::Mean, 8, 8, 1.0, false, 0.19).unwrap();
        assert!(close(m, 0.9, 1e-12), "{m}");
        for rule in [AttentionScale::Mean, AttentionScale::Reference] {
            assert!(attention_output(rule, 0, 8, 1.0, false, 0.0).is_err());
            assert!(attention_output(rule, 8, 8, -1.0, false, 0.0).is_err());
            assert!(attention_output(rule, 8, 8, 1.0, false, 1.0).is_err());
        }
        for name in AttentionScale::NAMES {
            let r: AttentionScale = name.parse().unwrap();
            assert_eq!(r.to_string(), name);
        }
        assert!("sqrt".parse::<AttentionScale>().is_err());
    }

    // The table of reference constants in spec §4.10.
    #[test]
    fn activation_constants() {
        let rows = [
            (0.25, 1.938958, 1.866066, 1.959639),
            (1.0, 1.766783, 1.515717, 1.681793),
            (4.0, 1.716947, 1.421774, 1.443341),
        ];
        for (m, go, gs, ss) in rows {
            let g = gelu(m).unwrap();
            assert!(
                close(g.output, go, 1e-6) && close(g.grad_input, gs, 1e-6),
                "{m}"
            );
            let s = silu(m).unwrap();
            assert!(close(s.output, go, 1e-6) && close(s.grad_input, ss, 1e-6));
            assert!(close(silu_glu(m).unwrap(), ss, 1e-6));
        }
    }

    // Spec §4.11 / §4.12 values.
    #[test]
    fn softmax_and_sdpa_constants() {
        assert!(close(softmax(256, 1.0).unwrap().output, 147.03, 1e-4));
        assert!(close(softmax(4096, 1.0).unwrap().output, 1782.89, 1e-5));
        for (s, v) in [(64, 7.9355), (256, 15.8283), (1024, 31.5714)] {
            assert!(close(sdpa(s, 64, 1.0, false, 0.0).unwrap(), v, 1e-4));
        }
        for (s, v) in [(64, 3.9020), (256, 6.7441), (1024, 12.0370)] {
            assert!(close(sdpa(s, 64, 1.0, true, 0.0).unwrap(), v, 1e-4));
        }
        assert!(sdpa(1, 64, 1.0, true, 0.0).is_err());
        assert!(sdpa(8, 64, 1.0, false, 1.0).is_err());
    }

    // Spec §3.2 tau tables.
    #[test]
    fn residual_rule_values_and_invariants() {
        let t2 = transformer_residual_taus(1.0, 1.0, 2).unwrap();
        for (t, v) in t2
            .iter()
            .zip([std::f64::consts::FRAC_1_SQRT_2, 0.57735, 0.5, 0.44721])
        {
            assert!(close(*t, v, 1e-4));
        }
        let t3 = transformer_residual_taus(0.5, 1.0 / 3.0, 3).unwrap();
        for (t, v) in t3
            .iter()
            .zip([0.1291, 0.38411, 0.11952, 0.35603, 0.1118, 0.33333])
        {
            assert!(close(*t, v, 1e-3));
        }
        // With both HPs = 1, tau_i = 1/sqrt(L + i).
        let t4 = transformer_residual_taus(1.0, 1.0, 4).unwrap();
        for (i, t) in t4.iter().enumerate() {
            assert!(close(*t, 1.0 / (4.0 + i as f64).sqrt(), 1e-12));
        }
        // Residual weights: a² + b² = 1.
        for tau in [0.2, 1.0, 3.0] {
            let (a, b) = residual(tau).unwrap();
            assert!(close(a * a + b * b, 1.0, 1e-12) && close(a / b, tau, 1e-12));
        }
        assert!(transformer_residual_taus(f64::NAN, 1.0, 2).is_err());
    }

    // Spec §4.1 / §4.2 measured values.
    #[test]
    fn linear_and_matmul_rules() {
        let s = linear(1024, 4096, 256, Constraint::ToOutputScale).unwrap();
        assert_eq!(
            (s.output, s.grad_input, s.grad_weight),
            (1.0 / 32.0, 1.0 / 32.0, 1.0 / 16.0)
        );
        let s = linear(1024, 4096, 256, Constraint::None).unwrap();
        assert_eq!(s.grad_input, 1.0 / 64.0);
        let r = linear_readout(1024, 4096, 256, Constraint::None).unwrap();
        assert_eq!(r.output, 1.0 / 1024.0);
        assert_eq!(
            matmul(256, 1024, 4096, Constraint::ToOutputScale).unwrap(),
            [1.0 / 32.0; 3]
        );
        assert!(linear(0, 4, 4, Constraint::None).is_err());
        assert!(close(cross_entropy_grad(256).unwrap(), 16.031, 1e-4));
        assert!(close(cross_entropy_grad(32000).unwrap(), 178.888, 1e-5));
        assert_eq!(add(12, 12, 12, Constraint::None).unwrap()[0], 0.5f64.sqrt());
        assert_eq!(add(12, 12, 1, Constraint::None).unwrap()[0], 1.0);
    }

    // The pooling rule for every constraint at S = 16.
    #[test]
    fn mean_pool_rule() {
        let at = |c| {
            let s = mean_pool(16, c).unwrap();
            (s.output, s.grad_input)
        };
        assert_eq!(at(Constraint::ToOutputScale), (0.25, 0.25));
        assert_eq!(at(Constraint::None), (0.25, 1.0));
        assert_eq!(at(Constraint::ToGradInputScale), (1.0, 1.0));
        assert_eq!(at(Constraint::Gmean), (0.5, 0.5));
        assert!(close(at(Constraint::Hmean).0, 0.4, 1e-15));
        assert_eq!(at(Constraint::Amean), (0.625, 0.625));
        assert!(mean_pool(16, Constraint::ToLeftGradScale).is_err());
        assert!(mean_pool(0, Constraint::None).is_err());
        // One position: the pool is the identity.
        let one = mean_pool(1, Constraint::None).unwrap();
        assert_eq!((one.output, one.grad_input), (1.0, 1.0));
    }

    // Spec §4.4: fan-in is the weight's second dim (C_in/groups) times k.
    #[test]
    fn conv1d_rule() {
        let s = conv1d(4, 8, 3, 2, 2, 25, Constraint::None, [0.5; 3]).unwrap();
        assert!(close(s.output, 12f64.powf(-0.5), 1e-15));
        assert!(close(s.grad_input, (4.0f64 / 24.0).sqrt(), 1e-15));
        assert!(close(s.grad_weight, 0.2, 1e-15));
        let s = conv1d(4, 8, 3, 1, 1, 4, Constraint::ToOutputScale, [1.0, 0.5, 0.5]).unwrap();
        assert_eq!((s.output, s.grad_input), (1.0 / 12.0, 1.0 / 12.0));
        assert!(conv1d(4, 8, 3, 0, 1, 4, Constraint::None, [0.5; 3]).is_err());
        assert!(conv1d(4, 8, 3, 1, 1, 4, Constraint::None, [f64::NAN, 0.5, 0.5]).is_err());
    }
}

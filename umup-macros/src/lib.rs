//! Procedural macros for [umup](https://docs.rs/umup): the `#[umup_model]` attribute and
//! `family!`.
//!
//! The macro works in three steps, each in its own module: `parse` reads the struct and its
//! field attributes into a small IR, `validate` checks roles against field types and shapes,
//! and `expand` generates the dfdx module. Every user error is a spanned `syn::Error`; all of
//! them are reported at once, and a fallback struct is emitted so the rest of the crate does not
//! drown in secondary errors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod expand;
mod family;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Turns an annotated struct into a u-μP dfdx module.
///
/// ```ignore
/// #[umup_model]
/// pub struct Mlp<const D: usize> {
///     #[embedding] embed: Embedding<256, D>,
///     #[hidden]    fc1: Linear<D, D>,
///     #[hidden(bias, constraint = "none")] fc2: Linear<D, D>,
///     #[norm]      norm: RmsNorm<D>,
///     #[output]    readout: Linear<D, 10>,
/// }
/// ```
///
/// Field roles (exactly one per field):
///
/// | attribute | field type | parameters |
/// |---|---|---|
/// | `#[embedding]` | `Embedding<V, D>` | table `[V, D]` |
/// | `#[input]`, `#[input(bias, constraint = "...")]` | `Linear<IN, OUT>` | input weight `[OUT, IN]` (+ bias) |
/// | `#[hidden]`, `#[hidden(bias, constraint = "...")]` | `Linear<IN, OUT>` | weight `[OUT, IN]` (+ bias) |
/// | `#[hidden]`, `#[hidden(stride = 2, padding = 1, dilation = 1, groups = 2, bias, constraint = "...")]` | `Conv1d<C_IN, C_OUT, K>` | weight `[C_OUT, C_IN/groups, K]` (+ bias) |
/// | `#[output]`, `#[output(bias, constraint = "...")]` | `Linear<IN, OUT>` | readout weight (+ bias) |
/// | `#[norm]` | `RmsNorm<D>` or `LayerNorm<D>` | gain (+ bias) |
/// | `#[model]` | another `#[umup_model]` struct | its parameters, under the field's path |
///
/// `#[input]` is the input weight of float features (a patch, frame or feature projection):
/// `IN` is fixed and `OUT` is the width. It runs like `#[hidden]` (u-μP forward `1/√IN`) but
/// takes the input-weight rules: u-μP Adam LR `η/√OUT` (the embedding's rule), μP LR `η` and
/// init `1/√IN` (see `umup::params::Role::Input`).
///
/// A `Conv1d` field's geometry is given by integer-literal arguments of `#[hidden(..)]` (defaults
/// stride 1, padding 0, dilation 1, groups 1, no bias, `to_output_scale`); it becomes
/// `UnitConv1d`, forward `ops::conv1d` on `[B, C_IN, T]`, fan-in `C_IN/groups · K`. With
/// `groups > 1`, `C_IN` and `C_OUT` are integer literals that `groups` divides (checked at compile
/// time).
///
/// `#[depth]` next to a role turns a field of type `[T; N]`, `Repeated<T, N>` or `Stack<T, N>`
/// into a depth container: every parameter inside gets depth `N` (LR × 1/√N).
///
/// The struct gains three type parameters with defaults, `E = f32`, `Dev = Cpu` and
/// `P = Umup` (the parametrization: `Umup`, `Mup<BASE>` or `Sp`), and implements dfdx's
/// `TensorCollection` and `BuildOnDevice`, `UmupModule` (the parameter table), `Clone` and
/// `Debug`, plus `Self::build(&dev)` and `Self::param_table()`.
#[proc_macro_attribute]
pub fn umup_model(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::umup_model(args.into(), input.into()).into()
}

/// One `#[umup_model]` architecture at a list of widths and depths: a model family that the
/// trainer, the scale check and the sweeps run at a size chosen at run time.
///
/// ```ignore
/// umup::family! {
///     /// My model at the sizes I sweep.
///     pub struct MyFamily = MyModel<W, {4 * W}, L> for W in [64, 128, 256], L in [2, 4];
/// }
/// // or an explicit list of sizes:
/// umup::family! {
///     pub struct Small = MyModel<W, {4 * W}, L> for (W, L) in [(64, 2), (128, 4)];
/// }
/// ```
///
/// `W` and `L` (any two names) stand for the width and the depth; the macro writes the type out
/// at every size, appends the dtype `f32`, the device and the parametrization to its generic
/// arguments (the three that `#[umup_model]` adds), and implements `umup::family::Family` for
/// the new unit struct: each size in u-μP (`umup`), μP (`mup`, base width 64) and SP (`sp`).
/// The model type must implement `umup::family::Trainable` for every device.
#[proc_macro]
pub fn family(input: TokenStream) -> TokenStream {
    family::family(input.into()).into()
}

//! Procedural macros for [umup](https://docs.rs/umup): the `#[umup_model]` attribute.
//!
//! The macro works in three steps, each in its own module: `parse` reads the struct and its
//! field attributes into a small IR, `validate` checks roles against field types and shapes,
//! and `expand` generates the dfdx module. Every user error is a spanned `syn::Error`; all of
//! them are reported at once, and a fallback struct is emitted so the rest of the crate does not
//! drown in secondary errors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod expand;
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
/// | `#[hidden]`, `#[hidden(bias, constraint = "...")]` | `Linear<IN, OUT>` | weight `[OUT, IN]` (+ bias) |
/// | `#[output]`, `#[output(bias, constraint = "...")]` | `Linear<IN, OUT>` | readout weight (+ bias) |
/// | `#[norm]` | `RmsNorm<D>` or `LayerNorm<D>` | gain (+ bias) |
/// | `#[model]` | another `#[umup_model]` struct | its parameters, under the field's path |
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

//! Procedural macros for umup. The `#[umup_model]` attribute lands with the model-DSL work;
//! until then this crate exports nothing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

//! # umup
//!
//! u-μP (the Unit-Scaled Maximal Update Parametrization, Blake et al. 2024) for Rust, on
//! [`dfdx`]. This facade re-exports the runtime ([`umup_runtime`]) and, as it lands, the
//! `#[umup_model]` macro.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use umup_runtime::*;

#[doc(hidden)]
pub mod __private {
    //! Paths used by generated code. Not public API.
    pub use umup_runtime;
}

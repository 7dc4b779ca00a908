//! # umup
//!
//! u-μP (the Unit-Scaled Maximal Update Parametrization, Blake et al. 2024) for Rust, on
//! [`dfdx`]. This facade re-exports the runtime ([`umup_runtime`]) and the `#[umup_model]`
//! attribute ([`umup_model`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Tensor types with const-generic shapes, dtype, device and tape are long by nature.
#![allow(clippy::type_complexity)]

// Lets `#[umup_model]` (which refers to `::umup::__private`) be used inside this crate.
extern crate self as umup;

pub mod data;
pub mod device;
pub mod family;
pub mod models;
pub mod plot;
pub mod scale_check;
pub mod sweep;
pub mod tokenizer;
pub mod train;

pub use umup_macros::{family, umup_model};
pub use umup_runtime::*;

#[doc(hidden)]
pub mod __private {
    //! Paths used by code that `#[umup_model]` generates. Not public API.
    /// What `family!` generates refers to.
    pub mod family {
        pub use crate::family::*;
        pub use crate::nn::{Mup, Param, Sp, Umup};
        pub use crate::Error;
    }
    pub use core::marker::PhantomData;
    pub use core::result::Result;
    pub use std::string::String;
    pub use std::vec::Vec;
    pub use umup_runtime::dfdx;
    pub use umup_runtime::nn;
    pub use umup_runtime::params;
    pub use umup_runtime::rand_distr::{Distribution, StandardNormal};
    pub use umup_runtime::Error;
}

//! Models written with `#[umup_model]` and shipped with the library.

mod fused;
pub mod lm;

pub use lm::{Attention, DecoderLayer, LmOptions, SwiGlu, TransformerLm};

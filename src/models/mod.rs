//! Models written with `#[umup_model]` and shipped with the library.

pub mod lm;

pub use lm::{Attention, DecoderLayer, LmOptions, SwiGlu, TransformerLm};

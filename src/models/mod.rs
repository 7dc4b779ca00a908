//! Models written with `#[umup_model]` and shipped with the library, each with its family
//! (`umup::family!`) for the trainer, the scale check and the sweeps.

pub mod encoder;
pub mod lm;

pub use encoder::{EncoderFamily, EncoderLayer, MaskedEncoder, MASK_FRACTION};
pub use lm::{Attention, DecoderLayer, LmFamily, LmOptions, SwiGlu, TransformerLm, VOCAB};

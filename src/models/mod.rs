//! Models written with `#[umup_model]` and shipped with the library, each with its family
//! (`umup::family!`) for the trainer, the scale check and the sweeps.

/// A linear layer in the step's simulated precision, if any (`lin!(layer, x, step)`), for the
/// shipped models below.
macro_rules! lin {
    ($layer:expr, $x:expr, $step:expr) => {
        match $step.quant() {
            Some(q) => $layer.forward_quantised($x, q),
            None => $layer.try_forward($x),
        }
    };
}

pub mod encoder;
pub mod lm;
pub mod vit;

pub use encoder::{EncoderFamily, EncoderLayer, MaskedEncoder, MASK_FRACTION};
pub use lm::{
    Attention, BpeLmFamily, DecoderLayer, Lm, LmFamily, LmOn, LmOptions, SwiGlu, TransformerLm,
    BPE_VOCAB, VOCAB,
};
pub use vit::{Vit, VitFamily};

use crate::data::{Data, FeatureBatch, TokenBatch};
use crate::scale_check::{measure, Measurement, Report};
use crate::train::{train_family, Progress, RunOptions, Summary, TrainConfig};
use crate::Result;

/// Inherent `train` and `measure` for a shipped family on any data of its batch type, compiled
/// once here. (The generic [`train_family`] and [`measure`] are compiled again in every crate
/// that calls them with a family and a data type: for the LM that is 11 sizes × 3
/// parametrizations × f32 and f16 of the whole training loop. The examples and tests call
/// these instead; a user's own family calls the generic functions.)
macro_rules! compiled_once {
    ($family:ty, $batch:ty) => {
        impl $family {
            /// [`train_family`] of this family on `data`, compiled once in the library.
            pub fn train(
                cfg: &TrainConfig,
                data: &dyn Data<Batch = $batch>,
                run: &RunOptions,
                observe: &mut dyn FnMut(&Progress),
            ) -> Result<Summary> {
                train_family::<Self, dyn Data<Batch = $batch>>(cfg, data, run, observe)
            }

            /// [`measure`] (the scale check) of this family on `data`, compiled once in the
            /// library.
            pub fn measure(
                data: &dyn Data<Batch = $batch>,
                m: &Measurement,
                progress: &mut dyn FnMut(&str, usize),
            ) -> Result<Vec<Report>> {
                measure::<Self, dyn Data<Batch = $batch>>(data, m, progress)
            }
        }
    };
}

compiled_once!(LmFamily, TokenBatch);
compiled_once!(BpeLmFamily, TokenBatch);
compiled_once!(EncoderFamily, TokenBatch);
compiled_once!(VitFamily, FeatureBatch);

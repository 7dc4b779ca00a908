//! Data: the one thing the workflow (trainer, scale check, sweeps) knows about what a model
//! learns from.
//!
//! - [`Data`]: a source of typed batches, the training batch of each step and the validation
//!   batches, each drawn deterministically from `(seed, split, index)`, so a resumed run reads
//!   exactly what an uninterrupted one reads and sweeps are reproducible. Its [`Data::Batch`] is
//!   the batch type a model's [`crate::family::Trainable::Batch`] takes.
//! - Finite datasets (burn's `Dataset` → `Batcher`, PyTorch's `Dataset`/`DataLoader`):
//!   [`Dataset`] (random access to examples), [`Batcher`] (examples → a batch) and [`Loader`]
//!   (a train and a validation dataset → [`Data`], with epochs shuffled from the seed). Ready
//!   pieces: [`InMemory`], [`FeatureBatch`] and [`FeatureBatcher`].
//! - Arrays from files ([`arrays`]): features ([`Array`]) and labels ([`Labels`]) from
//!   safetensors and `.npy`, checked at load; the embedded 8×8 digits ([`arrays::digits`]).
//! - Text: [`TokenCorpus`] (token ids with a train/validation split: bytes, or a tokenizer's
//!   ids) and its two tasks, [`NextToken`] (a causal LM) and [`MaskedTokens`] (BERT-style), both
//!   giving [`TokenBatch`]es. The embedded Shakespeare text is [`Corpus::shakespeare`].
//!
//! ```
//! use umup::data::{Data, Dataset, FeatureBatcher, InMemory, Loader, Split};
//!
//! // Ten 2-feature examples with a class label each; 8 for training, 2 for validation.
//! let examples: Vec<(Vec<f32>, usize)> = (0..10).map(|i| (vec![i as f32, 1.0], i % 2)).collect();
//! let (train, val) = InMemory::new(examples).split_random(0.2, 7).unwrap();
//! let data = Loader::new("toy", train, val, FeatureBatcher::new(&[2])).unwrap().with_classes(2);
//! let b = data.batch(Split::Train, 0, 4, 0).unwrap();
//! assert_eq!((b.len(), b.features.len()), (4, 8));
//! // Batch 0 of seed 0 is always the same examples.
//! assert_eq!(b, data.batch(Split::Train, 0, 4, 0).unwrap());
//! ```

pub mod arrays;
pub mod dataset;
pub mod text;
pub mod tokenizer;

pub use arrays::{Array, Labels};
pub use dataset::{Batcher, Dataset, FeatureBatch, FeatureBatcher, InMemory, Loader};
pub use text::{Corpus, MaskedTokens, NextToken, TokenBatch, TokenCorpus, MASK};

/// The random-number types the data API hands out ([`step_rng`], [`Batcher::batch`]): `rand`
/// 0.8's, re-exported so a user needs no `rand` dependency of their own.
pub use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::Result;

/// Which part of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training examples.
    Train,
    /// The held-out validation examples.
    Val,
}

/// What every batch tells the trainer: its size, for throughput and the `tokens` column of
/// `metrics.csv`, and for weighting validation batches of unequal size.
pub trait Batch {
    /// Examples (rows) in the batch.
    fn examples(&self) -> usize;
    /// Input positions the model reads (tokens of a text batch); by default one per example.
    fn tokens(&self) -> usize {
        self.examples()
    }
}

/// How a run generates text at its end (models with
/// [`crate::family::Trainable::next_token_logits`]): a prompt and the longest context the model
/// sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Token ids to continue.
    pub prompt: Vec<usize>,
    /// Tokens of context the model is given (the last ones).
    pub context: usize,
}

/// A source of batches: what the trainer ([`crate::train::train_family`]), the scale check
/// ([`crate::scale_check::measure`]) and the sweeps read. Implement it for your own data, or
/// build it from a [`Dataset`] with a [`Loader`].
///
/// Every batch is a function of `(seed, split, index, size)`: the same arguments give the same
/// batch. That is what makes a resumed run bit-identical to an uninterrupted one.
pub trait Data: Sync {
    /// The batch the model's `Trainable::loss` receives.
    type Batch: Batch + Send + Sync;

    /// Batch `index` of `split` with `size` examples under `seed`: for [`Split::Train`] the
    /// batch of training step `index`, for [`Split::Val`] validation batch `index` (an
    /// evaluation reads batches `0..`[`Data::val_batches`]).
    fn batch(&self, split: Split, index: u64, size: usize, seed: u64) -> Result<Self::Batch>;

    /// One line that names the data and its settings (recorded as `data` in `config.json`; a
    /// resume on data with another description is refused, naming both).
    fn describe(&self) -> String;

    /// How many validation batches of `size` an evaluation reads when `requested` are asked
    /// for: `requested` by default; a finite validation split caps it so that no example is
    /// read twice ([`Loader`]).
    fn val_batches(&self, size: usize, requested: usize) -> usize {
        let _ = size;
        requested
    }

    /// The number of classes of a classification target (the vocabulary of a text), whose
    /// cross entropy at init is `ln(classes)` (the scale check's expected loss); `None` for
    /// other losses.
    fn classes(&self) -> Option<usize> {
        None
    }

    /// Bytes of the original text per token of the validation split, for text: the validation
    /// loss in bits per byte is `val_loss / ln 2 / bytes_per_token` (`metrics.csv`'s `val_bpb`),
    /// comparable across tokenizers. `None` for other data.
    fn bytes_per_token(&self) -> Option<f64> {
        None
    }

    /// A prompt for text generation at the end of a run; `None` (the default): the data is not
    /// text.
    fn generation(&self) -> Option<Generation> {
        None
    }

    /// The text of token ids (for generated samples).
    fn decode(&self, ids: &[usize]) -> String {
        let _ = ids;
        String::new()
    }
}

/// The RNG stream of training batches (see [`step_rng`]).
pub const TRAIN_STREAM: u64 = 1;
/// The RNG stream of validation batches.
pub const VAL_STREAM: u64 = 2;
/// The RNG stream of the epoch shuffles of a [`Loader`].
pub const SHUFFLE_STREAM: u64 = 5;
/// The RNG stream a [`Batcher`] draws from (augmentation, masking) for each batch.
pub const BATCHER_STREAM: u64 = 6;

/// A seeded RNG for one purpose at one step: the same `(seed, stream, step)` always gives the
/// same numbers, so a resumed run draws the same batches as an uninterrupted one.
pub fn step_rng(seed: u64, stream: u64, step: u64) -> StdRng {
    // SplitMix64-style mixing of the three inputs.
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

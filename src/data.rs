//! Byte-level language-modelling data: a corpus with a deterministic train/validation split and
//! reproducible random windows.

use std::io::Read;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::family::Task;
use crate::{Error, Result};

/// Which part of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The first `1 − val_fraction` of the bytes.
    Train,
    /// The last `val_fraction` of the bytes.
    Val,
}

/// A byte corpus (vocabulary 256) split at a fixed position.
#[derive(Debug, Clone)]
pub struct Corpus {
    bytes: Vec<u8>,
    split: usize,
}

/// The id of the mask token of [`Task::MaskedBytes`] (one past the bytes).
pub const MASK: usize = 256;

/// A batch of windows. For next-byte prediction `inputs[b·seq + t]` predicts
/// `targets[b·seq + t]` (the next byte) and `positions` is empty; for masked bytes `targets[j]`
/// is the original byte at the flat position `positions[j]` of `inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, `batch × seq`, row-major.
    pub inputs: Vec<usize>,
    /// The targets: one per position (next byte), or one per entry of `positions`.
    pub targets: Vec<usize>,
    /// The flat positions (`b·seq + t`, ascending) that `targets` belong to; empty when every
    /// position has a target, in order.
    pub positions: Vec<usize>,
    /// Rows.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
}

impl Corpus {
    /// A corpus from raw bytes; the last `val_fraction` of them is the validation split.
    pub fn from_bytes(bytes: Vec<u8>, val_fraction: f64) -> Result<Self> {
        if !(0.0 < val_fraction && val_fraction < 1.0) {
            return Err(Error::InvalidValue {
                what: "validation fraction",
                value: val_fraction,
                reason: "must be in (0, 1)",
            });
        }
        let split = ((bytes.len() as f64) * (1.0 - val_fraction)).round() as usize;
        Ok(Corpus { bytes, split })
    }

    /// A corpus from gzip-compressed bytes (e.g. the embedded Shakespeare text).
    pub fn from_gzip(gz: &[u8], val_fraction: f64) -> Result<Self> {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::BadInput(format!("cannot decompress the corpus: {e}")))?;
        Self::from_bytes(bytes, val_fraction)
    }

    /// The embedded corpus: 42 works of Shakespeare (Project Gutenberg editions; attribution
    /// in `data/README.md`), 5.1 MB of text.
    pub fn shakespeare(val_fraction: f64) -> Result<Self> {
        Self::from_gzip(include_bytes!("../data/shakespeare.txt.gz"), val_fraction)
    }

    /// A corpus from a file: gzip if it ends in `.gz`, raw bytes otherwise.
    pub fn from_path(path: &Path, val_fraction: f64) -> Result<Self> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "gz") {
            Self::from_gzip(&raw, val_fraction)
        } else {
            Self::from_bytes(raw, val_fraction)
        }
    }

    /// The bytes of a split.
    pub fn split(&self, split: Split) -> &[u8] {
        match split {
            Split::Train => &self.bytes[..self.split],
            Split::Val => &self.bytes[self.split..],
        }
    }

    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the corpus is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Entropy of the training split's byte unigram distribution, in nats: the loss of the best
    /// model that ignores context.
    pub fn unigram_entropy(&self) -> f64 {
        let data = self.split(Split::Train);
        let mut counts = [0usize; 256];
        for &b in data {
            counts[b as usize] += 1;
        }
        let n = data.len() as f64;
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.ln()
            })
            .sum()
    }

    /// `batch` random windows of `seq + 1` bytes from `split`, drawn from `rng`.
    pub fn batch(&self, split: Split, batch: usize, seq: usize, rng: &mut StdRng) -> Result<Batch> {
        let data = self.split(split);
        if batch == 0 || seq == 0 {
            return Err(Error::InvalidValue {
                what: "batch size and sequence length",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        if data.len() <= seq + 1 {
            return Err(Error::BadInput(format!(
                "the {split:?} split has {} bytes, too few for windows of {} bytes",
                data.len(),
                seq + 1
            )));
        }
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            let start = rng.gen_range(0..data.len() - seq);
            let w = &data[start..start + seq + 1];
            inputs.extend(w[..seq].iter().map(|&b| b as usize));
            targets.extend(w[1..].iter().map(|&b| b as usize));
        }
        Ok(Batch {
            inputs,
            targets,
            positions: Vec::new(),
            batch,
            seq,
        })
    }

    /// `batch` random windows of `seq` bytes from `split` with masked bytes (BERT's recipe):
    /// each position is chosen with probability `fraction` (at least one per batch); a chosen
    /// byte becomes [`MASK`] with probability 0.8, a uniformly random byte with 0.1, and stays
    /// with 0.1. The targets are the original bytes at the chosen positions.
    pub fn masked_batch(
        &self,
        split: Split,
        batch: usize,
        seq: usize,
        fraction: f64,
        rng: &mut StdRng,
    ) -> Result<Batch> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::InvalidValue {
                what: "masked fraction",
                value: fraction,
                reason: "must be in (0, 1]",
            });
        }
        let Batch { mut inputs, .. } = self.batch(split, batch, seq, rng)?;
        let (mut targets, mut positions) = (Vec::new(), Vec::new());
        for (i, id) in inputs.iter_mut().enumerate() {
            let last_chance = positions.is_empty() && i + 1 == batch * seq;
            if rng.gen::<f64>() < fraction || last_chance {
                positions.push(i);
                targets.push(*id);
                let r: f64 = rng.gen();
                if r < 0.8 {
                    *id = MASK;
                } else if r < 0.9 {
                    *id = rng.gen_range(0..256);
                }
            }
        }
        Ok(Batch {
            inputs,
            targets,
            positions,
            batch,
            seq,
        })
    }

    /// A batch for `task` ([`Corpus::batch`] or [`Corpus::masked_batch`]).
    pub fn task_batch(
        &self,
        task: Task,
        split: Split,
        batch: usize,
        seq: usize,
        rng: &mut StdRng,
    ) -> Result<Batch> {
        match task {
            Task::NextByte => self.batch(split, batch, seq, rng),
            Task::MaskedBytes { fraction } => self.masked_batch(split, batch, seq, fraction, rng),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_windows_and_entropy() {
        let text = b"abcabcabcabcabcabcabcabcabcabcab".to_vec();
        let c = Corpus::from_bytes(text, 0.25).unwrap();
        assert_eq!(c.split(Split::Train).len(), 24);
        assert_eq!(c.split(Split::Val).len(), 8);
        assert!((c.unigram_entropy() - 3f64.ln()).abs() < 1e-12);
        let b = c.batch(Split::Train, 3, 5, &mut step_rng(1, 0, 0)).unwrap();
        assert_eq!(b.inputs.len(), 15);
        for (i, t) in b.inputs.iter().zip(&b.targets) {
            // Next byte in the cycle a→b→c→a.
            assert_eq!((*i - 97 + 1) % 3, t - 97);
        }
        let again = c.batch(Split::Train, 3, 5, &mut step_rng(1, 0, 0)).unwrap();
        assert_eq!(b, again);
        let other = c.batch(Split::Train, 3, 5, &mut step_rng(1, 0, 1)).unwrap();
        assert_ne!(b.inputs, other.inputs);
        assert!(c.batch(Split::Val, 1, 8, &mut step_rng(1, 0, 0)).is_err());
        assert!(Corpus::from_bytes(vec![1, 2], 1.5).is_err());
    }

    #[test]
    fn masked_batches_follow_the_recipe() {
        let text: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let c = Corpus::from_bytes(text, 0.1).unwrap();
        let task = Task::MaskedBytes { fraction: 0.15 };
        let b = c
            .task_batch(task, Split::Train, 64, 64, &mut step_rng(3, 0, 0))
            .unwrap();
        let n = b.inputs.len();
        let chosen = b.positions.len() as f64 / n as f64;
        assert!((chosen - 0.15).abs() < 0.02, "chosen fraction {chosen}");
        assert_eq!(b.targets.len(), b.positions.len());
        assert!(b.positions.windows(2).all(|p| p[0] < p[1]));
        let masked = b.positions.iter().filter(|&&p| b.inputs[p] == MASK).count();
        let frac = masked as f64 / b.positions.len() as f64;
        assert!((frac - 0.8).abs() < 0.06, "masked fraction {frac}");
        // Every position that was not chosen keeps its byte and is never the mask token; the
        // targets are the bytes of a window of the cyclic text.
        for (j, &p) in b.positions.iter().enumerate() {
            let row = p / 64;
            let first = b.inputs[row * 64..(row + 1) * 64]
                .iter()
                .enumerate()
                .find(|(k, _)| !b.positions.contains(&(row * 64 + k)))
                .map(|(k, &v)| (v + 251 - k % 251) % 251)
                .unwrap();
            assert_eq!(b.targets[j], (first + p % 64) % 251);
        }
        assert_eq!(
            b.inputs.iter().filter(|&&v| v == MASK).count(),
            masked,
            "the mask token only at chosen positions"
        );
        let again = c
            .task_batch(task, Split::Train, 64, 64, &mut step_rng(3, 0, 0))
            .unwrap();
        assert_eq!(b, again);
        assert!(c
            .masked_batch(Split::Train, 2, 8, 0.0, &mut step_rng(0, 0, 0))
            .is_err());
        let one = c
            .masked_batch(Split::Train, 1, 4, 1e-9, &mut step_rng(0, 0, 0))
            .unwrap();
        assert_eq!(one.positions.len(), 1, "at least one target per batch");
    }
}

//! Text: a byte corpus ([`Corpus`]), token ids with a train/validation split ([`TokenCorpus`],
//! from bytes or a tokenizer) and its two tasks, next-token prediction ([`NextToken`]) and
//! masked tokens ([`MaskedTokens`]), both drawing random windows from seeded RNGs.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use dfdx::prelude::*;
use rand::Rng;

use super::tokenizer::BpeTokenizer;
use super::{step_rng, Batch, Data, Generation, Split, StdRng, TRAIN_STREAM, VAL_STREAM};
use crate::{Error, Result};

/// A byte corpus split at a fixed position: the last `val_fraction` of the bytes is the
/// validation split.
#[derive(Debug, Clone)]
pub struct Corpus {
    name: String,
    bytes: Arc<Vec<u8>>,
    split: usize,
}

/// The id of the mask token of [`MaskedTokens`] on bytes: one past the 256 bytes (in general
/// the mask id is the vocabulary size, [`MaskedTokens::mask_id`]).
pub const MASK: usize = 256;

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
        Ok(Corpus {
            name: "bytes".into(),
            bytes: Arc::new(bytes),
            split,
        })
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
        Ok(Self::from_gzip(
            include_bytes!("../../data/shakespeare.txt.gz"),
            val_fraction,
        )?
        .named("shakespeare (embedded)"))
    }

    /// A corpus from a file: gzip if it ends in `.gz`, raw bytes otherwise; named by its path.
    pub fn from_path(path: &Path, val_fraction: f64) -> Result<Self> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))?;
        let c = if path.extension().is_some_and(|e| e == "gz") {
            Self::from_gzip(&raw, val_fraction)?
        } else {
            Self::from_bytes(raw, val_fraction)?
        };
        Ok(c.named(&path.display().to_string()))
    }

    /// The same corpus under another name (what [`Data::describe`] reports).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The corpus's name.
    pub fn name(&self) -> &str {
        &self.name
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
}

/// Decodes token ids to text.
type Decode = Arc<dyn Fn(&[usize]) -> String + Send + Sync>;

/// Token ids with a train/validation split, a vocabulary size and a way back to text: the
/// bytes of a [`Corpus`] ([`TokenCorpus::bytes`], vocabulary 256) or a tokenizer's ids
/// ([`TokenCorpus::from_ids`]).
#[derive(Clone)]
pub struct TokenCorpus {
    name: String,
    ids: Arc<Vec<u32>>,
    split: usize,
    vocab: usize,
    bytes_per_token: f64,
    decode: Decode,
}

impl std::fmt::Debug for TokenCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCorpus")
            .field("name", &self.name)
            .field("tokens", &self.ids.len())
            .field("split", &self.split)
            .field("vocab", &self.vocab)
            .field("bytes_per_token", &self.bytes_per_token)
            .finish()
    }
}

impl TokenCorpus {
    /// The bytes of `corpus` as tokens: vocabulary 256, one byte per token, decoded byte by
    /// byte (each byte one `char`, as Latin-1).
    pub fn bytes(corpus: &Corpus) -> Self {
        TokenCorpus {
            name: format!("{}, bytes", corpus.name),
            ids: Arc::new(corpus.bytes.iter().map(|&b| u32::from(b)).collect()),
            split: corpus.split,
            vocab: 256,
            bytes_per_token: 1.0,
            decode: Arc::new(|ids: &[usize]| ids.iter().map(|&b| b as u8 as char).collect()),
        }
    }

    /// The text of `corpus` in the tokens of `tokenizer` (each split encoded on its own): the
    /// vocabulary is the tokenizer's, bits per byte count the corpus's bytes, and the name
    /// carries the tokenizer's ([`BpeTokenizer::name`], with its checksum).
    pub fn tokenized(corpus: &Corpus, tokenizer: &BpeTokenizer) -> Result<Self> {
        let train = tokenizer.encode(corpus.split(Split::Train))?;
        let val_text = corpus.split(Split::Val);
        let val = tokenizer.encode(val_text)?;
        let decoder = tokenizer.clone();
        Self::from_ids(
            &format!("{}, {}", corpus.name, tokenizer.name()),
            train,
            val,
            tokenizer.vocab_size(),
            val_text.len(),
            move |ids: &[usize]| {
                let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                decoder.decode(&ids)
            },
        )
    }

    /// Token ids of a tokenized text: the `train` and `val` splits, the vocabulary `vocab` (every
    /// id must be below it: an error names the first that is not), `val_bytes` bytes of text in
    /// the validation split (for bits per byte) and the tokenizer's `decode`.
    pub fn from_ids(
        name: &str,
        train: Vec<u32>,
        val: Vec<u32>,
        vocab: usize,
        val_bytes: usize,
        decode: impl Fn(&[usize]) -> String + Send + Sync + 'static,
    ) -> Result<Self> {
        let split = train.len();
        let mut ids = train;
        ids.extend(val);
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
        {
            return Err(Error::TokenOutOfRange {
                id: id as usize,
                position,
                vocab,
            });
        }
        let val_tokens = ids.len() - split;
        Ok(TokenCorpus {
            name: name.into(),
            ids: Arc::new(ids),
            split,
            vocab,
            bytes_per_token: val_bytes as f64 / val_tokens.max(1) as f64,
            decode: Arc::new(decode),
        })
    }

    /// The ids of a split.
    pub fn split(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.ids[..self.split],
            Split::Val => &self.ids[self.split..],
        }
    }

    /// The vocabulary size: every id is below it.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The name (with the tokenization).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of text per token in the validation split.
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes_per_token
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[usize]) -> String {
        (self.decode)(ids)
    }

    /// Entropy of the training split's unigram distribution, in nats: the loss of the best
    /// model that ignores context.
    pub fn unigram_entropy(&self) -> f64 {
        let data = self.split(Split::Train);
        let mut counts = vec![0usize; self.vocab];
        for &t in data {
            counts[t as usize] += 1;
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

    /// `batch` random windows of `seq + 1` tokens from `split`, drawn from `rng`: inputs the
    /// first `seq`, targets the last `seq` (the next token).
    pub fn windows(
        &self,
        split: Split,
        batch: usize,
        seq: usize,
        rng: &mut StdRng,
    ) -> Result<TokenBatch> {
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
                "the {split:?} split of {} has {} tokens, too few for windows of {} tokens",
                self.name,
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
        Ok(TokenBatch {
            inputs,
            targets,
            positions: Vec::new(),
            batch,
            seq,
        })
    }

    /// `batch` random windows of `seq` tokens from `split` with masked tokens (BERT's recipe):
    /// each position is chosen with probability `fraction` (at least one per batch); a chosen
    /// token becomes the mask id (the vocabulary size) with probability 0.8, a uniformly random
    /// token with 0.1, and stays with 0.1. The targets are the original tokens at the chosen
    /// positions.
    pub fn masked_windows(
        &self,
        split: Split,
        batch: usize,
        seq: usize,
        fraction: f64,
        rng: &mut StdRng,
    ) -> Result<TokenBatch> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::InvalidValue {
                what: "masked fraction",
                value: fraction,
                reason: "must be in (0, 1]",
            });
        }
        let TokenBatch { mut inputs, .. } = self.windows(split, batch, seq, rng)?;
        let (mut targets, mut positions) = (Vec::new(), Vec::new());
        for (i, id) in inputs.iter_mut().enumerate() {
            let last_chance = positions.is_empty() && i + 1 == batch * seq;
            if rng.gen::<f64>() < fraction || last_chance {
                positions.push(i);
                targets.push(*id);
                let r: f64 = rng.gen();
                if r < 0.8 {
                    *id = self.vocab;
                } else if r < 0.9 {
                    *id = rng.gen_range(0..self.vocab);
                }
            }
        }
        Ok(TokenBatch {
            inputs,
            targets,
            positions,
            batch,
            seq,
        })
    }
}

/// A batch of token windows. For next-token prediction `inputs[b·seq + t]` predicts
/// `targets[b·seq + t]` (the next token) and `positions` is empty; for masked tokens
/// `targets[j]` is the original token at the flat position `positions[j]` of `inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, `batch × seq`, row-major.
    pub inputs: Vec<usize>,
    /// The targets: one per position (next token), or one per entry of `positions`.
    pub targets: Vec<usize>,
    /// The flat positions (`b·seq + t`, ascending) that `targets` belong to; empty when every
    /// position has a target, in order.
    pub positions: Vec<usize>,
    /// Rows.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
}

impl TokenBatch {
    /// The inputs as a tensor of `batch·seq` ids on `dev`, each checked below `vocab` (an error
    /// names the first that is not).
    pub fn ids<Dev: Storage<usize> + TensorFromVec<usize>>(
        &self,
        dev: &Dev,
        vocab: usize,
    ) -> Result<Tensor<(usize,), usize, Dev>> {
        if let Some((position, &id)) = self.inputs.iter().enumerate().find(|(_, &i)| i >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                position,
                vocab,
            });
        }
        dev.try_tensor_from_vec(self.inputs.clone(), (self.inputs.len(),))
            .map_err(Error::device)
    }
}

impl Batch for TokenBatch {
    fn examples(&self) -> usize {
        self.batch
    }
    fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

fn stream(split: Split) -> u64 {
    match split {
        Split::Train => TRAIN_STREAM,
        Split::Val => VAL_STREAM,
    }
}

/// Next-token prediction (a causal LM) on random windows of `seq` tokens.
#[derive(Debug, Clone)]
pub struct NextToken {
    /// The tokens.
    pub corpus: TokenCorpus,
    /// Tokens per window.
    pub seq: usize,
}

impl NextToken {
    /// Windows of `seq` tokens of `corpus`.
    pub fn new(corpus: TokenCorpus, seq: usize) -> Self {
        NextToken { corpus, seq }
    }
}

impl Data for NextToken {
    type Batch = TokenBatch;

    /// `size` windows ([`TokenCorpus::windows`]) from `step_rng(seed, stream, index)`.
    fn batch(&self, split: Split, index: u64, size: usize, seed: u64) -> Result<TokenBatch> {
        let mut rng = step_rng(seed, stream(split), index);
        self.corpus.windows(split, size, self.seq, &mut rng)
    }

    fn describe(&self) -> String {
        format!("{} · next token · seq {}", self.corpus.name, self.seq)
    }

    fn classes(&self) -> Option<usize> {
        Some(self.corpus.vocab)
    }

    fn bytes_per_token(&self) -> Option<f64> {
        Some(self.corpus.bytes_per_token)
    }

    /// The first `min(seq, 32)` tokens of the validation split, with a context of `seq`.
    fn generation(&self) -> Option<Generation> {
        let val = self.corpus.split(Split::Val);
        let n = self.seq.min(val.len()).min(32);
        Some(Generation {
            prompt: val[..n].iter().map(|&t| t as usize).collect(),
            context: self.seq,
        })
    }

    fn decode(&self, ids: &[usize]) -> String {
        self.corpus.decode(ids)
    }
}

/// Masked tokens (BERT-style) on random windows of `seq` tokens: a `fraction` of the positions
/// is chosen and the model predicts their original tokens ([`TokenCorpus::masked_windows`]).
/// Inputs use one id more than the corpus's vocabulary: the mask, [`MaskedTokens::mask_id`].
#[derive(Debug, Clone)]
pub struct MaskedTokens {
    /// The tokens.
    pub corpus: TokenCorpus,
    /// Tokens per window.
    pub seq: usize,
    /// Probability that a position is chosen (BERT: 0.15).
    pub fraction: f64,
}

impl MaskedTokens {
    /// Windows of `seq` tokens of `corpus` with a `fraction` of them chosen.
    pub fn new(corpus: TokenCorpus, seq: usize, fraction: f64) -> Self {
        MaskedTokens {
            corpus,
            seq,
            fraction,
        }
    }

    /// The id of the mask token: the corpus's vocabulary size ([`MASK`] on bytes).
    pub fn mask_id(&self) -> usize {
        self.corpus.vocab
    }
}

impl Data for MaskedTokens {
    type Batch = TokenBatch;

    fn batch(&self, split: Split, index: u64, size: usize, seed: u64) -> Result<TokenBatch> {
        let mut rng = step_rng(seed, stream(split), index);
        self.corpus
            .masked_windows(split, size, self.seq, self.fraction, &mut rng)
    }

    fn describe(&self) -> String {
        format!(
            "{} · masked tokens {} · seq {}",
            self.corpus.name, self.fraction, self.seq
        )
    }

    fn classes(&self) -> Option<usize> {
        Some(self.corpus.vocab)
    }

    fn bytes_per_token(&self) -> Option<f64> {
        Some(self.corpus.bytes_per_token)
    }

    fn decode(&self, ids: &[usize]) -> String {
        self.corpus.decode(ids)
    }
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
        let t = TokenCorpus::bytes(&c);
        assert!((t.unigram_entropy() - 3f64.ln()).abs() < 1e-12);
        let data = NextToken::new(t.clone(), 5);
        let b = data.batch(Split::Train, 0, 3, 1).unwrap();
        assert_eq!(b.inputs.len(), 15);
        assert_eq!((b.examples(), b.tokens()), (3, 15));
        for (i, t) in b.inputs.iter().zip(&b.targets) {
            // Next byte in the cycle a→b→c→a.
            assert_eq!((*i - 97 + 1) % 3, t - 97);
        }
        assert_eq!(b, data.batch(Split::Train, 0, 3, 1).unwrap());
        assert_ne!(b.inputs, data.batch(Split::Train, 1, 3, 1).unwrap().inputs);
        // Windows of 9 bytes do not fit the 8 validation bytes.
        let long = NextToken::new(t, 8);
        let e = long.batch(Split::Val, 0, 1, 1).unwrap_err().to_string();
        assert!(e.contains("Val split") && e.contains("8 tokens"), "{e}");
        assert!(Corpus::from_bytes(vec![1, 2], 1.5).is_err());
    }

    #[test]
    fn masked_batches_follow_the_recipe() {
        let text: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let c = TokenCorpus::bytes(&Corpus::from_bytes(text, 0.1).unwrap());
        let data = MaskedTokens::new(c.clone(), 64, 0.15);
        assert_eq!(data.mask_id(), MASK);
        let b = data.batch(Split::Train, 0, 64, 3).unwrap();
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
        assert_eq!(b, data.batch(Split::Train, 0, 64, 3).unwrap());
        assert!(c
            .masked_windows(Split::Train, 2, 8, 0.0, &mut step_rng(0, 0, 0))
            .is_err());
        let one = c
            .masked_windows(Split::Train, 1, 4, 1e-9, &mut step_rng(0, 0, 0))
            .unwrap();
        assert_eq!(one.positions.len(), 1, "at least one target per batch");
    }

    #[test]
    fn token_ids_are_checked_against_the_vocabulary() {
        let e = TokenCorpus::from_ids("t", vec![1, 2, 3], vec![9, 4], 5, 10, |_| String::new())
            .unwrap_err();
        assert_eq!(
            e,
            Error::TokenOutOfRange {
                id: 9,
                position: 3,
                vocab: 5
            }
        );
        let t = TokenCorpus::from_ids("t", vec![1, 2, 3], vec![4, 0], 5, 10, |ids| {
            ids.iter().map(|i| i.to_string()).collect()
        })
        .unwrap();
        assert_eq!(t.bytes_per_token(), 5.0);
        assert_eq!(t.decode(&[4, 2]), "42");
        let b = TokenBatch {
            inputs: vec![0, 7],
            targets: vec![1, 1],
            positions: vec![],
            batch: 1,
            seq: 2,
        };
        let dev: Cpu = Default::default();
        assert_eq!(
            b.ids(&dev, 5).unwrap_err(),
            Error::TokenOutOfRange {
                id: 7,
                position: 1,
                vocab: 5
            }
        );
        assert_eq!(b.ids(&dev, 8).unwrap().as_vec(), vec![0, 7]);
    }
}

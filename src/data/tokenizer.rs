//! Byte-level BPE tokenizers for language-model data, built on the Hugging Face
//! [`tokenizers`] crate: train one on a corpus, save and load it as a standard `tokenizer.json`,
//! encode text to token ids and decode ids back to text.
//!
//! A tokenizer [trained](BpeTokenizer::train_bpe) here is the GPT-2 design: the ByteLevel
//! pre-tokenizer (the GPT-2 split regex, no prefix space) maps every byte of the UTF-8 text to one
//! of 256 initial tokens, and BPE merges grow the vocabulary to the requested size. No
//! normalizer, no special tokens, so decoding the encoding of any UTF-8 text gives the text back
//! exactly.
//!
//! **Bytes that are not UTF-8.** The `tokenizers` crate works on `&str`, so
//! [`encode`](BpeTokenizer::encode) and [`train_bpe`](BpeTokenizer::train_bpe) read their input
//! with [`String::from_utf8_lossy`]: each invalid sequence becomes U+FFFD (the three bytes
//! `EF BF BD`), and decoding gives those bytes back, not the original ones. Valid UTF-8 (ASCII
//! included, as the embedded Shakespeare corpus) is unaffected. Bits-per-byte figures should divide
//! by the length of the original bytes, which is what
//! [`bytes_per_token`](BpeTokenizer::bytes_per_token) does.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::utils::parallelism::MaybeParallelIterator;

use crate::{Error, Result};

/// The size in bytes above which text is cut into pieces that are encoded in parallel.
const CHUNK_BYTES: usize = 1 << 16;

/// A byte-level BPE tokenizer (a Hugging Face `tokenizer.json`).
///
/// Ids are `0..vocab_size()`; the first 256 of a trained tokenizer are the bytes (in the GPT-2
/// byte-to-character order), the rest are merges in the order they were learned.
#[derive(Clone)]
pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
    /// The canonical (pretty-printed) JSON of `inner`.
    json: String,
    /// The bytes each id decodes to.
    bytes: Vec<Vec<u8>>,
    /// Whether `encode` may cut text at the newlines [`line_chunks`] picks (see there).
    chunkable: bool,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpeTokenizer({})", self.name())
    }
}

impl BpeTokenizer {
    /// Trains a byte-level BPE tokenizer of exactly `vocab` tokens (the 256 bytes plus
    /// `vocab − 256` merges) on `text`, read as lossy UTF-8 (see the [module docs](self)).
    ///
    /// Offline and deterministic: the same text and `vocab` give the same tokenizer (the same
    /// JSON, byte for byte). Errors if `vocab < 256`, or if the text has too few distinct byte
    /// pairs to learn `vocab − 256` merges.
    pub fn train_bpe(text: &[u8], vocab: usize) -> Result<Self> {
        if vocab < 256 {
            return Err(Error::InvalidValue {
                what: "BPE vocabulary size",
                value: vocab as f64,
                reason: "must be at least 256 (the byte alphabet)",
            });
        }
        let text = String::from_utf8_lossy(text);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(pre_tokenizer()));
        inner.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // The chunks are cut where the pre-tokenizer always splits, so the word counts the
        // trainer sees are those of the whole text.
        inner
            .train(&mut trainer, line_chunks(&text, CHUNK_BYTES).into_iter())
            .map_err(|e| Error::Invalid(one_line(format!("BPE training failed: {e}"))))?;
        let got = inner.get_vocab_size(true);
        if got != vocab {
            return Err(Error::Invalid(format!(
                "the training text has too few distinct byte pairs for a BPE vocabulary of \
                 {vocab}: training stopped at {got} tokens; use more text or a smaller vocabulary"
            )));
        }
        Self::from_inner(inner).map_err(|e| Error::Invalid(format!("trained tokenizer: {e}")))
    }

    /// Loads a `tokenizer.json` (one saved by [`save`](Self::save), or any byte-level BPE
    /// tokenizer such as GPT-2's). The error names the file when it cannot be read, does not
    /// parse, or is not a byte-level BPE tokenizer.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| {
            Error::BadInput(format!("cannot read tokenizer {}: {e}", path.display()))
        })?;
        Self::parse(&json)
            .map_err(|e| Error::BadInput(one_line(format!("tokenizer {}: {e}", path.display()))))
    }

    /// Parses a tokenizer from its JSON text (the content of a `tokenizer.json`).
    pub fn from_json_str(json: &str) -> Result<Self> {
        Self::parse(json).map_err(|e| Error::BadInput(one_line(format!("tokenizer JSON: {e}"))))
    }

    /// Writes the tokenizer's JSON ([`to_json`](Self::to_json)) to `path` atomically (a
    /// temporary file renamed over it).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::checkpoint::write_atomically(path.as_ref(), self.json.as_bytes())
    }

    /// The tokenizer as `tokenizer.json` text (pretty-printed; the same tokenizer always gives
    /// the same text).
    pub fn to_json(&self) -> String {
        self.json.clone()
    }

    /// The number of token ids (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// A short description that tells tokenizers apart, e.g. `bpe 1024 (crc32 1a2b3c4d)`: the
    /// vocabulary size and the CRC-32 of [`to_json`](Self::to_json).
    pub fn name(&self) -> String {
        format!("bpe {} (crc32 {:08x})", self.vocab_size(), self.crc32())
    }

    /// The CRC-32 of [`to_json`](Self::to_json).
    pub fn crc32(&self) -> u32 {
        crc32fast::hash(self.json.as_bytes())
    }

    /// Encodes `text` (read as lossy UTF-8, see the [module docs](self)) to token ids, all
    /// `< vocab_size()`.
    ///
    /// Text longer than 64 KiB is cut at newlines that lie between two non-whitespace
    /// characters and the pieces are encoded in parallel (rayon). The ByteLevel pre-tokenizer
    /// always splits on both sides of such a newline, so the ids are the same as those of one
    /// call on the whole text. (On the 4.6 MB Shakespeare training split, 2 cores: about 1 s
    /// and 55 MB at peak, against 2.3 s and 670 MB for one `tokenizers` call.)
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        let text = String::from_utf8_lossy(text);
        self.encode_str(&text, CHUNK_BYTES)
    }

    /// Decodes ids to text. Ids that are not in the vocabulary decode to U+FFFD, as do byte
    /// sequences that are not UTF-8 (e.g. a window that cuts a multi-byte character).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.bytes.get(id as usize) {
                Some(b) => bytes.extend_from_slice(b),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes a token decodes to; `None` for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The mean number of bytes of `text` per token of its encoding (`text.len() / ids`; 0 for
    /// empty text). A model's loss in nats per token divided by `ln 2 · bytes_per_token` is its
    /// bits per byte.
    pub fn bytes_per_token(&self, text: &[u8]) -> Result<f64> {
        let tokens = self.encode(text)?.len();
        Ok(if tokens == 0 {
            0.0
        } else {
            text.len() as f64 / tokens as f64
        })
    }

    fn parse(json: &str) -> Result<Self, String> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| format!("{e}"))?;
        Self::from_inner(inner)
    }

    /// Checks that `inner` is a byte-level BPE tokenizer with contiguous ids, drops any padding
    /// or truncation (they would cut or pad the encoding of a corpus), and builds the id → bytes
    /// table.
    fn from_inner(mut inner: tokenizers::Tokenizer) -> Result<Self, String> {
        if !matches!(inner.get_model(), ModelWrapper::BPE(_)) {
            return Err("not a BPE tokenizer (the model type is not BPE)".into());
        }
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| format!("cannot remove truncation: {e}"))?;
        let char_byte = char_to_byte();
        let added = inner.get_added_tokens_decoder();
        let n = inner.get_vocab_size(true);
        let mut bytes = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let token = inner
                .id_to_token(id)
                .ok_or_else(|| format!("ids are not contiguous: no token has id {id} (< {n})"))?;
            let b = if let Some(t) = added.get(&id) {
                t.content.as_bytes().to_vec()
            } else {
                token
                    .chars()
                    .map(|c| char_byte.get(c as usize).copied().flatten())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| {
                        format!("token {id} {token:?} is not a byte-level token (not a GPT-2 style byte-level BPE)")
                    })?
            };
            bytes.push(b);
        }
        let chunkable = inner.get_normalizer().is_none()
            && added.is_empty()
            && matches!(
                inner.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
            );
        let json = inner
            .to_string(true)
            .map_err(|e| format!("cannot serialize: {e}"))?;
        Ok(BpeTokenizer {
            inner,
            json,
            bytes,
            chunkable,
        })
    }

    /// Encodes `text`, in pieces of about `chunk` bytes when the pipeline allows it.
    fn encode_str(&self, text: &str, chunk: usize) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let pieces = if self.chunkable {
            line_chunks(text, chunk)
        } else {
            vec![text]
        };
        // Like `encode_batch_fast` (rayon unless TOKENIZERS_PARALLELISM is off), but each
        // piece's `Encoding` (a `String` and offsets per token) is dropped as soon as its ids are
        // copied out.
        let per_piece = pieces
            .into_maybe_par_iter()
            .map(|piece| Ok(self.inner.encode_fast(piece, false)?.get_ids().to_vec()))
            .collect::<tokenizers::Result<Vec<Vec<u32>>>>()
            .map_err(|e| Error::Invalid(one_line(format!("tokenizer encode failed: {e}"))))?;
        Ok(per_piece.concat())
    }
}

/// The pre-tokenizer of a trained tokenizer: GPT-2's split regex, no prefix space (so that
/// decoding gives the text back exactly).
fn pre_tokenizer() -> ByteLevel {
    ByteLevel::new(false, false, true)
}

/// GPT-2's byte → character map, reversed: the byte of each character code below 512 that a
/// byte-level token uses (`None` for the others).
fn char_to_byte() -> Vec<Option<u8>> {
    let mut table = vec![None; 512];
    let mut extra = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as usize
        } else {
            extra += 1;
            255 + extra
        };
        table[c] = Some(b);
    }
    table
}

/// Cuts `text` into pieces of at least `target` bytes (the last may be shorter), each ending
/// just after a `\n` whose neighbours on both sides are not whitespace.
///
/// The GPT-2 regex of the ByteLevel pre-tokenizer (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
/// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`) always makes such a newline a pre-token of its own: no
/// alternative that starts at a non-whitespace character matches whitespace, and a whitespace run
/// of one character followed by a non-whitespace one is matched by the final `\s+` alone. The
/// regex has no look-behind, so the pre-tokens after the cut do not depend on the text before it,
/// and at the end of a piece `\s+(?!\S)` still matches the lone newline. Each pre-token is
/// encoded on its own, so encoding the pieces one by one gives the ids of the whole text. (A cut
/// after a newline that follows or precedes other whitespace would not be safe: `"a \nb"` splits
/// as `a`, ` `, `\n`, `b` but `"a \n"` alone as `a`, ` \n`.)
fn line_chunks(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    'outer: while text.len() - start > target {
        let mut from = start + target;
        while let Some(k) = bytes[from..].iter().position(|&b| b == b'\n') {
            let nl = from + k;
            let before = text[..nl].chars().next_back();
            let after = text[nl + 1..].chars().next();
            if before.is_some_and(|c| !c.is_whitespace())
                && after.is_some_and(|c| !c.is_whitespace())
            {
                pieces.push(&text[start..nl + 1]);
                start = nl + 1;
                continue 'outer;
            }
            from = nl + 1;
        }
        break;
    }
    pieces.push(&text[start..]);
    pieces
}

/// Error messages are one line.
fn one_line(s: String) -> String {
    if s.contains('\n') {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small repetitive text with enough distinct pairs for 300 tokens.
    fn corpus() -> String {
        let lines = [
            "The quick brown fox jumps over the lazy dog.",
            "  She sells sea shells by the sea shore; the shells she sells are surely seashells.",
            "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
            "\tPeter Piper picked a peck of pickled peppers (42 pecks, 1999 peppers).",
            "",
            "To be, or not to be, that is the question:",
            "Whether 'tis nobler in the mind to suffer",
        ];
        let mut text = String::new();
        for i in 0..40 {
            for l in &lines {
                text.push_str(l);
                text.push_str(if i % 3 == 0 { " \n" } else { "\n" });
            }
        }
        text
    }

    fn trained() -> BpeTokenizer {
        BpeTokenizer::train_bpe(corpus().as_bytes(), 300).unwrap()
    }

    #[test]
    fn trains_the_requested_vocab_and_round_trips() {
        let tk = trained();
        assert_eq!(tk.vocab_size(), 300);
        assert!(tk.name().starts_with("bpe 300 (crc32 "), "{}", tk.name());
        for text in [
            corpus(),
            "To be, or not to be: that is the question.\n".to_string(),
            "naïve café, Grüße aus Köln — 東京 🦀 ünïcödé\n\ttabs  and   spaces \r\n".to_string(),
            String::new(),
        ] {
            let ids = tk.encode(text.as_bytes()).unwrap();
            assert!(ids.iter().all(|&id| (id as usize) < tk.vocab_size()));
            assert_eq!(tk.decode(&ids), text);
        }
        // Merges were learned: the training text takes far fewer tokens than bytes.
        let bpt = tk.bytes_per_token(corpus().as_bytes()).unwrap();
        assert!(bpt > 1.5, "bytes per token {bpt}");
        // The bytes are the first 256 ids, one byte each.
        assert!((0..256).all(|id| tk.token_bytes(id).unwrap().len() == 1));
        assert!(tk.token_bytes(300).is_none());
        assert_eq!(tk.decode(&[300, 4000]), "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn training_is_deterministic() {
        let a = trained().to_json();
        let b = trained().to_json();
        assert_eq!(a, b);
        assert_ne!(
            a,
            BpeTokenizer::train_bpe(corpus().as_bytes(), 301)
                .unwrap()
                .to_json()
        );
    }

    #[test]
    fn invalid_utf8_is_read_lossily() {
        let tk = trained();
        let ids = tk.encode(b"ab\xFFc").unwrap();
        assert_eq!(tk.decode(&ids), "ab\u{FFFD}c");
    }

    #[test]
    fn bad_vocab_sizes_are_errors() {
        assert!(BpeTokenizer::train_bpe(b"abc", 255).is_err());
        let e = BpeTokenizer::train_bpe(b"abcabc", 300).unwrap_err();
        assert!(e.to_string().contains("too few distinct byte pairs"), "{e}");
        // Exactly the alphabet: no merges needed.
        assert_eq!(
            BpeTokenizer::train_bpe(b"abc", 256).unwrap().vocab_size(),
            256
        );
    }

    #[test]
    fn chunked_encoding_equals_one_call() {
        // Indented lines, blank lines, trailing spaces and multi-byte characters around the
        // newlines, often enough that the tokenizer learns whitespace merges (` \n`, `\n `).
        let mut text = corpus();
        for _ in 0..30 {
            text.push_str("é\nü\n \n\n  x\ny \n z\n\u{3000}\nq \n\tw\n");
        }
        let tk = BpeTokenizer::train_bpe(text.as_bytes(), 300).unwrap();
        let whole = tk.encode_str(&text, usize::MAX).unwrap();
        // Cutting after every newline would change the ids (`"y \n z"`, `"\n  x"`, ...).
        let naive: Vec<u32> = text
            .split_inclusive('\n')
            .flat_map(|line| tk.encode_str(line, usize::MAX).unwrap())
            .collect();
        assert_ne!(naive, whole);
        // Cut at every allowed newline, and at a few coarser sizes.
        for target in [1, 7, 50, 333] {
            let pieces = line_chunks(&text, target);
            assert!(pieces.len() > 1);
            assert_eq!(pieces.concat(), text);
            assert_eq!(
                tk.encode_str(&text, target).unwrap(),
                whole,
                "target {target}"
            );
        }
    }

    #[test]
    fn save_and_load_give_the_same_tokenizer() {
        let tk = trained();
        let dir = std::env::temp_dir().join(format!("umup-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        tk.save(&path).unwrap();
        let loaded = BpeTokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.to_json(), tk.to_json());
        assert_eq!(loaded.name(), tk.name());
        let text = corpus();
        assert_eq!(
            loaded.encode(text.as_bytes()).unwrap(),
            tk.encode(text.as_bytes()).unwrap()
        );
        let from_str = BpeTokenizer::from_json_str(&tk.to_json()).unwrap();
        assert_eq!(from_str.name(), tk.name());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_name_the_path() {
        let dir = std::env::temp_dir().join(format!("umup-tokenizer-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "this is not { json").unwrap();
        let missing = dir.join("missing.json");
        for path in [&garbage, &missing] {
            let e = BpeTokenizer::from_file(path).unwrap_err();
            assert!(matches!(e, Error::BadInput(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert!(BpeTokenizer::from_json_str("{}").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

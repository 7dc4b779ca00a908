//! The shipped model families and their data, by name: the `--model lm|encoder|vit` dispatch of
//! the examples' command lines (`train_lm`, `train_encoder`, `train_vit`, `scale_check`,
//! `lr_sweep`). The
//! library's workflow knows no model; this is where the examples name them, through the same
//! public API a user's own family uses.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use umup::data::tokenizer::BpeTokenizer;
use umup::data::{Array, Labels};
use umup::data::{Corpus, MaskedTokens, NextToken, TokenCorpus};
use umup::models::MASK_FRACTION;

/// The names `--model` takes.
pub const MODELS: &str = "lm, encoder, vit";

/// The text families (the others read images).
pub fn is_text(model: &str) -> bool {
    matches!(model, "lm" | "encoder")
}

/// The data flags of the shipped families.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// Tokens (bytes) per sequence (lm, encoder) [default: 128; lr_sweep: 64].
    #[arg(long)]
    pub seq: Option<usize>,
    /// Train on this file instead of the embedded data: text or bytes for lm and encoder (.gz
    /// is decompressed); for vit 8×8 images, a safetensors file with the tensors `images`
    /// `[n, 8, 8]` and `labels` `[n]`, or a .npy file of images with `--labels`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// vit: the labels of `--data` as a .npy file (or a safetensors file with `labels`).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Fraction of the data held out for validation (the last bytes of a text; a random but
    /// fixed choice of images).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// lm: the tokens: `bytes` (vocabulary 256), `bpe` (a byte-level BPE of `--vocab` tokens
    /// trained on the training split) or a `tokenizer.json` file (a BPE of a compiled
    /// vocabulary).
    #[arg(long, default_value = "bytes")]
    pub tokenizer: String,
    /// With `--tokenizer bpe`: the vocabulary (compiled: 1024).
    #[arg(long, default_value_t = umup::models::BPE_VOCAB)]
    pub vocab: usize,
    /// The tokenizer, made once.
    #[arg(skip)]
    made: OnceLock<Option<BpeTokenizer>>,
}

impl DataArgs {
    /// The sequence length: `--seq`, or `default`.
    pub fn seq_or(&self, default: usize) -> usize {
        self.seq.unwrap_or(default)
    }

    /// The corpus the flags name.
    pub fn corpus(&self) -> umup::Result<Corpus> {
        match &self.data {
            Some(p) => Corpus::from_path(p, self.val_fraction),
            None => Corpus::shakespeare(self.val_fraction),
        }
    }

    /// The BPE tokenizer the flags name (`None` for bytes): trained on the corpus's training
    /// split (`bpe`, deterministic) or loaded (a file); made once.
    pub fn tokenizer(&self) -> umup::Result<Option<&BpeTokenizer>> {
        if let Some(t) = self.made.get() {
            return Ok(t.as_ref());
        }
        let t = match self.tokenizer.as_str() {
            "bytes" => None,
            "bpe" => {
                let corpus = self.corpus()?;
                Some(BpeTokenizer::train_bpe(
                    corpus.split(umup::data::Split::Train),
                    self.vocab,
                )?)
            }
            file => Some(BpeTokenizer::from_file(file)?),
        };
        Ok(self.made.get_or_init(|| t).as_ref())
    }

    /// The tokens the flags name: bytes, or the text in the tokenizer's tokens.
    pub fn tokens(&self) -> umup::Result<TokenCorpus> {
        let corpus = self.corpus()?;
        match self.tokenizer()? {
            None => Ok(TokenCorpus::bytes(&corpus)),
            Some(t) => TokenCorpus::tokenized(&corpus, t),
        }
    }

    /// For a BPE run into `out`: writes `out/tokenizer.json`, or (resuming) checks that the
    /// run's tokenizer is this one, naming both when not. A byte run resumed in a directory with
    /// a tokenizer is refused the same way.
    pub fn keep_tokenizer(&self, out: &Path, resume: bool) -> umup::Result<()> {
        let path = out.join("tokenizer.json");
        let ours = self.tokenizer()?;
        if resume {
            let theirs = match path.exists() {
                true => Some(BpeTokenizer::from_file(&path)?),
                false => None,
            };
            let name = |t: Option<&BpeTokenizer>| t.map_or("bytes".to_string(), |t| t.name());
            let (a, b) = (name(theirs.as_ref()), name(ours));
            if a != b {
                return Err(umup::Error::Invalid(format!(
                    "--resume: the run in {} was trained with the tokenizer `{a}`, this run's is `{b}`",
                    out.display()
                )));
            }
            return Ok(());
        }
        if let Some(t) = ours {
            std::fs::create_dir_all(out)
                .map_err(|e| umup::Error::BadInput(format!("{}: {e}", out.display())))?;
            t.save(&path)?;
        }
        Ok(())
    }

    /// Next-token windows (the LM's data), `seq` tokens unless `--seq` says otherwise.
    pub fn next_token(&self, seq: usize) -> umup::Result<NextToken> {
        Ok(NextToken::new(self.tokens()?, self.seq_or(seq)))
    }

    /// Masked-token windows (the encoder's data).
    pub fn masked(&self, seq: usize) -> umup::Result<MaskedTokens> {
        Ok(MaskedTokens::new(
            self.tokens()?,
            self.seq_or(seq),
            MASK_FRACTION,
        ))
    }

    /// The images and labels of the ViT: the embedded digits, or `--data` (and `--labels`).
    pub fn images(&self) -> umup::Result<umup::models::vit::Images> {
        if self.seq.is_some() || self.tokenizer != "bytes" {
            return Err(umup::Error::Invalid(
                "--seq, --tokenizer: the vit model reads images, not text".into(),
            ));
        }
        let Some(path) = &self.data else {
            return umup::models::vit::digits(self.val_fraction, 0);
        };
        let is_npy = |p: &std::path::Path| p.extension().is_some_and(|e| e == "npy");
        let images = Array::from_file(path, (!is_npy(path)).then_some("images"))?;
        let labels = match &self.labels {
            Some(l) => Labels::from_file(l, (!is_npy(l)).then_some("labels"))?,
            None if is_npy(path) => {
                return Err(umup::Error::Invalid(format!(
                    "--data {}: a .npy file holds the images only; give their labels with --labels",
                    path.display()
                )))
            }
            None => Labels::from_file(path, Some("labels"))?,
        };
        umup::models::vit::vit_data(&images, &labels, self.val_fraction, 0)
    }

    /// Errors on `--labels` for a text model, and on a tokenizer other than bytes for `model`
    /// when it reads bytes only.
    pub fn check_text(&self, bytes_only: bool) -> umup::Result<()> {
        if self.labels.is_some() {
            return Err(umup::Error::Invalid(
                "--labels: the text models read no labels".into(),
            ));
        }
        if bytes_only && self.tokenizer != "bytes" {
            return Err(umup::Error::Invalid(format!(
                "--tokenizer {}: the encoder is compiled for bytes (its mask token is byte 256)",
                self.tokenizer
            )));
        }
        Ok(())
    }

    /// The flags that give the same data to a shipped trainer (for `lr_sweep --plan`), with
    /// `seq` unless `--seq` was given.
    pub fn flags(&self, model: &str, seq: usize) -> String {
        let mut f = format!("--val-fraction {}", self.val_fraction);
        if is_text(model) {
            f += &format!(" --seq {}", self.seq_or(seq));
        }
        if self.tokenizer != "bytes" {
            f += &format!(" --tokenizer {} --vocab {}", self.tokenizer, self.vocab);
        }
        if let Some(p) = &self.data {
            f += &format!(" --data {}", p.display());
        }
        if let Some(p) = &self.labels {
            f += &format!(" --labels {}", p.display());
        }
        f
    }
}

/// `$body` with the type `$F` bound to the shipped family `$model` names and `$data` to its
/// data, built from the [`DataArgs`] `$args` (text windows of `$seq` tokens unless `--seq`
/// says otherwise); an error for another name.
macro_rules! with_shipped {
    ($model:expr, $args:expr, $seq:expr, |$F:ident, $data:ident| $body:expr) => {
        match $model {
            "lm" => {
                $args.check_text(false)?;
                let $data = $args.next_token($seq)?;
                match $data.corpus.vocab() {
                    umup::models::VOCAB => {
                        type $F = umup::models::LmFamily;
                        $body
                    }
                    umup::models::BPE_VOCAB => {
                        type $F = umup::models::BpeLmFamily;
                        $body
                    }
                    v => Err(umup::Error::Invalid(format!(
                        "a vocabulary of {v} tokens: the LM is compiled for {} (bytes) and {} (--tokenizer bpe)",
                        umup::models::VOCAB,
                        umup::models::BPE_VOCAB
                    ))),
                }
            }
            "encoder" => {
                type $F = umup::models::EncoderFamily;
                $args.check_text(true)?;
                let $data = $args.masked($seq)?;
                $body
            }
            "vit" => {
                type $F = umup::models::VitFamily;
                let $data = $args.images()?;
                $body
            }
            other => Err(umup::Error::UnknownName {
                kind: "model",
                name: other.to_string(),
                expected: $crate::shipped::MODELS,
            }),
        }
    };
}

/// `$body` with the type `$F` bound to the shipped family `$model` names (no data; the LM at
/// the vocabulary `$vocab`).
macro_rules! with_family {
    ($model:expr, $vocab:expr, |$F:ident| $body:expr) => {
        match $model {
            "lm" if $vocab == umup::models::BPE_VOCAB => {
                type $F = umup::models::BpeLmFamily;
                $body
            }
            "lm" => {
                type $F = umup::models::LmFamily;
                $body
            }
            "encoder" => {
                type $F = umup::models::EncoderFamily;
                $body
            }
            "vit" => {
                type $F = umup::models::VitFamily;
                $body
            }
            other => Err(umup::Error::UnknownName {
                kind: "model",
                name: other.to_string(),
                expected: $crate::shipped::MODELS,
            }),
        }
    };
}

/// The parameter table of the shipped model that `cfg` names (family, size, parametrization)
/// on the data of `args` (the LM at its tokenizer's vocabulary).
pub fn param_table(
    cfg: &umup::train::TrainConfig,
    args: &DataArgs,
) -> umup::Result<umup::params::ParamTable> {
    let vocab = match (cfg.model.as_str(), args.tokenizer.as_str()) {
        ("lm", "bytes") => umup::models::VOCAB,
        ("lm", "bpe") => args.vocab,
        ("lm", _) => args
            .tokenizer()?
            .map_or(umup::models::VOCAB, |t| t.vocab_size()),
        _ => 0,
    };
    with_family!(
        cfg.model.as_str(),
        vocab,
        |F| umup::family::param_table::<F>(cfg.width, cfg.depth, &cfg.param)
    )
}

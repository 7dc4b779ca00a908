//! The shipped model families and their data, by name: the `--model lm|encoder` dispatch of the
//! examples' command lines (`train_lm`, `train_encoder`, `scale_check`, `lr_sweep`). The
//! library's workflow knows no model; this is where the examples name them, through the same
//! public API a user's own family uses.

#![allow(dead_code)]

use std::path::PathBuf;

use umup::data::{Corpus, MaskedTokens, NextToken, TokenCorpus};
use umup::models::MASK_FRACTION;

/// The names `--model` takes.
pub const MODELS: &str = "lm, encoder";

/// The data flags of the shipped families.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// Tokens (bytes) per sequence (lm, encoder) [default: 128; lr_sweep: 64].
    #[arg(long)]
    pub seq: Option<usize>,
    /// Train on this file instead of the embedded data: text or bytes for lm and encoder
    /// (.gz is decompressed).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fraction of the data held out for validation (the last bytes of a text).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
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

    /// The tokens the flags name.
    pub fn tokens(&self) -> umup::Result<TokenCorpus> {
        Ok(TokenCorpus::bytes(&self.corpus()?))
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

    /// The flags that give the same data to a shipped trainer (for `lr_sweep --plan`), with
    /// `seq` unless `--seq` was given.
    pub fn flags(&self, seq: usize) -> String {
        let mut f = format!(
            "--seq {} --val-fraction {}",
            self.seq_or(seq),
            self.val_fraction
        );
        if let Some(p) = &self.data {
            f += &format!(" --data {}", p.display());
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
                type $F = umup::models::LmFamily;
                let $data = $args.next_token($seq)?;
                $body
            }
            "encoder" => {
                type $F = umup::models::EncoderFamily;
                let $data = $args.masked($seq)?;
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

/// `$body` with the type `$F` bound to the shipped family `$model` names (no data).
macro_rules! with_family {
    ($model:expr, |$F:ident| $body:expr) => {
        match $model {
            "lm" => {
                type $F = umup::models::LmFamily;
                $body
            }
            "encoder" => {
                type $F = umup::models::EncoderFamily;
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

/// The parameter table of the shipped model that `cfg` names (family, size, parametrization).
pub fn param_table(cfg: &umup::train::TrainConfig) -> umup::Result<umup::params::ParamTable> {
    with_family!(cfg.model.as_str(), |F| umup::family::param_table::<F>(
        cfg.width, cfg.depth, &cfg.param
    ))
}

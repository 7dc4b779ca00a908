//! The shipped model families and their data, by name: the `--model lm|encoder|vit` dispatch of
//! the examples' command lines (`train_lm`, `train_encoder`, `train_vit`, `scale_check`,
//! `lr_sweep`). The
//! library's workflow knows no model; this is where the examples name them, through the same
//! public API a user's own family uses.

#![allow(dead_code)]

use std::path::PathBuf;

use umup::data::{Array, FeatureBatcher, InMemory, Labels, Loader};
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

    /// The images and labels of the ViT: the embedded digits, or `--data` (and `--labels`).
    pub fn images(&self) -> umup::Result<Loader<InMemory<(Vec<f32>, usize)>, FeatureBatcher>> {
        if self.seq.is_some() {
            return Err(umup::Error::Invalid(
                "--seq: the vit model reads images, not sequences".into(),
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

    /// Errors on `--labels` for a text model.
    pub fn check_text(&self) -> umup::Result<()> {
        match &self.labels {
            Some(_) => Err(umup::Error::Invalid(
                "--labels: the text models read no labels".into(),
            )),
            None => Ok(()),
        }
    }

    /// The flags that give the same data to a shipped trainer (for `lr_sweep --plan`), with
    /// `seq` unless `--seq` was given.
    pub fn flags(&self, model: &str, seq: usize) -> String {
        let mut f = format!("--val-fraction {}", self.val_fraction);
        if is_text(model) {
            f += &format!(" --seq {}", self.seq_or(seq));
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
                type $F = umup::models::LmFamily;
                $args.check_text()?;
                let $data = $args.next_token($seq)?;
                $body
            }
            "encoder" => {
                type $F = umup::models::EncoderFamily;
                $args.check_text()?;
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

/// The parameter table of the shipped model that `cfg` names (family, size, parametrization).
pub fn param_table(cfg: &umup::train::TrainConfig) -> umup::Result<umup::params::ParamTable> {
    with_family!(cfg.model.as_str(), |F| umup::family::param_table::<F>(
        cfg.width, cfg.depth, &cfg.param
    ))
}

//! A ViT-style image classifier, written as a user would write their own model:
//! `#[umup_model]`, umup's public ops, a [`Trainable`] impl and a `family!` line.
//!
//! Float patches (`N` patches of `K` pixels) → the input projection (`#[input]`, the input
//! weights' rule, spec §2.2) + a learned position embedding (a unit-scaled add, spec §4.8) → `L`
//! pre-norm encoder layers ([`EncoderLayer`]: non-causal attention, GELU MLP, the residual τ
//! rule) → the mean over the patches ([`ops::mean_pool`]) → LayerNorm → readout to `C` classes.
//! Pooling before the norm (timm's `global_pool = "avg"` with `fc_norm`) keeps the pooled row at
//! unit scale however correlated the patches are. The data: [`digits`], the 8×8 handwritten
//! digits embedded in the crate, cut into 2×2 patches.

use dfdx::prelude::*;

use crate::data::{Array, FeatureBatch, FeatureBatcher, InMemory, Labels, Loader};
use crate::device::TrainDevice;
use crate::family::{classification_loss, Step, Trainable};
use crate::models::EncoderLayer;
use crate::nn::{functional, Param};
use crate::ops::Backend;
use crate::tape::TracedLike;
use crate::{ops, umup_model, Constraint, Error, Result};

/// The side of a square patch of the shipped ViT (pixels).
pub const PATCH: usize = 2;
/// Patches per 8×8 digit.
pub const PATCHES: usize = (8 / PATCH) * (8 / PATCH);
/// Pixels per patch.
pub const PATCH_DIM: usize = PATCH * PATCH;
/// The digits' classes.
pub const CLASSES: usize = 10;

/// The ViT: `N` patches of `K` values, width `D`, MLP width `F`, depth `L`, `C` classes.
#[umup_model]
pub struct Vit<
    const N: usize,
    const K: usize,
    const D: usize,
    const F: usize,
    const L: usize,
    const C: usize,
> {
    /// The patch projection (float pixels → width).
    #[input]
    pub patch: Linear<K, D>,
    /// Learned position embedding, one row per patch.
    #[embedding]
    pub pos: Embedding<N, D>,
    /// The encoder layers (depth `L`).
    #[model]
    #[depth]
    pub layers: [EncoderLayer<D, F>; L],
    /// The norm of the pooled row.
    #[norm]
    pub ln_f: LayerNorm<D>,
    /// Readout to the classes.
    #[output]
    pub head: Linear<D, C>,
}

// Not listed as a suggestion in the error for a model without `Trainable`.
#[diagnostic::do_not_recommend]
impl<
        const N: usize,
        const K: usize,
        const D: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        E,
        Dev,
        P,
    > Trainable<Dev, E> for Vit<N, K, D, F, L, C, E, Dev, P>
where
    E: Dtype,
    Dev: TrainDevice + Backend<E>,
    P: Param,
    crate::rand_distr::StandardNormal: crate::rand_distr::Distribution<E>,
{
    /// Images as `N × K` patches, a class label each.
    type Batch = FeatureBatch;

    const METRICS: &'static [&'static str] = &["accuracy"];

    /// Mean cross entropy of the labels (and the accuracy, when evaluating). Tapped: `embed`,
    /// `layers.{i}.attn.{in,q,k,v,sdpa,out}`, `layers.{i}.mlp.{in,act,out}`,
    /// `layers.{i}.residual`, `pool`, `final_norm`, `logits`. Options: `heads` or `d_head`
    /// ([`Step::heads`]).
    fn loss<T: Tape<E, Dev> + Merge<T>>(
        &self,
        batch: &FeatureBatch,
        tape: T,
        step: &mut Step<'_>,
    ) -> Result<Tensor<(), E, Dev, T>> {
        step.options.check_known(&Step::HEAD_OPTIONS)?;
        if batch.example_shape != [N, K] {
            return Err(Error::ShapeMismatch {
                op: "Vit::loss",
                detail: format!(
                    "examples of shape {:?}, the model takes {N} patches of {K} values, [{N}, {K}]",
                    batch.example_shape
                ),
            });
        }
        let b = batch.len();
        let dev = self.pos.weight.device().clone();
        let x: Tensor<(usize, Const<K>), E, Dev> = batch.tensor(&dev, (b * N, Const))?;
        let x = lin!(self.patch, x.put_tape(tape), step)?;
        let positions = (0..b * N).map(|i| i % N).collect();
        let positions = dev
            .try_tensor_from_vec(positions, (b * N,))
            .map_err(Error::device)?;
        let pos = self.pos.try_forward(positions.traced_like(&x))?;
        let x = ops::add(x, pos, Constraint::ToOutputScale)?;
        let mut x = step.tap(x, || "embed".into())?;
        let taus = functional::residual_taus(step.hp, L)?;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x, N, [taus[2 * i], taus[2 * i + 1]], i, step)?;
        }
        // On the cut edge after the last residual add (spec §1.4): unit forward and backward.
        let x = step.tap(ops::mean_pool(x, N, Constraint::None)?, || "pool".into())?;
        let x = step.tap(self.ln_f.try_forward(x)?, || "final_norm".into())?;
        let logits = lin!(self.head, x, step)?;
        let logits = step.tap(logits, || "logits".into())?;
        classification_loss::<P, _, _, _, _, _>(logits, &batch.targets, step)
    }
}

crate::family! {
    /// The ViT [`Vit`] on the digits' 2×2 patches (16 patches of 4 pixels, 10 classes, MLP width
    /// 4 × width) at the sizes `train_vit`, `scale_check --model vit` and `lr_sweep --model vit`
    /// offer.
    pub struct VitFamily = Vit<PATCHES, PATCH_DIM, W, {4 * W}, L, CLASSES>
        for W in [32, 64, 128, 256], L in [2];
}

/// Images `[n, H, W]` cut into `p × p` patches in row-major patch order: `[n, (H/p)·(W/p),
/// p·p]`, each patch's pixels row-major. An error unless `p` divides both sides.
pub fn patches(images: &[f32], (h, w): (usize, usize), p: usize) -> Result<Vec<f32>> {
    if p == 0
        || !h.is_multiple_of(p)
        || !w.is_multiple_of(p)
        || !images.len().is_multiple_of((h * w).max(1))
    {
        return Err(Error::Invalid(format!(
            "{p}×{p} patches do not tile {h}×{w} images"
        )));
    }
    let mut out = Vec::with_capacity(images.len());
    for img in images.chunks(h * w) {
        for py in 0..h / p {
            for px in 0..w / p {
                for y in 0..p {
                    let row = (py * p + y) * w + px * p;
                    out.extend_from_slice(&img[row..row + p]);
                }
            }
        }
    }
    Ok(out)
}

/// The ViT's data: examples of [`PATCHES`] × [`PATCH_DIM`] standardised pixels with a class
/// label, in memory ([`vit_data`]).
pub type Images = Loader<InMemory<(Vec<f32>, usize)>, FeatureBatcher>;

/// The shipped ViT's data from images `[n, 8, 8]` and their class labels: a random
/// `val_fraction` of the examples held out (drawn from `split_seed`, the same for every run), the
/// pixels standardised with the training split's mean and standard deviation (unit RMS at the
/// input, as unit scaling assumes), each image cut into [`PATCHES`] patches of [`PATCH_DIM`]
/// pixels. Errors name the file: images of another shape, a label count that is not the image
/// count, a label ≥ [`CLASSES`].
pub fn vit_data(
    images: &Array,
    labels: &Labels,
    val_fraction: f64,
    split_seed: u64,
) -> Result<Images> {
    images.expect_example_shape(&[8, 8], "the shipped ViT (8×8 images)")?;
    labels.expect_count(images)?;
    labels.check_labels(CLASSES)?;
    let all = InMemory::new(
        (0..images.examples())
            .map(|i| (images.example(i).to_vec(), labels.data[i]))
            .collect(),
    );
    let (train, val) = all.split_random(val_fraction, split_seed)?;
    let (mut sum, mut squares, mut n) = (0f64, 0f64, 0f64);
    for (x, _) in train.items() {
        for &v in x {
            sum += f64::from(v);
            squares += f64::from(v) * f64::from(v);
            n += 1.0;
        }
    }
    let mean = sum / n;
    let std = (squares / n - mean * mean).max(1e-24).sqrt();
    let prepare = |d: &InMemory<(Vec<f32>, usize)>| -> Result<InMemory<(Vec<f32>, usize)>> {
        d.items()
            .iter()
            .map(|(x, y)| {
                let z: Vec<f32> = x
                    .iter()
                    .map(|&v| ((f64::from(v) - mean) / std) as f32)
                    .collect();
                Ok((patches(&z, (8, 8), PATCH)?, *y))
            })
            .collect::<Result<Vec<_>>>()
            .map(InMemory::new)
    };
    let name = format!("{} · {PATCH}×{PATCH} patches, standardised", images.source);
    Ok(Loader::new(
        &name,
        prepare(&train)?,
        prepare(&val)?,
        FeatureBatcher::new(&[PATCHES, PATCH_DIM]),
    )?
    .with_classes(CLASSES))
}

/// The embedded digits ([`crate::data::arrays::digits`]) as the ViT's data ([`vit_data`]).
pub fn digits(val_fraction: f64, split_seed: u64) -> Result<Images> {
    let (images, labels) = crate::data::arrays::digits()?;
    vit_data(&images, &labels, val_fraction, split_seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_tile_an_image_in_row_major_order() {
        let img: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let p = patches(&img, (4, 4), 2).unwrap();
        assert_eq!(
            p,
            [0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.]
        );
        assert!(patches(&img, (4, 4), 3).is_err());
    }
}

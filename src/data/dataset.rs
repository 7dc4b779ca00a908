//! Finite datasets: [`Dataset`] (random access to examples), [`Batcher`] (examples → a batch)
//! and [`Loader`], which makes a train and a validation dataset a [`Data`] source with epochs
//! shuffled from the seed. Anchors: burn-dataset's `Dataset` → `Batcher`, PyTorch's
//! `Dataset`/`DataLoader`.

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use rand::seq::SliceRandom;

use super::{step_rng, Batch, Data, Split, StdRng, BATCHER_STREAM, SHUFFLE_STREAM};
use crate::{Error, Result};

/// Random access to a finite list of examples.
pub trait Dataset: Send + Sync {
    /// One example.
    type Item;
    /// Example `index`; `None` past the end.
    fn get(&self, index: usize) -> Option<Self::Item>;
    /// The number of examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turns examples into a batch the model takes.
pub trait Batcher<I>: Send + Sync {
    /// The batch.
    type Batch: Batch + Send + Sync;
    /// A batch of `items`, in order; `rng` is this batch's own (seeded by the loader from
    /// `(seed, index)`), for augmentation or masking.
    fn batch(&self, items: Vec<I>, rng: &mut StdRng) -> Result<Self::Batch>;
}

/// Examples held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemory<I> {
    items: Arc<Vec<I>>,
}

impl<I> InMemory<I> {
    /// A dataset of `items`.
    pub fn new(items: Vec<I>) -> Self {
        InMemory {
            items: Arc::new(items),
        }
    }

    /// The examples.
    pub fn items(&self) -> &[I] {
        &self.items
    }
}

impl<I: Clone> InMemory<I> {
    /// Splits off a random `val_fraction` of the examples (at least one each side) as a
    /// validation set, the permutation drawn from `seed`; each side keeps the original order.
    pub fn split_random(&self, val_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        let n = self.items.len();
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::InvalidValue {
                what: "validation fraction",
                value: val_fraction,
                reason: "must be in (0, 1)",
            });
        }
        let n_val = ((n as f64) * val_fraction).round() as usize;
        if n_val == 0 || n_val == n {
            return Err(Error::BadInput(format!(
                "{n} examples cannot be split {:.0}% / {:.0}%: a split would be empty",
                100.0 * (1.0 - val_fraction),
                100.0 * val_fraction
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut step_rng(seed, SHUFFLE_STREAM, u64::MAX));
        let mut is_val = vec![false; n];
        for &i in &order[..n_val] {
            is_val[i] = true;
        }
        let pick = |val: bool| {
            InMemory::new(
                self.items
                    .iter()
                    .zip(&is_val)
                    .filter(|(_, &v)| v == val)
                    .map(|(x, _)| x.clone())
                    .collect(),
            )
        };
        Ok((pick(false), pick(true)))
    }
}

impl<I: Clone + Send + Sync> Dataset for InMemory<I> {
    type Item = I;
    fn get(&self, index: usize) -> Option<I> {
        self.items.get(index).cloned()
    }
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// A train and a validation [`Dataset`] as a [`Data`] source.
///
/// - Training batch `k` of size `B` holds the examples at positions `k·B .. (k+1)·B` of the
///   endless sequence of epochs, each epoch `e` a permutation of the training set drawn from
///   `(seed, e)`: every example once per epoch, in a new order each epoch, the same order for
///   the same seed (so a resumed run and a sweep read exactly the same batches).
/// - Validation batch `j` holds the examples `j·B .. (j+1)·B` in order (the last one shorter);
///   an evaluation reads at most the whole validation set once ([`Data::val_batches`]).
pub struct Loader<D, B> {
    name: String,
    train: D,
    val: D,
    batcher: B,
    classes: Option<usize>,
    /// The last epoch's permutation `(seed, epoch, order)`: consecutive batches share it.
    cache: Mutex<Option<(u64, u64, Arc<Vec<u32>>)>>,
}

impl<D: Dataset, B> std::fmt::Debug for Loader<D, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("name", &self.name)
            .field("train", &self.train.len())
            .field("val", &self.val.len())
            .field("classes", &self.classes)
            .finish()
    }
}

impl<D: Dataset, B: Batcher<D::Item>> Loader<D, B> {
    /// A loader over `train` and `val` (neither may be empty: the error names the split),
    /// described as `name`.
    pub fn new(name: &str, train: D, val: D, batcher: B) -> Result<Self> {
        for (split, d) in [("training", &train), ("validation", &val)] {
            if d.is_empty() {
                return Err(Error::BadInput(format!(
                    "{name}: the {split} split is empty"
                )));
            }
            if d.len() > u32::MAX as usize {
                return Err(Error::BadInput(format!(
                    "{name}: the {split} split has more than 2^32 examples"
                )));
            }
        }
        Ok(Loader {
            name: name.into(),
            train,
            val,
            batcher,
            classes: None,
            cache: Mutex::new(None),
        })
    }

    /// The targets are one of `classes` classes (the scale check expects a loss of
    /// `ln(classes)` at init).
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = Some(classes);
        self
    }

    /// The dataset of a split.
    pub fn dataset(&self, split: Split) -> &D {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    fn epoch_order(&self, seed: u64, epoch: u64) -> Arc<Vec<u32>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, e, order)) = cache.as_ref() {
            if (*s, *e) == (seed, epoch) {
                return order.clone();
            }
        }
        let mut order: Vec<u32> = (0..self.train.len() as u32).collect();
        order.shuffle(&mut step_rng(seed, SHUFFLE_STREAM, epoch));
        let order = Arc::new(order);
        *cache = Some((seed, epoch, order.clone()));
        order
    }

    fn item(&self, d: &D, i: usize) -> Result<D::Item> {
        d.get(i).ok_or_else(|| {
            Error::BadInput(format!(
                "{}: example {i} of {} is missing",
                self.name,
                d.len()
            ))
        })
    }
}

impl<D: Dataset, B: Batcher<D::Item>> Data for Loader<D, B> {
    type Batch = B::Batch;

    fn batch(&self, split: Split, index: u64, size: usize, seed: u64) -> Result<B::Batch> {
        if size == 0 {
            return Err(Error::Invalid("a batch needs at least 1 example".into()));
        }
        let mut items = Vec::with_capacity(size);
        match split {
            Split::Train => {
                let n = self.train.len() as u64;
                for p in index * size as u64..(index + 1) * size as u64 {
                    let order = self.epoch_order(seed, p / n);
                    items.push(self.item(&self.train, order[(p % n) as usize] as usize)?);
                }
            }
            Split::Val => {
                let n = self.val.len();
                let start = (index as usize).saturating_mul(size);
                if start >= n {
                    return Err(Error::BadInput(format!(
                        "{}: validation batch {index} of {size} starts past the {n} examples",
                        self.name
                    )));
                }
                for i in start..(start + size).min(n) {
                    items.push(self.item(&self.val, i)?);
                }
            }
        }
        let stream = match split {
            Split::Train => BATCHER_STREAM,
            Split::Val => BATCHER_STREAM + 1,
        };
        self.batcher
            .batch(items, &mut step_rng(seed, stream, index))
    }

    fn describe(&self) -> String {
        format!(
            "{} · {} train / {} validation examples",
            self.name,
            self.train.len(),
            self.val.len()
        )
    }

    /// At most the whole validation set: `min(requested, ⌈len / size⌉)`.
    fn val_batches(&self, size: usize, requested: usize) -> usize {
        requested.min(self.val.len().div_ceil(size.max(1)))
    }

    fn classes(&self) -> Option<usize> {
        self.classes
    }
}

/// A batch of float examples of one shape, with a target each (a class label by default).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBatch<Y = usize> {
    /// The examples, row-major: `len() × example_shape.product()` values.
    pub features: Vec<f32>,
    /// The shape of one example.
    pub example_shape: Vec<usize>,
    /// One target per example.
    pub targets: Vec<Y>,
}

impl<Y> FeatureBatch<Y> {
    /// The number of examples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The features as a tensor of shape `shape` (e.g. `(usize, Const<P>, Const<C>)` for
    /// `batch × P × C`) in the dtype `E` on `dev`; an error names both shapes when their sizes
    /// differ.
    pub fn tensor<S: Shape, E: Dtype, Dev: Storage<E> + TensorFromVec<E>>(
        &self,
        dev: &Dev,
        shape: S,
    ) -> Result<Tensor<S, E, Dev>> {
        if shape.num_elements() != self.features.len() {
            return Err(Error::ShapeMismatch {
                op: "FeatureBatch::tensor",
                detail: format!(
                    "{} examples of shape {:?} do not fill a tensor of shape {:?}",
                    self.len(),
                    self.example_shape,
                    shape.concrete().into_iter().collect::<Vec<_>>()
                ),
            });
        }
        let values = self
            .features
            .iter()
            .map(|&v| E::from_f32(v).unwrap_or_default())
            .collect();
        dev.try_tensor_from_vec(values, shape)
            .map_err(Error::device)
    }
}

impl<Y> Batch for FeatureBatch<Y> {
    fn examples(&self) -> usize {
        self.len()
    }
}

/// Stacks `(features, target)` examples of one shape into a [`FeatureBatch`]; an example of
/// another size is an error naming both shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureBatcher {
    example_shape: Vec<usize>,
}

impl FeatureBatcher {
    /// Examples of shape `example_shape`.
    pub fn new(example_shape: &[usize]) -> Self {
        FeatureBatcher {
            example_shape: example_shape.to_vec(),
        }
    }
}

impl<Y: Send + Sync> Batcher<(Vec<f32>, Y)> for FeatureBatcher {
    type Batch = FeatureBatch<Y>;

    fn batch(&self, items: Vec<(Vec<f32>, Y)>, _: &mut StdRng) -> Result<FeatureBatch<Y>> {
        let size: usize = self.example_shape.iter().product();
        let mut features = Vec::with_capacity(items.len() * size);
        let mut targets = Vec::with_capacity(items.len());
        for (i, (x, y)) in items.into_iter().enumerate() {
            if x.len() != size {
                return Err(Error::ShapeMismatch {
                    op: "FeatureBatcher",
                    detail: format!(
                        "example {i} has {} values, the batcher stacks examples of shape {:?}",
                        x.len(),
                        self.example_shape
                    ),
                });
            }
            features.extend(x);
            targets.push(y);
        }
        Ok(FeatureBatch {
            features,
            example_shape: self.example_shape.clone(),
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loader(n: usize) -> Loader<InMemory<(Vec<f32>, usize)>, FeatureBatcher> {
        let items: Vec<(Vec<f32>, usize)> = (0..n).map(|i| (vec![i as f32], i)).collect();
        let (train, val) = InMemory::new(items).split_random(0.25, 3).unwrap();
        Loader::new("ids", train, val, FeatureBatcher::new(&[1])).unwrap()
    }

    #[test]
    fn epochs_cover_every_example_once_in_a_seeded_order() {
        let l = loader(40);
        assert_eq!((l.train.len(), l.val.len()), (30, 10));
        // Batches of 4: the first 30 positions (batches 0..7, and half of batch 7) are one epoch.
        let mut seen: Vec<usize> = (0..8)
            .flat_map(|k| l.batch(Split::Train, k, 4, 9).unwrap().targets)
            .collect();
        let second_epoch = seen.split_off(30);
        seen.sort_unstable();
        let mut train_ids: Vec<usize> = l.train.items().iter().map(|x| x.1).collect();
        train_ids.sort_unstable();
        assert_eq!(
            seen, train_ids,
            "epoch 0 is a permutation of the training set"
        );
        let e1 = l.batch(Split::Train, 7, 4, 9).unwrap().targets;
        assert_eq!(&e1[2..], &second_epoch[..]);
        // The same (seed, step) gives the same batch, in any order of requests; another seed
        // another order.
        let b3 = l.batch(Split::Train, 3, 4, 9).unwrap();
        assert_eq!(b3, loader(40).batch(Split::Train, 3, 4, 9).unwrap());
        assert_ne!(b3.targets, l.batch(Split::Train, 3, 4, 10).unwrap().targets);
        // The two splits are disjoint.
        assert!(l.val.items().iter().all(|v| !train_ids.contains(&v.1)));
    }

    #[test]
    fn validation_reads_each_example_once() {
        let l = loader(40);
        assert_eq!(l.val_batches(4, 8), 3);
        assert_eq!(l.val_batches(4, 2), 2);
        let all: Vec<usize> = (0..3)
            .flat_map(|j| l.batch(Split::Val, j, 4, 0).unwrap().targets)
            .collect();
        let want: Vec<usize> = l.val.items().iter().map(|x| x.1).collect();
        assert_eq!(all, want);
        assert!(l.batch(Split::Val, 3, 4, 0).is_err());
    }

    #[test]
    fn bad_data_is_an_error() {
        let empty = InMemory::<(Vec<f32>, usize)>::new(vec![]);
        let one = InMemory::new(vec![(vec![1.0], 0)]);
        let e = Loader::new("d", one, empty, FeatureBatcher::new(&[1]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("validation split is empty"), "{e}");
        assert!(InMemory::new(vec![1, 2]).split_random(0.1, 0).is_err());
        let b = FeatureBatcher::new(&[2, 2]);
        let e = b
            .batch(
                vec![(vec![0.0; 4], 0), (vec![0.0; 3], 1)],
                &mut step_rng(0, 0, 0),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("example 1 has 3 values") && e.contains("[2, 2]"),
            "{e}"
        );
        let ok = b
            .batch(vec![(vec![1.0, 2.0, 3.0, 4.0], 7)], &mut step_rng(0, 0, 0))
            .unwrap();
        let dev: Cpu = Default::default();
        let t: Tensor<(usize, Const<2>, Const<2>), f32, _> =
            ok.tensor(&dev, (1, Const, Const)).unwrap();
        assert_eq!(t.as_vec(), vec![1.0, 2.0, 3.0, 4.0]);
        let e = ok
            .tensor::<_, f32, _>(&dev, (1, Const::<3>))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 2]") && e.contains("[1, 3]"), "{e}");
    }
}

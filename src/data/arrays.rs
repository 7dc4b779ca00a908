//! Features and labels from files: tensors in `.safetensors` files, `.npy` arrays, and the
//! embedded handwritten digits ([`digits`]).
//!
//! A dataset here is two arrays whose first dimension runs over the examples:
//!
//! * [`Array`]: features as `f32`, shape `[N, d₁, …, dₖ]`, example `i` is the row-major slice
//!   `data[i·D .. (i+1)·D]` with `D = d₁·…·dₖ` ([`Array::example_len`]);
//! * [`Labels`]: class indices as `usize`, shape `[N]` (one class per example) or `[N, …]`
//!   (e.g. one class per token).
//!
//! Both load from a named tensor of a safetensors file ([`Array::from_safetensors`]), from a
//! `.npy` file ([`Array::from_npy`]), from the bytes of either ([`Array::from_safetensors_bytes`],
//! [`Array::from_npy_bytes`], which is how [`digits`] reads its embedded file), or from a path
//! whose extension picks the format ([`Array::from_file`]).
//!
//! | format | dtypes read |
//! |---|---|
//! | safetensors | `F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL` |
//! | `.npy` | `f8 f4 f2 i8 i4 i2 i1 u8 u4 u2 u1 b1`, either byte order, C or Fortran order |
//!
//! Features convert to `f32` (`f64` rounds to nearest; integers above 2²⁴ may round; `BOOL` is
//! 0 or 1) and must be finite after the conversion. Labels need an integer (or `BOOL`) dtype and
//! values ≥ 0. A Fortran-order `.npy` array is reordered to C (row-major) order on load.
//!
//! Every error is one [`Error::BadInput`] line that names the file and, for safetensors, the
//! tensor: a missing or unreadable file, a truncated or corrupt file, a missing tensor (the message
//! lists the names present), an unsupported dtype, float labels, a negative label, a non-finite
//! feature, a shape that is not the model's ([`Array::expect_example_shape`]), label and example
//! counts that differ ([`Labels::expect_count`]), and a label outside the classes
//! ([`Labels::check_labels`]).
//!
//! ```no_run
//! use umup::data::arrays::{Array, Labels};
//!
//! let x = Array::from_npy("features.npy")?; // e.g. f32 [N, 64]
//! let y = Labels::from_safetensors("data.safetensors", "labels")?; // e.g. i64 [N]
//! x.expect_example_shape(&[64], "the model")?;
//! y.expect_count(&x)?;
//! y.check_labels(10)?;
//!
//! let (images, digits) = umup::data::arrays::digits()?; // [1797, 8, 8] in 0..=16, [1797] in 0..10
//! # Ok::<(), umup::Error>(())
//! ```
//!
//! Files are read whole into memory (no memory mapping), then converted; peak memory is the file
//! plus the converted array.

use std::fmt;
use std::path::Path;

use half::{bf16, f16};
use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// `data/digits.safetensors`: `images` U8 `[1797, 8, 8]` and `labels` U8 `[1797]`
/// (see `data/digits.README.md`).
const DIGITS_SAFETENSORS: &[u8] = include_bytes!("../../data/digits.safetensors");

/// How the embedded digits file is named in error messages.
const DIGITS_SOURCE: &str = "digits.safetensors (embedded)";

/// Number of examples in the embedded digits ([`digits`]).
pub const DIGITS_EXAMPLES: usize = 1797;

/// Number of classes (the digits 0..9) of the embedded digits ([`digits`]).
pub const DIGITS_CLASSES: usize = 10;

/// Per-example shape of the embedded digits: 8×8 pixels.
pub const DIGITS_SHAPE: [usize; 2] = [8, 8];

/// Largest pixel value of the embedded digits: each pixel counts the on-pixels of a 4×4 block of
/// the 32×32 bitmap, so pixels are integers in `0..=16`.
pub const DIGITS_MAX_PIXEL: f32 = 16.0;

/// The UCI ML "Optical Recognition of Handwritten Digits" test set as shipped by scikit-learn
/// (`sklearn.datasets.load_digits`; E. Alpaydin, C. Kaynak, 1998; CC BY 4.0, attribution in
/// `data/digits.README.md`), embedded in the crate.
///
/// Returns the images, an [`Array`] of shape `[1797, 8, 8]` holding the pixel counts `0..=16` as
/// `f32` (unscaled: divide by [`DIGITS_MAX_PIXEL`] for `[0, 1]`), and their [`Labels`], shape
/// `[1797]`, the digit `0..=9` each image shows, in scikit-learn's order. Examples per class 0..9:
/// 178, 182, 177, 183, 181, 182, 181, 179, 174, 180.
///
/// It goes through the same loader as files ([`Array::from_safetensors_bytes`]), so an error here
/// means the embedded file is damaged.
pub fn digits() -> Result<(Array, Labels)> {
    let images = Array::from_safetensors_bytes(DIGITS_SAFETENSORS, "images", DIGITS_SOURCE)?;
    let labels = Labels::from_safetensors_bytes(DIGITS_SAFETENSORS, "labels", DIGITS_SOURCE)?;
    images.expect_example_shape(&DIGITS_SHAPE, "the digits loader")?;
    labels.expect_count(&images)?;
    labels.check_labels(DIGITS_CLASSES)?;
    Ok((images, labels))
}

/// Features: an `f32` array whose first dimension runs over the examples.
///
/// `data` holds `shape.iter().product()` finite values in row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// `[N, d₁, …, dₖ]`: `N` examples of shape `[d₁, …, dₖ]` (at least one dimension, `N ≥ 1`).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
    /// Where it came from, as error messages name it: the path of a `.npy` file, or the path and
    /// tensor of a safetensors file (``d.safetensors (tensor `x`)``).
    pub source: String,
}

/// Labels: class indices whose first dimension runs over the examples.
///
/// `data` holds `shape.iter().product()` indices in row-major (C) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `[N]` (one class per example) or `[N, …]` (several per example), `N ≥ 1`.
    pub shape: Vec<usize>,
    /// The class indices, row-major.
    pub data: Vec<usize>,
    /// Where it came from, as error messages name it.
    pub source: String,
}

/// The loaders and the shape accessors, the same for [`Array`] and [`Labels`].
macro_rules! loaders {
    ($ty:ident, $elem:ty, $kind:literal) => {
        impl $ty {
            #[doc = concat!("Wraps ", $kind, " already in memory, checked like a loaded file: at ")]
            #[doc = "least one dimension, at least one example, `data.len()` equal to the product of"]
            #[doc = "`shape`, and (features) finite values."]
            pub fn new(shape: Vec<usize>, data: Vec<$elem>, source: impl Into<String>) -> Result<Self> {
                let source = source.into();
                let n = element_count(&shape, &source)?;
                if data.len() != n {
                    return Err(bad(format!(
                        "{source}: shape {shape:?} holds {n} values, the data has {}",
                        data.len()
                    )));
                }
                <$elem as Target>::validate(&data, &shape, &source)?;
                Ok(Self { shape, data, source })
            }

            #[doc = concat!("Loads ", $kind, " from the tensor `name` of the safetensors file at `path`.")]
            pub fn from_safetensors(path: impl AsRef<Path>, name: &str) -> Result<Self> {
                let path = path.as_ref();
                let bytes = read_file(path)?;
                Self::from_safetensors_bytes(&bytes, name, &path.display().to_string())
            }

            #[doc = concat!("Loads ", $kind, " from the tensor `name` of a safetensors file held in `bytes`;")]
            #[doc = "`what` names the file in error messages."]
            pub fn from_safetensors_bytes(bytes: &[u8], name: &str, what: &str) -> Result<Self> {
                read_safetensors::<$elem>(bytes, Some(name), what).map(Self::from)
            }

            #[doc = concat!("Loads ", $kind, " from the `.npy` file at `path`.")]
            pub fn from_npy(path: impl AsRef<Path>) -> Result<Self> {
                let path = path.as_ref();
                let bytes = read_file(path)?;
                Self::from_npy_bytes(&bytes, &path.display().to_string())
            }

            #[doc = concat!("Loads ", $kind, " from a `.npy` file held in `bytes`; `what` names the file in")]
            #[doc = "error messages."]
            pub fn from_npy_bytes(bytes: &[u8], what: &str) -> Result<Self> {
                read_npy::<$elem>(bytes, what).map(Self::from)
            }

            #[doc = concat!("Loads ", $kind, " from `path`, by its extension: `.npy` (then `tensor` must")]
            #[doc = "be `None`) or `.safetensors` (the tensor `tensor`; `None` takes the file's only"]
            #[doc = "tensor, and is an error, listing the names, when it has several)."]
            pub fn from_file(path: impl AsRef<Path>, tensor: Option<&str>) -> Result<Self> {
                let path = path.as_ref();
                let what = path.display().to_string();
                match Format::of(path)? {
                    Format::Npy => match tensor {
                        None => Self::from_npy(path),
                        Some(name) => Err(bad(format!(
                            "{what}: a .npy file holds one array and no tensor names; drop the tensor name `{name}`"
                        ))),
                    },
                    Format::Safetensors => {
                        let bytes = read_file(path)?;
                        read_safetensors::<$elem>(&bytes, tensor, &what).map(Self::from)
                    }
                }
            }

            /// Number of examples `N` (the first dimension).
            pub fn examples(&self) -> usize {
                self.shape[0]
            }

            /// Shape of one example: every dimension after the first (empty for a 1-D array).
            pub fn example_shape(&self) -> &[usize] {
                &self.shape[1..]
            }

            /// Values per example, `D = d₁·…·dₖ` (1 for a 1-D array).
            pub fn example_len(&self) -> usize {
                self.example_shape().iter().product()
            }

            /// The values of example `i`, `data[i·D .. (i+1)·D]`.
            ///
            /// # Panics
            /// If `i >= self.examples()`.
            pub fn example(&self, i: usize) -> &[$elem] {
                let d = self.example_len();
                &self.data[i * d..(i + 1) * d]
            }
        }

        impl From<Loaded<$elem>> for $ty {
            fn from(l: Loaded<$elem>) -> Self {
                Self { shape: l.shape, data: l.data, source: l.source }
            }
        }
    };
}

loaders!(Array, f32, "features");
loaders!(Labels, usize, "labels");

impl Array {
    /// Checks the per-example shape (every dimension after the first) against `want`, the shape
    /// `what` (e.g. `"the model"`) takes. The error names both:
    /// `features.npy: examples of shape [8, 8], the model takes [16, 4]`.
    pub fn expect_example_shape(&self, want: &[usize], what: &str) -> Result<()> {
        if self.example_shape() == want {
            Ok(())
        } else {
            Err(bad(format!(
                "{}: examples of shape {:?}, {what} takes {want:?}",
                self.source,
                self.example_shape()
            )))
        }
    }
}

impl Labels {
    /// Checks that there is one label entry per example of `features` (equal first dimensions);
    /// the error names both counts and both files.
    pub fn expect_count(&self, features: &Array) -> Result<()> {
        if self.examples() == features.examples() {
            Ok(())
        } else {
            Err(bad(format!(
                "{}: labels for {} examples, but {} has {} examples",
                self.source,
                self.examples(),
                features.source,
                features.examples()
            )))
        }
    }

    /// Checks that every label is a class index `< classes`; the error names the first label out
    /// of range, its index and the class count.
    pub fn check_labels(&self, classes: usize) -> Result<()> {
        match self.data.iter().position(|&l| l >= classes) {
            None => Ok(()),
            Some(i) => Err(bad(format!(
                "{}: label {} at index {} is out of range for {classes} classes (labels must be < {classes})",
                self.source,
                self.data[i],
                index_of(i, &self.shape)
            ))),
        }
    }

    /// Counts the labels of each class `0..classes` (after [`Labels::check_labels`]).
    pub fn class_counts(&self, classes: usize) -> Result<Vec<usize>> {
        self.check_labels(classes)?;
        let mut counts = vec![0; classes];
        for &l in &self.data {
            counts[l] += 1;
        }
        Ok(counts)
    }
}

/// A loaded tensor before it becomes an [`Array`] or [`Labels`].
struct Loaded<T> {
    shape: Vec<usize>,
    data: Vec<T>,
    source: String,
}

/// The input error: one line, whatever the underlying library wrote.
fn bad(msg: String) -> Error {
    Error::BadInput(msg.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad(format!("{}: cannot read it: {e}", path.display())))
}

/// The two file formats, by extension.
enum Format {
    Npy,
    Safetensors,
}

impl Format {
    fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => Err(bad(format!(
                "{}: unknown array file type; expected a .npy or .safetensors file",
                path.display()
            ))),
        }
    }
}

/// The number of elements of `shape`, checking that it has examples: at least one dimension,
/// `N ≥ 1`, and a product that fits in `usize`.
fn element_count(shape: &[usize], source: &str) -> Result<usize> {
    if shape.is_empty() {
        return Err(bad(format!(
            "{source}: a scalar (shape []); an array of examples needs at least one dimension"
        )));
    }
    if shape[0] == 0 {
        return Err(bad(format!("{source}: no examples (shape {shape:?})")));
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("{source}: shape {shape:?} has too many elements")))
}

/// `flat` as a row-major index into `shape`: `7` for a 1-D shape, `[0, 1, 3]` otherwise.
fn index_of(flat: usize, shape: &[usize]) -> String {
    if shape.len() <= 1 {
        return flat.to_string();
    }
    let mut idx = vec![0; shape.len()];
    let mut rest = flat;
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = rest % d;
        rest /= d;
    }
    format!("{idx:?}")
}

/// Reorders a Fortran-order (column-major: the first index is fastest) array of `shape` into C
/// (row-major) order: `out[Σₖ iₖ·cₖ] = data[Σₖ iₖ·fₖ]` with C strides `cₖ = Π_{j>k} dⱼ` and
/// Fortran strides `fₖ = Π_{j<k} dⱼ`.
fn fortran_to_c<T: Copy>(data: &[T], shape: &[usize]) -> Vec<T> {
    let mut strides = Vec::with_capacity(shape.len());
    let mut s = 1;
    for &d in shape {
        strides.push(s);
        s *= d;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; shape.len()];
    let mut offset = 0;
    for _ in 0..data.len() {
        out.push(data[offset]);
        // Next C-order index: the last dimension is fastest.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            offset += strides[k];
            if idx[k] < shape[k] {
                break;
            }
            offset -= strides[k] * shape[k];
            idx[k] = 0;
        }
    }
    out
}

/// An element type of a file: how it decodes and what it converts to.
trait Element: Copy + fmt::Debug {
    /// Bytes per element.
    const SIZE: usize;
    /// Whether it can hold class indices (integers and bool).
    const INTEGER: bool;
    /// Decodes `SIZE` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
    /// The value as a feature (nearest `f32`).
    fn to_f32(self) -> f32;
    /// The value as a class index; `None` when it is negative or does not fit (integers only).
    fn to_usize(self) -> Option<usize>;
}

macro_rules! int_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const INTEGER: bool = true;
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn to_usize(self) -> Option<usize> {
                usize::try_from(self).ok()
            }
        }
    )*};
}

macro_rules! float_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const INTEGER: bool = false;
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn to_f32(self) -> f32 {
                f32::from(self)
            }
            fn to_usize(self) -> Option<usize> {
                None
            }
        }
    )*};
}

int_element!(u8, i8, u16, i16, u32, i32, u64, i64);
float_element!(f16, bf16, f32);

impl Element for f64 {
    const SIZE: usize = 8;
    const INTEGER: bool = false;
    fn read_le(bytes: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        f64::from_le_bytes(a)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_usize(self) -> Option<usize> {
        None
    }
}

impl Element for bool {
    const SIZE: usize = 1;
    const INTEGER: bool = true;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
    fn to_usize(self) -> Option<usize> {
        Some(usize::from(self))
    }
}

/// What a loaded tensor's elements become: `f32` features or `usize` labels.
trait Target: Sized {
    /// Converts the elements of a file (dtype `dtype`, as the file names it), checking them.
    fn convert<E: Element>(
        values: Vec<E>,
        shape: &[usize],
        src: &str,
        dtype: &str,
    ) -> Result<Vec<Self>>;
    /// Checks values given in memory ([`Array::new`]).
    fn validate(data: &[Self], shape: &[usize], src: &str) -> Result<()>;
}

impl Target for f32 {
    fn convert<E: Element>(
        values: Vec<E>,
        shape: &[usize],
        src: &str,
        dtype: &str,
    ) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            let x = v.to_f32();
            if !x.is_finite() {
                return Err(bad(format!(
                    "{src}: the feature at index {} is {v:?} ({dtype}), which is {x} as f32; features must be finite",
                    index_of(i, shape)
                )));
            }
            out.push(x);
        }
        Ok(out)
    }

    fn validate(data: &[f32], shape: &[usize], src: &str) -> Result<()> {
        match data.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(i) => Err(bad(format!(
                "{src}: the feature at index {} is {}; features must be finite",
                index_of(i, shape),
                data[i]
            ))),
        }
    }
}

impl Target for usize {
    fn convert<E: Element>(
        values: Vec<E>,
        shape: &[usize],
        src: &str,
        dtype: &str,
    ) -> Result<Vec<usize>> {
        if !E::INTEGER {
            return Err(bad(format!(
                "{src}: labels need an integer dtype, the file has {dtype}"
            )));
        }
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            match v.to_usize() {
                Some(l) => out.push(l),
                None => {
                    return Err(bad(format!(
                    "{src}: label {v:?} at index {} is not a class index (labels are integers >= 0)",
                    index_of(i, shape)
                )))
                }
            }
        }
        Ok(out)
    }

    fn validate(_: &[usize], _: &[usize], _: &str) -> Result<()> {
        Ok(())
    }
}

/// The dtypes [`read_safetensors`] reads, for its error message.
const SAFETENSORS_DTYPES: &str = "F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL";

/// The dtypes [`read_npy`] reads, for its error message.
const NPY_DTYPES: &str = "f8, f4, f2, i8, i4, i2, i1, u8, u4, u2, u1, b1 (either byte order)";

/// Reads the tensor `name` (or the only tensor, for `None`) of the safetensors file `bytes`.
fn read_safetensors<T: Target>(bytes: &[u8], name: Option<&str>, file: &str) -> Result<Loaded<T>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(format!(
            "{file}: not a valid safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let mut names = st.names();
    names.sort_unstable();
    let listed = || {
        if names.is_empty() {
            "no tensors".to_string()
        } else {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let name = match name {
        Some(name) => name,
        None if names.len() == 1 => names[0],
        None => {
            return Err(bad(format!(
                "{file}: name the tensor to load; the file has {}",
                listed()
            )))
        }
    };
    let view = st.tensor(name).map_err(|_| {
        bad(format!(
            "{file}: no tensor named `{name}`; the file has {}",
            listed()
        ))
    })?;
    let source = format!("{file} (tensor `{name}`)");
    let shape = view.shape().to_vec();
    let n = element_count(&shape, &source)?;
    let dtype = view.dtype();
    let dname = dtype.to_string();
    let raw = view.data();
    macro_rules! decode {
        ($e:ty) => {{
            if n.checked_mul(<$e>::SIZE) != Some(raw.len()) {
                return Err(bad(format!(
                    "{source}: {} bytes of data for shape {shape:?} of {dname}",
                    raw.len()
                )));
            }
            let values: Vec<$e> = raw
                .chunks_exact(<$e>::SIZE)
                .map(<$e as Element>::read_le)
                .collect();
            T::convert(values, &shape, &source, &dname)?
        }};
    }
    let data = match dtype {
        Dtype::F64 => decode!(f64),
        Dtype::F32 => decode!(f32),
        Dtype::F16 => decode!(f16),
        Dtype::BF16 => decode!(bf16),
        Dtype::I64 => decode!(i64),
        Dtype::I32 => decode!(i32),
        Dtype::I16 => decode!(i16),
        Dtype::I8 => decode!(i8),
        Dtype::U64 => decode!(u64),
        Dtype::U32 => decode!(u32),
        Dtype::U16 => decode!(u16),
        Dtype::U8 => decode!(u8),
        Dtype::BOOL => decode!(bool),
        other => {
            return Err(bad(format!(
                "{source}: dtype {other} is not supported; expected one of {SAFETENSORS_DTYPES}"
            )))
        }
    };
    Ok(Loaded {
        shape,
        data,
        source,
    })
}

/// Reads the `.npy` file `bytes` (format versions 1–3, as `npyz` parses them). Bytes after the
/// data are ignored, as `numpy.load` ignores them.
fn read_npy<T: Target>(bytes: &[u8], file: &str) -> Result<Loaded<T>> {
    let mut rest = bytes;
    let header = NpyHeader::from_reader(&mut rest).map_err(|e| {
        bad(format!(
            "{file}: not a valid .npy file (truncated or corrupt?): {e}"
        ))
    })?;
    let source = file.to_string();
    let shape = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("{file}: shape {:?} is too large", header.shape())))?;
    let n = element_count(&shape, &source)?;
    let ts = match header.dtype() {
        DType::Plain(ts) => ts,
        other => {
            return Err(bad(format!(
                "{file}: dtype {} is not supported; expected one of {NPY_DTYPES}",
                other.descr()
            )))
        }
    };
    let dname = ts.to_string();
    let order = header.order();
    let available = rest.len();
    let npy = NpyFile::with_header(header, rest);
    macro_rules! decode {
        ($e:ty) => {{
            let need = n.checked_mul(<$e>::SIZE).unwrap_or(usize::MAX);
            if available < need {
                return Err(bad(format!(
                    "{file}: truncated: its header declares shape {shape:?} of {dname} ({need} bytes of data), but {available} bytes follow"
                )));
            }
            let mut values: Vec<$e> = npy
                .into_vec()
                .map_err(|e| bad(format!("{file}: cannot read the data: {e}")))?;
            if order == Order::Fortran {
                values = fortran_to_c(&values, &shape);
            }
            T::convert(values, &shape, &source, &dname)?
        }};
    }
    let data = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 8) => decode!(f64),
        (TypeChar::Float, 4) => decode!(f32),
        (TypeChar::Float, 2) => decode!(f16),
        (TypeChar::Int, 8) => decode!(i64),
        (TypeChar::Int, 4) => decode!(i32),
        (TypeChar::Int, 2) => decode!(i16),
        (TypeChar::Int, 1) => decode!(i8),
        (TypeChar::Uint, 8) => decode!(u64),
        (TypeChar::Uint, 4) => decode!(u32),
        (TypeChar::Uint, 2) => decode!(u16),
        (TypeChar::Uint, 1) => decode!(u8),
        (TypeChar::Bool, 1) => decode!(bool),
        _ => {
            return Err(bad(format!(
                "{file}: dtype '{dname}' is not supported; expected one of {NPY_DTYPES}"
            )))
        }
    };
    Ok(Loaded {
        shape,
        data,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use npyz::WriterBuilder;
    use safetensors::tensor::TensorView;
    use std::path::PathBuf;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("umup-arrays-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A safetensors file holding `tensors` (name, dtype, shape, little-endian bytes).
    fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// A `.npy` file of `data` with shape `shape`, its dtype `dtype` or, for `None`, the native
    /// one; `fortran` writes column-major (then `data` must be column-major too).
    fn npy_file<T: npyz::AutoSerialize + Copy>(
        shape: &[u64],
        data: &[T],
        dtype: Option<&str>,
        fortran: bool,
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let order = if fortran { Order::Fortran } else { Order::C };
        let opts = npyz::WriteOptions::<T>::new().order(order);
        let opts = match dtype {
            None => opts.default_dtype(),
            Some(d) => opts.dtype(DType::Plain(d.parse().unwrap())),
        };
        let mut w = opts.shape(shape).writer(&mut buf).begin_nd().unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
        buf
    }

    /// A version-1.0 `.npy` file written by hand: header dict `descr`, `shape`, then `data`.
    fn raw_npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    fn le<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }

    /// The message of a [`Error::BadInput`], checked to be one line.
    fn message<T: fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::BadInput(m)) => {
                assert!(!m.contains('\n'), "not one line: {m}");
                m
            }
            other => panic!("expected Error::BadInput, got {other:?}"),
        }
    }

    #[test]
    fn safetensors_round_trip_f32_u8_i64() {
        let dir = scratch("st-round-trip");
        let x = vec![
            0.5f32, -1.25, 3.0, 1e-7, -0.0, 7.75, 2.5e6, -4.0, 0.1, 0.2, 0.3, 0.4,
        ];
        let y8 = vec![3u8, 0, 9, 1];
        let y64 = vec![2i64, 7, 0, 5];
        let bytes = safetensors_file(&[
            ("x", Dtype::F32, vec![4, 3], le(&x, f32::to_le_bytes)),
            ("y8", Dtype::U8, vec![4], y8.clone()),
            ("y64", Dtype::I64, vec![4], le(&y64, i64::to_le_bytes)),
        ]);
        let path = dir.join("d.safetensors");
        std::fs::write(&path, &bytes).unwrap();

        let a = Array::from_safetensors(&path, "x").unwrap();
        assert_eq!(a.shape, vec![4, 3]);
        assert_eq!(a.data, x);
        assert_eq!(
            (a.examples(), a.example_shape(), a.example_len()),
            (4, &[3][..], 3)
        );
        assert_eq!(a.example(1), &[1e-7, -0.0, 7.75]);
        assert_eq!(a.source, format!("{} (tensor `x`)", path.display()));
        let l8 = Labels::from_safetensors(&path, "y8").unwrap();
        assert_eq!(
            (l8.shape.clone(), l8.data.clone()),
            (vec![4], vec![3, 0, 9, 1])
        );
        let l64 = Labels::from_file(&path, Some("y64")).unwrap();
        assert_eq!(l64.data, vec![2, 7, 0, 5]);
        // u8 and i64 also load as features; the bytes loader gives the same array.
        assert_eq!(
            Array::from_safetensors(&path, "y8").unwrap().data,
            vec![3.0, 0.0, 9.0, 1.0]
        );
        assert_eq!(
            Array::from_safetensors(&path, "y64").unwrap().data,
            vec![2.0, 7.0, 0.0, 5.0]
        );
        let b = Array::from_safetensors_bytes(&bytes, "x", "mem").unwrap();
        assert_eq!((b.data, b.source), (x, "mem (tensor `x`)".to_string()));
    }

    #[test]
    fn safetensors_every_dtype_converts() {
        let f64s = [1.5f64, -2.0, 1.0e-3];
        let cases: Vec<(&str, Dtype, Vec<u8>, [f32; 3])> = vec![
            (
                "f64",
                Dtype::F64,
                le(&f64s, f64::to_le_bytes),
                [1.5, -2.0, 1.0e-3],
            ),
            (
                "f16",
                Dtype::F16,
                le(
                    &[f16::from_f32(1.5), f16::from_f32(-2.0), f16::from_f32(0.25)],
                    f16::to_le_bytes,
                ),
                [1.5, -2.0, 0.25],
            ),
            (
                "bf16",
                Dtype::BF16,
                le(
                    &[
                        bf16::from_f32(1.5),
                        bf16::from_f32(-2.0),
                        bf16::from_f32(256.0),
                    ],
                    bf16::to_le_bytes,
                ),
                [1.5, -2.0, 256.0],
            ),
            (
                "i8",
                Dtype::I8,
                le(&[-128i8, 0, 127], i8::to_le_bytes),
                [-128.0, 0.0, 127.0],
            ),
            (
                "i16",
                Dtype::I16,
                le(&[-300i16, 1, 300], i16::to_le_bytes),
                [-300.0, 1.0, 300.0],
            ),
            (
                "i32",
                Dtype::I32,
                le(&[-70000i32, 2, 70000], i32::to_le_bytes),
                [-70000.0, 2.0, 70000.0],
            ),
            (
                "u16",
                Dtype::U16,
                le(&[0u16, 65535, 3], u16::to_le_bytes),
                [0.0, 65535.0, 3.0],
            ),
            (
                "u32",
                Dtype::U32,
                le(&[0u32, 1 << 20, 5], u32::to_le_bytes),
                [0.0, 1048576.0, 5.0],
            ),
            (
                "u64",
                Dtype::U64,
                le(&[0u64, 1 << 40, 6], u64::to_le_bytes),
                [0.0, 1099511627776.0, 6.0],
            ),
            ("bool", Dtype::BOOL, vec![1, 0, 1], [1.0, 0.0, 1.0]),
        ];
        let tensors: Vec<_> = cases
            .iter()
            .map(|(n, d, b, _)| (*n, *d, vec![3], b.clone()))
            .collect();
        let bytes = safetensors_file(&tensors);
        for (name, dtype, _, want) in &cases {
            let a = Array::from_safetensors_bytes(&bytes, name, "all.safetensors").unwrap();
            assert_eq!(a.data, want.to_vec(), "{name}");
            let l = Labels::from_safetensors_bytes(&bytes, name, "all.safetensors");
            match dtype {
                Dtype::F64 | Dtype::F16 | Dtype::BF16 => {
                    let m = message(l);
                    assert!(
                        m.contains("labels need an integer dtype")
                            && m.contains(&format!("{dtype}")),
                        "{m}"
                    );
                }
                Dtype::I8 | Dtype::I16 | Dtype::I32 => {
                    let m = message(l);
                    assert!(m.contains("at index 0 is not a class index"), "{m}");
                }
                _ => assert_eq!(
                    l.unwrap().data,
                    want.iter().map(|&v| v as usize).collect::<Vec<_>>()
                ),
            }
        }
    }

    #[test]
    fn npy_round_trip_f32_u8_i64() {
        let dir = scratch("npy-round-trip");
        let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p = dir.join("x.npy");
        std::fs::write(&p, npy_file(&[2, 3, 4], &x, None, false)).unwrap();
        let a = Array::from_npy(&p).unwrap();
        assert_eq!(
            (a.shape.clone(), a.data.clone()),
            (vec![2, 3, 4], x.clone())
        );
        assert_eq!(a.source, p.display().to_string());
        assert_eq!(Array::from_file(&p, None).unwrap(), a);

        let y8 = [4u8, 0, 255, 9, 1];
        let p8 = dir.join("y8.npy");
        std::fs::write(&p8, npy_file(&[5], &y8, None, false)).unwrap();
        assert_eq!(Labels::from_npy(&p8).unwrap().data, vec![4, 0, 255, 9, 1]);
        assert_eq!(
            Array::from_npy(&p8).unwrap().data,
            vec![4.0, 0.0, 255.0, 9.0, 1.0]
        );

        let y64 = [1i64, 3, 3, 7, 0, 2];
        let p64 = dir.join("y64.npy");
        std::fs::write(&p64, npy_file(&[3, 2], &y64, None, false)).unwrap();
        let l = Labels::from_npy(&p64).unwrap();
        assert_eq!(
            (l.shape.clone(), l.data.clone()),
            (vec![3, 2], vec![1, 3, 3, 7, 0, 2])
        );
        assert_eq!(l.example(2), &[0, 2]);

        // f64 rounds to the nearest f32; i32 labels; big-endian f4 reads the same values.
        let d = [0.1f64, -1.0 / 3.0];
        let a = Array::from_npy_bytes(&npy_file(&[2], &d, None, false), "d.npy").unwrap();
        assert_eq!(a.data, vec![0.1f32, -1.0f32 / 3.0]);
        let l = Labels::from_npy_bytes(&npy_file(&[2], &[5i32, 6], None, false), "l.npy").unwrap();
        assert_eq!(l.data, vec![5, 6]);
        let be = npy_file(&[3], &[1.5f32, -2.0, 1e-3], Some(">f4"), false);
        assert_eq!(
            Array::from_npy_bytes(&be, "be.npy").unwrap().data,
            vec![1.5, -2.0, 1e-3]
        );
        let h = npy_file(
            &[2],
            &[f16::from_f32(0.5), f16::from_f32(-8.0)],
            None,
            false,
        );
        assert_eq!(
            Array::from_npy_bytes(&h, "h.npy").unwrap().data,
            vec![0.5, -8.0]
        );
    }

    #[test]
    fn npy_fortran_order_is_reordered_to_c() {
        // The 2×3 matrix [[0, 1, 2], [10, 11, 12]] stored column-major.
        let f = npy_file(&[2, 3], &[0.0f32, 10.0, 1.0, 11.0, 2.0, 12.0], None, true);
        let a = Array::from_npy_bytes(&f, "f.npy").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
        // 3-D: element [i, j, k] = 100i + 10j + k, shape [2, 3, 4], written column-major.
        let shape = [2usize, 3, 4];
        let mut col = Vec::new();
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..2 {
                    col.push((100 * i + 10 * j + k) as i64);
                }
            }
        }
        let f = npy_file(&[2, 3, 4], &col, None, true);
        let l = Labels::from_npy_bytes(&f, "f3.npy").unwrap();
        let mut row = Vec::new();
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for k in 0..shape[2] {
                    row.push(100 * i + 10 * j + k);
                }
            }
        }
        assert_eq!(l.data, row);
    }

    #[test]
    fn truncated_files_are_errors() {
        let dir = scratch("truncated");
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let st = safetensors_file(&[("x", Dtype::F32, vec![8, 8], le(&x, f32::to_le_bytes))]);
        let p = dir.join("t.safetensors");
        std::fs::write(&p, &st[..st.len() - 5]).unwrap();
        let m = message(Array::from_safetensors(&p, "x"));
        assert!(
            m.contains(&p.display().to_string()) && m.contains("not a valid safetensors file"),
            "{m}"
        );
        // Cut inside the header too.
        std::fs::write(&p, &st[..20]).unwrap();
        let m = message(Array::from_safetensors(&p, "x"));
        assert!(m.contains("not a valid safetensors file"), "{m}");

        let npy = npy_file(&[8, 8], &x, None, false);
        let p = dir.join("t.npy");
        std::fs::write(&p, &npy[..npy.len() - 5]).unwrap();
        let m = message(Array::from_npy(&p));
        assert!(
            m.contains(&p.display().to_string()) && m.contains("truncated"),
            "{m}"
        );
        assert!(
            m.contains("[8, 8]")
                && m.contains("256 bytes of data")
                && m.contains("251 bytes follow"),
            "{m}"
        );
        std::fs::write(&p, &npy[..30]).unwrap();
        let m = message(Array::from_npy(&p));
        assert!(m.contains("not a valid .npy file"), "{m}");
        let m = message(Array::from_npy_bytes(b"definitely not numpy", "junk.npy"));
        assert!(m.starts_with("junk.npy: not a valid .npy file"), "{m}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let p = scratch("missing").join("no-such-features.npy");
        let m = message(Array::from_npy(&p));
        assert!(
            m.starts_with(&format!("{}: cannot read it", p.display())),
            "{m}"
        );
        let p = p.with_extension("safetensors");
        let m = message(Labels::from_safetensors(&p, "y"));
        assert!(m.contains(&p.display().to_string()), "{m}");
        let m = message(Array::from_file(p.with_extension("csv"), None));
        assert!(m.contains("expected a .npy or .safetensors file"), "{m}");
    }

    #[test]
    fn missing_tensor_lists_the_names() {
        let bytes = safetensors_file(&[
            ("images", Dtype::U8, vec![2, 2], vec![1, 2, 3, 4]),
            ("labels", Dtype::U8, vec![2], vec![0, 1]),
        ]);
        let m = message(Array::from_safetensors_bytes(
            &bytes,
            "image",
            "d.safetensors",
        ));
        assert_eq!(
            m,
            "d.safetensors: no tensor named `image`; the file has `images`, `labels`"
        );
        let dir = scratch("names");
        let p = dir.join("d.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let m = message(Array::from_file(&p, None));
        assert!(
            m.ends_with("name the tensor to load; the file has `images`, `labels`"),
            "{m}"
        );
        let one = safetensors_file(&[("only", Dtype::U8, vec![2], vec![5, 6])]);
        let p1 = dir.join("one.safetensors");
        std::fs::write(&p1, one).unwrap();
        assert_eq!(Labels::from_file(&p1, None).unwrap().data, vec![5, 6]);
        let m = message(Array::from_file(dir.join("x.npy"), Some("x")));
        assert!(m.contains("no tensor names"), "{m}");
    }

    #[test]
    fn label_errors() {
        let l = Labels::new(vec![5], vec![1, 2, 12, 3, 0], "y.npy").unwrap();
        assert_eq!(
            message(l.check_labels(10)),
            "y.npy: label 12 at index 2 is out of range for 10 classes (labels must be < 10)"
        );
        assert_eq!(l.class_counts(13).unwrap()[..4], [1, 1, 1, 1]);
        let l2 = Labels::new(vec![2, 3], vec![0, 1, 2, 3, 4, 5], "tok.npy").unwrap();
        assert!(message(l2.check_labels(5)).contains("label 5 at index [1, 2]"));

        let neg = npy_file(&[3], &[0i64, -1, 2], None, false);
        let m = message(Labels::from_npy_bytes(&neg, "neg.npy"));
        assert_eq!(
            m,
            "neg.npy: label -1 at index 1 is not a class index (labels are integers >= 0)"
        );
        let fl = npy_file(&[2], &[0.0f32, 1.0], None, false);
        let m = message(Labels::from_npy_bytes(&fl, "fl.npy"));
        assert_eq!(m, "fl.npy: labels need an integer dtype, the file has <f4");

        let x = Array::new(vec![4, 2], vec![0.0; 8], "x.npy").unwrap();
        let m = message(l.expect_count(&x));
        assert_eq!(m, "y.npy: labels for 5 examples, but x.npy has 4 examples");
        Labels::new(vec![4], vec![0; 4], "y4")
            .unwrap()
            .expect_count(&x)
            .unwrap();
    }

    #[test]
    fn feature_and_shape_errors() {
        let a = Array::new(vec![3, 8, 8], vec![0.0; 192], "features.npy").unwrap();
        a.expect_example_shape(&[8, 8], "the model").unwrap();
        assert_eq!(
            message(a.expect_example_shape(&[16, 4], "the model")),
            "features.npy: examples of shape [8, 8], the model takes [16, 4]"
        );
        let nan = npy_file(&[2, 2], &[0.0f32, 1.0, f32::NAN, 2.0], None, false);
        let m = message(Array::from_npy_bytes(&nan, "nan.npy"));
        assert!(
            m.starts_with("nan.npy: the feature at index [1, 0] is NaN"),
            "{m}"
        );
        let big = npy_file(&[2], &[1.0f64, 1e300], None, false);
        let m = message(Array::from_npy_bytes(&big, "big.npy"));
        assert!(
            m.contains("index 1 is 1e300 (<f8), which is inf as f32"),
            "{m}"
        );
        assert!(
            message(Array::new(vec![2], vec![1.0, f32::INFINITY], "mem"))
                .contains("index 1 is inf")
        );
        assert!(message(Array::new(vec![2, 2], vec![1.0; 3], "mem"))
            .contains("holds 4 values, the data has 3"));
        let empty = npy_file::<f32>(&[0, 4], &[], None, false);
        assert_eq!(
            message(Array::from_npy_bytes(&empty, "e.npy")),
            "e.npy: no examples (shape [0, 4])"
        );
        let scalar = npy_file(&[], &[1.0f32], None, false);
        assert!(message(Array::from_npy_bytes(&scalar, "s.npy"))
            .contains("needs at least one dimension"));
        let strings = raw_npy("'|S2'", "(1,)", b"ab");
        let m = message(Array::from_npy_bytes(&strings, "s.npy"));
        assert!(m.starts_with("s.npy: dtype '|S2' is not supported"), "{m}");
    }

    #[test]
    fn embedded_digits() {
        let (images, labels) = digits().unwrap();
        assert_eq!(images.shape, vec![DIGITS_EXAMPLES, 8, 8]);
        assert_eq!(images.example_shape(), &DIGITS_SHAPE);
        assert_eq!(labels.shape, vec![DIGITS_EXAMPLES]);
        assert!(images
            .data
            .iter()
            .all(|&p| (0.0..=DIGITS_MAX_PIXEL).contains(&p) && p.fract() == 0.0));
        assert_eq!(images.data.iter().cloned().fold(0.0, f32::max), 16.0);
        assert_eq!(
            labels.class_counts(DIGITS_CLASSES).unwrap(),
            vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // scikit-learn's first example is a 0: load_digits().images[0][0] and .target[:10].
        assert_eq!(
            images.example(0)[..8],
            [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(labels.data[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // ... and its last: .target[-5:], .images[-1].sum(), .images.sum().
        assert_eq!(labels.data[DIGITS_EXAMPLES - 5..], [9, 0, 8, 9, 8]);
        assert_eq!(
            images.example(DIGITS_EXAMPLES - 1).iter().sum::<f32>(),
            392.0
        );
        assert_eq!(images.data.iter().map(|&p| p as u64).sum::<u64>(), 561_718);
        assert_eq!(
            images.source,
            "digits.safetensors (embedded) (tensor `images`)"
        );
    }
}

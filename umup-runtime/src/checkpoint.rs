//! Model checkpoints in the safetensors format, with the u-μP metadata (parametrization, and
//! each tensor's role, shape and depth) travelling in the header.
//!
//! [`save`] writes atomically (a temporary file, then a rename), so a crash never leaves a
//! half-written checkpoint under the final name. [`load`] checks everything before it copies
//! anything: a parametrization, role, depth, shape or dtype that differs from the model's, a
//! missing tensor or an unexpected one is an error naming the tensor, and the model is unchanged.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::UmupModule;
use crate::params::{ParamTable, Parametrization, Role};
use crate::walk;

/// Metadata key: the parametrization (`umup`, `mup:<base>`, `sp`).
pub const KEY_PARAMETRIZATION: &str = "umup.parametrization";
/// Metadata key: JSON list of `{path, role, shape, depth}`.
pub const KEY_PARAMS: &str = "umup.params";
/// Metadata key: the checkpoint format version.
pub const KEY_VERSION: &str = "umup.format_version";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ParamMeta {
    path: String,
    role: String,
    shape: Vec<usize>,
    depth: Option<usize>,
}

fn param_key(p: Parametrization) -> String {
    match p {
        Parametrization::Mup { base_width } => format!("mup:{base_width}"),
        other => other.name().to_string(),
    }
}

fn st_dtype<E: Dtype>() -> Result<StDtype> {
    let id = TypeId::of::<E>();
    if id == TypeId::of::<f32>() {
        Ok(StDtype::F32)
    } else if id == TypeId::of::<f64>() {
        Ok(StDtype::F64)
    } else if id == TypeId::of::<half::f16>() {
        Ok(StDtype::F16)
    } else {
        Err(Error::BadInput(format!(
            "checkpoints support f32, f64 and f16 tensors, not {}",
            std::any::type_name::<E>()
        )))
    }
}

fn to_bytes<E: Dtype>(vals: &[E], dtype: StDtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.bitsize() / 8);
    for v in vals {
        let x = v.to_f64().unwrap_or(f64::NAN);
        match dtype {
            StDtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
            StDtype::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            _ => out.extend_from_slice(&(x as f32).to_le_bytes()),
        }
    }
    out
}

fn from_bytes<E: Dtype>(bytes: &[u8], dtype: StDtype) -> Vec<E> {
    let conv = |x: f64| E::from_f64(x).unwrap_or_default();
    match dtype {
        StDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| conv(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| conv(half::f16::from_le_bytes([c[0], c[1]]).to_f64()))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| conv(f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64))
            .collect(),
    }
}

struct Collect {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    dtype: StDtype,
}

impl<E: Dtype, D: Device<E>> walk::Visit<E, D> for Collect {
    fn tensor<S: Shape>(&mut self, name: String, t: &Tensor<S, E, D>, _: bool) -> Result<()> {
        let shape = t.shape().concrete().into_iter().collect();
        self.tensors
            .push((name, shape, to_bytes(&t.as_vec(), self.dtype)));
        Ok(())
    }
}

/// Writes `model` to `path` (atomically) with the u-μP metadata and any `extra` string entries
/// (e.g. the training step or config). Keys starting with `umup.` are reserved.
pub fn save<E: Dtype, D: Device<E>, M: TensorCollection<E, D> + UmupModule>(
    model: &M,
    path: impl AsRef<Path>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let table = M::param_table()?;
    let mut c = Collect {
        tensors: Vec::new(),
        dtype: st_dtype::<E>()?,
    };
    walk::tensors(model, &mut c)?;
    let mut meta: HashMap<String, String> = HashMap::new();
    for (k, v) in extra {
        if k.starts_with("umup.") {
            return Err(Error::BadInput(format!(
                "metadata key `{k}` is reserved for umup"
            )));
        }
        meta.insert(k.clone(), v.clone());
    }
    meta.insert(KEY_VERSION.into(), "1".into());
    meta.insert(KEY_PARAMETRIZATION.into(), param_key(table.parametrization));
    let params: Vec<ParamMeta> = table
        .rows
        .iter()
        .map(|r| ParamMeta {
            path: r.spec.path.clone(),
            role: r.spec.role.name().into(),
            shape: r.spec.shape.clone(),
            depth: r.spec.depth,
        })
        .collect();
    meta.insert(
        KEY_PARAMS.into(),
        serde_json::to_string(&params).map_err(|e| Error::BadInput(e.to_string()))?,
    );
    write_tensors(path, c.dtype, &c.tensors, meta)
}

fn write_tensors(
    path: &Path,
    dtype: StDtype,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::BadInput(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::BadInput(format!("safetensors: {e}")))?;
    write_atomically(path, &bytes)
}

/// Writes flat named tensors (e.g. [`crate::optim::Optimizer::state`]) with string metadata,
/// atomically.
pub fn save_named<E: Dtype>(
    path: impl AsRef<Path>,
    tensors: &[(String, Vec<E>)],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let dtype = st_dtype::<E>()?;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, v)| (n.clone(), vec![v.len()], to_bytes(v, dtype)))
        .collect();
    let meta = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write_tensors(path.as_ref(), dtype, &tensors, meta)
}

/// Reads every tensor of a safetensors file as flat values of dtype `E`, with its metadata.
pub fn load_named<E: Dtype>(
    path: impl AsRef<Path>,
) -> Result<(BTreeMap<String, Vec<E>>, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, from_bytes::<E>(view.data(), view.dtype())))
        .collect();
    Ok((tensors, metadata(path)?))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::BadInput(format!("cannot write {}: {e}", path.display()));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::BadInput(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

struct Copy<'a> {
    st: &'a SafeTensors<'a>,
}

impl<E: Dtype, D: Device<E>> walk::VisitMut<E, D> for Copy<'_> {
    fn tensor<S: Shape>(&mut self, name: String, t: &mut Tensor<S, E, D>, _: bool) -> Result<()> {
        let view = self.st.tensor(&name).map_err(|_| Error::BadParameter {
            path: name.clone(),
            reason: "missing from the checkpoint".into(),
        })?;
        t.copy_from(&from_bytes::<E>(view.data(), view.dtype()));
        Ok(())
    }
}

/// Reads a checkpoint's metadata (the `extra` entries of [`save`] and the `umup.*` keys).
pub fn metadata(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let bytes = read(path.as_ref())?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::BadInput(format!("{}: {e}", path.as_ref().display())))?;
    Ok(meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))
}

/// Loads a checkpoint written by [`save`] into `model` and returns its metadata. Everything is
/// checked against the model's parameter table first; on any mismatch the model is unchanged.
pub fn load<E: Dtype, D: Device<E>, M: TensorCollection<E, D> + UmupModule>(
    model: &mut M,
    path: impl AsRef<Path>,
) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let bad = |e: safetensors::SafeTensorError| Error::BadInput(format!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let meta = metadata(path)?;
    st_dtype::<E>()?;
    check(&M::param_table()?, &st, &meta)?;
    walk::tensors_mut(model, &mut Copy { st: &st })?;
    Ok(meta)
}

fn check(table: &ParamTable, st: &SafeTensors<'_>, meta: &BTreeMap<String, String>) -> Result<()> {
    let want = param_key(table.parametrization);
    match meta.get(KEY_PARAMETRIZATION) {
        Some(p) if *p == want => {}
        Some(p) => {
            return Err(Error::BadInput(format!(
                "the checkpoint was trained with parametrization `{p}`, the model is `{want}`"
            )))
        }
        None => {
            return Err(Error::BadInput(
                "the checkpoint has no u-μP metadata (`umup.parametrization`)".into(),
            ))
        }
    }
    let params: Vec<ParamMeta> = meta
        .get(KEY_PARAMS)
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| Error::BadInput(format!("`{KEY_PARAMS}` metadata: {e}")))?
        .unwrap_or_default();
    for row in &table.rows {
        let path = &row.spec.path;
        let bad = |reason: String| Error::BadParameter {
            path: path.clone(),
            reason,
        };
        let view = st
            .tensor(path)
            .map_err(|_| bad("missing from the checkpoint".into()))?;
        if view.shape() != row.spec.shape.as_slice() {
            return Err(bad(format!(
                "shape {:?} in the checkpoint, {:?} in the model",
                view.shape(),
                row.spec.shape
            )));
        }
        if !matches!(view.dtype(), StDtype::F32 | StDtype::F64 | StDtype::F16) {
            return Err(bad(format!("unsupported dtype {:?}", view.dtype())));
        }
        let m = params
            .iter()
            .find(|m| m.path == *path)
            .ok_or_else(|| bad("has no role in the checkpoint's metadata".into()))?;
        let role: Role = m.role.parse()?;
        if role != row.spec.role {
            return Err(bad(format!(
                "role `{role}` in the checkpoint, `{}` in the model",
                row.spec.role
            )));
        }
        if m.depth != row.spec.depth {
            return Err(bad(format!(
                "depth {:?} in the checkpoint, {:?} in the model",
                m.depth, row.spec.depth
            )));
        }
    }
    for name in st.names() {
        if table.get(name).is_none() {
            return Err(Error::BadParameter {
                path: name.to_string(),
                reason: "is in the checkpoint but not in the model".into(),
            });
        }
    }
    Ok(())
}

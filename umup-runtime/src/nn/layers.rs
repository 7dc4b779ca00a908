//! Layer types with their role and parametrization in their type.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;
use rand_distr::{Distribution, StandardNormal};

use super::{functional, join_path, ConvSpec, Hyper, LinearRole, Param, UmupModule};
use crate::analysis::{tap, ScaleLog};
use crate::error::{DeviceResultExt, Error, Result};
use crate::ops::{self, Backend, MatmulQuantiser};
use crate::params::{Init, ParamRow, ParamSpec, Parametrization, Role};
use crate::scales::{self, LinearScales};

/// The eps of the norm layers (the reference's default).
const NORM_EPS: f64 = 1e-5;

/// Fills `t` by `init` (the reset function of every layer tensor).
fn init_tensor<S: Shape, E: Dtype, D: Device<E>>(
    t: &mut Tensor<S, E, D>,
    init: Init,
) -> std::result::Result<(), D::Err>
where
    StandardNormal: Distribution<E>,
{
    match init {
        Init::Zeros => t.try_fill_with_zeros(),
        Init::Ones => t.try_fill_with_ones(),
        Init::Normal(std) => {
            t.try_fill_with_distr(StandardNormal)?;
            if std != 1.0 {
                *t = t.clone().try_mul(E::from_f64(std).unwrap_or(E::ONE))?;
            }
            Ok(())
        }
    }
}

/// The init the parametrization gives a tensor of this role and shape. A zero-sized tensor
/// (whose fan-in rule fails) has nothing to initialise.
fn init_of<P: Param>(role: Role, shape: &[usize]) -> Init {
    P::parametrization()
        .init(&ParamSpec::new("", role, shape))
        .unwrap_or(Init::Normal(1.0))
}

/// The output multiplier of a linear layer: the constrained u-μP output scale (a hidden or
/// input weight's [`scales::linear`], the readout's [`scales::linear_readout`]), or the
/// baseline's multiplier.
fn linear_output_scale<R: LinearRole, P: Param>(fan_in: usize, fan_out: usize) -> Result<f64> {
    match P::parametrization() {
        Parametrization::Umup if R::ROLE == Role::Output => {
            Ok(scales::linear_readout(fan_in, fan_out, 1, R::CONSTRAINT)?.output)
        }
        Parametrization::Umup => Ok(scales::linear(fan_in, fan_out, 1, R::CONSTRAINT)?.output),
        p => p.forward_multiplier(&ParamSpec::new("", R::ROLE, &[fan_out, fan_in])),
    }
}

/// The scales `(output, grad_input, grad_weight)` a linear layer with role `R` under `P` applies
/// to `rows` input rows: u-μP's [`scales::linear`] / [`scales::linear_readout`] with the role's
/// constraint; for μP and SP one multiplier (the parametrization's forward multiplier) for all
/// three, i.e. a plain multiply with true gradients.
pub fn linear_layer_scales<R: LinearRole, P: Param>(
    rows: usize,
    fan_in: usize,
    fan_out: usize,
) -> Result<LinearScales> {
    match P::parametrization() {
        Parametrization::Umup if R::ROLE == Role::Output => {
            scales::linear_readout(fan_in, fan_out, rows, R::CONSTRAINT)
        }
        Parametrization::Umup => scales::linear(fan_in, fan_out, rows, R::CONSTRAINT),
        _ => {
            let m = linear_output_scale::<R, P>(fan_in, fan_out)?;
            Ok(LinearScales {
                output: m,
                grad_input: m,
                grad_weight: m,
            })
        }
    }
}

/// The table-gradient scale of an embedding under `P` for `tokens` looked-up ids: u-μP's
/// [`scales::embedding_grad`], 1 (the true gradient) for μP and SP.
pub fn embedding_grad_scale<P: Param>(vocab: usize, tokens: usize) -> Result<f64> {
    match P::parametrization() {
        Parametrization::Umup => scales::embedding_grad(vocab, tokens),
        _ => Ok(1.0),
    }
}

fn linear_forward<R: LinearRole, P: Param, Rw: Dim, const I: usize, const O: usize, E, D, T>(
    x: Tensor<(Rw, Const<I>), E, D, T>,
    weight: &Tensor<Rank2<O, I>, E, D>,
    bias: Option<&Tensor<Rank1<O>, E, D>>,
    quantiser: Option<&mut MatmulQuantiser>,
) -> Result<Tensor<(Rw, Const<O>), E, D, T>>
where
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    if let Some(b) = bias {
        ops::check_dim("linear", "bias length", b.shape().0.size(), O)?;
    }
    let s = linear_layer_scales::<R, P>(x.shape().0.size(), I, O)?;
    ops::quantise::linear_maybe_quantised(x, weight, bias, s, quantiser)
}

fn flatten3<B: Dim, S: Dim, const K: usize, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<(B, S, Const<K>), E, D, T>,
) -> Result<Tensor<(usize, Const<K>), E, D, T>> {
    let (b, s, _) = *x.shape();
    x.try_reshape_like(&(b.size() * s.size(), Const::<K>)).dev()
}

fn unflatten3<B: Dim, S: Dim, const K: usize, E: Dtype, D: Backend<E>, T: Tape<E, D>>(
    y: Tensor<(usize, Const<K>), E, D, T>,
    b: B,
    s: S,
) -> Result<Tensor<(B, S, Const<K>), E, D, T>> {
    y.try_reshape_like(&(b, s, Const::<K>)).dev()
}

macro_rules! forward_rank3 {
    ($ty:ident < $($p:ident),* > , $k_in:ident, $k_out:ident) => {
        impl<B: Dim, S: Dim, $(const $p: usize,)* R2: LinearRole, E: Dtype, D: Backend<E>, P: Param, T>
            Module<Tensor<(B, S, Const<$k_in>), E, D, T>> for $ty<$($p,)* R2, E, D, P>
        where
            T: Tape<E, D> + Merge<T>,
        {
            type Output = Tensor<(B, S, Const<$k_out>), E, D, T>;
            type Error = Error;
            fn try_forward(&self, x: Tensor<(B, S, Const<$k_in>), E, D, T>) -> Result<Self::Output> {
                let (b, s, _) = *x.shape();
                unflatten3(self.try_forward(flatten3(x)?)?, b, s)
            }
        }
    };
}

/// A linear layer without bias: weight `W[O, I]` (torch layout), role and constraint from `R`
/// ([`super::Hidden`], [`super::Input`] or [`super::Readout`]), parametrization `P`.
#[derive(Debug, Clone)]
pub struct UnitLinear<const I: usize, const O: usize, R, E: Dtype, D: Storage<E>, P> {
    /// `W[fan_out, fan_in]`.
    pub weight: Tensor<Rank2<O, I>, E, D>,
    marker: PhantomData<(R, P)>,
}

/// A linear layer with a bias (added before the output scale, as in the reference).
#[derive(Debug, Clone)]
pub struct UnitLinearBias<const I: usize, const O: usize, R, E: Dtype, D: Storage<E>, P> {
    /// `W[fan_out, fan_in]`.
    pub weight: Tensor<Rank2<O, I>, E, D>,
    /// `b[fan_out]`, zero-initialised.
    pub bias: Tensor<Rank1<O>, E, D>,
    marker: PhantomData<(R, P)>,
}

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Device<E>, P: Param>
    TensorCollection<E, D> for UnitLinear<I, O, R, E, D, P>
where
    StandardNormal: Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = UnitLinear<I, O, R, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                TensorOptions::reset_with(|t| init_tensor(t, init_of::<P>(R::ROLE, &[O, I]))),
            ),
            |weight| UnitLinear {
                weight,
                marker: PhantomData,
            },
        )
    }
}

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Device<E>, P: Param>
    TensorCollection<E, D> for UnitLinearBias<I, O, R, E, D, P>
where
    StandardNormal: Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = UnitLinearBias<I, O, R, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_with(|t| init_tensor(t, init_of::<P>(R::ROLE, &[O, I]))),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_with(|t| init_tensor(t, init_of::<P>(Role::Bias, &[O]))),
                ),
            ),
            |(weight, bias)| UnitLinearBias {
                weight,
                bias,
                marker: PhantomData,
            },
        )
    }
}

impl<
        B: Dim,
        const I: usize,
        const O: usize,
        R: LinearRole,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T,
    > Module<Tensor<(B, Const<I>), E, D, T>> for UnitLinear<I, O, R, E, D, P>
where
    T: Tape<E, D> + Merge<T>,
{
    type Output = Tensor<(B, Const<O>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, x: Tensor<(B, Const<I>), E, D, T>) -> Result<Self::Output> {
        linear_forward::<R, P, B, I, O, E, D, T>(x, &self.weight, None, None)
    }
}

impl<
        B: Dim,
        const I: usize,
        const O: usize,
        R: LinearRole,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T,
    > Module<Tensor<(B, Const<I>), E, D, T>> for UnitLinearBias<I, O, R, E, D, P>
where
    T: Tape<E, D> + Merge<T>,
{
    type Output = Tensor<(B, Const<O>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, x: Tensor<(B, Const<I>), E, D, T>) -> Result<Self::Output> {
        linear_forward::<R, P, B, I, O, E, D, T>(x, &self.weight, Some(&self.bias), None)
    }
}

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Backend<E>, P: Param>
    UnitLinear<I, O, R, E, D, P>
{
    /// The forward pass with simulated low precision: input and weight rounded to the
    /// quantiser's forward format, the output gradient to its backward format (spec §8).
    pub fn forward_quantised<B: Dim, T: Tape<E, D> + Merge<T>>(
        &self,
        x: Tensor<(B, Const<I>), E, D, T>,
        quantiser: &mut MatmulQuantiser,
    ) -> Result<Tensor<(B, Const<O>), E, D, T>> {
        linear_forward::<R, P, B, I, O, E, D, T>(x, &self.weight, None, Some(quantiser))
    }
}

/// A SwiGLU MLP's input side, `P::swiglu(up(x), gate(x), hp)`, as one op
/// ([`ops::silu_glu_linear`]: on `Cpu` one kernel that keeps both projections to itself; the
/// same values and gradients as the three calls). With a quantiser, the two quantised
/// projections and [`Param::swiglu`].
pub fn swiglu_linear<B, const I: usize, const O: usize, R, E, D, P, T>(
    up: &UnitLinear<I, O, R, E, D, P>,
    gate: &UnitLinear<I, O, R, E, D, P>,
    x: Tensor<(B, Const<I>), E, D, T>,
    hp: &Hyper,
    quantiser: Option<&mut MatmulQuantiser>,
) -> Result<Tensor<(B, Const<O>), E, D, T>>
where
    B: Dim,
    R: LinearRole,
    E: Dtype,
    D: Backend<E>,
    P: Param,
    T: Tape<E, D> + Merge<T>,
{
    match quantiser {
        Some(q) => {
            let u = up.forward_quantised(x.with_empty_tape(), q)?;
            let g = gate.forward_quantised(x, q)?;
            P::swiglu(u, g, hp)
        }
        None => {
            let s = linear_layer_scales::<R, P>(x.shape().0.size(), I, O)?;
            let scale = functional::swiglu_scale::<P>(hp)?;
            ops::mlp::silu_glu_linear_scaled(
                x,
                &up.weight,
                &gate.weight,
                [s, s],
                hp.alpha_ffn_act,
                scale,
            )
        }
    }
}

/// A GELU MLP's input side, `ops::gelu(up(x), mult, constraint)`, as one op
/// ([`ops::gelu_linear`]: on `Cpu` one kernel that keeps the projection to itself; the same
/// values and gradients as the two calls). With a quantiser, the quantised projection and
/// [`ops::gelu`].
pub fn gelu_linear<B, const I: usize, const O: usize, R, E, D, P, T>(
    up: &UnitLinearBias<I, O, R, E, D, P>,
    x: Tensor<(B, Const<I>), E, D, T>,
    mult: f64,
    constraint: crate::constraint::Constraint,
    quantiser: Option<&mut MatmulQuantiser>,
) -> Result<Tensor<(B, Const<O>), E, D, T>>
where
    B: Dim,
    R: LinearRole,
    E: Dtype,
    D: Backend<E>,
    P: Param,
    T: Tape<E, D> + Merge<T>,
{
    match quantiser {
        Some(q) => ops::gelu(up.forward_quantised(x, q)?, mult, constraint),
        None => {
            let s = linear_layer_scales::<R, P>(x.shape().0.size(), I, O)?;
            let g = scales::gelu(mult)?.constrained(constraint)?;
            let gelu = [mult, g.output / mult, g.grad_input];
            ops::mlp::gelu_linear_scaled(x, &up.weight, Some(&up.bias), s, gelu)
        }
    }
}

/// A whole SwiGLU MLP, `down(P::swiglu(up(x), gate(x), hp))`, as one op
/// ([`ops::swiglu_mlp`]: on `Cpu` one kernel that keeps the projections and the activation to
/// itself; the same values and gradients as the calls composed). With a quantiser (it rounds
/// per matmul) or a scale log (it records the activation, as `act_name`), the composition:
/// [`swiglu_linear`], the tap, `down`.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_mlp<B, const I: usize, const F: usize, const O: usize, R, R2, E, D, P, T>(
    [up, gate]: [&UnitLinear<I, F, R, E, D, P>; 2],
    down: &UnitLinear<F, O, R2, E, D, P>,
    x: Tensor<(B, Const<I>), E, D, T>,
    hp: &Hyper,
    quantiser: Option<&mut MatmulQuantiser>,
    log: Option<&ScaleLog>,
    act_name: impl FnOnce() -> String,
) -> Result<Tensor<(B, Const<O>), E, D, T>>
where
    B: Dim,
    R: LinearRole,
    R2: LinearRole,
    E: Dtype,
    D: Backend<E>,
    P: Param,
    T: Tape<E, D> + Merge<T>,
{
    if quantiser.is_none() && log.is_none() {
        let rows = x.shape().0.size();
        let s = linear_layer_scales::<R, P>(rows, I, F)?;
        let s = [s, s, linear_layer_scales::<R2, P>(rows, F, O)?];
        let (mult, scale) = (hp.alpha_ffn_act, functional::swiglu_scale::<P>(hp)?);
        let w = [&up.weight, &gate.weight];
        return ops::mlp::swiglu_mlp_scaled(x, w, &down.weight, s, mult, scale);
    }
    let mut q = quantiser;
    let act = tap(
        swiglu_linear(up, gate, x, hp, q.as_deref_mut())?,
        log,
        act_name,
    )?;
    linear_forward::<R2, P, B, F, O, E, D, T>(act, &down.weight, None, q)
}

/// A whole GELU MLP, `down(ops::gelu(up(x), mult, constraint))`, as one op
/// ([`ops::gelu_mlp`]; see [`swiglu_mlp`] for the quantiser and the scale log).
#[allow(clippy::too_many_arguments)]
pub fn gelu_mlp<B, const I: usize, const F: usize, const O: usize, R, R2, E, D, P, T>(
    up: &UnitLinearBias<I, F, R, E, D, P>,
    down: &UnitLinearBias<F, O, R2, E, D, P>,
    x: Tensor<(B, Const<I>), E, D, T>,
    (mult, constraint): (f64, crate::constraint::Constraint),
    quantiser: Option<&mut MatmulQuantiser>,
    log: Option<&ScaleLog>,
    act_name: impl FnOnce() -> String,
) -> Result<Tensor<(B, Const<O>), E, D, T>>
where
    B: Dim,
    R: LinearRole,
    R2: LinearRole,
    E: Dtype,
    D: Backend<E>,
    P: Param,
    T: Tape<E, D> + Merge<T>,
{
    if quantiser.is_none() && log.is_none() {
        let rows = x.shape().0.size();
        let s = [
            linear_layer_scales::<R, P>(rows, I, F)?,
            linear_layer_scales::<R2, P>(rows, F, O)?,
        ];
        let g = scales::gelu(mult)?.constrained(constraint)?;
        let gelu = [mult, g.output / mult, g.grad_input];
        let (up, down) = (
            (&up.weight, Some(&up.bias)),
            (&down.weight, Some(&down.bias)),
        );
        return ops::mlp::gelu_mlp_scaled(x, up, down, s, gelu);
    }
    let mut q = quantiser;
    let act = tap(
        gelu_linear(up, x, mult, constraint, q.as_deref_mut())?,
        log,
        act_name,
    )?;
    linear_forward::<R2, P, B, F, O, E, D, T>(act, &down.weight, Some(&down.bias), q)
}

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Backend<E>, P: Param>
    UnitLinearBias<I, O, R, E, D, P>
{
    /// See [`UnitLinear::forward_quantised`].
    pub fn forward_quantised<B: Dim, T: Tape<E, D> + Merge<T>>(
        &self,
        x: Tensor<(B, Const<I>), E, D, T>,
        quantiser: &mut MatmulQuantiser,
    ) -> Result<Tensor<(B, Const<O>), E, D, T>> {
        linear_forward::<R, P, B, I, O, E, D, T>(x, &self.weight, Some(&self.bias), Some(quantiser))
    }
}

forward_rank3!(UnitLinear<I, O>, I, O);
forward_rank3!(UnitLinearBias<I, O>, I, O);

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Storage<E>, P: Param> UmupModule
    for UnitLinear<I, O, R, E, D, P>
{
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        let m = linear_output_scale::<R, P>(I, O)?;
        out.push(row::<P>(
            prefix,
            "weight",
            R::ROLE,
            &[O, I],
            depth,
            Some(m),
        )?);
        Ok(())
    }
}

impl<const I: usize, const O: usize, R: LinearRole, E: Dtype, D: Storage<E>, P: Param> UmupModule
    for UnitLinearBias<I, O, R, E, D, P>
{
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        let m = linear_output_scale::<R, P>(I, O)?;
        out.push(row::<P>(
            prefix,
            "weight",
            R::ROLE,
            &[O, I],
            depth,
            Some(m),
        )?);
        out.push(row::<P>(prefix, "bias", Role::Bias, &[O], depth, Some(m))?);
        Ok(())
    }
}

fn row<P: Param>(
    prefix: &str,
    name: &str,
    role: Role,
    shape: &[usize],
    depth: Option<usize>,
    forward_multiplier: Option<f64>,
) -> Result<ParamRow> {
    let spec = ParamSpec {
        path: join_path(prefix, name),
        role,
        shape: shape.to_vec(),
        depth,
    };
    ParamRow::new(spec, P::parametrization(), forward_multiplier)
}

/// An embedding table `E[V, M]` (`#[embedding]`): no forward scale, table gradient
/// `√(V/B_tok)` under u-μP (spec §4.5).
#[derive(Debug, Clone)]
pub struct UnitEmbedding<const V: usize, const M: usize, E: Dtype, D: Storage<E>, P> {
    /// `E[V, M]`.
    pub weight: Tensor<Rank2<V, M>, E, D>,
    marker: PhantomData<P>,
}

impl<const V: usize, const M: usize, E: Dtype, D: Device<E>, P: Param> TensorCollection<E, D>
    for UnitEmbedding<V, M, E, D, P>
where
    StandardNormal: Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = UnitEmbedding<V, M, E2, D2, P>;

    fn iter_tensors<W: ModuleVisitor<Self, E, D>>(
        visitor: &mut W,
    ) -> std::result::Result<Option<Self::To<W::E2, W::D2>>, W::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                TensorOptions::reset_with(|t| {
                    init_tensor(t, init_of::<P>(Role::Embedding, &[V, M]))
                }),
            ),
            |weight| UnitEmbedding {
                weight,
                marker: PhantomData,
            },
        )
    }
}

impl<N: Dim, const V: usize, const M: usize, E: Dtype, D, P: Param, T: Tape<E, D>>
    Module<Tensor<(N,), usize, D, T>> for UnitEmbedding<V, M, E, D, P>
where
    D: Backend<E> + Storage<usize>,
{
    type Output = Tensor<(N, Const<M>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, ids: Tensor<(N,), usize, D, T>) -> Result<Self::Output> {
        // An empty id tensor is refused by `embedding_scaled`; `max(1)` only keeps the scale
        // defined.
        let scale = embedding_grad_scale::<P>(V, ids.shape().0.size().max(1))?;
        ops::embedding::embedding_scaled(ids, &self.weight, scale)
    }
}

impl<B: Dim, S: Dim, const V: usize, const M: usize, E: Dtype, D, P: Param, T: Tape<E, D>>
    Module<Tensor<(B, S), usize, D, T>> for UnitEmbedding<V, M, E, D, P>
where
    D: Backend<E> + Storage<usize>,
{
    type Output = Tensor<(B, S, Const<M>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, ids: Tensor<(B, S), usize, D, T>) -> Result<Self::Output> {
        let (b, s) = *ids.shape();
        // dfdx cannot reshape integer tensors: rebuild the ids flat and move the tape over.
        let (ids, tape) = ids.split_tape();
        let flat = ids
            .device()
            .try_tensor_from_vec(ids.as_vec(), (b.size() * s.size(),))
            .dev()?
            .put_tape(tape);
        unflatten3(self.try_forward(flat)?, b, s)
    }
}

impl<const V: usize, const M: usize, E: Dtype, D: Storage<E>, P: Param> UmupModule
    for UnitEmbedding<V, M, E, D, P>
{
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        out.push(row::<P>(
            prefix,
            "weight",
            Role::Embedding,
            &[V, M],
            depth,
            None,
        )?);
        Ok(())
    }
}

/// RMSNorm over the last dim with a gain (`#[norm]`); the gain gradient is `B_tok^-½ ×` true
/// under u-μP. A norm without gain has no parameters: call [`crate::ops::rms_norm`] directly.
#[derive(Debug, Clone)]
pub struct UnitRmsNorm<const M: usize, E: Dtype, D: Storage<E>, P> {
    /// The gain, initialised to ones.
    pub weight: Tensor<Rank1<M>, E, D>,
    marker: PhantomData<P>,
}

/// LayerNorm over the last dim with gain and bias (`#[norm]`).
#[derive(Debug, Clone)]
pub struct UnitLayerNorm<const M: usize, E: Dtype, D: Storage<E>, P> {
    /// The gain, initialised to ones.
    pub weight: Tensor<Rank1<M>, E, D>,
    /// The bias, initialised to zeros.
    pub bias: Tensor<Rank1<M>, E, D>,
    marker: PhantomData<P>,
}

impl<const M: usize, E: Dtype, D: Device<E>, P: Param> TensorCollection<E, D>
    for UnitRmsNorm<M, E, D, P>
{
    type To<E2: Dtype, D2: Device<E2>> = UnitRmsNorm<M, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                TensorOptions::reset_to_ones(),
            ),
            |weight| UnitRmsNorm {
                weight,
                marker: PhantomData,
            },
        )
    }
}

impl<const M: usize, E: Dtype, D: Device<E>, P: Param> TensorCollection<E, D>
    for UnitLayerNorm<M, E, D, P>
{
    type To<E2: Dtype, D2: Device<E2>> = UnitLayerNorm<M, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_to_ones(),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(weight, bias)| UnitLayerNorm {
                weight,
                bias,
                marker: PhantomData,
            },
        )
    }
}

fn norm_gain_scale<P: Param, R: Dim, const M: usize>(rows: R) -> Result<f64> {
    match P::parametrization() {
        Parametrization::Umup => scales::norm_param_grad(M, rows.size() * M),
        _ => Ok(1.0),
    }
}

impl<Rw: Dim, const M: usize, E: Dtype, D: Backend<E>, P: Param, T: Tape<E, D> + Merge<T>>
    Module<Tensor<(Rw, Const<M>), E, D, T>> for UnitRmsNorm<M, E, D, P>
{
    type Output = Tensor<(Rw, Const<M>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, x: Tensor<(Rw, Const<M>), E, D, T>) -> Result<Self::Output> {
        let g = norm_gain_scale::<P, Rw, M>(x.shape().0)?;
        ops::norm::rms_norm_scaled(x, Some(&self.weight), NORM_EPS, g)
    }
}

impl<Rw: Dim, const M: usize, E: Dtype, D: Backend<E>, P: Param, T: Tape<E, D> + Merge<T>>
    Module<Tensor<(Rw, Const<M>), E, D, T>> for UnitLayerNorm<M, E, D, P>
{
    type Output = Tensor<(Rw, Const<M>), E, D, T>;
    type Error = Error;

    fn try_forward(&self, x: Tensor<(Rw, Const<M>), E, D, T>) -> Result<Self::Output> {
        let g = norm_gain_scale::<P, Rw, M>(x.shape().0)?;
        ops::norm::layer_norm_scaled(x, Some(&self.weight), Some(&self.bias), NORM_EPS, g)
    }
}

macro_rules! norm_rank3 {
    ($ty:ident) => {
        impl<B: Dim, S: Dim, const M: usize, E: Dtype, D: Backend<E>, P: Param, T>
            Module<Tensor<(B, S, Const<M>), E, D, T>> for $ty<M, E, D, P>
        where
            T: Tape<E, D> + Merge<T>,
        {
            type Output = Tensor<(B, S, Const<M>), E, D, T>;
            type Error = Error;
            fn try_forward(&self, x: Tensor<(B, S, Const<M>), E, D, T>) -> Result<Self::Output> {
                let (b, s, _) = *x.shape();
                unflatten3(self.try_forward(flatten3(x)?)?, b, s)
            }
        }
    };
}

norm_rank3!(UnitRmsNorm);
norm_rank3!(UnitLayerNorm);

impl<const M: usize, E: Dtype, D: Storage<E>, P: Param> UmupModule for UnitRmsNorm<M, E, D, P> {
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        out.push(row::<P>(prefix, "weight", Role::Norm, &[M], depth, None)?);
        Ok(())
    }
}

impl<const M: usize, E: Dtype, D: Storage<E>, P: Param> UmupModule for UnitLayerNorm<M, E, D, P> {
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        out.push(row::<P>(prefix, "weight", Role::Norm, &[M], depth, None)?);
        out.push(row::<P>(prefix, "bias", Role::Bias, &[M], depth, None)?);
        Ok(())
    }
}

/// A depth container of `N` blocks (`#[depth]`, the reference's `DepthSequential`): every
/// parameter inside has depth `N`, so its LR gets `1/√N` (spec §3.3). Paths are
/// `field.0.…`, `field.1.…`. Containers cannot be nested.
#[derive(Debug, Clone)]
pub struct Stack<T, const N: usize> {
    /// The blocks, `N` of them.
    pub blocks: Vec<T>,
}

impl<T, const N: usize> Deref for Stack<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.blocks
    }
}

impl<T, const N: usize> DerefMut for Stack<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.blocks
    }
}

impl<E: Dtype, D: Device<E>, T: TensorCollection<E, D>, const N: usize> TensorCollection<E, D>
    for Stack<T, N>
{
    type To<E2: Dtype, D2: Device<E2>> = Stack<T::To<E2, D2>, N>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        let names: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        visitor.visit_fields(
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    Self::module(name, move |s| &s.blocks[i], move |s| &mut s.blocks[i])
                })
                .collect::<Vec<_>>(),
            |blocks| Stack { blocks },
        )
    }
}

impl<T: UmupModule, const N: usize> UmupModule for Stack<T, N> {
    fn parametrization() -> Parametrization {
        T::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        if depth.is_some() {
            return Err(Error::BadParameter {
                path: prefix.to_string(),
                reason: "depth containers cannot be nested (a parameter has one depth)".into(),
            });
        }
        for i in 0..N {
            T::param_rows(&join_path(prefix, &i.to_string()), Some(N), out)?;
        }
        Ok(())
    }
}

/// The output scale of a convolution layer (`B_tok`-independent): u-μP's constrained
/// [`scales::conv1d`] output scale, or the baseline's multiplier.
fn conv_output_scale<C: ConvSpec, P: Param>(
    in_per_group: usize,
    out: usize,
    kernel: usize,
) -> Result<f64> {
    Ok(conv_layer_scales::<C, P>(1, in_per_group, out, kernel)?.output)
}

/// The scales `(output, grad_input, grad_weight)` of a convolution layer with spec `C` under `P`
/// for `tokens = T_out·B` output positions: u-μP's [`scales::conv1d`] with the reference's
/// scale powers `[½, ½, ½]` and the spec's constraint; for μP and SP one multiplier (the
/// parametrization's forward multiplier of a hidden weight, 1) for all three.
pub fn conv_layer_scales<C: ConvSpec, P: Param>(
    tokens: usize,
    in_per_group: usize,
    out: usize,
    kernel: usize,
) -> Result<LinearScales> {
    match P::parametrization() {
        Parametrization::Umup => scales::conv1d(
            in_per_group,
            out,
            kernel,
            C::STRIDE,
            C::GROUPS,
            tokens,
            C::CONSTRAINT,
            [0.5; 3],
        ),
        p => {
            let m = p.forward_multiplier(&ParamSpec::new(
                "",
                Role::Weight,
                &[out, in_per_group, kernel],
            ))?;
            Ok(LinearScales {
                output: m,
                grad_input: m,
                grad_weight: m,
            })
        }
    }
}

/// Checks the channel counts of a convolution layer against its groups: `IG·G = I`, `G | O`.
fn check_conv_channels<C: ConvSpec>(i: usize, o: usize, ig: usize) -> Result<()> {
    let g = C::GROUPS;
    if g == 0 || ig * g != i || !o.is_multiple_of(g) {
        return Err(Error::ShapeMismatch {
            op: "conv1d",
            detail: format!(
                "groups ({g}) must divide in_channels ({i}) and out_channels ({o}), and the weight's second dim ({ig}) must be in_channels / groups"
            ),
        });
    }
    Ok(())
}

fn conv_forward<
    C: ConvSpec,
    P: Param,
    B: Dim,
    L: Dim,
    const I: usize,
    const O: usize,
    const K: usize,
    const IG: usize,
    E,
    D,
    T,
>(
    x: Tensor<(B, Const<I>, L), E, D, T>,
    weight: &Tensor<Rank3<O, IG, K>, E, D>,
    bias: Option<&Tensor<Rank1<O>, E, D>>,
) -> Result<Tensor<(B, Const<O>, usize), E, D, T>>
where
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    check_conv_channels::<C>(I, O, IG)?;
    let geometry = C::geometry();
    let [b, _, len] = x.shape().concrete();
    // Shapes, groups and the input length are checked by `conv1d_scales`.
    ops::conv::conv1d_scales(
        b,
        I,
        len,
        weight,
        bias,
        ops::Conv1dOptions {
            geometry,
            ..Default::default()
        },
    )?;
    let t_out = geometry.output_len(len, K)?;
    let s = conv_layer_scales::<C, P>(b * t_out, IG, O, K)?;
    D::conv1d_kernel(x, weight.retaped(), bias.map(|b| b.retaped()), geometry, s)
}

/// [`conv_forward`] on an unbatched input `[C_in, T] → [C_out, T_out]`: a batch of one
/// (`B_tok = T_out`, as [`crate::ops::conv1d_unbatched`]).
fn conv_forward_unbatched<
    C: ConvSpec,
    P: Param,
    L: Dim,
    const I: usize,
    const O: usize,
    const K: usize,
    const IG: usize,
    E,
    D,
    T,
>(
    x: Tensor<(Const<I>, L), E, D, T>,
    weight: &Tensor<Rank3<O, IG, K>, E, D>,
    bias: Option<&Tensor<Rank1<O>, E, D>>,
) -> Result<Tensor<(Const<O>, usize), E, D, T>>
where
    E: Dtype,
    D: Backend<E>,
    T: Tape<E, D> + Merge<T>,
{
    let (i, len) = *x.shape();
    let x = x.try_reshape_like(&(Const::<1>, i, len)).dev()?;
    let y = conv_forward::<C, P, Const<1>, L, I, O, K, IG, E, D, T>(x, weight, bias)?;
    let (_, o, t) = *y.shape();
    y.try_reshape_like(&(o, t)).dev()
}

/// A 1-D convolution without bias (`#[hidden(..)] conv: Conv1d<I, O, K>`): weight
/// `W[O, IG, K]` (torch layout, `IG = I/groups`), N(0,1) under u-μP, forward
/// [`crate::ops::conv1d`] with the geometry and constraint of `C` ([`super::Conv`]) and the
/// reference's scale powers. Its fan-in is `IG·K` (spec §2.1: 3-D weights).
#[derive(Debug, Clone)]
pub struct UnitConv1d<
    const I: usize,
    const O: usize,
    const K: usize,
    const IG: usize,
    C,
    E: Dtype,
    D: Storage<E>,
    P,
> {
    /// `W[out_channels, in_channels / groups, kernel]`.
    pub weight: Tensor<Rank3<O, IG, K>, E, D>,
    marker: PhantomData<(C, P)>,
}

/// [`UnitConv1d`] with a bias `b[O]` (zeros; added before the output scale, as in the
/// reference).
#[derive(Debug, Clone)]
pub struct UnitConv1dBias<
    const I: usize,
    const O: usize,
    const K: usize,
    const IG: usize,
    C,
    E: Dtype,
    D: Storage<E>,
    P,
> {
    /// `W[out_channels, in_channels / groups, kernel]`.
    pub weight: Tensor<Rank3<O, IG, K>, E, D>,
    /// `b[out_channels]`, zero-initialised.
    pub bias: Tensor<Rank1<O>, E, D>,
    marker: PhantomData<(C, P)>,
}

impl<
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Device<E>,
        P: Param,
    > TensorCollection<E, D> for UnitConv1d<I, O, K, IG, C, E, D, P>
where
    StandardNormal: Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = UnitConv1d<I, O, K, IG, C, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                TensorOptions::reset_with(|t| {
                    init_tensor(t, init_of::<P>(Role::Weight, &[O, IG, K]))
                }),
            ),
            |weight| UnitConv1d {
                weight,
                marker: PhantomData,
            },
        )
    }
}

impl<
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Device<E>,
        P: Param,
    > TensorCollection<E, D> for UnitConv1dBias<I, O, K, IG, C, E, D, P>
where
    StandardNormal: Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = UnitConv1dBias<I, O, K, IG, C, E2, D2, P>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_with(|t| {
                        init_tensor(t, init_of::<P>(Role::Weight, &[O, IG, K]))
                    }),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_with(|t| init_tensor(t, init_of::<P>(Role::Bias, &[O]))),
                ),
            ),
            |(weight, bias)| UnitConv1dBias {
                weight,
                bias,
                marker: PhantomData,
            },
        )
    }
}

impl<
        B: Dim,
        L: Dim,
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T: Tape<E, D> + Merge<T>,
    > Module<Tensor<(B, Const<I>, L), E, D, T>> for UnitConv1d<I, O, K, IG, C, E, D, P>
{
    type Output = Tensor<(B, Const<O>, usize), E, D, T>;
    type Error = Error;

    /// `[B, C_in, T] → [B, C_out, T_out]` (spec §4.4).
    fn try_forward(&self, x: Tensor<(B, Const<I>, L), E, D, T>) -> Result<Self::Output> {
        conv_forward::<C, P, B, L, I, O, K, IG, E, D, T>(x, &self.weight, None)
    }
}

impl<
        L: Dim,
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T: Tape<E, D> + Merge<T>,
    > Module<Tensor<(Const<I>, L), E, D, T>> for UnitConv1d<I, O, K, IG, C, E, D, P>
{
    type Output = Tensor<(Const<O>, usize), E, D, T>;
    type Error = Error;

    /// Unbatched `[C_in, T] → [C_out, T_out]`: a batch of one (spec §4.4).
    fn try_forward(&self, x: Tensor<(Const<I>, L), E, D, T>) -> Result<Self::Output> {
        conv_forward_unbatched::<C, P, L, I, O, K, IG, E, D, T>(x, &self.weight, None)
    }
}

impl<
        B: Dim,
        L: Dim,
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T: Tape<E, D> + Merge<T>,
    > Module<Tensor<(B, Const<I>, L), E, D, T>> for UnitConv1dBias<I, O, K, IG, C, E, D, P>
{
    type Output = Tensor<(B, Const<O>, usize), E, D, T>;
    type Error = Error;

    /// `[B, C_in, T] → [B, C_out, T_out]` (spec §4.4).
    fn try_forward(&self, x: Tensor<(B, Const<I>, L), E, D, T>) -> Result<Self::Output> {
        conv_forward::<C, P, B, L, I, O, K, IG, E, D, T>(x, &self.weight, Some(&self.bias))
    }
}

impl<
        L: Dim,
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Backend<E>,
        P: Param,
        T: Tape<E, D> + Merge<T>,
    > Module<Tensor<(Const<I>, L), E, D, T>> for UnitConv1dBias<I, O, K, IG, C, E, D, P>
{
    type Output = Tensor<(Const<O>, usize), E, D, T>;
    type Error = Error;

    /// Unbatched `[C_in, T] → [C_out, T_out]`: a batch of one (spec §4.4).
    fn try_forward(&self, x: Tensor<(Const<I>, L), E, D, T>) -> Result<Self::Output> {
        conv_forward_unbatched::<C, P, L, I, O, K, IG, E, D, T>(x, &self.weight, Some(&self.bias))
    }
}

impl<
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Storage<E>,
        P: Param,
    > UmupModule for UnitConv1d<I, O, K, IG, C, E, D, P>
{
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        check_conv_channels::<C>(I, O, IG)?;
        let m = conv_output_scale::<C, P>(IG, O, K)?;
        out.push(row::<P>(
            prefix,
            "weight",
            Role::Weight,
            &[O, IG, K],
            depth,
            Some(m),
        )?);
        Ok(())
    }
}

impl<
        const I: usize,
        const O: usize,
        const K: usize,
        const IG: usize,
        C: ConvSpec,
        E: Dtype,
        D: Storage<E>,
        P: Param,
    > UmupModule for UnitConv1dBias<I, O, K, IG, C, E, D, P>
{
    fn parametrization() -> Parametrization {
        P::parametrization()
    }

    /// The weight row of [`UnitConv1d`], then the bias, with the same output scale.
    fn param_rows(prefix: &str, depth: Option<usize>, out: &mut Vec<ParamRow>) -> Result<()> {
        UnitConv1d::<I, O, K, IG, C, E, D, P>::param_rows(prefix, depth, out)?;
        let m = conv_output_scale::<C, P>(IG, O, K)?;
        out.push(row::<P>(prefix, "bias", Role::Bias, &[O], depth, Some(m))?);
        Ok(())
    }
}

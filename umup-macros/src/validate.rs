//! Step 2: check every field's role against its type and shapes, and the model-level rules.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{Attribute, Expr, GenericArgument, Ident, PathArguments, Type, TypePath, Visibility};

use crate::parse::{Errors, FieldIr, ModelIr, RoleAttr, RoleKind, CONV_ARGS};

/// The runtime layer a field becomes.
#[allow(clippy::enum_variant_names)] // `Layer::LayerNorm` names the layer type.
pub enum Layer {
    Linear {
        fan_in: GenericArgument,
        fan_out: GenericArgument,
        role: LinearKind,
        bias: bool,
        constraint: u8,
    },
    Conv1d {
        c_in: TokenStream,
        c_out: TokenStream,
        kernel: TokenStream,
        /// `C_IN / groups`: the weight's second dim.
        in_per_group: TokenStream,
        /// stride, padding, dilation, groups.
        geometry: [u64; 4],
        bias: bool,
        constraint: u8,
    },
    Embedding {
        vocab: GenericArgument,
        dim: GenericArgument,
    },
    RmsNorm {
        dim: GenericArgument,
    },
    LayerNorm {
        dim: GenericArgument,
    },
    Model {
        path: TypePath,
    },
}

/// The role of a `Linear` field, as the runtime's `LinearRole` marker types name it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LinearKind {
    /// `#[hidden]`: `nn::Hidden`.
    Hidden,
    /// `#[input]`: `nn::Input`.
    Input,
    /// `#[output]`: `nn::Readout`.
    Readout,
}

/// A checked field.
pub struct Field {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub layer: Layer,
    /// The stack length for `#[depth]` fields.
    pub depth: Option<TokenStream>,
}

/// A checked model.
pub struct Model {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub const_params: Vec<syn::ConstParam>,
    pub fields: Vec<Field>,
}

/// Constraint names as the runtime's `Constraint::code` numbers them.
const CONSTRAINTS: [&str; 8] = [
    "none",
    "gmean",
    "hmean",
    "amean",
    "to_output_scale",
    "to_grad_input_scale",
    "to_left_grad_scale",
    "to_right_grad_scale",
];

const LAYERS: [(&str, usize); 5] = [
    ("Linear", 2),
    ("Conv1d", 3),
    ("Embedding", 2),
    ("RmsNorm", 1),
    ("LayerNorm", 1),
];

/// Checks the IR. Returns `None` when any error was found.
pub fn validate(ir: ModelIr, errors: &mut Errors) -> Option<Model> {
    let before = errors.count();
    let const_names: Vec<String> = ir
        .const_params
        .iter()
        .map(|c| c.ident.to_string())
        .collect();
    let mut fields = Vec::new();
    let mut outputs = 0usize;
    let mut embeddings = Vec::new();
    for f in &ir.fields {
        let Some(role) = &f.role else {
            if f.bad_attr {
                continue;
            }
            errors.at(
                &f.ident,
                format_args!(
                    "field `{}` has no u-μP role: add one of `#[embedding]`, `#[input]`, `#[hidden]`, `#[output]`, `#[norm]` or `#[model]` (there is no silent fallback to standard parametrization)",
                    f.ident
                ),
            );
            continue;
        };
        if role.kind == RoleKind::Embedding {
            embeddings.push(f.ident.to_string());
        }
        if role.kind == RoleKind::Output {
            outputs += 1;
            if outputs > 1 {
                errors.at(
                    role.attr.path(),
                    "duplicate `#[output]`: a model has exactly one readout; use `#[hidden]` for other linear layers",
                );
            }
        }
        if let Some(field) = check_field(f, role, &const_names, errors) {
            fields.push(field);
        }
    }
    if !embeddings.is_empty() && outputs == 0 {
        errors.at(
            &ir.ident,
            format_args!(
                "model `{}` has an `#[embedding]` but no `#[output]` readout; a token-to-logits model needs exactly one `#[output] readout: Linear<D, V>`",
                ir.ident
            ),
        );
    }
    for f in &ir.fields {
        if let Some(tie) = f.role.as_ref().and_then(|r| r.tie.as_ref()) {
            check_tie(tie, &ir, errors);
        }
    }
    if errors.count() > before {
        return None;
    }
    Some(Model {
        attrs: ir.attrs,
        vis: ir.vis,
        ident: ir.ident,
        const_params: ir.const_params,
        fields,
    })
}

fn check_tie(tie: &syn::LitStr, ir: &ModelIr, errors: &mut Errors) {
    let name = tie.value();
    match ir.fields.iter().find(|f| f.ident == name) {
        None => errors.at(
            tie,
            format_args!("`tie = \"{name}\"`: this model has no field named `{name}`"),
        ),
        Some(f) if f.role.as_ref().map(|r| r.kind) != Some(RoleKind::Embedding) => errors.at(
            tie,
            format_args!("`tie = \"{name}\"`: field `{name}` is not an `#[embedding]`"),
        ),
        Some(_) => errors.at(
            tie,
            "tied embedding/readout weights are not supported: under u-μP the embedding (N(0,1), LR η/√d, gradient √(V/B)) and the readout (forward 1/fan_in, LR η) follow different rules for the same tensor; remove `tie` to keep two tensors",
        ),
    }
}

fn check_field(
    f: &FieldIr,
    role: &RoleAttr,
    const_names: &[String],
    errors: &mut Errors,
) -> Option<Field> {
    let (elem, depth) = match (&f.depth, stack_of(&f.ty)) {
        (Some(_), Some((elem, len))) => (elem, Some(len)),
        (Some(d), None) => {
            errors.at(
                d,
                "`#[depth]` needs a stack: write the field as `[Block; N]`, `Repeated<Block, N>` or `Stack<Block, N>`",
            );
            return None;
        }
        (None, Some(_)) => {
            errors.at(
                &f.ty,
                "a stack of blocks needs `#[depth]` next to its role, so that its parameters get the depth LR rule (×1/√N)",
            );
            return None;
        }
        (None, None) => (&f.ty, None),
    };
    let layer = check_layer(elem, role, const_names, errors)?;
    Some(Field {
        attrs: f.attrs.clone(),
        vis: f.vis.clone(),
        ident: f.ident.clone(),
        layer,
        depth,
    })
}

/// `[T; N]`, `Repeated<T, N>` or `Stack<T, N>` → `(T, N)`.
fn stack_of(ty: &Type) -> Option<(&Type, TokenStream)> {
    match ty {
        Type::Array(a) => Some((&a.elem, a.len.to_token_stream())),
        Type::Path(p) if p.qself.is_none() => {
            let seg = p.path.segments.last()?;
            if seg.ident != "Repeated" && seg.ident != "Stack" {
                return None;
            }
            let PathArguments::AngleBracketed(args) = &seg.arguments else {
                return None;
            };
            match args.args.iter().collect::<Vec<_>>()[..] {
                [GenericArgument::Type(t), len] => Some((t, len.to_token_stream())),
                _ => None,
            }
        }
        _ => None,
    }
}

fn check_layer(
    ty: &Type,
    role: &RoleAttr,
    const_names: &[String],
    errors: &mut Errors,
) -> Option<Layer> {
    let path = match ty {
        Type::Path(p) if p.qself.is_none() => p,
        Type::Paren(p) => return check_layer(&p.elem, role, const_names, errors),
        other => {
            errors.at(
                other,
                "unsupported field type: a field is a layer (`Linear<IN, OUT>`, `Conv1d<C_IN, C_OUT, K>`, `Embedding<V, D>`, `RmsNorm<D>`, `LayerNorm<D>`), a nested `#[umup_model]` struct, or a stack of them",
            );
            return None;
        }
    };
    let seg = path.path.segments.last()?;
    let name = seg.ident.to_string();
    let layer = LAYERS.iter().find(|(n, _)| *n == name);
    let kind = role.kind;
    let wanted = match kind {
        RoleKind::Embedding => "a field of type `Embedding<V, D>`",
        RoleKind::Hidden => "a field of type `Linear<IN, OUT>` or `Conv1d<C_IN, C_OUT, K>`",
        RoleKind::Input => "a field of type `Linear<IN, OUT>` (a projection of float features: `IN` fixed, `OUT` the width)",
        RoleKind::Output => "a field of type `Linear<IN, OUT>`",
        RoleKind::Norm => "a field of type `RmsNorm<D>` or `LayerNorm<D>`",
        RoleKind::Model => "a field whose type is another `#[umup_model]` struct",
    };
    let compatible = match (kind, name.as_str()) {
        (RoleKind::Embedding, n) => n == "Embedding",
        (RoleKind::Hidden, n) => n == "Linear" || n == "Conv1d",
        (RoleKind::Input, n) => n == "Linear",
        (RoleKind::Output, n) => n == "Linear",
        (RoleKind::Norm, n) => n == "RmsNorm" || n == "LayerNorm",
        (RoleKind::Model, _) => layer.is_none(),
    };
    if !compatible {
        let suggestion = match name.as_str() {
            "Linear" => "; a `Linear` takes `#[hidden]`, `#[input]` or `#[output]`",
            "Conv1d" if kind == RoleKind::Input => {
                "; a `Conv1d` takes `#[hidden]` (`#[input]` is for a `Linear` projection of float features)"
            }
            "Conv1d" => "; a `Conv1d` takes `#[hidden]` (a convolution is never the readout)",
            "Embedding" if kind == RoleKind::Input => {
                "; an `Embedding` (a table of token ids) takes `#[embedding]`, which has the same LR rule"
            }
            "Embedding" => "; an `Embedding` takes `#[embedding]`",
            "RmsNorm" | "LayerNorm" => "; a norm takes `#[norm]`",
            _ => "; the macro reads the field's type as written and does not see through a type alias of a layer (write the layer type here); a nested `#[umup_model]` struct takes `#[model]`",
        };
        errors.at(
            &role.attr,
            format_args!(
                "`#[{}]` needs {wanted}, found `{}`{suggestion}",
                kind.name(),
                seg.ident
            ),
        );
        return None;
    }
    let Some(&(_, arity)) = layer else {
        return model_sizes_only(seg, errors).then(|| Layer::Model { path: path.clone() });
    };
    let args: Vec<&GenericArgument> = match &seg.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        _ => Vec::new(),
    };
    if args.len() != arity {
        let form = match name.as_str() {
            "Linear" => "Linear<IN, OUT>",
            "Conv1d" => "Conv1d<C_IN, C_OUT, KERNEL>",
            "Embedding" => "Embedding<VOCAB, DIM>",
            "RmsNorm" => "RmsNorm<DIM>",
            _ => "LayerNorm<DIM>",
        };
        errors.at(
            seg,
            format_args!(
                "`{name}` takes {arity} dimension{}: write `{form}` with integer literals or const parameters",
                if arity == 1 { "" } else { "s" }
            ),
        );
        return None;
    }
    let mut ok = true;
    for a in &args {
        ok &= check_dim(a, const_names, errors);
    }
    if !ok {
        return None;
    }
    let arg = |i: usize| args[i].clone();
    // On `#[output]` the parser has already reported the arguments.
    if name != "Conv1d" && kind == RoleKind::Hidden {
        if let Some(lit) = role.conv.iter().flatten().next() {
            errors.at(
                lit,
                "`stride`, `padding`, `dilation` and `groups` apply to a `Conv1d<C_IN, C_OUT, K>` field only",
            );
            return None;
        }
    }
    Some(match name.as_str() {
        "Conv1d" => check_conv(role, arg(0), arg(1), arg(2), errors)?,
        "Linear" => Layer::Linear {
            fan_in: arg(0),
            fan_out: arg(1),
            role: match kind {
                RoleKind::Output => LinearKind::Readout,
                RoleKind::Input => LinearKind::Input,
                _ => LinearKind::Hidden,
            },
            bias: role.bias,
            constraint: constraint_code(role, errors)?,
        },
        "Embedding" => Layer::Embedding {
            vocab: arg(0),
            dim: arg(1),
        },
        "RmsNorm" => Layer::RmsNorm { dim: arg(0) },
        _ => Layer::LayerNorm { dim: arg(0) },
    })
}

/// The geometry of a `Conv1d` field: stride, dilation and groups at least 1, and groups dividing
/// both channel counts (which must then be integer literals, so the per-group width is known).
fn check_conv(
    role: &RoleAttr,
    c_in: GenericArgument,
    c_out: GenericArgument,
    kernel: GenericArgument,
    errors: &mut Errors,
) -> Option<Layer> {
    let before = errors.count();
    let mut geometry = [0u64; 4];
    for (i, (name, default)) in CONV_ARGS.iter().enumerate() {
        geometry[i] = match &role.conv[i] {
            None => *default,
            Some(lit) => match lit.base10_parse::<u64>() {
                Ok(0) if *name != "padding" => {
                    errors.at(
                        lit,
                        format_args!(
                            "`{name} = 0` is not a convolution; `{name}` must be at least 1"
                        ),
                    );
                    0
                }
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    0
                }
            },
        };
    }
    let groups = geometry[3];
    let mut in_per_group = quote!(#c_in);
    if groups > 1 {
        let span = role.conv[3].as_ref();
        let mut not_literal = Vec::new();
        for (what, arg) in [("C_IN", &c_in), ("C_OUT", &c_out)] {
            match literal(arg) {
                Some(n) if !n.is_multiple_of(u128::from(groups)) => errors.at(
                    arg,
                    format_args!("`groups = {groups}` must divide {what} ({n}): each group takes C_IN/groups inputs to C_OUT/groups outputs"),
                ),
                Some(n) => {
                    if what == "C_IN" {
                        let ig = proc_macro2::Literal::u128_unsuffixed(n / u128::from(groups));
                        in_per_group = quote!(#ig);
                    }
                }
                None => not_literal.push(what),
            }
        }
        if !not_literal.is_empty() {
            errors.at(
                span,
                format_args!(
                    "with `groups = {groups}`, write {} as integer literal{} so that the macro can check that groups divides the channel counts (the weight's second dim, C_IN/groups, must be known at compile time)",
                    not_literal.join(" and "),
                    if not_literal.len() > 1 { "s" } else { "" }
                ),
            );
        }
    }
    if errors.count() > before {
        return None;
    }
    Some(Layer::Conv1d {
        c_in: quote!(#c_in),
        c_out: quote!(#c_out),
        kernel: quote!(#kernel),
        in_per_group,
        geometry,
        bias: role.bias,
        constraint: constraint_code(role, errors)?,
    })
}

/// The value of an integer-literal dimension.
fn literal(arg: &GenericArgument) -> Option<u128> {
    match arg {
        GenericArgument::Const(Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        })) => i.base10_parse().ok(),
        _ => None,
    }
}

fn constraint_code(role: &RoleAttr, errors: &mut Errors) -> Option<u8> {
    let default = if role.kind == RoleKind::Output {
        "none"
    } else {
        "to_output_scale"
    };
    let name = role
        .constraint
        .as_ref()
        .map_or(default.to_string(), |l| l.value());
    let name = if name.is_empty() {
        "none".to_string()
    } else {
        name
    };
    match CONSTRAINTS.iter().position(|c| *c == name) {
        Some(i) if i < 6 => u8::try_from(i).ok(),
        Some(_) => {
            errors.at(
                &role.constraint,
                format_args!(
                    "`{name}` constrains three-scale ops (matmul); a linear or convolution layer has two scales: use none, gmean, hmean, amean, to_output_scale or to_grad_input_scale"
                ),
            );
            None
        }
        None => {
            errors.at(
                &role.constraint,
                format_args!(
                    "unknown constraint `{name}`; expected one of: none, gmean, hmean, amean, to_output_scale, to_grad_input_scale"
                ),
            );
            None
        }
    }
}

/// A dimension: a nonzero integer literal, a const parameter or const item, or a braced
/// expression that does not use the struct's const parameters.
fn check_dim(arg: &GenericArgument, const_names: &[String], errors: &mut Errors) -> bool {
    match arg {
        GenericArgument::Const(Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        })) => match i.base10_parse::<u128>() {
            Ok(0) => {
                errors.at(i, "a dimension of 0 gives a layer without parameters; dimensions must be at least 1");
                false
            }
            Ok(_) => true,
            Err(e) => {
                errors.push(e);
                false
            }
        },
        GenericArgument::Const(Expr::Block(b)) => {
            let text = quote!(#b).to_string();
            let uses: Vec<&String> = const_names
                .iter()
                .filter(|n| {
                    text.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|w| w == n.as_str())
                })
                .collect();
            if let Some(n) = uses.first() {
                errors.at(
                    b,
                    format_args!(
                        "a dimension computed from the const parameter `{n}` needs nightly Rust (generic_const_exprs); add a const parameter for it (e.g. `const F: usize`) and pass the value when you instantiate the model"
                    ),
                );
                false
            } else {
                true
            }
        }
        GenericArgument::Type(Type::Path(p))
            if p.qself.is_none() && p.path.get_ident().is_some() =>
        {
            true
        }
        GenericArgument::Const(Expr::Path(p)) if p.path.get_ident().is_some() => true,
        other => {
            errors.at(
                other,
                "a dimension must be an integer literal, a const parameter (`D`) or a const item",
            );
            false
        }
    }
}

/// Type names a `#[model]` field must not pass: the nested model always takes the outer model's
/// dtype, device and parametrization, so one written here would be silently replaced.
const OUTER_ONLY: [(&str, &str); 12] = [
    ("f16", "dtype"),
    ("bf16", "dtype"),
    ("f32", "dtype"),
    ("f64", "dtype"),
    ("AMP", "dtype"),
    ("Cpu", "device"),
    ("Cuda", "device"),
    ("AutoDevice", "device"),
    ("Umup", "parametrization"),
    ("Mup", "parametrization"),
    ("Sp", "parametrization"),
    ("Param", "parametrization"),
];

/// Errors (at the argument) when a `#[model]` field's type passes a dtype, device or
/// parametrization, e.g. `Block<16, f64>`: the generated field is `Block<16, E, Dev, P>` with the
/// outer model's. Returns whether the type passed none.
fn model_sizes_only(seg: &syn::PathSegment, errors: &mut Errors) -> bool {
    let PathArguments::AngleBracketed(a) = &seg.arguments else {
        return true;
    };
    let outer_only = |arg: &GenericArgument| -> Option<(String, &'static str)> {
        let GenericArgument::Type(syn::Type::Path(t)) = arg else {
            return None;
        };
        let name = t.path.segments.last()?.ident.to_string();
        let (_, what) = OUTER_ONLY.iter().find(|(n, _)| *n == name)?;
        Some((name, what))
    };
    let sizes: Vec<String> = a
        .args
        .iter()
        .filter(|arg| outer_only(arg).is_none())
        .map(|arg| quote::ToTokens::to_token_stream(arg).to_string())
        .collect();
    let fixed = if sizes.is_empty() {
        seg.ident.to_string()
    } else {
        format!("{}<{}>", seg.ident, sizes.join(", "))
    };
    let mut ok = true;
    for arg in &a.args {
        if let Some((name, what)) = outer_only(arg) {
            errors.at(
                arg,
                format_args!(
                    "a `#[model]` field takes the outer model's {what}, so `{name}` here would be \
                     replaced by it: write `{fixed}` and choose the {what} on the outer model"
                ),
            );
            ok = false;
        }
    }
    ok
}

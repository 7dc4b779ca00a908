//! Step 1: read the annotated struct and its field attributes into the IR.
//!
//! Nothing here panics on user input: every problem is pushed to [`Errors`] with the span of the
//! offending tokens, and parsing goes on so that all problems are reported together.

use proc_macro2::TokenStream;
use syn::{Attribute, Fields, GenericParam, Ident, Item, LitStr, Type, Visibility};

/// Accumulates spanned errors.
#[derive(Default)]
pub struct Errors {
    all: Option<syn::Error>,
    count: usize,
}

impl Errors {
    /// How many errors were recorded.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds an error at the span of `tokens`.
    pub fn at<T: quote::ToTokens>(&mut self, tokens: T, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    /// Adds an error.
    pub fn push(&mut self, e: syn::Error) {
        self.count += 1;
        match &mut self.all {
            Some(all) => all.combine(e),
            None => self.all = Some(e),
        }
    }

    /// The combined error, if any.
    pub fn finish(self) -> Option<syn::Error> {
        self.all
    }
}

/// The role attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Embedding,
    Hidden,
    Input,
    Output,
    Norm,
    Model,
}

impl RoleKind {
    pub const ALL: [(&'static str, RoleKind); 6] = [
        ("embedding", RoleKind::Embedding),
        ("hidden", RoleKind::Hidden),
        ("input", RoleKind::Input),
        ("output", RoleKind::Output),
        ("norm", RoleKind::Norm),
        ("model", RoleKind::Model),
    ];

    pub fn name(self) -> &'static str {
        match self {
            RoleKind::Embedding => "embedding",
            RoleKind::Hidden => "hidden",
            RoleKind::Input => "input",
            RoleKind::Output => "output",
            RoleKind::Norm => "norm",
            RoleKind::Model => "model",
        }
    }
}

/// A role attribute and its arguments.
pub struct RoleAttr {
    pub kind: RoleKind,
    /// The attribute, for spans.
    pub attr: Attribute,
    /// `bias` was given.
    pub bias: bool,
    /// `constraint = "..."`.
    pub constraint: Option<LitStr>,
    /// `tie = "..."`.
    pub tie: Option<LitStr>,
    /// The convolution arguments `stride`, `padding`, `dilation`, `groups` (integer literals),
    /// in the order of [`CONV_ARGS`].
    pub conv: [Option<syn::LitInt>; 4],
}

/// The convolution arguments of `#[hidden(..)]` on a `Conv1d` field, with their defaults.
pub const CONV_ARGS: [(&str, u64); 4] = [
    ("stride", 1),
    ("padding", 0),
    ("dilation", 1),
    ("groups", 1),
];

/// One field.
pub struct FieldIr {
    /// Attributes that are not ours (doc comments, lints), passed through.
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub ty: Type,
    pub role: Option<RoleAttr>,
    /// The `#[depth]` attribute.
    pub depth: Option<Attribute>,
    /// An unknown attribute was reported on this field (so a missing role is not reported too).
    pub bad_attr: bool,
}

/// The struct.
pub struct ModelIr {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    /// Names of the const generic parameters, in order, with their declarations.
    pub const_params: Vec<syn::ConstParam>,
    pub fields: Vec<FieldIr>,
}

/// Attributes that may sit on a field next to its role and are passed through unchanged.
const PASSTHROUGH: [&str; 6] = ["doc", "allow", "warn", "deny", "forbid", "expect"];

/// The names the macro adds as type parameters.
pub const RESERVED_PARAMS: [&str; 3] = ["E", "Dev", "P"];

/// Parses the attribute arguments and the item. Returns the IR when the item is a struct with
/// named fields (possibly with errors recorded), or `None` when nothing sensible can be built.
pub fn parse(args: TokenStream, input: TokenStream, errors: &mut Errors) -> Option<ModelIr> {
    if !args.is_empty() {
        errors.at(
            &args,
            "`#[umup_model]` takes no arguments; write `#[umup_model]` and put roles on the fields",
        );
    }
    let item: Item = match syn::parse2(input) {
        Ok(item) => item,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let s = match item {
        Item::Struct(s) => s,
        Item::Enum(e) => {
            errors.at(
                e.enum_token,
                "`#[umup_model]` applies to a struct with named fields, not an enum",
            );
            return None;
        }
        Item::Union(u) => {
            errors.at(
                u.union_token,
                "`#[umup_model]` applies to a struct with named fields, not a union",
            );
            return None;
        }
        other => {
            errors.at(
                &other,
                "`#[umup_model]` applies to a struct with named fields",
            );
            return None;
        }
    };

    for attr in s.attrs.iter().filter(|a| a.path().is_ident("derive")) {
        derive_attr(attr, errors);
    }

    let mut const_params = Vec::new();
    for p in &s.generics.params {
        match p {
            GenericParam::Const(c) => {
                if RESERVED_PARAMS.contains(&c.ident.to_string().as_str()) {
                    errors.at(
                        &c.ident,
                        format_args!(
                            "rename the const parameter `{}`: `#[umup_model]` adds the type parameters `E` (dtype), `Dev` (device) and `P` (parametrization)",
                            c.ident
                        ),
                    );
                }
                const_params.push(c.clone());
            }
            GenericParam::Type(t) => errors.at(
                t,
                "type parameters are not supported: `#[umup_model]` adds `E` (dtype), `Dev` (device) and `P` (parametrization) itself; use const parameters (`const D: usize`) for widths",
            ),
            GenericParam::Lifetime(l) => errors.at(
                l,
                "lifetime parameters are not supported: a model owns its tensors",
            ),
        }
    }
    if let Some(w) = &s.generics.where_clause {
        errors.at(
            w,
            "where clauses are not supported on a `#[umup_model]` struct; the macro writes the bounds",
        );
    }

    let named = match s.fields {
        Fields::Named(n) => n,
        Fields::Unnamed(u) => {
            errors.at(
                &u,
                "`#[umup_model]` needs named fields (the names become tensor paths); write `struct M { name: Linear<IN, OUT>, .. }`",
            );
            return None;
        }
        Fields::Unit => {
            errors.at(
                &s.ident,
                "a model without fields has no parameters; add fields with roles, e.g. `#[hidden] fc: Linear<IN, OUT>`",
            );
            return None;
        }
    };
    if named.named.is_empty() {
        errors.at(
            &s.ident,
            "a model without fields has no parameters; add fields with roles, e.g. `#[hidden] fc: Linear<IN, OUT>`",
        );
    }

    let fields = named
        .named
        .into_iter()
        .filter_map(|f| {
            let ident = f.ident?;
            let mut field = FieldIr {
                attrs: Vec::new(),
                vis: f.vis,
                ident,
                ty: f.ty,
                role: None,
                depth: None,
                bad_attr: false,
            };
            for attr in f.attrs {
                field_attr(attr, &mut field, errors);
            }
            Some(field)
        })
        .collect();

    Some(ModelIr {
        attrs: s.attrs,
        vis: s.vis,
        ident: s.ident,
        const_params,
        fields,
    })
}

/// `#[derive(..)]` on the struct: `Clone` and `Debug` are derived by the macro, and nothing else
/// can be derived for a struct of dfdx layers.
fn derive_attr(attr: &Attribute, errors: &mut Errors) {
    let result = attr.parse_nested_meta(|meta| {
        let name = meta
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if name == "Clone" || name == "Debug" {
            errors.at(
                &meta.path,
                format_args!(
                    "remove `{name}` from this `#[derive]`: `#[umup_model]` derives `Clone` and `Debug` itself"
                ),
            );
        } else {
            errors.at(
                &meta.path,
                format_args!(
                    "`#[derive({name})]` is not supported on a `#[umup_model]` struct: its fields become dfdx layers, which implement `Clone` and `Debug` (derived by the macro) but not `{name}`; build a model with `M::build(&dev)`"
                ),
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        errors.push(e);
    }
}

fn field_attr(attr: Attribute, field: &mut FieldIr, errors: &mut Errors) {
    let Some(name) = attr.path().get_ident().map(Ident::to_string) else {
        // A path attribute (`serde::rename`, ...) belongs to another macro.
        field.attrs.push(attr);
        return;
    };
    if PASSTHROUGH.contains(&name.as_str()) {
        field.attrs.push(attr);
        return;
    }
    if name == "cfg" || name == "cfg_attr" {
        field.bad_attr = true;
        errors.at(
            &attr,
            format_args!(
                "`#[{name}]` on a field of a `#[umup_model]` struct is not supported: the generated visitor and parameter table name every field; put the `#[{name}]` on the whole struct (e.g. two versions of it) instead"
            ),
        );
        return;
    }
    if name == "depth" {
        if !matches!(attr.meta, syn::Meta::Path(_)) {
            errors.at(
                &attr,
                "`#[depth]` takes no arguments: the depth is the length of the stack",
            );
        }
        if field.depth.is_some() {
            errors.at(&attr, "duplicate `#[depth]` on one field");
        } else {
            field.depth = Some(attr);
        }
        return;
    }
    let Some(kind) = RoleKind::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
    else {
        let hint = closest_role(&name)
            .map(|r| format!("; did you mean `#[{r}]`"))
            .unwrap_or_default();
        field.bad_attr = true;
        errors.at(
            attr.path(),
            format_args!(
                "unknown field attribute `#[{name}]`: a field's role is one of `#[embedding]`, `#[input]`, `#[hidden]`, `#[output]`, `#[norm]`, `#[model]` (plus `#[depth]` on a stack){hint}"
            ),
        );
        return;
    };
    if let Some(prev) = &field.role {
        errors.at(
            attr.path(),
            format_args!(
                "field `{}` has two roles, `#[{}]` and `#[{}]`; a parameter has exactly one role",
                field.ident,
                prev.kind.name(),
                kind.name()
            ),
        );
        return;
    }
    let mut role = RoleAttr {
        kind,
        attr: attr.clone(),
        bias: false,
        constraint: None,
        tie: None,
        conv: [None, None, None, None],
    };
    if let syn::Meta::List(list) = &attr.meta {
        if !matches!(kind, RoleKind::Hidden | RoleKind::Input | RoleKind::Output) {
            errors.at(
                list,
                format_args!(
                    "`#[{}]` takes no arguments (only `#[hidden(..)]`, `#[input(..)]` and `#[output(..)]` do)",
                    kind.name()
                ),
            );
        } else {
            role_args(&attr, &mut role, errors);
        }
    } else if let syn::Meta::NameValue(nv) = &attr.meta {
        errors.at(
            nv,
            format_args!(
                "write `#[{0}]` or `#[{0}(bias, constraint = \"none\")]`, not `#[{0} = ..]`",
                kind.name()
            ),
        );
    }
    field.role = Some(role);
}

fn role_args(attr: &Attribute, role: &mut RoleAttr, errors: &mut Errors) {
    let kind = role.kind;
    let result = attr.parse_nested_meta(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        match key.as_str() {
            "bias" => {
                if role.bias {
                    errors.at(&meta.path, "duplicate `bias`");
                }
                if meta.input.peek(syn::Token![=]) {
                    errors.at(&meta.path, "`bias` takes no value: write `bias` to add a bias, leave it out for none");
                    let _ = meta.value()?.parse::<syn::Expr>()?;
                }
                role.bias = true;
            }
            "constraint" | "tie" => {
                let lit = match meta.value() {
                    Ok(v) => match v.parse::<syn::Expr>()? {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(s),
                            ..
                        }) => Some(s),
                        other => {
                            errors.at(
                                &other,
                                format_args!("`{key}` takes a string, e.g. `{key} = \"{}\"`", if key == "tie" { "embed" } else { "none" }),
                            );
                            None
                        }
                    },
                    Err(_) => {
                        errors.at(
                            &meta.path,
                            format_args!("`{key}` needs a value, e.g. `{key} = \"{}\"`", if key == "tie" { "embed" } else { "none" }),
                        );
                        None
                    }
                };
                let slot = if key == "tie" {
                    if kind != RoleKind::Output {
                        errors.at(&meta.path, "`tie` applies to the `#[output]` readout only");
                    }
                    &mut role.tie
                } else {
                    &mut role.constraint
                };
                if slot.is_some() {
                    errors.at(&meta.path, format_args!("duplicate `{key}`"));
                }
                if lit.is_some() {
                    *slot = lit;
                }
            }
            k if CONV_ARGS.iter().any(|(n, _)| *n == k) => {
                let i = CONV_ARGS.iter().position(|(n, _)| *n == k).unwrap_or(0);
                if kind != RoleKind::Hidden {
                    errors.at(
                        &meta.path,
                        format_args!("`{key}` applies to a `#[hidden]` `Conv1d<C_IN, C_OUT, K>` field only"),
                    );
                }
                let lit = match meta.value() {
                    Ok(v) => match v.parse::<syn::Expr>()? {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Int(i),
                            ..
                        }) => Some(i),
                        other => {
                            errors.at(
                                &other,
                                format_args!("`{key}` takes an integer literal, e.g. `{key} = 2`"),
                            );
                            None
                        }
                    },
                    Err(_) => {
                        errors.at(
                            &meta.path,
                            format_args!("`{key}` needs a value, e.g. `{key} = 2`"),
                        );
                        None
                    }
                };
                if role.conv[i].is_some() {
                    errors.at(&meta.path, format_args!("duplicate `{key}`"));
                }
                if lit.is_some() {
                    role.conv[i] = lit;
                }
            }
            _ => {
                errors.at(
                    &meta.path,
                    format_args!(
                        "unknown argument `{}` of `#[{}]`; expected `bias`, `constraint = \"...\"`{}",
                        quote::ToTokens::to_token_stream(&meta.path),
                        kind.name(),
                        match kind {
                            RoleKind::Output => " or `tie = \"...\"`",
                            RoleKind::Input => "",
                            _ => " (or, on a `Conv1d` field, `stride`, `padding`, `dilation`, `groups`)",
                        }
                    ),
                );
                if meta.input.peek(syn::Token![=]) {
                    let _ = meta.value()?.parse::<syn::Expr>()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _content;
                    syn::parenthesized!(_content in meta.input);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        errors.push(e);
    }
}

/// The role name within edit distance 2 of `name`, if any.
fn closest_role(name: &str) -> Option<&'static str> {
    RoleKind::ALL
        .iter()
        .map(|(n, _)| (*n, edit_distance(name, n)))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(n, _)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

//! `family!`: one `#[umup_model]` architecture instantiated at a list of widths and depths.
//!
//! Parse → validate → expand, as `#[umup_model]`: the input is read into [`FamilyInput`], every
//! problem becomes a spanned error (all of them reported together), and the expansion names
//! runtime items only through `::umup::__private::family`.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{bracketed, parenthesized, Attribute, LitInt, Token, Visibility};

/// `$(#[attr])* $vis struct Name = Template for (W, L) in [(w, l), ...];` or
/// `... for W in [w, ...], L in [l, ...];`.
pub struct FamilyInput {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    template: TokenStream,
    template_span: Span,
    width: Ident,
    depth: Ident,
    sizes: Vec<(LitInt, LitInt)>,
    list_span: Span,
}

fn int_list(input: ParseStream) -> syn::Result<Vec<LitInt>> {
    let content;
    bracketed!(content in input);
    Ok(Punctuated::<LitInt, Token![,]>::parse_terminated(&content)?
        .into_iter()
        .collect())
}

impl Parse for FamilyInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        // The template: every token up to `for` (it is not valid Rust until W and L are
        // replaced, e.g. `{4 * W}`).
        let mut template = TokenStream::new();
        let template_span = input.span();
        while !input.is_empty() && !input.peek(Token![for]) {
            let tt: TokenTree = input.parse()?;
            template.extend([tt]);
        }
        if template.is_empty() {
            return Err(input.error(
                "expected the model type, e.g. `= MyModel<W, {4 * W}, L> for W in [64, 128], L in [2, 4];`",
            ));
        }
        input.parse::<Token![for]>()?;
        let list_span = input.span();
        let (width, depth, sizes) = if input.peek(syn::token::Paren) {
            let names;
            parenthesized!(names in input);
            let w: Ident = names.parse()?;
            names.parse::<Token![,]>()?;
            let l: Ident = names.parse()?;
            input.parse::<Token![in]>()?;
            let content;
            bracketed!(content in input);
            let mut sizes = Vec::new();
            while !content.is_empty() {
                let pair;
                parenthesized!(pair in content);
                let a: LitInt = pair.parse()?;
                pair.parse::<Token![,]>()?;
                let b: LitInt = pair.parse()?;
                sizes.push((a, b));
                if !content.is_empty() {
                    content.parse::<Token![,]>()?;
                }
            }
            (w, l, sizes)
        } else {
            let w: Ident = input.parse()?;
            input.parse::<Token![in]>()?;
            let widths = int_list(input)?;
            input.parse::<Token![,]>()?;
            let l: Ident = input.parse()?;
            input.parse::<Token![in]>()?;
            let depths = int_list(input)?;
            let sizes = widths
                .iter()
                .flat_map(|a| depths.iter().map(move |b| (a.clone(), b.clone())))
                .collect();
            (w, l, sizes)
        };
        if !input.is_empty() {
            input.parse::<Token![;]>()?;
        }
        if !input.is_empty() {
            return Err(input.error("one family per `family!`"));
        }
        Ok(FamilyInput {
            attrs,
            vis,
            name,
            template,
            template_span,
            width,
            depth,
            sizes,
            list_span,
        })
    }
}

/// Replaces every identifier `from` in `ts` (inside groups too) by `to`, with `to` at the
/// replaced identifier's span.
fn substitute(ts: TokenStream, from: &Ident, to: &LitInt) -> TokenStream {
    ts.into_iter()
        .map(|tt| match tt {
            TokenTree::Ident(i) if i == *from => {
                let mut lit =
                    proc_macro2::Literal::usize_unsuffixed(to.base10_parse().unwrap_or(0));
                lit.set_span(i.span());
                TokenTree::Literal(lit)
            }
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), substitute(g.stream(), from, to));
                ng.set_span(g.span());
                TokenTree::Group(ng)
            }
            other => other,
        })
        .collect()
}

fn mentions(ts: &TokenStream, name: &Ident) -> bool {
    ts.clone().into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == *name,
        TokenTree::Group(g) => mentions(&g.stream(), name),
        _ => false,
    })
}

/// The checked sizes (width, depth) as numbers, or the accumulated errors.
fn validate(input: &FamilyInput) -> syn::Result<Vec<(usize, usize)>> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    if input.width == input.depth {
        push(syn::Error::new(
            input.depth.span(),
            "the width and depth placeholders need two different names, e.g. `W` and `L`",
        ));
    }
    for p in [&input.width, &input.depth] {
        if !mentions(&input.template, p) {
            push(syn::Error::new(
                p.span(),
                format!("`{p}` does not appear in the model type: write it where the width (or depth) goes, e.g. `MyModel<{p}, ..>`"),
            ));
        }
    }
    if input.sizes.is_empty() {
        push(syn::Error::new(
            input.list_span,
            "a family needs at least one size",
        ));
    }
    let mut sizes = Vec::new();
    for (w, l) in &input.sizes {
        let mut one = |lit: &LitInt, what: &str| match lit.base10_parse::<usize>() {
            Ok(0) | Err(_) => {
                push(syn::Error::new(
                    lit.span(),
                    format!("a {what} must be a positive integer"),
                ));
                None
            }
            Ok(v) => Some(v),
        };
        if let (Some(a), Some(b)) = (one(w, "width"), one(l, "depth")) {
            if sizes.contains(&(a, b)) {
                push(syn::Error::new(
                    w.span(),
                    format!("width {a} depth {b} is listed twice"),
                ));
            }
            sizes.push((a, b));
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(sizes),
    }
}

/// The model type at one size, with the dtype, device and parametrization parameters that
/// `#[umup_model]` adds appended to its generic arguments.
fn instance_type(
    input: &FamilyInput,
    w: &LitInt,
    l: &LitInt,
    dev: &TokenStream,
    param: &TokenStream,
) -> syn::Result<syn::TypePath> {
    let ts = substitute(
        substitute(input.template.clone(), &input.width, w),
        &input.depth,
        l,
    );
    let mut ty: syn::TypePath = syn::parse2(ts).map_err(|e| {
        syn::Error::new(
            input.template_span,
            format!("expected a `#[umup_model]` type with its const parameters, e.g. `MyModel<W, {{4 * W}}, L>` ({e})"),
        )
    })?;
    let span = ty.span();
    let Some(last) = ty.path.segments.last_mut() else {
        return Err(syn::Error::new(span, "expected a type path"));
    };
    let extra: [syn::GenericArgument; 3] = [
        syn::parse_quote_spanned!(span=> f32),
        syn::parse_quote_spanned!(span=> #dev),
        syn::parse_quote_spanned!(span=> #param),
    ];
    match &mut last.arguments {
        syn::PathArguments::AngleBracketed(args) => args.args.extend(extra),
        syn::PathArguments::None => {
            last.arguments = syn::PathArguments::AngleBracketed(syn::parse_quote!(<#(#extra),*>))
        }
        syn::PathArguments::Parenthesized(_) => {
            return Err(syn::Error::new(
                span,
                "expected a `#[umup_model]` type, e.g. `MyModel<W, {4 * W}, L>`",
            ))
        }
    }
    Ok(ty)
}

/// Expands `family!`.
pub fn family(input: TokenStream) -> TokenStream {
    let input: FamilyInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let FamilyInput {
        attrs, vis, name, ..
    } = &input;
    let f = quote!(::umup::__private::family);
    let sizes = match validate(&input) {
        Ok(s) => s,
        Err(e) => {
            let err = e.to_compile_error();
            // A fallback item, so that uses of the family do not add errors of their own.
            return quote! {
                #err
                #(#attrs)*
                #vis struct #name;
            };
        }
    };
    let at = format_ident!("__UmupFamilyAt{}", name);
    let dev = format_ident!("UmupDev");
    let (dev_ts, param_ts) = (quote!(#dev), quote!(UmupP));
    let mut arms = Vec::new();
    let mut impls = Vec::new();
    // The family's batch: the `Trainable::Batch` of its first size (u-μP, on `Cpu`); every size
    // must take the same (`Instance::Batch = Family::Batch` is checked where `visit` names it).
    let batch = match input
        .sizes
        .first()
        .map(|(wl, ll)| instance_type(&input, wl, ll, &quote!(#f::Cpu), &quote!(#f::Umup)))
    {
        Some(Ok(t)) => quote!(<#t as #f::Trainable<#f::Cpu>>::Batch),
        Some(Err(e)) => return e.to_compile_error(),
        None => quote!(()),
    };
    for ((w, l), (wl, ll)) in sizes.iter().zip(&input.sizes) {
        let ty = match instance_type(&input, wl, ll, &dev_ts, &param_ts) {
            Ok(t) => t,
            Err(e) => return e.to_compile_error(),
        };
        arms.push(quote! {
            (#w, #l, "umup") => visitor.visit::<#at<#w, #l, #f::Umup>>(),
            (#w, #l, "mup") => visitor.visit::<#at<#w, #l, #f::Mup<{ #f::MUP_BASE_WIDTH }>>>(),
            (#w, #l, "sp") => visitor.visit::<#at<#w, #l, #f::Sp>>(),
        });
        let span = ty.span();
        impls.push(quote_spanned! {span=>
            #[automatically_derived]
            impl<UmupP: #f::Param> #f::Instance for #at<#w, #l, UmupP> {
                type Param = UmupP;
                const WIDTH: usize = #w;
                const DEPTH: usize = #l;
                type Batch = #batch;
                type Model<#dev: #f::TrainDevice> = #ty;
            }
        });
    }
    let size_list = sizes.iter().map(|(w, l)| quote!((#w, #l)));
    let family_doc = format!(
        "The family's sizes (width × depth): {}; each in u-μP, μP and SP. Generated by `umup::family!`.",
        sizes
            .iter()
            .map(|(w, l)| format!("{w}×{l}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #family_doc]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #[doc(hidden)]
        #vis struct #at<const W: usize, const L: usize, UmupP>(::core::marker::PhantomData<UmupP>);

        #(#impls)*

        #[automatically_derived]
        impl #f::Family for #name {
            type Batch = #batch;

            const SIZES: &'static [(usize, usize)] = &[#(#size_list),*];

            fn visit<UmupV: #f::Visitor<Self::Batch>>(
                width: usize,
                depth: usize,
                param: &str,
                visitor: UmupV,
            ) -> ::core::result::Result<UmupV::Output, #f::Error> {
                match (width, depth, param) {
                    #(#arms)*
                    _ => ::core::result::Result::Err(#f::not_compiled::<Self>(width, depth, param)),
                }
            }
        }
    }
}

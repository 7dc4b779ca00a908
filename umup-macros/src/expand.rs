//! Step 3: generate the dfdx module, its parameter table and its constructors.
//!
//! Generated code reaches the runtime only through `::umup::__private`, and computes no scale
//! itself: layer types carry their role and parametrization, and the runtime's rule functions do
//! the rest.

use proc_macro2::{Literal, TokenStream};
use quote::quote;
use syn::{GenericArgument, Ident, PathArguments};

use crate::parse::{self, Errors, ModelIr};
use crate::validate::{self, Layer, Model};

/// Entry point: parse → validate → expand, or errors plus a fallback struct.
pub fn umup_model(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let ir = parse::parse(args, input, &mut errors);
    let fallback = ir.as_ref().map(fallback).unwrap_or_default();
    let model = ir.and_then(|ir| validate::validate(ir, &mut errors));
    match (errors.finish(), model) {
        (None, Some(model)) => expand(&model),
        (Some(e), _) => {
            let e = e.to_compile_error();
            quote! { #e #fallback }
        }
        (None, None) => fallback,
    }
}

fn private() -> TokenStream {
    quote!(::umup::__private)
}

/// After an error: the struct with its name and generics, so that the user's other code does
/// not fail to find it, and no fields.
fn fallback(ir: &ModelIr) -> TokenStream {
    let r = private();
    let (vis, ident) = (&ir.vis, &ir.ident);
    let consts = ir
        .const_params
        .iter()
        .filter(|c| !parse::RESERVED_PARAMS.contains(&c.ident.to_string().as_str()));
    quote! {
        #vis struct #ident<#(#consts,)* E = f32, Dev = #r::dfdx::tensor::Cpu, P = #r::nn::Umup> {
            #[doc(hidden)]
            __umup_invalid: #r::PhantomData<(E, Dev, P)>,
        }
    }
}

fn field_type(f: &validate::Field) -> TokenStream {
    let r = private();
    let elem = match &f.layer {
        Layer::Linear {
            fan_in,
            fan_out,
            readout,
            bias,
            constraint,
        } => {
            let code = Literal::u8_unsuffixed(*constraint);
            let role = if *readout {
                quote!(#r::nn::Readout<#code>)
            } else {
                quote!(#r::nn::Hidden<#code>)
            };
            let ty = if *bias {
                quote!(UnitLinearBias)
            } else {
                quote!(UnitLinear)
            };
            quote!(#r::nn::#ty<#fan_in, #fan_out, #role, E, Dev, P>)
        }
        Layer::Conv1d {
            c_in,
            c_out,
            kernel,
            in_per_group,
            geometry,
            bias,
            constraint,
        } => {
            let code = Literal::u8_unsuffixed(*constraint);
            let [s, p, d, g] = geometry.map(Literal::u64_unsuffixed);
            let ty = if *bias {
                quote!(UnitConv1dBias)
            } else {
                quote!(UnitConv1d)
            };
            quote!(#r::nn::#ty<#c_in, #c_out, #kernel, #in_per_group, #r::nn::Conv<#s, #p, #d, #g, #code>, E, Dev, P>)
        }
        Layer::Embedding { vocab, dim } => quote!(#r::nn::UnitEmbedding<#vocab, #dim, E, Dev, P>),
        Layer::RmsNorm { dim } => quote!(#r::nn::UnitRmsNorm<#dim, E, Dev, P>),
        Layer::LayerNorm { dim } => quote!(#r::nn::UnitLayerNorm<#dim, E, Dev, P>),
        Layer::Model { path } => {
            let mut path = path.clone();
            if let Some(seg) = path.path.segments.last_mut() {
                let extra: [GenericArgument; 3] = [
                    syn::parse_quote!(E),
                    syn::parse_quote!(Dev),
                    syn::parse_quote!(P),
                ];
                match &mut seg.arguments {
                    PathArguments::AngleBracketed(a) => a.args.extend(extra),
                    args => *args = PathArguments::AngleBracketed(syn::parse_quote!(<E, Dev, P>)),
                }
            }
            quote!(#path)
        }
    };
    match &f.depth {
        Some(len) => quote!(#r::nn::Stack<#elem, #len>),
        None => elem,
    }
}

/// Nests items into tuples of at most 6 (dfdx implements its field visitor for tuples up to 6).
fn nest(items: Vec<TokenStream>) -> TokenStream {
    if items.len() <= 6 {
        return quote!((#(#items,)*));
    }
    let chunks: Vec<TokenStream> = items
        .chunks(6)
        .map(|c| {
            let c = c.to_vec();
            quote!((#(#c,)*))
        })
        .collect();
    nest(chunks)
}

fn expand(m: &Model) -> TokenStream {
    let r = private();
    let (attrs, vis, ident) = (&m.attrs, &m.vis, &m.ident);
    let consts = &m.const_params;
    let impl_consts: Vec<syn::ConstParam> = consts
        .iter()
        .map(|c| syn::ConstParam {
            eq_token: None,
            default: None,
            ..c.clone()
        })
        .collect();
    let const_idents: Vec<&Ident> = consts.iter().map(|c| &c.ident).collect();
    let names: Vec<&Ident> = m.fields.iter().map(|f| &f.ident).collect();
    let name_strs: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let tys: Vec<TokenStream> = m.fields.iter().map(field_type).collect();
    let field_defs = m.fields.iter().zip(&tys).map(|(f, ty)| {
        let (fattrs, fvis, fname) = (&f.attrs, &f.vis, &f.ident);
        quote! { #(#fattrs)* #fvis #fname: #ty }
    });

    let tc = quote!(#r::dfdx::nn::tensor_collection::TensorCollection);
    let visits: Vec<TokenStream> = names
        .iter()
        .zip(&name_strs)
        .map(|(n, s)| quote!(<Self as #tc<E, Dev>>::module(#s, |s| &s.#n, |s| &mut s.#n)))
        .collect();
    let pattern = nest(names.iter().map(|n| quote!(#n)).collect());
    let visits = nest(visits);
    let built_generics = quote!(#(#const_idents,)* E, Dev, P);
    let to_generics = quote!(#(#const_idents,)* UmupE2, UmupD2, P);
    let e_bounds = quote! {
        E: #r::dfdx::shapes::Dtype,
        Dev: #r::dfdx::tensor_ops::Device<E>,
        P: #r::nn::Param
    };
    let where_normal = quote!(where #r::StandardNormal: #r::Distribution<E>);
    let table_fields = names.iter().zip(&tys).zip(&name_strs).map(|((_, ty), s)| {
        quote! {
            <#ty as #r::nn::UmupModule>::param_rows(&#r::nn::join_path(prefix, #s), depth, out)?;
        }
    });
    let struct_doc = format!(
        " Generated by `#[umup_model]`: a u-μP module with dtype `E`, device `Dev` and parametrization `P`. Build it with [`{ident}::build`]; its parameter table is [`{ident}::param_table`]."
    );

    quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #struct_doc]
        #[derive(Clone, Debug)]
        #vis struct #ident<
            #(#consts,)*
            E: #r::dfdx::shapes::Dtype = f32,
            Dev: #r::dfdx::tensor::Storage<E> = #r::dfdx::tensor::Cpu,
            P: #r::nn::Param = #r::nn::Umup
        > {
            #(#field_defs,)*
        }

        #[automatically_derived]
        impl<#(#impl_consts,)* #e_bounds> #tc<E, Dev> for #ident<#built_generics>
        #where_normal
        {
            type To<UmupE2: #r::dfdx::shapes::Dtype, UmupD2: #r::dfdx::tensor_ops::Device<UmupE2>> =
                #ident<#to_generics>;

            fn iter_tensors<UmupVisitor: #r::dfdx::nn::tensor_collection::ModuleVisitor<Self, E, Dev>>(
                visitor: &mut UmupVisitor,
            ) -> #r::Result<
                ::core::option::Option<Self::To<UmupVisitor::E2, UmupVisitor::D2>>,
                UmupVisitor::Err,
            > {
                visitor.visit_fields(#visits, |#pattern| #ident { #(#names),* })
            }
        }

        #[automatically_derived]
        impl<#(#impl_consts,)* #e_bounds> #r::dfdx::nn::BuildOnDevice<Dev, E> for #ident<#built_generics>
        #where_normal
        {
            type Built = Self;
        }

        #[automatically_derived]
        impl<
            #(#impl_consts,)*
            E: #r::dfdx::shapes::Dtype,
            Dev: #r::dfdx::tensor::Storage<E>,
            P: #r::nn::Param
        > #r::nn::UmupModule for #ident<#built_generics> {
            fn parametrization() -> #r::params::Parametrization {
                <P as #r::nn::Param>::parametrization()
            }

            fn param_rows(
                prefix: &str,
                depth: ::core::option::Option<usize>,
                out: &mut #r::Vec<#r::params::ParamRow>,
            ) -> #r::Result<(), #r::Error> {
                #(#table_fields)*
                ::core::result::Result::Ok(())
            }
        }

        #[automatically_derived]
        impl<#(#impl_consts,)* #e_bounds> #ident<#built_generics>
        #where_normal
        {
            /// Builds the model on `dev`, every tensor initialised by the parametrization's rule.
            pub fn build(dev: &Dev) -> #r::Result<Self, #r::Error> {
                <Self as #r::dfdx::nn::BuildModule<Dev, E>>::try_build(dev).map_err(#r::Error::device)
            }

            /// The parameter table: path, role, shape, fan-in, depth, init, forward multiplier
            /// and LR multipliers of every tensor (print it with `{}`).
            pub fn param_table() -> #r::Result<#r::params::ParamTable, #r::Error> {
                <Self as #r::nn::UmupModule>::param_table()
            }
        }
    }
}

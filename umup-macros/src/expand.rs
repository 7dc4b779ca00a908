//! Step 3: generate the dfdx module, its parameter table and its constructors.
//!
//! Generated code reaches the runtime only through `::umup::__private`, and computes no scale
//! itself: layer types carry their role and parametrization, and the runtime's rule functions do
//! the rest.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Ident;

use crate::parse::{self, Errors, ModelIr};
use crate::validate::{self, Layer, LinearKind, Model};

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

/// After an error: the struct with its name and generics, no fields, and the traits of a model
/// (with no parameters), so that the user's other code, and a model that nests this one, add no
/// errors of their own.
fn fallback(ir: &ModelIr) -> TokenStream {
    let r = private();
    let (vis, ident) = (&ir.vis, &ir.ident);
    let consts = ir
        .const_params
        .iter()
        .filter(|c| !parse::RESERVED_PARAMS.contains(&c.ident.to_string().as_str()));
    let impl_consts = impl_params(
        ir.const_params
            .iter()
            .filter(|c| !parse::RESERVED_PARAMS.contains(&c.ident.to_string().as_str())),
    );
    let const_idents: Vec<&Ident> = impl_consts.iter().map(|c| &c.ident).collect();
    quote! {
        #vis struct #ident<#(#consts,)* E = f32, Dev = #r::dfdx::tensor::Cpu, P = #r::nn::Umup> {
            #[doc(hidden)]
            __umup_invalid: #r::PhantomData<(E, Dev, P)>,
        }

        // A model with errors is still a model, without parameters: a `#[model]` field of its
        // type (and the rest of the user's code) reports nothing a second time.
        #[diagnostic::do_not_recommend]
        impl<#(#impl_consts,)* E, Dev, P> #r::nn::UmupModel for #ident<#(#const_idents,)* E, Dev, P> {
            type Built<
                UmupE2: #r::dfdx::shapes::Dtype,
                UmupD2: #r::dfdx::tensor::Storage<UmupE2>,
                UmupP2: #r::nn::Param,
            > = #ident<#(#const_idents,)* UmupE2, UmupD2, UmupP2>;
        }

        impl<#(#impl_consts,)* E, Dev, P> ::core::clone::Clone for #ident<#(#const_idents,)* E, Dev, P> {
            fn clone(&self) -> Self {
                #ident { __umup_invalid: #r::PhantomData }
            }
        }

        impl<#(#impl_consts,)* E, Dev, P> ::core::fmt::Debug for #ident<#(#const_idents,)* E, Dev, P> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(::core::stringify!(#ident))
            }
        }

        impl<
            #(#impl_consts,)*
            E: #r::dfdx::shapes::Dtype,
            Dev: #r::dfdx::tensor_ops::Device<E>,
            P: #r::nn::Param
        > #r::dfdx::nn::tensor_collection::TensorCollection<E, Dev> for #ident<#(#const_idents,)* E, Dev, P> {
            type To<UmupE2: #r::dfdx::shapes::Dtype, UmupD2: #r::dfdx::tensor_ops::Device<UmupE2>> =
                #ident<#(#const_idents,)* UmupE2, UmupD2, P>;

            fn iter_tensors<UmupVisitor: #r::dfdx::nn::tensor_collection::ModuleVisitor<Self, E, Dev>>(
                _visitor: &mut UmupVisitor,
            ) -> #r::Result<
                ::core::option::Option<Self::To<UmupVisitor::E2, UmupVisitor::D2>>,
                UmupVisitor::Err,
            > {
                ::core::result::Result::Ok(::core::option::Option::Some(#ident {
                    __umup_invalid: #r::PhantomData,
                }))
            }
        }

        impl<
            #(#impl_consts,)*
            E: #r::dfdx::shapes::Dtype,
            Dev: #r::dfdx::tensor_ops::Device<E>,
            P: #r::nn::Param
        > #r::dfdx::nn::BuildOnDevice<Dev, E> for #ident<#(#const_idents,)* E, Dev, P> {
            type Built = Self;
        }

        impl<#(#impl_consts,)* E, Dev, P: #r::nn::Param> #r::nn::UmupModule for #ident<#(#const_idents,)* E, Dev, P> {
            fn parametrization() -> #r::params::Parametrization {
                <P as #r::nn::Param>::parametrization()
            }

            fn param_rows(
                _prefix: &str,
                _depth: ::core::option::Option<usize>,
                _out: &mut #r::Vec<#r::params::ParamRow>,
            ) -> #r::Result<(), #r::Error> {
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The const parameters without their defaults, for impl headers.
fn impl_params<'a>(consts: impl Iterator<Item = &'a syn::ConstParam>) -> Vec<syn::ConstParam> {
    consts
        .map(|c| syn::ConstParam {
            eq_token: None,
            default: None,
            ..c.clone()
        })
        .collect()
}

fn field_type(f: &validate::Field) -> TokenStream {
    let r = private();
    let elem = match &f.layer {
        Layer::Linear {
            fan_in,
            fan_out,
            role,
            bias,
            constraint,
        } => {
            let code = Literal::u8_unsuffixed(*constraint);
            let role = match role {
                LinearKind::Readout => quote!(#r::nn::Readout<#code>),
                LinearKind::Input => quote!(#r::nn::Input<#code>),
                LinearKind::Hidden => quote!(#r::nn::Hidden<#code>),
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
            // The model's type as written (its defaults fill `E`, `Dev`, `P`), re-targeted
            // through `UmupModel`: a type that is not a `#[umup_model]` struct fails this bound
            // at the field's type, with the trait's `on_unimplemented` message.
            let model = quote_spanned!(path.span()=> #r::nn::UmupModel);
            quote_spanned!(path.span()=> <#path as #model>::Built<E, Dev, P>)
        }
    };
    match (&f.depth, &f.layer) {
        // A stack of models: the stack's tokens point at the element type too, so that an
        // element that is not a model is reported at the field.
        (Some(len), Layer::Model { path }) => {
            quote_spanned!(path.span()=> #r::nn::Stack<#elem, #len>)
        }
        (Some(len), _) => quote!(#r::nn::Stack<#elem, #len>),
        (None, _) => elem,
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
    let impl_consts = impl_params(consts.iter());
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
        #[diagnostic::do_not_recommend]
        impl<
            #(#impl_consts,)*
            E: #r::dfdx::shapes::Dtype,
            Dev: #r::dfdx::tensor::Storage<E>,
            P: #r::nn::Param
        > #r::nn::UmupModel for #ident<#built_generics> {
            type Built<
                UmupE2: #r::dfdx::shapes::Dtype,
                UmupD2: #r::dfdx::tensor::Storage<UmupE2>,
                UmupP2: #r::nn::Param,
            > = #ident<#(#const_idents,)* UmupE2, UmupD2, UmupP2>;
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

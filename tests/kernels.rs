//! Every `Cpu` kernel behind `Backend` against the device-generic composition of the same op
//! (`umup::ops::generic`, what `Cuda` runs), on random inputs: the output and the gradient of
//! every input and parameter, f32 to 1e-5 and f64 to 1e-12 (relative to the tensor's largest
//! entry). Shapes are deliberately not multiples of any block or chunk size; scales, masks,
//! gains, biases and shared inputs vary.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use umup::dfdx::prelude::*;
use umup::ops::{self, cpu::AttnLayout, cpu::AttnShape, generic, Backend};
use umup::scales::LinearScales;

/// `max|a − b| / max|b|`: the error relative to the tensor's scale (absolute where the reference
/// is exactly zero, as some gradients are: a one-key softmax, a one-feature LayerNorm).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

trait Real: Dtype + std::fmt::Debug
where
    Cpu: Backend<Self>,
{
    const TOL: f64;
}
impl Real for f32 {
    const TOL: f64 = 1e-5;
}
impl Real for f64 {
    const TOL: f64 = 1e-12;
}

fn f64s<S: Shape, E: Dtype, T>(t: &Tensor<S, E, Cpu, T>) -> Vec<f64> {
    t.as_vec().iter().map(|v| v.to_f64().unwrap()).collect()
}

struct Rig {
    dev: Cpu,
    rng: StdRng,
}

impl Rig {
    fn new(seed: u64) -> Self {
        Rig {
            dev: Cpu::seed_from_u64(seed),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn randn<S: Shape, E: Dtype>(&mut self, shape: S) -> Tensor<S, E, Cpu> {
        let v: Vec<E> = (0..shape.num_elements())
            .map(|_| E::from_f64(self.rng.sample::<f64, _>(StandardNormal)).unwrap())
            .collect();
        self.dev.tensor_from_vec(v, shape)
    }
}

/// `Σ y ⊙ r` (r random, so every output element carries its own gradient) and its backward.
fn backward<S: Shape, E: Dtype>(
    y: Tensor<S, E, Cpu, OwnedTape<E, Cpu>>,
    r: &Tensor<S, E, Cpu>,
) -> (Vec<f64>, Gradients<E, Cpu>)
where
    Cpu: Device<E>,
{
    let out = f64s(&y);
    let g = (y * r.clone()).sum::<(), _>().backward();
    (out, g)
}

fn compare<E: Real>(what: &str, kernel: &[Vec<f64>], generic: &[Vec<f64>])
where
    Cpu: Backend<E>,
{
    assert_eq!(kernel.len(), generic.len());
    for (i, (k, g)) in kernel.iter().zip(generic).enumerate() {
        let e = rel(k, g);
        assert!(
            e <= E::TOL,
            "{what} ({}): tensor {i} differs by {e:e} (tolerance {:e})",
            std::any::type_name::<E>(),
            E::TOL
        );
    }
}

/// Three sets of linear-layer scales, none of them 1, for the layer tests.
const S1: LinearScales = LinearScales {
    output: 0.37,
    grad_input: 1.9,
    grad_weight: 0.61,
};
const S2: LinearScales = LinearScales {
    output: 0.83,
    grad_input: 0.45,
    grad_weight: 1.3,
};
const S3: LinearScales = LinearScales {
    output: 1.21,
    grad_input: 0.7,
    grad_weight: 0.52,
};

fn linear<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(1);
    for (rows, fi, fo, bias) in [(13, 7, 5, true), (29, 33, 17, false), (1, 3, 1, true)] {
        let x = rig.randn::<_, E>((rows, fi));
        let w = rig.randn::<_, E>((fo, fi));
        let b = rig.randn::<_, E>((fo,));
        let r = rig.randn::<_, E>((rows, fo));
        let s = S1;
        let run = |kernel: bool| {
            let xt = x.clone().leaky_traced();
            let bias = bias.then_some(&b);
            let y = if kernel {
                <Cpu as Backend<E>>::linear_kernel(xt, w.retaped(), bias.map(|b| b.retaped()), s)
            } else {
                generic::linear(xt, w.retaped(), bias.map(|b| b.retaped()), s)
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&x)), f64s(&g.get(&w))];
            if bias.is_some() {
                v.push(f64s(&g.get(&b)));
            }
            v
        };
        compare::<E>("linear", &run(true), &run(false));
    }
}

fn conv1d<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(14);
    // (batch, C_in, T, C_out, k, stride, padding, dilation, groups, bias)
    for (nb, ci, len, co, k, stride, padding, dilation, groups, bias) in [
        (2, 4, 9, 6, 3, 1, 0, 1, 1, true),
        (3, 6, 17, 9, 4, 2, 3, 1, 3, false),
        (1, 5, 13, 7, 2, 3, 1, 4, 1, true),
        (2, 8, 23, 4, 5, 2, 2, 3, 4, true),
        (3, 3, 7, 5, 1, 1, 0, 1, 1, false),
        (2, 6, 11, 6, 3, 1, 4, 2, 6, true),
        (1, 2, 3, 3, 4, 5, 1, 1, 1, false),
    ] {
        let geo = ops::Conv1dGeometry {
            stride,
            padding,
            dilation,
            groups,
        };
        let t_out = geo.output_len(len, k).unwrap();
        let x = rig.randn::<_, E>((nb, ci, len));
        let w = rig.randn::<_, E>((co, ci / groups, k));
        let b = rig.randn::<_, E>((co,));
        let r = rig.randn::<_, E>((nb, co, t_out));
        let s = LinearScales {
            output: 0.43,
            grad_input: 1.7,
            grad_weight: 0.29,
        };
        let run = |kernel: bool| {
            let xt = x.clone().leaky_traced();
            let bias = bias.then_some(&b);
            let y = if kernel {
                <Cpu as Backend<E>>::conv1d_kernel(
                    xt,
                    w.retaped(),
                    bias.map(|b| b.retaped()),
                    geo,
                    s,
                )
            } else {
                generic::conv1d(xt, w.retaped(), bias.map(|b| b.retaped()), geo, s)
            }
            .unwrap();
            assert_eq!(y.shape().concrete(), [nb, co, t_out]);
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&x)), f64s(&g.get(&w))];
            if bias.is_some() {
                v.push(f64s(&g.get(&b)));
            }
            v
        };
        compare::<E>("conv1d", &run(true), &run(false));
    }
}

fn matmul<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(2);
    for (m, k, n) in [(9, 6, 11), (33, 17, 3)] {
        let a = rig.randn::<_, E>((m, k));
        let b = rig.randn::<_, E>((k, n));
        let r = rig.randn::<_, E>((m, n));
        let scales = [0.5, 0.8, 1.7];
        let run = |kernel: bool| {
            let (at, bt) = (a.clone().leaky_traced(), b.clone().leaky_traced());
            let y = if kernel {
                <Cpu as Backend<E>>::matmul_kernel(at, bt, scales)
            } else {
                generic::matmul(at, bt, scales)
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            vec![out, f64s(&g.get(&a)), f64s(&g.get(&b))]
        };
        compare::<E>("matmul", &run(true), &run(false));
    }
}

fn attention<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(3);
    for (batch, heads, seq, d_head) in [(2, 3, 37, 5), (1, 2, 70, 8), (3, 1, 1, 4), (1, 1, 130, 3)]
    {
        for causal in [true, false] {
            let (ls, os) = (0.3, 1.7);
            // Heads-major inputs, one of them a permuted (non-contiguous) view.
            let q = rig.randn::<_, E>((batch, heads, seq, d_head));
            let k0 = rig.randn::<_, E>((batch, seq, heads, d_head));
            let v = rig.randn::<_, E>((batch, heads, seq, d_head));
            let r = rig.randn::<_, E>((batch, heads, seq, d_head));
            let run = |kernel: bool| {
                let k = k0.clone().leaky_traced().permute::<_, Axes4<0, 2, 1, 3>>();
                let (qt, vt) = (q.clone().leaky_traced(), v.clone().leaky_traced());
                let y = if kernel {
                    <Cpu as Backend<E>>::attention_kernel(qt, k, vt, ls, os, causal)
                } else {
                    generic::attention(qt, k, vt, ls, os, causal)
                }
                .unwrap();
                let (out, g) = backward(y, &r);
                vec![out, f64s(&g.get(&q)), f64s(&g.get(&k0)), f64s(&g.get(&v))]
            };
            compare::<E>("attention (heads)", &run(true), &run(false));

            // Rows layout, with q and k one tensor (self-attention with tied projections).
            let w = heads * d_head;
            let shape = AttnShape {
                batch,
                seq,
                heads,
                d_head,
                layout: AttnLayout::Rows,
            };
            let qk = rig.randn::<_, E>((batch * seq, w));
            let v = rig.randn::<_, E>((batch * seq, w));
            let r = rig.randn::<_, E>((batch * seq, w));
            let run = |kernel: bool| {
                let t = qk.clone().leaky_traced();
                let (qt, kt, vt) = (t.with_empty_tape(), t, v.clone().leaky_traced());
                let y = if kernel {
                    <Cpu as Backend<E>>::attention_rows_kernel(qt, kt, vt, shape, ls, os, causal)
                } else {
                    generic::attention_rows(qt, kt, vt, shape, ls, os, causal)
                }
                .unwrap();
                let (out, g) = backward(y, &r);
                vec![out, f64s(&g.get(&qk)), f64s(&g.get(&v))]
            };
            compare::<E>("attention (rows)", &run(true), &run(false));
        }
    }
}

fn norms<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(4);
    for (rows, width) in [(13, 7), (40, 33), (1, 1)] {
        let x = rig.randn::<_, E>((rows, width));
        let gain = rig.randn::<_, E>((width,));
        let bias = rig.randn::<_, E>((width,));
        let r = rig.randn::<_, E>((rows, width));
        for (with_gain, with_bias) in [(false, false), (true, false), (false, true), (true, true)] {
            let (g, b) = (with_gain.then_some(&gain), with_bias.then_some(&bias));
            let grads = |gr: &Gradients<E, Cpu>| {
                let mut v = vec![f64s(&gr.get(&x))];
                if with_gain {
                    v.push(f64s(&gr.get(&gain)));
                }
                if with_bias {
                    v.push(f64s(&gr.get(&bias)));
                }
                v
            };
            let layer = |kernel: bool| {
                let xt = x.clone().leaky_traced();
                let y = if kernel {
                    <Cpu as Backend<E>>::layer_norm_kernel(xt, g, b, 1e-5, 0.7)
                } else {
                    generic::layer_norm(xt, g, b, 1e-5, 0.7)
                }
                .unwrap();
                let (out, gr) = backward(y, &r);
                [vec![out], grads(&gr)].concat()
            };
            compare::<E>("layer_norm", &layer(true), &layer(false));
            if !with_bias {
                let rms = |kernel: bool| {
                    let xt = x.clone().leaky_traced();
                    let y = if kernel {
                        <Cpu as Backend<E>>::rms_norm_kernel(xt, g, 1e-3, 0.7)
                    } else {
                        generic::rms_norm(xt, g, 1e-3, 0.7)
                    }
                    .unwrap();
                    let (out, gr) = backward(y, &r);
                    [vec![out], grads(&gr)].concat()
                };
                compare::<E>("rms_norm", &rms(true), &rms(false));
            }
        }
    }
}

fn add<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(5);
    let a = rig.randn::<_, E>((3, 5, 7));
    let b = rig.randn::<_, E>((3, 5, 7));
    let r = rig.randn::<_, E>((3, 5, 7));
    let scales = [0.3, 0.9, 1.1, 0.4];
    for shared in [false, true] {
        let run = |kernel: bool| {
            let at = a.clone().leaky_traced();
            let bt = if shared {
                at.with_empty_tape()
            } else {
                b.clone().leaky_traced()
            };
            let y = if kernel {
                <Cpu as Backend<E>>::add_kernel(at, bt, scales)
            } else {
                generic::add(at, bt, scales)
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&a))];
            if !shared {
                v.push(f64s(&g.get(&b)));
            }
            v
        };
        compare::<E>("add", &run(true), &run(false));
    }
}

fn silu_glu<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(6);
    let x = rig.randn::<_, E>((3, 5, 7));
    let gate = rig.randn::<_, E>((3, 5, 7));
    let r = rig.randn::<_, E>((3, 5, 7));
    for shared in [false, true] {
        let run = |kernel: bool| {
            let xt = x.clone().leaky_traced();
            let gt = if shared {
                xt.with_empty_tape()
            } else {
                gate.clone().leaky_traced()
            };
            let y = if kernel {
                <Cpu as Backend<E>>::silu_glu_kernel(xt, gt, 1.7, 0.8)
            } else {
                generic::silu_glu(xt, gt, 1.7, 0.8)
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&x))];
            if !shared {
                v.push(f64s(&g.get(&gate)));
            }
            v
        };
        compare::<E>("silu_glu", &run(true), &run(false));
    }
}

/// The fused SwiGLU input side against the composition of the `Cpu` kernels it replaces
/// (bit for bit: the same matmuls and passes in the same order, `dx`'s two terms included) and
/// against the device-generic composition of dfdx ops (to the tolerance).
fn silu_glu_linear<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(13);
    for (rows, fi, fo) in [(13, 7, 5), (29, 33, 17), (1, 3, 1)] {
        let x = rig.randn::<_, E>((rows, fi));
        let wu = rig.randn::<_, E>((fo, fi));
        let wg = rig.randn::<_, E>((fo, fi));
        let r = rig.randn::<_, E>((rows, fo));
        let s = [S1, S2];
        let (mult, scale) = (1.7, 0.8);
        let run = |how: u8| {
            let xt = x.clone().leaky_traced();
            let y = match how {
                0 => <Cpu as Backend<E>>::silu_glu_linear_kernel(
                    xt,
                    wu.retaped(),
                    wg.retaped(),
                    s,
                    mult,
                    scale,
                ),
                1 => generic::silu_glu_linear(xt, wu.retaped(), wg.retaped(), s, mult, scale),
                _ => {
                    let u =
                        generic::linear(xt.with_empty_tape(), wu.retaped(), None, s[0]).unwrap();
                    let g = generic::linear(xt, wg.retaped(), None, s[1]).unwrap();
                    generic::silu_glu(u, g, mult, scale)
                }
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            vec![out, f64s(&g.get(&x)), f64s(&g.get(&wu)), f64s(&g.get(&wg))]
        };
        let fused = run(0);
        assert_eq!(
            fused,
            run(1),
            "silu_glu_linear: fused vs the kernels' composition"
        );
        compare::<E>("silu_glu_linear", &fused, &run(2));
    }
}

/// The fused GELU input side against the `Cpu` kernels' composition (bit for bit) and the
/// device-generic composition (to the tolerance), with and without a bias.
fn gelu_linear<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(14);
    for (rows, fi, fo, bias) in [(13, 7, 5, true), (29, 33, 17, false), (1, 3, 1, true)] {
        let x = rig.randn::<_, E>((rows, fi));
        let w = rig.randn::<_, E>((fo, fi));
        let b = rig.randn::<_, E>((fo,));
        let r = rig.randn::<_, E>((rows, fo));
        let s = S1;
        let gelu = [1.3, 0.9, 1.4];
        let run = |how: u8| {
            let xt = x.clone().leaky_traced();
            let bt = bias.then(|| b.retaped());
            let y = match how {
                0 => <Cpu as Backend<E>>::gelu_linear_kernel(xt, w.retaped(), bt, s, gelu),
                1 => generic::gelu_linear(xt, w.retaped(), bt, s, gelu),
                _ => generic::linear(xt, w.retaped(), bt, s)
                    .and_then(|u| generic::gelu(u, gelu[0], gelu[1], gelu[2])),
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&x)), f64s(&g.get(&w))];
            if bias {
                v.push(f64s(&g.get(&b)));
            }
            v
        };
        let fused = run(0);
        assert_eq!(
            fused,
            run(1),
            "gelu_linear: fused vs the kernels' composition"
        );
        compare::<E>("gelu_linear", &fused, &run(2));
    }
}

/// The whole SwiGLU MLP against the composition of the `Cpu` kernels it replaces (bit for bit)
/// and the device-generic composition of dfdx ops (to the tolerance).
fn swiglu_mlp<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(15);
    for (rows, fi, fo, n) in [(13, 7, 5, 6), (29, 33, 17, 33), (1, 3, 1, 2)] {
        let x = rig.randn::<_, E>((rows, fi));
        let wu = rig.randn::<_, E>((fo, fi));
        let wg = rig.randn::<_, E>((fo, fi));
        let wd = rig.randn::<_, E>((n, fo));
        let r = rig.randn::<_, E>((rows, n));
        let s = [S1, S2, S3];
        let (mult, scale) = (1.7, 0.8);
        let run = |how: u8| {
            let xt = x.clone().leaky_traced();
            let w = (wu.retaped(), wg.retaped(), wd.retaped());
            let y = match how {
                0 => <Cpu as Backend<E>>::swiglu_mlp_kernel(xt, w, s, mult, scale),
                1 => generic::swiglu_mlp(xt, w, s, mult, scale),
                _ => {
                    let u = generic::linear(xt.with_empty_tape(), w.0, None, s[0]).unwrap();
                    let g = generic::linear(xt, w.1, None, s[1]).unwrap();
                    let a = generic::silu_glu(u, g, mult, scale).unwrap();
                    generic::linear(a, w.2, None, s[2])
                }
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let grads = [&wu, &wg].map(|w| f64s(&g.get(w)));
            vec![
                out,
                f64s(&g.get(&x)),
                grads[0].clone(),
                grads[1].clone(),
                f64s(&g.get(&wd)),
            ]
        };
        let fused = run(0);
        assert_eq!(
            fused,
            run(1),
            "swiglu_mlp: fused vs the kernels' composition"
        );
        compare::<E>("swiglu_mlp", &fused, &run(2));
    }
}

/// The whole GELU MLP, with and without biases, as [`swiglu_mlp`].
fn gelu_mlp<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(16);
    for (rows, fi, fo, n, bias) in [
        (13, 7, 5, 6, true),
        (29, 33, 17, 33, false),
        (1, 3, 1, 2, true),
    ] {
        let x = rig.randn::<_, E>((rows, fi));
        let (wu, bu) = (rig.randn::<_, E>((fo, fi)), rig.randn::<_, E>((fo,)));
        let (wd, bd) = (rig.randn::<_, E>((n, fo)), rig.randn::<_, E>((n,)));
        let r = rig.randn::<_, E>((rows, n));
        let s = [S1, S3];
        let gelu = [1.3, 0.9, 1.4];
        let run = |how: u8| {
            let xt = x.clone().leaky_traced();
            let up = (wu.retaped(), bias.then(|| bu.retaped()));
            let down = (wd.retaped(), bias.then(|| bd.retaped()));
            let y = match how {
                0 => <Cpu as Backend<E>>::gelu_mlp_kernel(xt, up, down, s, gelu),
                1 => generic::gelu_mlp(xt, up, down, s, gelu),
                _ => {
                    let u = generic::linear(xt, up.0, up.1, s[0]).unwrap();
                    let a = generic::gelu(u, gelu[0], gelu[1], gelu[2]).unwrap();
                    generic::linear(a, down.0, down.1, s[1])
                }
            }
            .unwrap();
            let (out, g) = backward(y, &r);
            let mut v = vec![out, f64s(&g.get(&x)), f64s(&g.get(&wu)), f64s(&g.get(&wd))];
            if bias {
                v.extend([f64s(&g.get(&bu)), f64s(&g.get(&bd))]);
            }
            v
        };
        let fused = run(0);
        assert_eq!(fused, run(1), "gelu_mlp: fused vs the kernels' composition");
        compare::<E>("gelu_mlp", &fused, &run(2));
    }
}

type Unary<E> = fn(
    Tensor<(usize, usize, usize), E, Cpu, OwnedTape<E, Cpu>>,
    f64,
    f64,
    f64,
) -> umup::Result<Tensor<(usize, usize, usize), E, Cpu, OwnedTape<E, Cpu>>>;

/// An elementwise activation's kernel against its generic composition, at several
/// `(mult, out_scale, grad_scale)`.
fn activation<E: Real>(what: &str, seed: u64, kernel: Unary<E>, generic: Unary<E>)
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(seed);
    let x = rig.randn::<_, E>((7, 3, 11));
    let r = rig.randn::<_, E>((7, 3, 11));
    for (mult, os, gs) in [(1.0, 1.0, 1.0), (1.7, 0.8, 1.3), (0.4, 2.1, 0.6)] {
        let run = |f: Unary<E>| {
            let y = f(x.clone().leaky_traced(), mult, os, gs).unwrap();
            let (out, g) = backward(y, &r);
            vec![out, f64s(&g.get(&x))]
        };
        compare::<E>(what, &run(kernel), &run(generic));
    }
}

fn gelu<E: Real>()
where
    Cpu: Backend<E>,
{
    activation::<E>("gelu", 11, <Cpu as Backend<E>>::gelu_kernel, generic::gelu);
}

fn silu<E: Real>()
where
    Cpu: Backend<E>,
{
    activation::<E>("silu", 12, <Cpu as Backend<E>>::silu_kernel, generic::silu);
}

fn softmax<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(13);
    for (rows, width) in [(13, 7), (5, 300), (1, 1)] {
        let x = rig.randn::<_, E>((rows, width));
        let r = rig.randn::<_, E>((rows, width));
        for (mult, os, gs) in [(1.0, 1.0, 1.0), (1.7, 0.8, 1.3)] {
            let run = |kernel: bool| {
                let xt = x.clone().leaky_traced();
                let y = if kernel {
                    <Cpu as Backend<E>>::softmax_kernel(xt, mult, os, gs)
                } else {
                    generic::softmax(xt, mult, os, gs)
                }
                .unwrap();
                let (out, g) = backward(y, &r);
                vec![out, f64s(&g.get(&x))]
            };
            compare::<E>("softmax", &run(true), &run(false));
        }
    }
}

/// Simulated precision with nearest rounding (deterministic, so the `Cpu` kernel and the host
/// path must agree exactly): the rounded value or gradient, the straight-through path, and the
/// overflow/underflow counts, for FP8 (the kernel's f32 path) and bf16 (its generic path).
fn quantise<E: Real>()
where
    Cpu: Backend<E>,
{
    use std::sync::{Arc, Mutex};
    use umup::formats::{Format, QuantStats, Rounding};
    use umup::ops::Quantise;
    let mut rig = Rig::new(14);
    let x = rig.randn::<_, E>((9, 37)) * E::from_f64(300.0).unwrap();
    let r = rig.randn::<_, E>((9, 37)) * E::from_f64(1e4).unwrap();
    for format in [Format::GcE4m3, Format::E5m2, Format::Bf16] {
        for forward in [true, false] {
            let q = Quantise {
                format,
                rounding: Rounding::Nearest,
                seed: 5,
                forward,
            };
            let run = |kernel: bool| {
                let stats = Arc::new(Mutex::new(QuantStats::default()));
                let xt = x.clone().leaky_traced();
                let (y, fwd) = if kernel {
                    <Cpu as Backend<E>>::quantise_kernel(xt, q, Arc::clone(&stats))
                } else {
                    generic::quantise(xt, q, Arc::clone(&stats))
                }
                .unwrap();
                let (out, g) = backward(y, &r);
                let bwd = *stats.lock().unwrap();
                (vec![out, f64s(&g.get(&x))], fwd, bwd)
            };
            let (k, g) = (run(true), run(false));
            compare::<E>(&format!("quantise {format} forward {forward}"), &k.0, &g.0);
            assert_eq!((k.1, k.2), (g.1, g.2), "{format} forward {forward}: counts");
            let counted = if forward { k.1 } else { k.2 };
            assert_eq!(counted.total, 9 * 37);
        }
    }
}

/// The fused quantised linear and attention kernels against the same roundings as separate
/// `quantise_kernel` calls around the plain kernels (same seeds, nearest and stochastic): the
/// same values, gradients and counts.
fn quantised_kernels<E: Real>()
where
    Cpu: Backend<E>,
{
    use std::sync::{Arc, Mutex};
    use umup::formats::{Format, QuantStats, Rounding};
    use umup::ops::Quantise;
    type K = Cpu;
    let mut rig = Rig::new(15);
    let big = E::from_f64(30.0).unwrap();
    let x = rig.randn::<_, E>((13, 12)) * big;
    let w = rig.randn::<_, E>((5, 12));
    let b = rig.randn::<_, E>((5,));
    let r = rig.randn::<_, E>((13, 5)) * E::from_f64(1e3).unwrap();
    let s = LinearScales {
        output: 0.37,
        grad_input: 1.9,
        grad_weight: 0.61,
    };
    let (batch, seq, heads, d_head) = (2, 7, 2, 3);
    let shape = AttnShape {
        batch,
        seq,
        heads,
        d_head,
        layout: AttnLayout::Rows,
    };
    let qkv: Vec<_> = (0..3)
        .map(|_| rig.randn::<_, E>((batch * seq, heads * d_head)) * big)
        .collect();
    let ra = rig.randn::<_, E>((batch * seq, heads * d_head)) * E::from_f64(1e3).unwrap();
    for rounding in [Rounding::Nearest, Rounding::Stochastic] {
        let spec = |seed, forward, format| Quantise {
            format,
            rounding,
            seed,
            forward,
        };
        let (f, g) = (Format::GcE4m3, Format::GcE5m2);
        let fwd2 = [spec(1, true, f), spec(2, true, f)];
        let fwd3 = [spec(1, true, f), spec(2, true, f), spec(3, true, f)];
        let bwd = spec(9, false, g);
        let run_lin = |fused: bool| {
            let stats = Arc::new(Mutex::new(QuantStats::default()));
            let xt = x.clone().leaky_traced();
            let (y, counts) = if fused {
                K::linear_quantised_kernel(
                    xt,
                    w.retaped(),
                    Some(b.retaped()),
                    s,
                    Some(fwd2),
                    Some(bwd),
                    Arc::clone(&stats),
                )
                .unwrap()
            } else {
                let (xq, c1) = K::quantise_kernel(xt, fwd2[0], Arc::clone(&stats)).unwrap();
                let (wq, c2) =
                    K::quantise_kernel(w.retaped(), fwd2[1], Arc::clone(&stats)).unwrap();
                let y = K::linear_kernel(xq, wq, Some(b.retaped()), s).unwrap();
                let (y, _) = K::quantise_kernel(y, bwd, Arc::clone(&stats)).unwrap();
                let mut c = c1;
                c.merge(c2);
                (y, c)
            };
            let (out, gr) = backward(y, &r);
            let got = vec![out, f64s(&gr.get(&x)), f64s(&gr.get(&w)), f64s(&gr.get(&b))];
            let bstats = *stats.lock().unwrap();
            (got, counts, bstats)
        };
        let (l1, l2) = (run_lin(true), run_lin(false));
        compare::<E>("quantised linear", &l1.0, &l2.0);
        assert_eq!((l1.1, l1.2), (l2.1, l2.2), "quantised linear counts");
        let run_attn = |fused: bool| {
            let stats = Arc::new(Mutex::new(QuantStats::default()));
            let t: Vec<_> = qkv.iter().map(|t| t.clone().leaky_traced()).collect();
            let [q, k, v]: [_; 3] = t.try_into().unwrap();
            let (y, counts) = if fused {
                K::attention_rows_quantised_kernel(
                    q,
                    k,
                    v,
                    shape,
                    0.3,
                    1.7,
                    true,
                    (Some(fwd3), Some(bwd), Arc::clone(&stats)),
                )
                .unwrap()
            } else {
                let mut c = QuantStats::default();
                let mut rq = |t, q| {
                    let (t, cc) = K::quantise_kernel(t, q, Arc::clone(&stats)).unwrap();
                    c.merge(cc);
                    t
                };
                let (q, k, v) = (rq(q, fwd3[0]), rq(k, fwd3[1]), rq(v, fwd3[2]));
                let y = K::attention_rows_kernel(q, k, v, shape, 0.3, 1.7, true).unwrap();
                (K::quantise_kernel(y, bwd, Arc::clone(&stats)).unwrap().0, c)
            };
            let (out, gr) = backward(y, &ra);
            let mut v = vec![out];
            v.extend(qkv.iter().map(|t| f64s(&gr.get(t))));
            let bstats = *stats.lock().unwrap();
            (v, counts, bstats)
        };
        let (a, b2) = (run_attn(true), run_attn(false));
        compare::<E>("quantised attention", &a.0, &b2.0);
        assert_eq!((a.1, a.2), (b2.1, b2.2), "quantised attention counts");
    }
}

fn cross_entropy<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(7);
    for (rows, classes) in [(13, 11), (1, 2), (50, 257)] {
        let x = rig.randn::<_, E>((rows, classes));
        let targets: Vec<usize> = (0..rows).map(|i| (i * 7 + 3) % classes).collect();
        let run = |kernel: bool| {
            let xt = x.clone().leaky_traced();
            let (m, vs, gc) = (1.3, 1.0 / rows as f64, 0.9);
            let y = if kernel {
                <Cpu as Backend<E>>::cross_entropy_kernel(xt, &targets, m, vs, gc)
            } else {
                generic::cross_entropy(xt, &targets, m, vs, gc)
            }
            .unwrap();
            // A non-unit upstream gradient: 2.5 × the loss.
            let out = vec![y.array().to_f64().unwrap()];
            let g = (y * E::from_f64(2.5).unwrap()).backward();
            vec![out, f64s(&g.get(&x))]
        };
        compare::<E>("cross_entropy", &run(true), &run(false));
    }
}

fn embedding<E: Real>()
where
    Cpu: Backend<E>,
{
    let mut rig = Rig::new(8);
    let table = rig.randn::<_, E>((11, 6));
    let ids: Vec<usize> = vec![3, 0, 10, 3, 3, 7, 0];
    let r = rig.randn::<_, E>((ids.len(), 6));
    let run = |kernel: bool| {
        let t = rig_ids(&table, &ids);
        let y = if kernel {
            <Cpu as Backend<E>>::embedding_kernel(t, &table, 0.7)
        } else {
            generic::embedding(t, &table, 0.7)
        }
        .unwrap();
        let (out, g) = backward(y, &r);
        vec![out, f64s(&g.get(&table))]
    };
    compare::<E>("embedding", &run(true), &run(false));
}

fn rig_ids<E: Dtype>(
    table: &Tensor<(usize, usize), E, Cpu>,
    ids: &[usize],
) -> Tensor<(usize,), usize, Cpu, OwnedTape<E, Cpu>> {
    let dev = table.device().clone();
    dev.tensor_from_vec(ids.to_vec(), (ids.len(),))
        .traced(Gradients::leaky())
}

/// The public ops route through the kernels: `ops::linear` equals the kernel call.
#[test]
fn public_ops_run_the_kernels() {
    let mut rig = Rig::new(9);
    let x = rig.randn::<_, f64>((6, 4));
    let w = rig.randn::<_, f64>((3, 4));
    let y = ops::linear(x.clone(), &w, None, umup::Constraint::None).unwrap();
    let s = umup::scales::linear(4, 3, 6, umup::Constraint::None).unwrap();
    let k = <Cpu as Backend<f64>>::linear_kernel(x, w.retaped(), None, s).unwrap();
    assert_eq!(y.as_vec(), k.as_vec());
}

macro_rules! both {
    ($($name:ident),*) => {$(
        mod $name {
            #[test]
            fn f32() {
                super::$name::<f32>();
            }
            #[test]
            fn f64() {
                super::$name::<f64>();
            }
        }
    )*};
}
both!(
    linear,
    conv1d,
    matmul,
    attention,
    norms,
    add,
    silu_glu,
    silu_glu_linear,
    gelu_linear,
    swiglu_mlp,
    gelu_mlp,
    gelu,
    silu,
    softmax,
    quantise,
    quantised_kernels,
    cross_entropy,
    embedding
);

/// Row-major transpose (test helper).
fn transposed<E: Copy>(a: &[E], rows: usize, cols: usize) -> Vec<E> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| a[r * cols + c]))
        .collect()
}

/// The one `unsafe` front end, `ops::cpu::gemm`, against dfdx's matmul: transposed and strided
/// operands, one thread and all, overwrite and accumulate, into a block of a wider matrix
/// whose other cells must stay untouched.
fn gemm<E: Real + umup::ops::cpu::Real>()
where
    Cpu: Backend<E>,
{
    use umup::ops::cpu::{Threads, View, ViewMut};
    let mut rig = Rig::new(10);
    let of = |v: f64| E::from_f64(v).unwrap();
    for (m, k, n) in [(5, 7, 3), (64, 48, 80), (130, 70, 90), (1, 33, 1)] {
        let a = rig.randn::<_, E>((m, k));
        let b = rig.randn::<_, E>((k, n));
        let c = rig.randn::<_, E>((m, n));
        let (av, bv, cv) = (a.as_vec(), b.as_vec(), c.as_vec());
        let ab = a.matmul(b) * of(0.7);
        let product = f64s(&ab);
        let accumulated = f64s(&(ab + c));
        let (at, bt) = (transposed(&av, m, k), transposed(&bv, k, n));
        let pad = 5;
        let mut a_wide = vec![of(f64::NAN); m * (k + pad)];
        for r in 0..m {
            a_wide[r * (k + pad) + 3..r * (k + pad) + 3 + k]
                .copy_from_slice(&av[r * k..(r + 1) * k]);
        }
        for (case, threads) in [
            (0, Threads::One),
            (1, Threads::All),
            (2, Threads::One),
            (3, Threads::All),
        ] {
            let lhs = match case {
                1 => View::rows(&at, k, m).t(),
                3 => View::block(&a_wide, 3, m, k, k + pad),
                _ => View::rows(&av, m, k),
            };
            let rhs = match case {
                2 | 3 => View::rows(&bt, n, k).t(),
                _ => View::rows(&bv, k, n),
            };
            for accumulate in [false, true] {
                let (dw, sentinel) = (n + 2, of(123.0));
                let mut dst = vec![sentinel; m * dw];
                for r in 0..m {
                    for j in 0..n {
                        dst[r * dw + 1 + j] = if accumulate {
                            cv[r * n + j]
                        } else {
                            of(f64::NAN)
                        };
                    }
                }
                umup::ops::cpu::gemm(
                    ViewMut::block(&mut dst, 1, m, n, dw),
                    accumulate,
                    lhs,
                    rhs,
                    of(0.7),
                    threads,
                );
                let mut got = Vec::with_capacity(m * n);
                for r in 0..m {
                    got.extend(
                        dst[r * dw + 1..r * dw + 1 + n]
                            .iter()
                            .map(|v| v.to_f64().unwrap()),
                    );
                    assert!(
                        dst[r * dw] == sentinel && dst[r * dw + n + 1] == sentinel,
                        "gemm wrote outside its destination block"
                    );
                }
                let want = if accumulate { &accumulated } else { &product };
                compare::<E>(
                    &format!("gemm ({m}, {k}, {n}) case {case} accumulate {accumulate}"),
                    &[got],
                    std::slice::from_ref(want),
                );
            }
        }
    }
}
both!(gemm);

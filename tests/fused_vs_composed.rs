//! Each fused op against the same computation composed from primitive ops, forward and
//! backward: softmax, log_softmax, RMSNorm, attention and token log-probs. On the CPU in
//! f64 (tolerance 1e-9) and on the GPU in f32 (tolerance 1e-4; 1e-3 for attention).
//! This is what catches a fused kernel that silently cuts the gradient graph.

mod common;
use common::*;
use ponder::tensor::CpuData;
use ponder::{AttnOpts, DType, Device, Result, Tensor};

/// Same inputs through `fused` and `composed`; compare outputs and every input gradient.
fn compare(
    name: &str,
    inputs: &[Tensor],
    dev: Device,
    tol: f64,
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let s = seed(name);
    let prep = |t: &Tensor| -> Tensor {
        let t = if dev == Device::Cpu {
            to_f64(t)
        } else {
            t.to_device(dev).unwrap()
        };
        t.requires_grad_()
    };
    let xa: Vec<Tensor> = inputs.iter().map(prep).collect();
    let xb: Vec<Tensor> = inputs.iter().map(prep).collect();
    let (ya, yb) = (fused(&xa).unwrap(), composed(&xb).unwrap());
    assert_eq!(ya.shape(), yb.shape(), "{name}: shapes differ");
    assert_close(
        &format!("{name} forward"),
        &ya.to_vec_f64().unwrap(),
        &yb.to_vec_f64().unwrap(),
        tol,
        tol,
    );
    let r = randn(ya.shape(), s);
    let r = if dev == Device::Cpu {
        to_f64(&r)
    } else {
        r.to_device(dev).unwrap()
    };
    ya.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    yb.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    for (k, (a, b)) in xa.iter().zip(&xb).enumerate() {
        let ga = a
            .grad()
            .unwrap_or_else(|| panic!("{name}: fused op gave input {k} no gradient"))
            .to_vec_f64()
            .unwrap();
        let gb = b.grad().unwrap().to_vec_f64().unwrap();
        assert_close(&format!("{name} grad {k}"), &ga, &gb, tol, tol);
    }
}

fn devices(test: &str) -> Vec<(Device, f64)> {
    let mut v = vec![(Device::Cpu, 1e-9)];
    if gpu_ok(test) {
        v.push((Device::Gpu, 1e-4));
    }
    v
}

fn softmax_composed(x: &Tensor, log: bool) -> Result<Tensor> {
    let m = x.detach().max(-1, true)?;
    let z = x.sub(&m)?;
    let e = z.exp()?;
    let s = e.sum(-1, true)?;
    if log {
        z.sub(&s.log()?)
    } else {
        e.div(&s)
    }
}

#[test]
fn softmax() {
    for (dev, tol) in devices("fused softmax") {
        let x = randn(&[5, 33], seed("softmax input")).scale(2.0).unwrap();
        compare(
            "softmax",
            std::slice::from_ref(&x),
            dev,
            tol,
            |t| t[0].softmax(),
            |t| softmax_composed(&t[0], false),
        );
        compare(
            "log_softmax",
            &[x],
            dev,
            tol,
            |t| t[0].log_softmax(),
            |t| softmax_composed(&t[0], true),
        );
    }
}

#[test]
fn rmsnorm() {
    for (dev, tol) in devices("fused rmsnorm") {
        let s = seed("rmsnorm input");
        compare(
            "rms_norm",
            &[randn(&[7, 33], s), randn(&[33], s + 1)],
            dev,
            tol * 10.0,
            |t| t[0].rms_norm(&t[1], 1e-6),
            |t| {
                // x * rsqrt(mean(x^2) + eps) * w
                let ms = t[0].mul(&t[0])?.mean(-1, true)?;
                t[0].mul(&ms.add_scalar(1e-6)?.rsqrt()?)?.mul(&t[1])
            },
        );
    }
}

/// The (B, 1, T, S) mask: 1 where query t may see key j.
fn attn_mask(
    b: usize,
    t: usize,
    s: usize,
    causal: bool,
    ranges: Option<&[u32]>,
    dt: DType,
    dev: Device,
) -> Tensor {
    let mut m = vec![0.0f64; b * t * s];
    for bi in 0..b {
        let (lo, hi) = ranges
            .map(|r| (r[2 * bi] as usize, r[2 * bi + 1] as usize))
            .unwrap_or((0, s));
        for ti in 0..t {
            for j in 0..s {
                let ok = j >= lo && j < hi && (!causal || j <= ti + s - t);
                m[(bi * t + ti) * s + j] = ok as u8 as f64;
            }
        }
    }
    let m = Tensor::from_vec_f64(m, &[b, 1, t, s]).unwrap();
    if dt == DType::F64 {
        m
    } else {
        m.to_dtype(DType::F32).unwrap().to_device(dev).unwrap()
    }
}

/// softmax(q k^T * scale + mask) v, with the kv heads repeated for grouped-query attention.
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    ranges: Option<&[u32]>,
) -> Result<Tensor> {
    let (b, t, nh, hd) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (s, nkv) = (k.shape()[1], k.shape()[2]);
    let g = nh / nkv;
    let repeat = |x: &Tensor| -> Result<Tensor> {
        // (B, S, NKV, HD) -> (B, NH, S, HD), kv head h / g for query head h
        x.permute(&[0, 2, 1, 3])?
            .unsqueeze(2)?
            .broadcast_to(&[b, nkv, g, s, hd])?
            .contiguous()?
            .reshape(&[b, nh, s, hd])
    };
    let qh = q.permute(&[0, 2, 1, 3])?.contiguous()?; // (B, NH, T, HD)
    let (kh, vh) = (repeat(k)?, repeat(v)?);
    let scores = qh.matmul(&kh.t()?)?.scale(1.0 / (hd as f64).sqrt())?; // (B, NH, T, S)
    let mask = attn_mask(b, t, s, causal, ranges, q.dtype(), q.device());
    let neg = scores.full_like(-1e9)?;
    let p = Tensor::where_cond(&mask, &scores, &neg)?.softmax()?;
    p.matmul(&vh)?.permute(&[0, 2, 1, 3])?.contiguous() // (B, T, NH, HD)
}

#[test]
fn attention() {
    for (dev, tol) in devices("fused attention") {
        let s = seed("attention input");
        for &(b, t, sl, nh, nkv, hd, causal) in &[
            (2, 7, 7, 4, 2, 8, true),
            (1, 5, 9, 3, 1, 16, true),
            (2, 6, 6, 2, 2, 4, false),
        ] {
            let (q, k, v) = (
                randn(&[b, t, nh, hd], s),
                randn(&[b, sl, nkv, hd], s + 1),
                randn(&[b, sl, nkv, hd], s + 2),
            );
            let opts = AttnOpts {
                causal,
                ..Default::default()
            };
            compare(
                "attention",
                &[q, k, v],
                dev,
                tol * 10.0,
                |x| Tensor::attention(&x[0], &x[1], &x[2], &opts),
                |x| attention_composed(&x[0], &x[1], &x[2], causal, None),
            );
        }
        // right padding under a causal mask; left and right padding without one (no row
        // is fully masked, where the fused op's convention, a zero output, differs)
        for (ranges, causal) in [([0u32, 6, 0, 4], true), ([2, 6, 1, 5], false)] {
            let rt = Tensor::from_u32(ranges.to_vec(), &[2, 2], dev).unwrap();
            let (q, k, v) = (
                randn(&[2, 6, 2, 8], s),
                randn(&[2, 6, 1, 8], s + 1),
                randn(&[2, 6, 1, 8], s + 2),
            );
            let opts = AttnOpts {
                causal,
                kv_ranges: Some(rt),
                ..Default::default()
            };
            compare(
                "attention ranges",
                &[q, k, v],
                dev,
                tol * 10.0,
                |x| Tensor::attention(&x[0], &x[1], &x[2], &opts),
                |x| attention_composed(&x[0], &x[1], &x[2], causal, Some(&ranges)),
            );
        }
    }
}

#[test]
fn token_logprobs() {
    for (dev, tol) in devices("fused logprobs") {
        let s = seed("logprob input");
        let targets = vec![3i32, -100, 0, 32, 17];
        let tg = Tensor::from_cpu_data(CpuData::I32(targets.clone()), &[5])
            .unwrap()
            .to_device(dev)
            .unwrap();
        compare(
            "token_logprobs",
            &[randn(&[5, 33], s).scale(3.0).unwrap()],
            dev,
            tol,
            |t| t[0].token_logprobs(&tg),
            |t| {
                // sum(log_softmax(x) * onehot(targets), -1); ignored rows have an all-zero one-hot
                let mut oh = vec![0.0f64; 5 * 33];
                for (n, &tt) in targets.iter().enumerate() {
                    if tt >= 0 {
                        oh[n * 33 + tt as usize] = 1.0;
                    }
                }
                let oh = Tensor::from_vec_f64(oh, &[5, 33])?;
                let oh = if t[0].dtype() == DType::F64 {
                    oh
                } else {
                    oh.to_dtype(DType::F32)?.to_device(dev)?
                };
                t[0].log_softmax()?.mul(&oh)?.sum(-1, false)
            },
        );
    }
}

#[test]
fn chunked_lm_head_logprobs() {
    // the chunked LM head + log-softmax + gather against the whole-logits path, forward
    // and the gradients of h and W, for chunks of 1, 4 and all rows; one row ignored
    use ponder::ops::lm_head::lm_head_logprobs;
    for (dev, tol) in devices("chunked lm head") {
        let s = seed("lm head input");
        let (k, c, v) = (13, 9, 37);
        let targets: Vec<i32> = (0..k as i32)
            .map(|i| if i == 5 { -100 } else { (i * 7 + 3) % v as i32 })
            .collect();
        let tg = Tensor::from_cpu_data(CpuData::I32(targets), &[k])
            .unwrap()
            .to_device(dev)
            .unwrap();
        // keep 0: the backward recomputes the logits; usize::MAX: it reads the forward's
        for (chunk, keep) in [(1, 0), (4, 0), (100, 0), (4, usize::MAX), (100, usize::MAX)] {
            compare(
                &format!("lm_head chunk {chunk} keep {keep}"),
                &[randn(&[k, c], s), randn(&[v, c], s + 1).scale(0.7).unwrap()],
                dev,
                tol,
                |t| Ok(lm_head_logprobs(&t[0], &t[1], &tg, chunk, keep, false)?.0),
                |t| t[0].matmul(&t[1].t()?)?.token_logprobs(&tg),
            );
        }
        // kept logits are the recomputed ones: the gradients agree bit for bit
        let grads = |keep: usize| {
            let h = randn(&[k, c], s + 4)
                .to_device(dev)
                .unwrap()
                .requires_grad_();
            let w = randn(&[v, c], s + 5)
                .to_device(dev)
                .unwrap()
                .requires_grad_();
            let (lp, _) = lm_head_logprobs(&h, &w, &tg, 4, keep, false).unwrap();
            lp.sum_all().unwrap().backward().unwrap();
            [h, w].map(|t| t.grad().unwrap().to_vec_f64().unwrap())
        };
        let (kept, recomputed) = (grads(usize::MAX), grads(0));
        assert_eq!(kept[0], recomputed[0], "dh, kept vs recomputed logits");
        assert_eq!(kept[1], recomputed[1], "dW, kept vs recomputed logits");
        // chunk size never changes a result beyond 1e-6, logit sums included
        let h = randn(&[k, c], s + 2).to_device(dev).unwrap();
        let w = randn(&[v, c], s + 3).to_device(dev).unwrap();
        let (a, sa) = lm_head_logprobs(&h, &w, &tg, 1, 0, true).unwrap();
        let (b, sb) = lm_head_logprobs(&h, &w, &tg, k, 0, true).unwrap();
        assert_close(
            "chunk 1 vs all",
            &a.to_vec_f64().unwrap(),
            &b.to_vec_f64().unwrap(),
            1e-6,
            0.0,
        );
        assert_close(
            "logit sums, chunk 1 vs all",
            &sa.unwrap().to_vec_f64().unwrap(),
            &sb.unwrap().to_vec_f64().unwrap(),
            1e-5,
            1e-6,
        );
    }
}

/// `x.linear_many(&[w..])` against `x.matmul(&w.t())` for each weight: without a gradient
/// on the CPU the products run as one pass (decoding's shapes), which must give the same
/// bits as the separate products; with a gradient they are the separate products, so the
/// gradients match too. Shapes: decoding's q/k/v and gate/up, awkward row counts and
/// widths, and a set where one weight is too small for the one pass (all go separately).
#[test]
fn linear_many_is_the_separate_products() {
    let s = seed("linear_many");
    let cases: &[(usize, usize, usize, &[usize])] = &[
        (96, 1, 576, &[576, 192, 192]),
        (3, 11, 576, &[1536, 1536]),
        (40, 1, 130, &[200, 131, 66]),
        (9, 1, 100, &[7, 300]),
        (1, 17, 64, &[64, 6]),
        (2, 2, 64, &[64, 64]),
    ];
    for (ci, &(b, t, k, ns)) in cases.iter().enumerate() {
        let cs = s.wrapping_add(ci as u64 * 31);
        let x = randn(&[b, t, k], cs);
        let ws: Vec<Tensor> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| randn(&[n, k], cs + 1 + i as u64))
            .collect();
        let wr: Vec<&Tensor> = ws.iter().collect();
        let many = ponder::no_grad(|| x.linear_many(&wr)).unwrap();
        assert_eq!(many.len(), ns.len());
        for (i, (y, w)) in many.iter().zip(&ws).enumerate() {
            let want = x.matmul(&w.t().unwrap()).unwrap();
            assert_eq!(y.shape(), want.shape(), "case {ci} weight {i}: shape");
            let (got, want) = (y.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
            let diff = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                diff.is_none(),
                "case {ci} ({b}x{t}x{k}) weight {i}: element {} differs: {} vs {}",
                diff.unwrap(),
                got[diff.unwrap()],
                want[diff.unwrap()]
            );
            // and the product itself, against f64
            let want64 = to_f64(&x)
                .matmul(&to_f64(w).t().unwrap())
                .unwrap()
                .to_vec_f64()
                .unwrap();
            let got64: Vec<f64> = got.iter().map(|&v| v as f64).collect();
            assert_close(
                &format!("linear_many case {ci} weight {i}"),
                &got64,
                &want64,
                1e-4,
                1e-5,
            );
        }
    }
    // with a gradient: the same values, and gradients flow to the input and every weight
    let (x, w1, w2) = (
        randn(&[2, 3, 8], s),
        randn(&[5, 8], s + 1),
        randn(&[4, 8], s + 2),
    );
    compare(
        "linear_many grad",
        &[x, w1, w2],
        Device::Cpu,
        1e-9,
        |v| {
            let ys = v[0].linear_many(&[&v[1], &v[2]])?;
            ys[0].sum_all()?.add(&ys[1].sum_all()?)
        },
        |v| {
            let (a, b) = (v[0].matmul(&v[1].t()?)?, v[0].matmul(&v[2].t()?)?);
            a.sum_all()?.add(&b.sum_all()?)
        },
    );
}

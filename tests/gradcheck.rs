//! Finite-difference gradient checks for every differentiable op, on the CPU backend in
//! f64: central differences with eps 1e-6 against the hand-written backward, tolerance
//! 1e-6 absolute + 1e-5 relative. Inputs are random (seed printed) and avoid the kinks of
//! relu/abs/max by construction of random data.

mod common;
use common::*;
use ponder::backend::UnaryOp;
use ponder::{AttnOpts, Device, Tensor};

#[test]
fn unary_ops() {
    let s = seed("grad unary");
    for op in [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Silu,
        UnaryOp::Sigmoid,
        UnaryOp::LogSigmoid,
        UnaryOp::Relu,
        UnaryOp::Abs,
        UnaryOp::Affine(-1.5, 0.5),
        UnaryOp::Powf(3.0),
    ] {
        gradcheck(op.name(), &[randn(&[3, 5], s)], |t| t[0].unary(op));
    }
    for op in [
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Powf(-0.7),
    ] {
        gradcheck(op.name(), &[uniform(&[7], 0.3, 2.0, s)], |t| t[0].unary(op));
    }
}

#[test]
fn binary_ops_broadcasting_and_where() {
    let s = seed("grad binary");
    let (a, b) = (randn(&[2, 3, 4], s), uniform(&[3, 1], 0.5, 2.0, s + 1));
    gradcheck("add", &[a.clone(), b.clone()], |t| t[0].add(&t[1]));
    gradcheck("sub", &[a.clone(), b.clone()], |t| t[0].sub(&t[1]));
    gradcheck("mul", &[a.clone(), b.clone()], |t| t[0].mul(&t[1]));
    gradcheck("div", &[a.clone(), b.clone()], |t| t[0].div(&t[1]));
    gradcheck("maximum", &[a.clone(), randn(&[4], s + 2)], |t| {
        t[0].maximum(&t[1])
    });
    gradcheck("minimum", &[a.clone(), randn(&[4], s + 3)], |t| {
        t[0].minimum(&t[1])
    });
    let c = Tensor::from_vec_f64(
        (0..12).map(|i| (i % 3 == 0) as u8 as f64).collect(),
        &[3, 4],
    )
    .unwrap();
    gradcheck("where", &[a.clone(), randn(&[4], s + 4)], |t| {
        Tensor::where_cond(&c, &t[0], &t[1])
    });
}

#[test]
fn reductions() {
    let s = seed("grad reduce");
    let x = randn(&[3, 4, 5], s);
    for d in 0..3 {
        gradcheck("sum", std::slice::from_ref(&x), |t| t[0].sum(d, false));
        gradcheck("mean", std::slice::from_ref(&x), |t| t[0].mean(d, true));
        gradcheck("max", std::slice::from_ref(&x), |t| t[0].max(d, false));
    }
    gradcheck("sum_all", std::slice::from_ref(&x), |t| t[0].sum_all());
}

#[test]
fn matmul_variants() {
    let s = seed("grad matmul");
    gradcheck(
        "matmul 2d",
        &[randn(&[3, 4], s), randn(&[4, 5], s + 1)],
        |t| t[0].matmul(&t[1]),
    );
    gradcheck(
        "matmul batched",
        &[randn(&[2, 3, 4], s), randn(&[2, 4, 5], s + 1)],
        |t| t[0].matmul(&t[1]),
    );
    gradcheck(
        "matmul x @ w^T",
        &[randn(&[2, 3, 4], s), randn(&[5, 4], s + 1)],
        |t| t[0].matmul(&t[1].t()?),
    );
    gradcheck(
        "matmul 2d @ batched",
        &[randn(&[3, 4], s), randn(&[2, 4, 5], s + 1)],
        |t| t[0].matmul(&t[1]),
    );
    gradcheck(
        "matmul x^T @ y",
        &[randn(&[2, 4, 3], s), randn(&[2, 4, 5], s + 1)],
        |t| t[0].t()?.matmul(&t[1]),
    );
}

#[test]
fn movement() {
    let s = seed("grad movement");
    let x = randn(&[2, 3, 4], s);
    gradcheck("reshape", std::slice::from_ref(&x), |t| {
        t[0].reshape(&[6, 4])
    });
    gradcheck("permute", std::slice::from_ref(&x), |t| {
        t[0].permute(&[2, 0, 1])?.contiguous()
    });
    gradcheck("narrow", std::slice::from_ref(&x), |t| t[0].narrow(2, 1, 2));
    gradcheck("broadcast", &[randn(&[3, 1], s)], |t| {
        t[0].broadcast_to(&[2, 3, 4])
    });
    gradcheck("cat", &[x.clone(), randn(&[2, 1, 4], s + 1)], |t| {
        Tensor::cat(&[&t[0], &t[1]], 1)
    });
    gradcheck("unsqueeze/squeeze", std::slice::from_ref(&x), |t| {
        t[0].unsqueeze(1)?.squeeze(1)
    });
}

#[test]
fn fused_ops() {
    let s = seed("grad fused");
    gradcheck("softmax", &[randn(&[3, 7], s)], |t| t[0].softmax());
    gradcheck("log_softmax", &[randn(&[3, 7], s)], |t| t[0].log_softmax());
    gradcheck("rms_norm", &[randn(&[4, 6], s), randn(&[6], s + 1)], |t| {
        t[0].rms_norm(&t[1], 1e-5)
    });
    let (cos, sin) = (
        to_f64(&uniform(&[2, 3, 4], -1.0, 1.0, s)),
        to_f64(&uniform(&[2, 3, 4], -1.0, 1.0, s + 1)),
    );
    gradcheck("rope", &[randn(&[2, 3, 2, 4], s)], |t| {
        t[0].rope(&cos, &sin)
    });
    gradcheck("swiglu", &[randn(&[3, 5], s), randn(&[3, 5], s + 1)], |t| {
        t[0].swiglu(&t[1])
    });
    let ids = Tensor::from_u32(vec![2, 0, 2, 4], &[2, 2], Device::Cpu).unwrap();
    gradcheck("embedding", &[randn(&[5, 3], s)], |t| t[0].embedding(&ids));
    let tg =
        Tensor::from_cpu_data(ponder::tensor::CpuData::I32(vec![3, -100, 0, 6]), &[4]).unwrap();
    gradcheck("token_logprobs", &[randn(&[4, 7], s)], |t| {
        t[0].token_logprobs(&tg)
    });
    gradcheck("cross_entropy", &[randn(&[4, 7], s)], |t| {
        t[0].cross_entropy(&tg, -100)
    });
}

#[test]
fn attention() {
    let s = seed("grad attention");
    // GQA (4 query heads over 2 kv heads), causal, S > T (a cache prefix)
    let (q, k, v) = (
        randn(&[2, 3, 4, 4], s),
        randn(&[2, 5, 2, 4], s + 1),
        randn(&[2, 5, 2, 4], s + 2),
    );
    let causal = AttnOpts {
        causal: true,
        ..Default::default()
    };
    gradcheck(
        "attention causal gqa",
        &[q.clone(), k.clone(), v.clone()],
        |t| Tensor::attention(&t[0], &t[1], &t[2], &causal),
    );
    let full = AttnOpts::default();
    gradcheck("attention full", &[q.clone(), k.clone(), v.clone()], |t| {
        Tensor::attention(&t[0], &t[1], &t[2], &full)
    });
    let ranges = AttnOpts {
        causal: true,
        kv_ranges: Some(Tensor::from_u32(vec![1, 5, 0, 3], &[2, 2], Device::Cpu).unwrap()),
        scale: Some(0.3),
        ..Default::default()
    };
    gradcheck("attention ranges", &[q, k, v], |t| {
        Tensor::attention(&t[0], &t[1], &t[2], &ranges)
    });
}

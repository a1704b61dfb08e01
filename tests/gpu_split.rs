//! Tensors over the storage-binding limit, on the GPU against the CPU. The binding limit
//! is lowered to 4 KiB for this whole test binary (`set_binding_limit`), so every tensor
//! of more than 1,024 f32 is bound in windows and each op below runs as several
//! dispatches: the same split paths a 519 MiB embedding takes under lavapipe's 128 MiB.
//! Shapes are awkward (windows start mid-row, blocks end ragged), outputs are poisoned.
//! `tests/big_vocab.rs` runs a whole DPO step under the real limit.

mod common;
use common::*;
use ponder::{DType, Device, Tensor};

const LIMIT: u64 = 4096;

fn split_ok(name: &str) -> bool {
    if !gpu_ok(name) {
        return false;
    }
    ponder::backend::gpu::set_binding_limit(Some(LIMIT));
    true
}

/// The tensor is over the test limit, so the op under test really splits.
fn big(shape: &[usize]) {
    let bytes = shape.iter().product::<usize>() * 4;
    assert!(bytes as u64 > LIMIT, "{shape:?} fits one binding");
}

#[test]
fn elementwise_over_the_limit() {
    if !split_ok("split elementwise") {
        return;
    }
    let s = seed("split elementwise");
    big(&[129, 70]);
    let x = randn(&[129, 70], s);
    gpu_vs_cpu("exp", std::slice::from_ref(&x), true, 1e-4, |t| t[0].exp());
    gpu_vs_cpu(
        "silu of transpose",
        std::slice::from_ref(&x),
        true,
        1e-4,
        |t| t[0].t()?.silu(),
    );
    // broadcasting a bias row and a column over the big operand
    gpu_vs_cpu(
        "add bias",
        &[x.clone(), randn(&[70], s + 1)],
        true,
        1e-4,
        |t| t[0].add(&t[1]),
    );
    gpu_vs_cpu(
        "mul column",
        &[x.clone(), randn(&[129, 1], s + 2)],
        true,
        1e-4,
        |t| t[0].mul(&t[1]),
    );
    gpu_vs_cpu(
        "sub of two strided views",
        &[randn(&[70, 129], s + 3), x.clone()],
        true,
        1e-4,
        |t| t[0].t()?.sub(&t[1]),
    );
    let c = randn(&[129, 70], s + 4)
        .gt(&Tensor::scalar(0.0, Device::Cpu).unwrap())
        .unwrap();
    gpu_vs_cpu(
        "where",
        &[c, x.clone(), randn(&[70], s + 5)],
        true,
        1e-4,
        |t| Tensor::where_cond(&t[0], &t[1], &t[2]),
    );
    // a rank-3 tensor whose single leading slice is itself over the limit
    big(&[2, 40, 33]);
    gpu_vs_cpu(
        "neg rank 3",
        &[randn(&[2, 40, 33], s + 6)],
        true,
        1e-4,
        |t| t[0].neg(),
    );
    gpu_vs_cpu(
        "swiglu",
        &[x.clone(), randn(&[129, 70], s + 7)],
        true,
        1e-4,
        |t| t[0].swiglu(&t[1]),
    );
}

#[test]
fn reductions_over_the_limit() {
    if !split_ok("split reductions") {
        return;
    }
    let s = seed("split reductions");
    // (shape, dims to sum over): every reduced slice is over the limit or split in rows
    // of the whole tensor; a row of `inner` elements always fits (at 4 KiB, 1,024 f32)
    for (shape, dims) in [
        (&[2usize, 3000][..], &[1isize][..]),
        (&[3000, 2], &[0, 1]),
        (&[3, 129, 5], &[0, 1, 2]),
        (&[5000], &[0]),
    ] {
        big(shape);
        let x = randn(shape, s);
        for &d in dims {
            gpu_vs_cpu("sum", std::slice::from_ref(&x), true, 1e-3, |t| {
                t[0].sum(d, false)
            });
        }
        gpu_vs_cpu("sum_all", std::slice::from_ref(&x), true, 1e-3, |t| {
            t[0].sum_all()
        });
    }
    // max over short rows of a big tensor: blocks of whole rows
    big(&[300, 7]);
    gpu_vs_cpu("max", &[randn(&[300, 7], s + 1)], true, 1e-4, |t| {
        t[0].max(-1, false)
    });
}

#[test]
fn matmul_over_the_limit() {
    if !split_ok("split matmul") {
        return;
    }
    let s = seed("split matmul");
    // (batch, m, n, k): big A, big B, big C, and a K long enough to split
    for &(b, m, n, k) in &[
        (1, 70, 33, 40),
        (2, 33, 129, 17),
        (1, 5, 7, 3000),
        (1, 600, 520, 3),
    ] {
        matmul_layouts_vs_cpu(b, m, n, k, s);
    }
    // the LM head's shape: a wide 16-bit weight used as W^T
    for dt in [DType::BF16, DType::F16] {
        let w = randn(&[1001, 24], s + 4).to_dtype(dt).unwrap();
        gpu_vs_cpu("x @ w16^T", &[randn(&[9, 24], s + 5), w], true, 1e-3, |t| {
            t[0].matmul(&t[1].t()?)
        });
    }
}

#[test]
fn embedding_over_the_limit() {
    if !split_ok("split embedding") {
        return;
    }
    let s = seed("split embedding");
    let (v, c) = (501, 33);
    big(&[v, c]);
    let ids: Vec<u32> = (0..40).map(|i| (i * 97 + 13) % v as u32).collect();
    let ids = Tensor::from_u32(ids, &[40], Device::Cpu).unwrap();
    gpu_vs_cpu(
        "embedding",
        &[randn(&[v, c], s), ids.clone()],
        true,
        1e-4,
        |t| t[0].embedding(&t[1]),
    );
    for dt in [DType::BF16, DType::F16] {
        let w = randn(&[v, c], s + 1).to_dtype(dt).unwrap();
        gpu_vs_cpu("embedding 16-bit", &[w, ids.clone()], false, 0.0, |t| {
            t[0].embedding(&t[1])
        });
    }
}

#[test]
fn movement_casts_and_adamw_over_the_limit() {
    if !split_ok("split movement") {
        return;
    }
    let s = seed("split movement");
    let x = randn(&[3, 70, 33], s);
    big(&[3, 70, 33]);
    gpu_vs_cpu("permute", std::slice::from_ref(&x), true, 0.0, |t| {
        t[0].permute(&[2, 0, 1])?.contiguous()
    });
    gpu_vs_cpu("narrow", std::slice::from_ref(&x), true, 0.0, |t| {
        t[0].narrow(1, 3, 60)?.contiguous()
    });
    gpu_vs_cpu(
        "cat",
        &[x.clone(), randn(&[3, 9, 33], s + 1)],
        true,
        0.0,
        |t| Tensor::cat(&[&t[0], &t[1]], 1),
    );
    for dt in [DType::F16, DType::BF16] {
        gpu_vs_cpu(
            "cast round trip",
            std::slice::from_ref(&x),
            false,
            0.0,
            |t| t[0].to_dtype(dt)?.to_dtype(DType::F32),
        );
        // a 16-bit view that starts mid-buffer
        let h = randn(&[3001], s + 2).to_dtype(dt).unwrap();
        gpu_vs_cpu("cast of an offset view", &[h], false, 0.0, |t| {
            t[0].narrow(0, 7, 2990)?.to_dtype(DType::F32)
        });
    }
    // AdamW over a parameter bound in windows
    big(&[129, 70]);
    adamw_vs_cpu(&[129, 70], s + 3, 1e-6);
}

#[test]
fn row_kernels_over_the_limit() {
    if !split_ok("split rows") {
        return;
    }
    let s = seed("split rows");
    // 333 rows of 12: blocks of 64 whole rows, the last one ragged; RMSNorm's weight
    // gradient sums the blocks, forward and backward checked against the CPU
    big(&[333, 12]);
    let x = randn(&[333, 12], s);
    gpu_vs_cpu("softmax rows", std::slice::from_ref(&x), true, 1e-4, |t| {
        t[0].softmax()
    });
    gpu_vs_cpu(
        "log_softmax rows",
        std::slice::from_ref(&x),
        true,
        1e-4,
        |t| t[0].log_softmax(),
    );
    gpu_vs_cpu(
        "rms_norm rows",
        &[x.clone(), randn(&[12], s + 1)],
        true,
        1e-4,
        |t| t[0].rms_norm(&t[1], 1e-5),
    );
}

#[test]
fn rope_and_logprobs_over_the_limit() {
    if !split_ok("split rope logprobs") {
        return;
    }
    let s = seed("split rope logprobs");
    // RoPE over blocks of 64 positions (a position's 2 heads x 8 = 16 words), the tables
    // bound whole, both per-batch and shared tables; 3 x 50 positions end ragged
    big(&[3, 50, 2, 8]);
    for tb in [1, 3] {
        let x = randn(&[3, 50, 2, 8], s);
        let cos = uniform(&[tb, 50, 8], -1.0, 1.0, s + 1);
        let sin = uniform(&[tb, 50, 8], -1.0, 1.0, s + 2);
        gpu_vs_cpu("rope rows", &[x, cos, sin], true, 1e-5, |t| {
            t[0].rope(&t[1], &t[2])
        });
    }
    // token log-probs over blocks of 64 rows of 12 logits, ignored targets included
    big(&[333, 12]);
    let tg: Vec<i32> = (0..333)
        .map(|i| if i % 7 == 3 { -100 } else { (i * 5) % 12 })
        .collect();
    let tg = Tensor::from_cpu_data(ponder::tensor::CpuData::I32(tg), &[333]).unwrap();
    gpu_vs_cpu(
        "token_logprobs rows",
        &[randn(&[333, 12], s + 3).scale(2.0).unwrap(), tg],
        true,
        1e-5,
        |t| t[0].token_logprobs(&t[1]),
    );
}

#[test]
fn attention_over_the_limit() {
    if !split_ok("split attention") {
        return;
    }
    use ponder::ops::attention::SharedGroup;
    use ponder::AttnOpts;
    let s = seed("split attention");
    // (B, T, S, NH, NKV, HD): blocks of batch items (one item is 2 KiB of q), then of kv
    // groups within one item (one item's q is 5 KiB), then a non-causal cross shape; then
    // query heads within one kv group: one group's q is 9 KiB (heads in blocks of 2,
    // dk/dv summed over 3 blocks) or 5 KiB (blocks of 3 and 1 heads, over 2 items)
    for &(b, t, sl, nh, nkv, hd, causal) in &[
        (3, 16, 16, 4, 2, 8, true),
        (1, 40, 40, 4, 2, 8, true),
        (2, 6, 70, 2, 2, 8, false),
        (1, 48, 48, 6, 1, 8, true),
        (2, 40, 40, 8, 2, 8, true),
    ] {
        big(&[b, t.max(sl), nh.max(nkv), hd]);
        let q = randn(&[b, t, nh, hd], s);
        let k = randn(&[b, sl, nkv, hd], s + 1);
        let v = randn(&[b, sl, nkv, hd], s + 2);
        let opts = AttnOpts {
            causal,
            ..Default::default()
        };
        gpu_vs_cpu("attention blocks", &[q, k, v], true, 1e-4, |x| {
            Tensor::attention(&x[0], &x[1], &x[2], &opts)
        });
    }
    // key ranges follow their batch items into the blocks: padding (one range per row),
    // sequences packed end to end (one range per query), and answers packed after their
    // shared prompt (one range and hole per query)
    let cu = [vec![0, 3, 16], vec![0, 1, 2, 10], vec![0, 16]];
    for (what, r, shape) in [
        ("padding", vec![2, 16, 0, 9, 5, 12], vec![3, 2]),
        (
            "packed sequences",
            AttnOpts::packed_ranges(&cu, 16),
            vec![3, 16, 2],
        ),
        (
            "answers sharing a prompt",
            AttnOpts::shared_ranges(
                &[
                    vec![SharedGroup {
                        start: 0,
                        prompt: 3,
                        answers: vec![5, 1, 7],
                    }],
                    vec![
                        SharedGroup {
                            start: 0,
                            prompt: 1,
                            answers: vec![1],
                        },
                        SharedGroup {
                            start: 2,
                            prompt: 4,
                            answers: vec![2, 6],
                        },
                    ],
                    vec![SharedGroup {
                        start: 0,
                        prompt: 16,
                        answers: vec![],
                    }],
                ],
                16,
            ),
            vec![3, 16, 4],
        ),
    ] {
        let r = Tensor::from_u32(r, &shape, Device::Cpu).unwrap();
        let (q, k, v) = (
            randn(&[3, 16, 4, 8], s),
            randn(&[3, 16, 2, 8], s + 1),
            randn(&[3, 16, 2, 8], s + 2),
        );
        gpu_vs_cpu(
            &format!("attention blocks with {what}"),
            &[q, k, v, r],
            true,
            1e-4,
            |x| {
                let opts = AttnOpts {
                    causal: true,
                    kv_ranges: Some(x[3].clone()),
                    ..Default::default()
                };
                Tensor::attention(&x[0], &x[1], &x[2], &opts)
            },
        );
    }
}

#[test]
fn an_unsplit_kernel_names_itself() {
    if !split_ok("split refusal") {
        return;
    }
    // softmax splits over whole rows: one row (of 64, the smallest block) over the limit
    // is a clear error, not a wgpu panic
    let x = randn(&[2, 3000], seed("split refusal"))
        .to_device(Device::Gpu)
        .unwrap();
    let e = x.softmax().and_then(|y| y.to_vec_f32()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("softmax") && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
}

#[test]
fn lm_head_over_the_limit() {
    if !split_ok("split lm head") {
        return;
    }
    let s = seed("split lm head");
    // a (V, C) head over the limit; chunks of 2 rows keep each chunk's logits
    // (2 x 501 f32) under it, as the real chunking does under a real limit
    let (v, c) = (501, 24);
    big(&[v, c]);
    let tg: Vec<u32> = (0..9).map(|i| (i * 131 + 7) % v as u32).collect();
    let tg = Tensor::from_u32(tg, &[9], Device::Cpu).unwrap();
    gpu_vs_cpu(
        "lm_head_logprobs",
        &[randn(&[9, c], s), randn(&[v, c], s + 1), tg],
        true,
        1e-4,
        |t| {
            let (lp, _) = ponder::ops::lm_head::lm_head_logprobs(&t[0], &t[1], &t[2], 2, 0, false)?;
            Ok(lp)
        },
    );
    // tied: the table feeds the embedding and the head, its gradient sums both
    let ids = Tensor::from_u32(
        (0..9).map(|i| (i * 53 + 3) % v as u32).collect(),
        &[9],
        Device::Cpu,
    )
    .unwrap();
    let tg2 = Tensor::from_u32(
        (0..9).map(|i| (i * 17 + 400) % v as u32).collect(),
        &[9],
        Device::Cpu,
    )
    .unwrap();
    gpu_vs_cpu(
        "tied embedding + head",
        &[randn(&[v, c], s + 2), ids, tg2],
        true,
        1e-4,
        |t| {
            let h = t[0].embedding(&t[1])?.silu()?;
            let (lp, _) =
                ponder::ops::lm_head::lm_head_logprobs(&h, &t[0], &t[2], 2, usize::MAX, false)?;
            Ok(lp)
        },
    );
}

#[test]
fn gradient_norm_over_the_limit() {
    if !split_ok("split sum of squares") {
        return;
    }
    let s = seed("split sum of squares");
    // rows of 16,384 (each over the 4 KiB limit, so in pieces) and ragged tails: a
    // strided view, exactly two rows, a tensor smaller than a row, one with a tail
    let xs = [
        randn(&[40, 1000], s).t().unwrap(),
        randn(&[2, 16_384], s + 1),
        randn(&[999], s + 2),
        randn(&[3, 16_384 + 37], s + 3),
    ];
    let want: f64 = xs
        .iter()
        .flat_map(|x| x.to_vec_f64().unwrap())
        .map(|v| v * v)
        .sum();
    let on_gpu: Vec<Tensor> = xs
        .iter()
        .map(|x| x.to_device(Device::Gpu).unwrap())
        .collect();
    let got = ponder::backend::gpu::kernels::sum_squares(&on_gpu)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    assert_close("sum of squares", &got, &[want], 0.0, 1e-5);
    let none = ponder::backend::gpu::kernels::sum_squares(&[]).unwrap();
    assert_eq!(none.to_vec_f64().unwrap(), vec![0.0]);
}

#[test]
fn matmul_accumulate_over_the_limit() {
    if !split_ok("split add_matmul_") {
        return;
    }
    // the (V, C) accumulator of the LM head's dW over the limit: every one of its row
    // blocks adds into it
    let (v, c, k) = (501, 24, 9);
    big(&[v, c]);
    add_matmul_vs_composed(v, c, k, seed("split add_matmul_"), 1e-4);
}

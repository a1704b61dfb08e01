//! Known answers: small inputs whose results follow from the math in each comment. Run on
//! the CPU, and on the GPU too when an adapter exists.

mod common;
use common::*;
use ponder::tensor::CpuData;
use ponder::{AttnOpts, DType, Device, Tensor};

fn devices(test: &str) -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    if gpu_ok(test) {
        v.push(Device::Gpu);
    }
    v
}

fn t(v: &[f32], shape: &[usize], d: Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, d).unwrap()
}

fn vals(x: &Tensor) -> Vec<f64> {
    x.to_vec_f64().unwrap()
}

#[test]
fn elementwise_and_reductions() {
    for d in devices("known elementwise") {
        let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], d);
        let b = t(&[10.0, 20.0, 30.0], &[3], d);
        // broadcasting adds b to each row
        assert_close(
            "add",
            &vals(&a.add(&b).unwrap()),
            &[11., 22., 33., 14., 25., 36.],
            0.0,
            0.0,
        );
        // sums: over rows [5, 7, 9], over columns [6, 15]
        assert_close(
            "sum 0",
            &vals(&a.sum(0, false).unwrap()),
            &[5., 7., 9.],
            0.0,
            0.0,
        );
        assert_close(
            "sum 1",
            &vals(&a.sum(1, false).unwrap()),
            &[6., 15.],
            0.0,
            0.0,
        );
        assert_close("mean all", &vals(&a.mean_all().unwrap()), &[3.5], 1e-7, 0.0);
        // max over columns picks the last element of each row; argmax = 2
        assert_close("max", &vals(&a.max(1, false).unwrap()), &[3., 6.], 0.0, 0.0);
        assert_eq!(
            a.argmax(1, false).unwrap().to_vec_u32().unwrap(),
            vec![2, 2]
        );
        // sigmoid(0) = 1/2, log_sigmoid(0) = -ln 2, silu(1) = 1/(1+e^-1)
        let z = t(&[0.0, 1.0], &[2], d);
        assert_close(
            "sigmoid",
            &vals(&z.sigmoid().unwrap()),
            &[0.5, 1.0 / (1.0 + (-1f64).exp())],
            1e-7,
            0.0,
        );
        assert_close(
            "log_sigmoid",
            &vals(&z.log_sigmoid().unwrap()),
            &[-(2f64.ln()), -(1.0 + (-1f64).exp()).ln()],
            1e-6,
            0.0,
        );
        // (-2)^3 = -8 keeps its sign for integer powers
        assert_close(
            "powf",
            &vals(&t(&[-2.0, 3.0], &[2], d).powf(3.0).unwrap()),
            &[-8.0, 27.0],
            1e-5,
            0.0,
        );
        // transpose of a view: [[1,4],[2,5],[3,6]]
        assert_close(
            "t().contiguous()",
            &vals(&a.t().unwrap().contiguous().unwrap()),
            &[1., 4., 2., 5., 3., 6.],
            0.0,
            0.0,
        );
        // cat along dim 0
        assert_close(
            "cat",
            &vals(&Tensor::cat(&[&a, &b.unsqueeze(0).unwrap()], 0).unwrap()),
            &[1., 2., 3., 4., 5., 6., 10., 20., 30.],
            0.0,
            0.0,
        );
    }
}

#[test]
fn matmul_small() {
    for d in devices("known matmul") {
        // [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]
        let a = t(&[1., 2., 3., 4.], &[2, 2], d);
        let b = t(&[5., 6., 7., 8.], &[2, 2], d);
        assert_close(
            "matmul",
            &vals(&a.matmul(&b).unwrap()),
            &[19., 22., 43., 50.],
            1e-6,
            0.0,
        );
        // a @ b^T = [[17,23],[39,53]]
        assert_close(
            "matmul b^T",
            &vals(&a.matmul(&b.t().unwrap()).unwrap()),
            &[17., 23., 39., 53.],
            1e-6,
            0.0,
        );
    }
}

#[test]
fn softmax_rmsnorm_rope() {
    for d in devices("known fused") {
        // softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6
        let x = t(&[0.0, 2f32.ln(), 3f32.ln()], &[1, 3], d);
        assert_close(
            "softmax",
            &vals(&x.softmax().unwrap()),
            &[1. / 6., 2. / 6., 3. / 6.],
            1e-6,
            0.0,
        );
        assert_close(
            "log_softmax",
            &vals(&x.log_softmax().unwrap()),
            &[(1f64 / 6.).ln(), (2f64 / 6.).ln(), (0.5f64).ln()],
            1e-6,
            0.0,
        );
        // rms([3, 4]) = sqrt(12.5); y = x / rms * w
        let r = 12.5f64.sqrt();
        let y = t(&[3.0, 4.0], &[1, 2], d)
            .rms_norm(&t(&[1.0, 2.0], &[2], d), 0.0)
            .unwrap();
        assert_close("rms_norm", &vals(&y), &[3.0 / r, 8.0 / r], 1e-6, 0.0);
        // rope with HD = 2 rotates (x0, x1) by theta: (x0 cos - x1 sin, x1 cos + x0 sin)
        let th = 0.7f32;
        let (c, s) = (th.cos(), th.sin());
        let y = t(&[1.0, 2.0], &[1, 1, 1, 2], d)
            .rope(&t(&[c, c], &[1, 2], d), &t(&[s, s], &[1, 2], d))
            .unwrap();
        assert_close(
            "rope",
            &vals(&y),
            &[(c - 2.0 * s) as f64, (2.0 * c + s) as f64],
            1e-6,
            0.0,
        );
    }
}

#[test]
fn attention_and_logprobs() {
    for d in devices("known attention") {
        // with one key, every query's output is that key's value
        let q = t(&[0.3, -1.0, 2.0, 0.5], &[1, 2, 1, 2], d);
        let k = t(&[1.0, 1.0, 0.0, 0.0], &[1, 2, 1, 2], d);
        let v = t(&[5.0, 7.0, -1.0, 3.0], &[1, 2, 1, 2], d);
        let o = Tensor::attention(
            &q,
            &k,
            &v,
            &AttnOpts {
                causal: true,
                ..Default::default()
            },
        )
        .unwrap();
        // query 0 sees key 0 only -> (5, 7). Query 1 sees both keys with scores
        // (2 + 0.5)/sqrt2 and 0 -> softmax weights w, 1 - w
        let w = 1.0 / (1.0 + (-(2.5f64) / 2f64.sqrt()).exp());
        assert_close(
            "attention",
            &vals(&o),
            &[5.0, 7.0, 5.0 * w - (1.0 - w), 7.0 * w + 3.0 * (1.0 - w)],
            1e-5,
            0.0,
        );
        // uniform logits over V classes: log p = -ln V; ignored targets give 0
        let logits = t(&[0.5; 8], &[2, 4], d);
        let tg = Tensor::from_cpu_data(CpuData::I32(vec![3, -100]), &[2])
            .unwrap()
            .to_device(d)
            .unwrap();
        assert_close(
            "token_logprobs",
            &vals(&logits.token_logprobs(&tg).unwrap()),
            &[-(4f64.ln()), 0.0],
            1e-6,
            0.0,
        );
        // cross-entropy averages over the one counted position
        assert_close(
            "cross_entropy",
            &vals(&logits.cross_entropy(&tg, -100).unwrap()),
            &[4f64.ln()],
            1e-6,
            0.0,
        );
    }
}

#[test]
fn embedding_backward_accumulates_repeats() {
    for d in devices("known embedding") {
        // ids [1, 1, 0]: row 1 receives two gradients of ones, row 0 one, row 2 none
        let w = Tensor::from_vec(vec![0.5; 6], &[3, 2], d)
            .unwrap()
            .requires_grad_();
        let ids = Tensor::from_u32(vec![1, 1, 0], &[3], d).unwrap();
        w.embedding(&ids)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            "embedding grad",
            &vals(&w.grad().unwrap()),
            &[1., 1., 2., 2., 0., 0.],
            0.0,
            0.0,
        );
    }
}

#[test]
fn casts_round_trip() {
    for d in devices("known casts") {
        // 1.5 and -2.25 are exact in f16 and bf16; 1/3 rounds to nearest
        let x = t(&[1.5, -2.25, 1.0 / 3.0], &[3], d);
        let h = vals(
            &x.to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
        assert_close(
            "f16",
            &h,
            &[1.5, -2.25, half::f16::from_f32(1.0 / 3.0).to_f64()],
            0.0,
            0.0,
        );
        let b = vals(
            &x.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
        assert_close(
            "bf16",
            &b,
            &[1.5, -2.25, half::bf16::from_f32(1.0 / 3.0).to_f64()],
            0.0,
            0.0,
        );
    }
}

#[test]
fn adamw_first_step_moves_by_lr() {
    for d in devices("known adamw") {
        // step 1: m_hat = g, v_hat = g^2, so p -= lr * g / (|g| + eps) = lr * sign(g);
        // weight decay first scales p by (1 - lr * wd)
        let h = ponder::AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.0,
            weight_decay: 0.5,
            step: 1,
        };
        let p = t(&[1.0, -2.0], &[2], d);
        let (m, v) = (p.zeros_like().unwrap(), p.zeros_like().unwrap());
        ponder::adamw_step(&p, &t(&[0.3, -4.0], &[2], d), &m, &v, &h).unwrap();
        assert_close(
            "adamw",
            &vals(&p),
            &[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1],
            1e-6,
            0.0,
        );
    }
}

#[test]
fn no_grad_records_nothing_and_grads_accumulate() {
    let w = Tensor::from_vec(vec![2.0], &[1], Device::Cpu)
        .unwrap()
        .requires_grad_();
    let y = ponder::no_grad(|| w.mul(&w).unwrap());
    assert!(
        !y.requires_grad() && y.op_name().is_none(),
        "no_grad recorded a node"
    );
    // d(w^2)/dw = 2w = 4; two backward passes accumulate to 8; zero_grad clears
    w.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    w.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("accumulated", &vals(&w.grad().unwrap()), &[8.0], 0.0, 0.0);
    w.zero_grad();
    assert!(w.grad().is_none());
}

#[test]
fn cpu_matmul_is_deterministic_across_thread_counts() {
    let a = Tensor::randn(&[300, 200], 1.0, 5, Device::Cpu).unwrap();
    let b = Tensor::randn(&[200, 170], 1.0, 6, Device::Cpu).unwrap();
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| a.matmul(&b).unwrap().to_vec_f32().unwrap())
    };
    let (one, two, three) = (run(1), run(2), run(3));
    assert!(
        one == two && two == three,
        "matmul differs across thread counts"
    );
    assert_eq!(one, run(2), "matmul differs between runs");
}

#[test]
fn cast_backward_passes_the_gradient_through() {
    for d in devices("known cast grad") {
        // y = 2 * f32(bf16(x)): dy/dx = 2 (the cast's backward casts the gradient back)
        let x = t(&[1.5, -0.25, 3.0], &[3], d).requires_grad_();
        let y = x
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .scale(2.0)
            .unwrap();
        y.sum_all().unwrap().backward().unwrap();
        assert_close(
            "cast grad",
            &vals(&x.grad().unwrap()),
            &[2.0, 2.0, 2.0],
            0.0,
            0.0,
        );
    }
}

//! The optimizer's arena on the GPU (src/train/arena.rs): parameters, gradients and
//! moments in a few flat chunks, AdamW and the gradient norm over whole chunks. Its steps
//! must equal the CPU optimizer's, per-tensor, including a parameter without a gradient
//! (PyTorch leaves it alone), a strided gradient, clipping, parameters too large for a
//! chunk (kept in their own buffers), and a model checkpoint read back from the views.

mod common;
use ponder::train::arena::set_chunk_limit;
use ponder::train::optim::Optimizer;
use ponder::{Device, Tensor};

/// (name, shape): decaying matrices, a bias and a norm (no decay), one too large for the
/// test's 128 KiB chunks.
const PARAMS: [(&str, &[usize]); 8] = [
    ("big.weight", &[300, 200]),
    ("l.q_proj.weight", &[64, 48]),
    ("l.q_proj.bias", &[64]),
    ("l.input_layernorm.weight", &[48]),
    ("l.k_proj.weight", &[100, 70]),
    ("l.v_proj.weight", &[33, 17]),
    ("l.up_proj.weight", &[120, 100]),
    ("lm_head.weight", &[150, 100]),
];

fn params(dev: Device) -> Vec<Tensor> {
    PARAMS
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            Tensor::randn(s, 0.5, 100 + i as u64, Device::Cpu)
                .unwrap()
                .to_device(dev)
                .unwrap()
                .requires_grad_()
        })
        .collect()
}

/// Step `step`'s gradients: random, parameter 4's given as a transposed (strided) view,
/// and none for parameter 5 on step 1.
fn set_grads(opt: &Optimizer, step: u64, dev: Device) {
    for (i, (_, p)) in opt.params.iter().enumerate() {
        if step == 1 && i == 5 {
            continue;
        }
        let seed = 1000 * step + i as u64;
        let s = p.shape().to_vec();
        let g = if i == 4 {
            Tensor::randn(&[s[1], s[0]], 1.0, seed, Device::Cpu)
                .unwrap()
                .to_device(dev)
                .unwrap()
                .t()
                .unwrap()
        } else {
            Tensor::randn(&s, 1.0, seed, Device::Cpu)
                .unwrap()
                .to_device(dev)
                .unwrap()
        };
        p.set_grad(Some(g));
    }
}

/// Three clipped AdamW steps; per step the gradient norm^2, then every parameter and
/// moment. On the GPU the adamw dispatches of the first step are counted too.
fn run(dev: Device) -> (Vec<Vec<f64>>, usize, usize) {
    let mut ts = params(dev);
    let named: Vec<(String, &mut Tensor)> = PARAMS
        .iter()
        .map(|(n, _)| n.to_string())
        .zip(ts.iter_mut())
        .collect();
    let mut opt = Optimizer::new(named, 0.1).unwrap();
    let mut out = Vec::new();
    let mut adamw_dispatches = 0;
    for step in 0..3 {
        set_grads(&opt, step, dev);
        let ctx = (dev == Device::Gpu).then(|| ponder::backend::gpu::context().unwrap());
        if let Some(c) = ctx {
            c.sync().unwrap();
            c.profile_start();
        }
        let n2 = opt.grad_norm_sq().unwrap().unwrap();
        // a norm well above 1: clipping scales every gradient
        opt.clip_on_device(&n2, 1.0).unwrap();
        opt.step(1e-2).unwrap();
        if let Some(c) = ctx {
            let p = c.profile_finish().unwrap();
            if step == 0 {
                adamw_dispatches = p
                    .rows
                    .iter()
                    .filter(|r| r.kernel == "adamw:adamw")
                    .map(|r| r.count)
                    .sum();
            }
        }
        out.push(n2.to_vec_f64().unwrap());
        for (i, (_, p)) in opt.params.iter().enumerate() {
            assert!(p.grad().is_none(), "step clears the gradients");
            out.push(p.to_vec_f64().unwrap());
            out.push(opt.m[i].to_vec_f64().unwrap());
            out.push(opt.v[i].to_vec_f64().unwrap());
        }
    }
    // the model's handles are the optimizer's: the moved tensors train
    for (t, (_, p)) in ts.iter().zip(&opt.params) {
        assert_eq!(t.id(), p.id());
    }
    (out, adamw_dispatches, opt.arena_chunks())
}

#[test]
fn arena_steps_equal_per_tensor_cpu_steps() {
    if !common::gpu_ok("optimizer arena") {
        return;
    }
    let (want, _, cpu_chunks) = run(Device::Cpu);
    assert_eq!(cpu_chunks, 0, "the CPU optimizer has no arena");

    set_chunk_limit(Some(128 << 10));
    let (got, dispatches, chunks) = run(Device::Gpu);
    set_chunk_limit(None);
    // decaying params fill two 128 KiB chunks, the bias and norm a third; big.weight
    // (234 KiB) stays in its own buffer
    assert_eq!(chunks, 3);
    assert_eq!(
        dispatches,
        chunks + 1,
        "one adamw dispatch per chunk and loose tensor"
    );
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        common::assert_close(&format!("arena value set {k}"), g, w, 1e-5, 1e-6);
    }

    // one chunk for everything at the default size: two dispatches, decay and no decay
    let (got, dispatches, chunks) = run(Device::Gpu);
    assert_eq!((chunks, dispatches), (2, 2));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        common::assert_close(&format!("default arena value set {k}"), g, w, 1e-5, 1e-6);
    }
}

//! Helpers shared by the integration tests: GPU availability (skip or fail), closeness
//! checks that print where and by how much, random inputs with a printed seed, and the
//! two checkers every op goes through (finite differences in f64; GPU against CPU).
#![allow(dead_code)]

use ponder::{Device, Result, Tensor};

/// True when a GPU adapter exists. Without one, prints why and returns false, unless
/// PONDER_REQUIRE_GPU=1, in which case the test fails.
pub fn gpu_ok(test: &str) -> bool {
    // Written straight to stderr (the test harness captures only print!/eprint!), once per
    // test binary, so the log shows where the GPU tests ran or why they were skipped.
    static ANNOUNCE: std::sync::Once = std::sync::Once::new();
    let announce = |line: String| {
        ANNOUNCE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
        })
    };
    // tests/gpu_checked*.rs include the GPU suites as modules of their own crates: there
    // every kernel is compiled with naga's runtime checks (the mode PONDER_SHADER_CHECKS=1
    // gives)
    if module_path!().starts_with("gpu_checked") {
        ponder::backend::gpu::set_shader_checks(true);
    }
    match ponder::backend::gpu::context() {
        Ok(ctx) => {
            ponder::backend::gpu::set_poison(true);
            announce(format!(
                "gpu tests run on: {} (naga runtime checks {})",
                ctx.describe(),
                if ponder::backend::gpu::shader_checks() {
                    "on"
                } else {
                    "off"
                }
            ));
            eprintln!("[{test}] gpu: {}", ctx.describe());
            true
        }
        Err(e) => {
            if std::env::var("PONDER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("[{test}] PONDER_REQUIRE_GPU=1 but no gpu adapter: {e}");
            }
            announce(format!("gpu tests SKIPPED: no gpu adapter ({e})"));
            eprintln!("[{test}] SKIPPED: no gpu adapter ({e})");
            false
        }
    }
}

/// A fresh seed per call, printed so a failure can be replayed (PONDER_SEED fixes it).
pub fn seed(what: &str) -> u64 {
    let s = std::env::var("PONDER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ponder::util::fresh_seed);
    eprintln!("[{what}] seed {s}");
    s
}

pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, seed, Device::Cpu).unwrap()
}

pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, lo, hi, seed, Device::Cpu).unwrap()
}

pub fn to_f64(t: &Tensor) -> Tensor {
    Tensor::from_vec_f64(t.to_vec_f64().unwrap(), t.shape()).unwrap()
}

/// |got - want| <= atol + rtol * |want| everywhere; on failure prints the max difference,
/// where it is, and the first few values.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f64, 0usize);
    let mut bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        let within = d <= atol + rtol * w.abs(); // false for NaN
        if !within && bad.is_none() {
            bad = Some(i);
        }
        if d > worst.0 || d.is_nan() {
            worst = (if d.is_nan() { f64::INFINITY } else { d }, i);
        }
    }
    if let Some(i) = bad {
        let head: Vec<String> = got
            .iter()
            .zip(want)
            .take(6)
            .map(|(g, w)| format!("{g:.6}/{w:.6}"))
            .collect();
        panic!(
            "{what}: mismatch at index {i} (got {}, want {}); max |diff| {:.3e} at {}; first got/want: {}",
            got[i],
            want[i],
            worst.0,
            worst.1,
            head.join(" ")
        );
    }
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Finite-difference check of `f` at `inputs` (CPU, f64). The loss is sum(f(x) * R) with a
/// random R, so every output element's gradient matters. Checks up to `per_input`
/// elements per input (all when small).
pub fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let s = seed(name);
    let leaves: Vec<Tensor> = inputs.iter().map(|t| to_f64(t).requires_grad_()).collect();
    let y = f(&leaves).unwrap();
    let r = to_f64(&randn(y.shape(), s ^ 77));
    let loss = |xs: &[Tensor]| -> f64 {
        ponder::no_grad(|| {
            f(xs)
                .unwrap()
                .mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_vec_f64()
                .unwrap()[0]
        })
    };
    y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    for (k, leaf) in leaves.iter().enumerate() {
        let analytic = leaf
            .grad()
            .map(|g| g.to_vec_f64().unwrap())
            .unwrap_or_else(|| vec![0.0; leaf.numel()]);
        let base = leaf.to_vec_f64().unwrap();
        let n = base.len();
        let picks: Vec<usize> = if n <= 64 {
            (0..n).collect()
        } else {
            (0..64).map(|i| (i * 7919 + s as usize % 13) % n).collect()
        };
        let mut num = Vec::new();
        let mut ana = Vec::new();
        for &i in &picks {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut xs: Vec<Tensor> = leaves.iter().map(|t| t.detach()).collect();
                xs[k] = Tensor::from_vec_f64(v, leaf.shape()).unwrap();
                loss(&xs)
            };
            num.push((eval(eps) - eval(-eps)) / (2.0 * eps));
            ana.push(analytic[i]);
        }
        assert_close(&format!("{name}: d/dinput{k}"), &ana, &num, 1e-6, 1e-5);
    }
}

/// Run `f` on the CPU and on the GPU with the same f32 inputs; compare the outputs, then
/// backpropagate the same random upstream gradient and compare every input gradient.
/// GPU outputs are poisoned with NaN before each kernel (see `gpu_ok`).
pub fn gpu_vs_cpu(
    name: &str,
    inputs: &[Tensor],
    grad: bool,
    tol: f64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let s = seed(name);
    let mk = |dev: Device| -> Vec<Tensor> {
        inputs
            .iter()
            .map(|t| {
                let t = t.to_device(dev).unwrap();
                if grad && t.dtype() == ponder::DType::F32 {
                    t.requires_grad_()
                } else {
                    t
                }
            })
            .collect()
    };
    let (xc, xg) = (mk(Device::Cpu), mk(Device::Gpu));
    let (yc, yg) = (f(&xc).unwrap(), f(&xg).unwrap());
    assert_eq!(yc.shape(), yg.shape(), "{name}: shapes differ");
    assert_eq!(yg.device(), Device::Gpu, "{name}: output left the gpu");
    let (vc, vg) = (yc.to_vec_f64().unwrap(), yg.to_vec_f64().unwrap());
    assert_close(&format!("{name} forward"), &vg, &vc, tol, tol);
    if !grad {
        return;
    }
    let r = randn(yc.shape(), s ^ 99);
    yc.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    yg.mul(&r.to_device(Device::Gpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (k, (a, b)) in xc.iter().zip(&xg).enumerate() {
        if !a.requires_grad() {
            continue;
        }
        // inputs that take no gradient (rope tables) have none on either device
        let (ga, gb) = match (a.grad(), b.grad()) {
            (None, None) => continue,
            (Some(ga), Some(gb)) => (ga.to_vec_f64().unwrap(), gb),
            _ => panic!("{name}: input {k} has a gradient on one device only"),
        };
        assert_eq!(gb.device(), Device::Gpu);
        let gb = gb.to_vec_f64().unwrap();
        let scale = ga.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("{name} grad of input {k}"),
            &gb,
            &ga,
            tol * scale,
            tol,
        );
    }
}

/// The three matmul layouts the model uses, GPU against CPU with gradients:
/// batched `x @ y`, `x @ w^T` (a linear layer) and `x^T @ y` (a weight gradient).
pub fn matmul_layouts_vs_cpu(b: usize, m: usize, n: usize, k: usize, s: u64) {
    let x = randn(&[b, m, k], s);
    let y = randn(&[b, k, n], s + 1);
    gpu_vs_cpu("matmul batched", &[x.clone(), y.clone()], true, 1e-3, |t| {
        t[0].matmul(&t[1])
    });
    let w = randn(&[n, k], s + 2);
    gpu_vs_cpu("matmul x @ w^T", &[x, w], true, 1e-3, |t| {
        t[0].matmul(&t[1].t()?)
    });
    let xt = randn(&[b, k, m], s + 3);
    gpu_vs_cpu("matmul x^T @ y", &[xt, y], true, 1e-3, |t| {
        t[0].t()?.matmul(&t[1])
    });
}

/// Three AdamW steps (weight decay 0.1) on a parameter of `shape`, GPU against the CPU
/// loop: parameters (to `param_atol`) and both moments (to 1e-6).
pub fn adamw_vs_cpu(shape: &[usize], s: u64, param_atol: f64) {
    let h = ponder::AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 0,
    };
    let p = randn(shape, s);
    let pc = Tensor::from_vec(p.to_vec_f32().unwrap(), shape, Device::Cpu).unwrap();
    let pg = p.to_device(Device::Gpu).unwrap();
    let (mc, vc) = (pc.zeros_like().unwrap(), pc.zeros_like().unwrap());
    let (mg, vg) = (
        Tensor::zeros(shape, Device::Gpu).unwrap(),
        Tensor::zeros(shape, Device::Gpu).unwrap(),
    );
    for step in 1..=3 {
        let g = randn(shape, s + step as u64);
        let h = ponder::AdamW { step, ..h };
        ponder::adamw_step(&pc, &g, &mc, &vc, &h).unwrap();
        ponder::adamw_step(&pg, &g.to_device(Device::Gpu).unwrap(), &mg, &vg, &h).unwrap();
    }
    for (what, g, c, atol) in [
        ("params", &pg, &pc, param_atol),
        ("m", &mg, &mc, 1e-6),
        ("v", &vg, &vc, 1e-6),
    ] {
        assert_close(
            &format!("adamw {what}"),
            &g.to_vec_f64().unwrap(),
            &c.to_vec_f64().unwrap(),
            atol,
            1e-5,
        );
    }
}

/// `c += a^T @ b` in place (the LM head's dW over chunks), against `c + a^T b` composed
/// on the CPU, for both backends: the transposed view read in place, accumulated twice;
/// within `atol` + 1e-4 relative.
pub fn add_matmul_vs_composed(m: usize, n: usize, k: usize, s: u64, atol: f64) {
    let (c0, a, b) = (
        randn(&[m, n], s),
        randn(&[k, m], s + 1),
        randn(&[k, n], s + 2),
    );
    let (a2, b2) = (randn(&[k, m], s + 3), randn(&[k, n], s + 4));
    let want = c0
        .add(&a.t().unwrap().matmul(&b).unwrap())
        .unwrap()
        .add(&a2.t().unwrap().matmul(&b2).unwrap())
        .unwrap()
        .to_vec_f64()
        .unwrap();
    for dev in [Device::Cpu, Device::Gpu] {
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        // a fresh buffer (poisoned on the GPU) holding c0
        let c = on(&c0).scale(1.0).unwrap();
        c.add_matmul_(&on(&a).t().unwrap(), &on(&b)).unwrap();
        c.add_matmul_(&on(&a2).t().unwrap(), &on(&b2)).unwrap();
        assert_close(
            &format!("add_matmul_ {m}x{n}x{k} on {dev:?}"),
            &c.to_vec_f64().unwrap(),
            &want,
            atol,
            1e-4,
        );
    }
}

/// Run the `ponder` binary: (whether it succeeded, its stdout then stderr).
pub fn ponder_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A fresh, empty scratch directory under cargo's target tmp dir, unique to this process
/// and call. It is removed when the guard drops, unless the test is failing (its thread
/// is panicking): then it stays, and its path is printed, for a look at what was written.
pub fn scratch(tag: &str) -> Scratch {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// See [`scratch`]. Derefs to its path.
pub struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("scratch kept for a look: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Read a GGUF file with llama.cpp's own Python reader (models/reference/check_gguf.py;
/// `.ci/run` vendors gguf and numpy into target/pyvendor) and compare it with the Hugging
/// Face directory it came from. Returns the script's output, or None (with the reason
/// printed) when python3 with gguf is unavailable; with CI=true that fails instead.
pub fn check_with_gguf_py(
    gguf: &std::path::Path,
    hf: &std::path::Path,
    tol: &str,
) -> Option<String> {
    use std::process::Command;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let vendor = root.join("target/pyvendor");
    let probe = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .env("PYTHONPATH", &vendor)
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = "gguf-py check SKIPPED: python3 with the gguf and numpy packages is unavailable (`.ci/run` installs them into target/pyvendor)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}; CI=true requires them");
        }
        eprintln!("{why}");
        return None;
    }
    let out = Command::new("python3")
        .arg(root.join("models/reference/check_gguf.py"))
        .args([
            "--gguf",
            gguf.to_str().unwrap(),
            "--hf",
            hf.to_str().unwrap(),
        ])
        .args(["--tol", tol])
        .env("PYTHONPATH", &vendor)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ok: gguf-py reads"),
        "gguf-py disagrees with {}:\n{text}",
        gguf.display()
    );
    Some(text)
}

/// Give the LoRA B matrix of every adapted projection random values on `dev`, seeded by
/// `seed` and the layer: B starts at zero, which would zero A's gradient.
pub fn randomise_lora_b(net: &mut ponder::model::Transformer, dev: Device, seed: u64) {
    for (i, layer) in net.layers.iter_mut().enumerate() {
        for lin in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            if let Some(l) = lin.lora.as_mut() {
                l.b = randn(l.b.shape(), seed + i as u64)
                    .scale(0.1)
                    .unwrap()
                    .to_device(dev)
                    .unwrap()
                    .requires_grad_();
            }
        }
    }
}

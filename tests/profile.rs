//! The GPU profiler behind `ponder bench ... --profile`: one row per shader:entry with
//! its dispatch count, GPU time from timestamp queries, and the FLOPs the op declared.

mod common;
use ponder::{Device, Tensor};

/// The counters and the profile are process-wide: the tests here take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_profile_counts_and_times_each_kernel() {
    if !common::gpu_ok("profile") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = ponder::backend::gpu::context().unwrap();
    let (m, n, k) = (33, 65, 17);
    let a = Tensor::randn(&[m, k], 1.0, 1, Device::Gpu).unwrap();
    let b = Tensor::randn(&[k, n], 1.0, 2, Device::Gpu).unwrap();
    ctx.sync().unwrap();
    ctx.profile_start();
    let c = a.matmul(&b).unwrap();
    let d = c.matmul(&b.t().unwrap()).unwrap();
    let p = ctx.profile_finish().unwrap();
    let row = p
        .rows
        .iter()
        .find(|r| r.kernel == "matmul:gemm")
        .unwrap_or_else(|| panic!("{}", p.table()));
    assert_eq!(row.count, 2, "{}", p.table());
    assert_eq!(row.flops, Some(2.0 * (m * n * k + m * k * n) as f64));
    assert!(
        p.counts.dispatches >= 2 && p.counts.submits >= 1,
        "{}",
        p.table()
    );
    if p.timestamps {
        assert!(row.gpu_ns > 0.0, "{}", p.table());
        assert!(p.table().contains("GPU busy"));
    } else {
        assert!(p.table().contains("host timings only"));
    }
    // profiling changes no result, and the next profile starts from nothing
    let want = a
        .to_device(Device::Cpu)
        .unwrap()
        .matmul(&b.to_device(Device::Cpu).unwrap())
        .unwrap();
    common::assert_close(
        "matmul under the profiler",
        &c.to_vec_f64().unwrap(),
        &want.to_vec_f64().unwrap(),
        1e-4,
        1e-4,
    );
    let _ = d;
    ctx.profile_start();
    let p = ctx.profile_finish().unwrap();
    assert!(
        p.rows.is_empty() && p.counts.dispatches == 0,
        "{}",
        p.table()
    );
}

/// Unprofiled, consecutive dispatches share one compute pass, and once a computation has
/// run, running it again over the same pooled buffers creates no bind group: the shape
/// parameters ride in the uniform ring at a dynamic offset, so a cached group serves.
#[test]
fn repeated_work_shares_passes_and_reuses_bind_groups() {
    if !common::gpu_ok("profile") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use ponder::backend::gpu::profile::counters;
    let ctx = ponder::backend::gpu::context().unwrap();
    let x = Tensor::randn(&[37, 53], 0.1, 3, Device::Gpu).unwrap();
    let w = Tensor::randn(&[53, 29], 0.1, 4, Device::Gpu).unwrap();
    let run = || {
        let y = x.matmul(&w).unwrap();
        let z = y.mul(&y).unwrap().add(&y).unwrap().exp().unwrap();
        let s = z.sum(1, false).unwrap();
        s.to_vec_f64().unwrap()
    };
    let want = run();
    ctx.sync().unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c0 = counters();
        let got = run();
        seen.push(counters() - c0);
        assert_eq!(got, want, "the same work gave another result");
    }
    eprintln!("counts of three runs: {seen:?}");
    let last = seen[2];
    assert!(last.dispatches >= 5, "{seen:?}");
    assert!(
        last.passes < last.dispatches,
        "every dispatch had its own compute pass: {seen:?}"
    );
    assert_eq!(last.bind_groups, 0, "bind groups were made again: {seen:?}");
    // shape parameters go as immediates where the adapter offers them; the uniform ring
    // (the path without them) gives the same numbers
    if ctx.features.contains(wgpu::Features::IMMEDIATES) {
        assert!(last.immediates > 0, "no dispatch took immediates: {seen:?}");
    }
    ponder::backend::gpu::set_immediates(false);
    let c0 = counters();
    let ring = run();
    let c = counters() - c0;
    ponder::backend::gpu::set_immediates(true);
    assert_eq!(c.immediates, 0, "{c:?}");
    assert_eq!(ring, want, "the uniform ring and immediates disagree");
    // and the results are right, not only repeatable
    let (xc, wc) = (
        x.to_device(Device::Cpu).unwrap(),
        w.to_device(Device::Cpu).unwrap(),
    );
    let y = xc.matmul(&wc).unwrap();
    let z = y.mul(&y).unwrap().add(&y).unwrap().exp().unwrap();
    let cpu = z.sum(1, false).unwrap().to_vec_f64().unwrap();
    common::assert_close("matmul, mul, add, exp, sum", &want, &cpu, 1e-4, 1e-4);
}

#[test]
fn a_head_whose_logits_fit_the_budget_skips_their_recomputation() {
    // the LM head's backward reads the forward's logits when they fit `keep` bytes: one
    // GEMM fewer per chunk than when it recomputes them (counted in dispatches)
    if !common::gpu_ok("profile lm head") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = ponder::backend::gpu::context().unwrap();
    let (k, c, v, chunk) = (9, 16, 40, 3);
    let gemms = |keep: usize| -> usize {
        let h = Tensor::randn(&[k, c], 1.0, 3, Device::Gpu)
            .unwrap()
            .requires_grad_();
        let w = Tensor::randn(&[v, c], 1.0, 4, Device::Gpu)
            .unwrap()
            .requires_grad_();
        let tg = Tensor::from_u32(
            (0..k as u32).map(|i| i * 7 % v as u32).collect(),
            &[k],
            Device::Gpu,
        )
        .unwrap();
        ctx.sync().unwrap();
        ctx.profile_start();
        let (lp, _) =
            ponder::ops::lm_head::lm_head_logprobs(&h, &w, &tg, chunk, keep, false).unwrap();
        lp.sum_all().unwrap().backward().unwrap();
        let p = ctx.profile_finish().unwrap();
        p.rows
            .iter()
            .filter(|r| r.kernel.starts_with("matmul"))
            .map(|r| r.count)
            .sum()
    };
    let (recomputed, kept) = (gemms(0), gemms(usize::MAX));
    assert_eq!(
        recomputed - kept,
        k / chunk,
        "recomputing {recomputed} vs keeping {kept}"
    );
}

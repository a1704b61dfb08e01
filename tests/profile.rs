//! The GPU profiler behind `ponder bench ... --profile`: one row per shader:entry with
//! its dispatch count, GPU time from timestamp queries, and the FLOPs the op declared.

mod common;
use ponder::{Device, Tensor};

#[test]
fn a_profile_counts_and_times_each_kernel() {
    if !common::gpu_ok("profile") {
        return;
    }
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
    assert!(p.dispatches >= 2 && p.submits >= 1, "{}", p.table());
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
    assert!(p.rows.is_empty() && p.dispatches == 0, "{}", p.table());
}

//! `ponder info`: the chosen device and why, its limits and features, and the GPU
//! self-check.

use ponder::{Device, Result};

use super::device;

pub(crate) fn info_cmd(dev: Option<String>) -> Result<bool> {
    let requested = dev
        .clone()
        .or_else(|| std::env::var("PONDER_DEVICE").ok())
        .unwrap_or_else(|| "auto".into());
    let dev = device(dev)?;
    outln!("ponder {}", env!("CARGO_PKG_VERSION"));
    outln!("device: {dev} (requested: {requested})");
    if dev == Device::Cpu && requested.trim().eq_ignore_ascii_case("auto") {
        if let Ok(ctx) = ponder::backend::gpu::context() {
            if ctx.is_software() {
                outln!(
                    "  auto chose the cpu: the only adapter, {}, is a software rasteriser, slower than the cpu loops (--device gpu uses it)",
                    ctx.info.name
                );
            }
        }
    }
    outln!("cpu: {} threads (rayon)", rayon::current_num_threads());
    match ponder::backend::gpu::context() {
        Ok(ctx) => {
            outln!("gpu adapter: {}", ctx.describe());
            outln!("  chosen because: {}", ctx.reason);
            for o in &ctx.others {
                outln!("  seen: {o}");
            }
            let l = &ctx.limits;
            outln!(
                "  max_storage_buffer_binding_size: {} MiB",
                l.max_storage_buffer_binding_size >> 20
            );
            outln!("  max_buffer_size: {} MiB", l.max_buffer_size >> 20);
            outln!(
                "  immediates (shape parameters without the uniform ring): {}",
                if ctx.features.contains(wgpu::Features::IMMEDIATES) {
                    format!("{} B", l.max_immediate_size)
                } else {
                    "not offered".into()
                }
            );
            outln!(
                "  max_compute_workgroup_storage_size: {} B",
                l.max_compute_workgroup_storage_size
            );
            outln!(
                "  max_compute_invocations_per_workgroup: {}",
                l.max_compute_invocations_per_workgroup
            );
            outln!(
                "  max_storage_buffers_per_shader_stage: {}",
                l.max_storage_buffers_per_shader_stage
            );
            outln!(
                "  shader-f16: {}, subgroups: {}",
                ctx.has_f16(),
                ctx.has_subgroups()
            );
            outln!(
                "  naga runtime checks: {}",
                if ponder::backend::gpu::shader_checks() {
                    "on (PONDER_SHADER_CHECKS=1)"
                } else {
                    "off (trusted kernels; PONDER_SHADER_CHECKS=1 turns them on)"
                }
            );
        }
        Err(e) => outln!("gpu: none ({e})"),
    }
    if dev == Device::Cpu {
        outln!("self-check: skipped (the cpu backend is the reference the gpu is checked against)");
        return Ok(true);
    }
    let checks = ponder::selfcheck::run()?;
    let mut ok = true;
    for c in &checks {
        outln!(
            "self-check {:<28} max |gpu - cpu| = {:.2e}  {}",
            c.name,
            c.max_diff,
            if c.pass { "ok" } else { "FAIL" }
        );
        ok &= c.pass;
    }
    outln!(
        "self-check: {}",
        if ok {
            "all kernels agree with the cpu reference"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

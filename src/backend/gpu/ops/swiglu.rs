//! SwiGLU, forward and backward (`shaders/swiglu.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, Uniform};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    require_f32("swiglu", &[gate, up])?;
    let (a, u_) = (dense(gate)?, dense(up)?);
    let out = f32_out(a.shape())?;
    let ctx = context()?;
    for b in dense_blocks(a.numel(), &[(1, buf(&a)), (2, buf(&u_)), (4, buf(&out))])? {
        let u = Uniform::new().u(b.shape[0]).u(0).u(0).u(0);
        crate::backend::gpu::profile::cost(0.0, (12 * b.shape[0]) as f64);
        ctx.dispatch_bound(
            "swiglu",
            "swiglu_fwd",
            &[],
            &u.0,
            &b.binds,
            grid_1d(b.shape[0], WG),
        )?;
    }
    Ok(out)
}

pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    require_f32("swiglu", &[gate, up, g])?;
    let (a, u_, g) = (dense(gate)?, dense(up)?, dense(g)?);
    let da = f32_out(a.shape())?;
    let du = f32_out(a.shape())?;
    let ctx = context()?;
    let ops = [
        (1, buf(&a)),
        (2, buf(&u_)),
        (3, buf(&g)),
        (4, buf(&da)),
        (5, buf(&du)),
    ];
    for b in dense_blocks(a.numel(), &ops)? {
        let u = Uniform::new().u(b.shape[0]).u(0).u(0).u(0);
        crate::backend::gpu::profile::cost(0.0, (20 * b.shape[0]) as f64);
        ctx.dispatch_bound(
            "swiglu",
            "swiglu_bwd",
            &[],
            &u.0,
            &b.binds,
            grid_1d(b.shape[0], WG),
        )?;
    }
    Ok((da, du))
}

//! RMSNorm forward and backward (`shaders/rmsnorm.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::error::Result;
use crate::tensor::Tensor;

/// Rows one `rmsnorm_bwd_dw` thread walks per dispatch (it loops over rows; llvmpipe
/// ends a shader invocation's loops after 65,535 iterations in all).
pub(super) const RMSNORM_DW_MAX_ROWS: usize = 16_384;

pub fn rmsnorm(x: &Tensor, w: &Tensor, c: usize, eps: f32) -> Result<(Tensor, Tensor)> {
    require_f32("rms_norm", &[x, w])?;
    let (x, w) = (dense(x)?, dense(w)?);
    let rows = x.numel() / c.max(1);
    let y = f32_out(x.shape())?;
    let rstd = f32_out(&[rows])?;
    let ctx = context()?;
    let row_ops = [(1, buf(&x), c), (4, buf(&y), c), (5, buf(&rstd), 1)];
    let whole = [(2, buf(&w))];
    for b in split::row_blocks("rmsnorm:rmsnorm_fwd", rows, &row_ops, &whole, usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(c).f(eps).u(0);
        // x read, y written, w and one rstd a row
        crate::backend::gpu::profile::cost(0.0, (8 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_fwd",
            &[sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    Ok((y, rstd))
}

pub fn rmsnorm_bwd(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    c: usize,
) -> Result<(Tensor, Tensor)> {
    require_f32("rms_norm", &[x, w, rstd, g])?;
    let (x, w, rstd, g) = (dense(x)?, dense(w)?, dense(rstd)?, dense(g)?);
    let rows = x.numel() / c.max(1);
    let dx = f32_out(x.shape())?;
    let dw = f32_out(&[c])?;
    let ctx = context()?;
    let row_ops = [
        (1, buf(&x), c),
        (3, buf(&g), c),
        (5, buf(&rstd), 1),
        (4, buf(&dx), c),
    ];
    let whole = [(2, buf(&w))];
    for b in split::row_blocks("rmsnorm:rmsnorm_bwd_dx", rows, &row_ops, &whole, usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(c).f(0.0).u(0);
        crate::backend::gpu::profile::cost(0.0, (12 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_bwd_dx",
            &[sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    // dw sums over every row: later blocks add into it (ACC)
    let row_ops = [(1, buf(&x), c), (3, buf(&g), c), (5, buf(&rstd), 1)];
    let whole = [(6, buf(&dw))];
    let blocks = split::row_blocks(
        "rmsnorm:rmsnorm_bwd_dw",
        rows,
        &row_ops,
        &whole,
        RMSNORM_DW_MAX_ROWS,
    )?;
    for b in blocks {
        let u = Uniform::new().u(b.rows).u(c).f(0.0).u(0);
        crate::backend::gpu::profile::cost(0.0, (8 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_bwd_dw",
            &[("ACC", (b.first > 0) as u32)],
            &u.0,
            &b.binds,
            grid_1d(c, WG),
        )?;
    }
    Ok((dx, dw))
}

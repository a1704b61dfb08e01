//! Rotary position embedding, forward and backward (`shaders/rope.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::backend::RopeDims;
use crate::error::Result;
use crate::tensor::Tensor;

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, d: RopeDims, backward: bool) -> Result<Tensor> {
    require_f32("rope", &[x, cos, sin])?;
    let (x, cos, sin) = (dense(x)?, dense(cos)?, dense(sin)?);
    let out = f32_out(x.shape())?;
    let ctx = context()?;
    // a row is one position's heads; a per-batch table's row is that position's, a
    // shared table is bound whole
    let w = d.h * d.hd;
    let mut row_ops = vec![(1, buf(&x), w), (4, buf(&out), w)];
    let mut whole = Vec::new();
    if d.table_batched {
        row_ops.extend([(2, buf(&cos), d.hd), (3, buf(&sin), d.hd)]);
    } else {
        whole.extend([(2, buf(&cos)), (3, buf(&sin))]);
    }
    for b in split::row_blocks("rope:rope", d.b * d.t, &row_ops, &whole, usize::MAX)? {
        let u = Uniform::new()
            .u(d.b)
            .u(d.t)
            .u(d.h)
            .u(d.hd)
            .u(d.table_batched as usize)
            .u(b.first)
            .u(b.rows)
            .u(0);
        // x read and written (the cos/sin rows are a head's worth, shared by its heads)
        crate::backend::gpu::profile::cost(0.0, (8 * b.rows * w) as f64);
        ctx.dispatch_bound(
            "rope",
            "rope",
            &[("BWD", backward as u32)],
            &u.0,
            &b.binds,
            grid_1d(b.rows * w, WG),
        )?;
    }
    Ok(out)
}

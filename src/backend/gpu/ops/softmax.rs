//! Softmax and log-softmax over rows (`shaders/softmax.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn softmax(x: &Tensor, n: usize, log: bool) -> Result<Tensor> {
    require_f32("softmax", &[x])?;
    let x = dense(x)?;
    let rows = x.numel() / n.max(1);
    let out = f32_out(x.shape())?;
    let ctx = context()?;
    let row_ops = [(1, buf(&x), n), (2, buf(&out), n)];
    for b in split::row_blocks("softmax:softmax_rows", rows, &row_ops, &[], usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(n).u(0).u(0);
        crate::backend::gpu::profile::cost(0.0, (8 * b.rows * n) as f64);
        ctx.dispatch_bound(
            "softmax",
            "softmax_rows",
            &[("LOG", log as u32), sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    Ok(out)
}

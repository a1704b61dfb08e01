//! Token log-probs from logits, forward and backward (`shaders/logprob.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn token_logprobs(x: &Tensor, targets: &Tensor, v: usize) -> Result<(Tensor, Tensor)> {
    require_f32("token_logprobs", &[x])?;
    let (x, tg) = (dense(x)?, dense(targets)?);
    let rows = x.numel() / v;
    let lp = f32_out(&[rows])?;
    let lse = f32_out(&[rows])?;
    let ctx = context()?;
    let row_ops = [
        (1, buf(&x), v),
        (2, buf(&tg), 1),
        (4, buf(&lp), 1),
        (5, buf(&lse), 1),
    ];
    for b in split::row_blocks("logprob:logprob_fwd", rows, &row_ops, &[], usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(v).u(0).u(0);
        // a row of logits read; its target, log-prob and log-sum-exp
        crate::backend::gpu::profile::cost(0.0, (4 * b.rows * v + 12 * b.rows) as f64);
        ctx.dispatch_bound(
            "logprob",
            "logprob_fwd",
            &[sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    Ok((lp, lse))
}

pub fn token_logprobs_bwd(
    x: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    v: usize,
) -> Result<Tensor> {
    require_f32("token_logprobs", &[x, lse, g])?;
    let (x, tg, lse, g) = (dense(x)?, dense(targets)?, dense(lse)?, dense(g)?);
    let rows = x.numel() / v;
    let dx = f32_out(x.shape())?;
    let ctx = context()?;
    let row_ops = [
        (1, buf(&x), v),
        (2, buf(&tg), 1),
        (3, buf(&g), 1),
        (5, buf(&lse), 1),
        (6, buf(&dx), v),
    ];
    for b in split::row_blocks("logprob:logprob_bwd", rows, &row_ops, &[], usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(v).u(0).u(0);
        // a row of gradients written from its target, lse and upstream gradient
        crate::backend::gpu::profile::cost(0.0, (8 * b.rows * v + 12 * b.rows) as f64);
        ctx.dispatch_bound(
            "logprob",
            "logprob_bwd",
            &[],
            &u.0,
            &b.binds,
            grid_1d(b.rows * v, WG),
        )?;
    }
    Ok(dx)
}

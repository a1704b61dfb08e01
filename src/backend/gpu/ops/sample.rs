//! The next token of each row of logits (`shaders/sample.wgsl`), which implements the
//! rules of `model/sampling.rs` on the device: per row only the id and its untempered
//! log-prob are read back.

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// How a row's token is chosen (see `model/sampling.rs`).
#[derive(Clone, Copy, Debug)]
pub struct SampleRule {
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
}

/// Rows of `logits` `(rows, V)` (any leading shape): for each, the id `forced[r]` when it
/// is below V, else the rule's draw with uniform `u[r]`, and `log_softmax(x)[id]`.
pub fn sample_rows(
    logits: &Tensor,
    rule: SampleRule,
    u: &[f32],
    forced: &[u32],
) -> Result<Vec<(u32, f32)>> {
    require_f32("sample", &[logits])?;
    let x = dense(logits)?;
    let v = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / v.max(1);
    if u.len() != rows || forced.len() != rows || v == 0 {
        return Err(Error::invalid(
            "sample",
            format!(
                "{rows} rows of logits, {} uniforms and {} forced ids",
                u.len(),
                forced.len()
            ),
        ));
    }
    let ut = Tensor::from_slice(u, &[rows], Device::Gpu)?;
    let ft = Tensor::from_u32(forced.to_vec(), &[rows], Device::Gpu)?;
    let out = empty(&[rows, 2], DType::U32)?;
    let ctx = context()?;
    let row_ops = [
        (1, buf(&x), v),
        (2, buf(&ut), 1),
        (3, buf(&ft), 1),
        (4, buf(&out), 2),
    ];
    let min_p_log = if rule.min_p > 0.0 {
        rule.temperature * rule.min_p.ln()
    } else {
        -3.402_823_5e38
    };
    for b in split::row_blocks("sample:sample_rows", rows, &row_ops, &[], usize::MAX)? {
        let un = Uniform::new()
            .u(b.rows)
            .u(v)
            .u(rule.top_k)
            .u(usize::from(rule.temperature <= 0.0))
            .f(if rule.temperature > 0.0 {
                1.0 / rule.temperature
            } else {
                1.0
            })
            .f(rule.top_p)
            .f(min_p_log)
            .u(0);
        // a row of logits read a few times (more with top-k and top-p's searches)
        crate::backend::gpu::profile::cost(0.0, (4 * b.rows * v) as f64);
        ctx.dispatch_bound(
            "sample",
            "sample_rows",
            &[("SG", 0)],
            &un.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    let raw = out.to_vec_u32()?;
    Ok(raw
        .chunks(2)
        .map(|p| (p[0], f32::from_bits(p[1])))
        .collect())
}

//! The AdamW update over dense blocks (`shaders/adamw.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, Uniform};
use crate::backend::AdamW;
use crate::error::Result;
use crate::tensor::Tensor;

pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &AdamW,
    clip: Option<&Tensor>,
) -> Result<()> {
    require_f32("adamw", &[p, g, m, v])?;
    let g = dense(g)?;
    let (bc1, bc2) = h.bias_corrections();
    let ctx = context()?;
    let ops = [(1, buf(&g)), (2, buf(p)), (3, buf(m)), (4, buf(v))];
    let spec = [("CLIP", clip.is_some() as u32)];
    for b in dense_blocks(p.numel(), &ops)? {
        let u = Uniform::new()
            .u(b.shape[0])
            .f(h.lr)
            .f(h.beta1)
            .f(h.beta2)
            .f(h.eps)
            .f(h.weight_decay)
            .f(bc1)
            .f(bc2);
        let mut binds = b.binds.clone();
        if let Some(c) = clip {
            binds.push((5, buf(c), None));
        }
        // g, p, m, v read; p, m, v written
        crate::backend::gpu::profile::cost(0.0, (28 * b.shape[0]) as f64);
        ctx.dispatch_bound(
            "adamw",
            "adamw",
            &spec,
            &u.0,
            &binds,
            grid_1d(b.shape[0], WG),
        )?;
    }
    Ok(())
}

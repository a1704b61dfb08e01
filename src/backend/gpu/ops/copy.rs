//! Copies and fills (`shaders/copy.wgsl`): strided copies between layouts, fills.

use std::sync::Arc;

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, GpuBuffer, Uniform};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::{numel, Layout};
use crate::tensor::Tensor;

/// Copy `src` (any layout, 4-byte dtype) into `dst`'s buffer at layout `dl`.
pub fn copy(src: &Tensor, dst: &Tensor, dl: &Layout) -> Result<()> {
    if src.dtype().size() != 4 {
        return Err(Error::invalid(
            "copy",
            format!(
                "strided copies of {} are not supported on the gpu; cast to f32 first",
                src.dtype()
            ),
        ));
    }
    rank_check("copy", src.shape())?;
    if Arc::ptr_eq(src.storage(), dst.storage()) {
        return Err(Error::invalid(
            "copy",
            "source and destination share storage",
        ));
    }
    let ops = [
        split::Operand {
            slot: 1,
            buf: buf(src),
            elt: 4,
            off: src.layout().offset,
            strides: src.layout().strides.clone(),
        },
        split::Operand {
            slot: 2,
            buf: buf(dst),
            elt: 4,
            off: dl.offset,
            strides: dl.strides.clone(),
        },
    ];
    let ctx = context()?;
    for blk in split::plan(src.shape(), &ops, 1)? {
        let n = numel(&blk.shape);
        let u = Uniform::new()
            .u(n)
            .u(blk.offs[0])
            .u(blk.offs[1])
            .u(0)
            .v8(&shape8(&blk.shape), 1)
            .v8(&pad8(&ops[0].strides[blk.dim..]), 0)
            .v8(&pad8(&ops[1].strides[blk.dim..]), 0);
        crate::backend::gpu::profile::cost(0.0, (8 * n) as f64);
        ctx.dispatch_bound("copy", "copy", &[], &u.0, &blk.binds, grid_1d(n, WG))?;
    }
    Ok(())
}

/// Fill a dense tensor with `v` (f32 bits, or the u32 value for integer tensors).
pub fn fill(t: &Tensor, v: f32) -> Result<()> {
    let bits = if t.dtype() == DType::F32 {
        v.to_bits()
    } else {
        v as u32
    };
    fill_words(buf(t), t.layout().offset, t.numel(), bits)
}

pub fn fill_words(b: &GpuBuffer, off: usize, n: usize, bits: u32) -> Result<()> {
    let ops = [split::Operand::dense(2, b, 4, off, &[n])];
    let ctx = context()?;
    for blk in split::plan(&[n], &ops, 1)? {
        let n = blk.shape[0];
        let u = Uniform::new().u(n).u(0).u(blk.offs[0]).u(bits as usize);
        crate::backend::gpu::profile::cost(0.0, (4 * n) as f64);
        ctx.dispatch_bound("copy", "fill", &[], &u.0, &blk.binds, grid_1d(n, WG))?;
    }
    Ok(())
}

//! Embedding lookup and its scatter-add backward (`shaders/embedding.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, GpuBuffer, Uniform};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn embedding(w: &Tensor, ids: &Tensor, c: usize) -> Result<Tensor> {
    let (w16, bf16) = match w.dtype() {
        DType::F32 => (0, 0),
        DType::F16 => (1, 0),
        DType::BF16 => (1, 1),
        other => {
            return Err(Error::DTypeMismatch {
                op: "embedding",
                expected: DType::F32,
                got: other,
            })
        }
    };
    let w = match w.dtype() {
        DType::F32 => dense(w)?,
        _ if w.layout().offset == 0 && w.is_contiguous() => w.clone(),
        _ => {
            return Err(Error::invalid(
                "embedding",
                "a 16-bit table view must start its buffer; cast it to f32 first",
            ))
        }
    };
    let ids = dense(ids)?;
    let n = ids.numel();
    let out = f32_out(&[n, c])?;
    let v = w.shape()[0];
    let spec = [("W16", w16), ("BF16", bf16)];
    let ctx = context()?;
    for tb in token_blocks(&ids, buf(&out), 3, n, c)? {
        let rows = tb.shape[0];
        for (v0, vb, win, w_off) in vocab_blocks(buf(&w), w.dtype().size(), v, c)? {
            let u = Uniform::new()
                .u(rows)
                .u(c)
                .u(v)
                .u(v0)
                .u(vb)
                .u(w_off)
                .u(tb.offs[0])
                .u(tb.offs[1]);
            let binds = [(1, buf(&w), win), tb.binds[0], tb.binds[1]];
            ctx.dispatch_bound(
                "embedding",
                "gather",
                &spec,
                &u.0,
                &binds,
                grid_1d(rows * c, WG),
            )?;
        }
    }
    Ok(out)
}

/// Blocks of tokens for the embedding kernels: the ids (binding 2) and the `(n, c)` rows
/// of `rows` at binding `slot` (the gathered output, 3, or the incoming gradient, 1).
pub(super) fn token_blocks<'a>(
    ids: &'a Tensor,
    rows: &'a GpuBuffer,
    slot: u32,
    n: usize,
    c: usize,
) -> Result<Vec<split::Block<'a>>> {
    split::plan(
        &[n, c],
        &[
            split::Operand {
                slot: 2,
                buf: buf(ids),
                elt: 4,
                off: 0,
                strides: vec![1, 0],
            },
            split::Operand::dense(slot, rows, 4, 0, &[n, c]),
        ],
        1,
    )
}

/// The vocabulary blocks of a `(v, c)` table of `elt`-byte elements: (first row, rows,
/// window, element offset of the first row in the window). One block, bound whole,
/// when the table fits a binding.
#[allow(clippy::type_complexity)]
pub(super) fn vocab_blocks(
    table: &GpuBuffer,
    elt: usize,
    v: usize,
    c: usize,
) -> Result<Vec<(usize, usize, Option<(u64, u64)>, usize)>> {
    let ctx = context()?;
    let limit = ctx.binding_limit();
    if table.size() <= limit {
        return Ok(vec![(0, v, None, 0)]);
    }
    let rows = ((limit - ctx.binding_align()) as usize / (c * elt).max(1)).max(1);
    let mut out = Vec::new();
    let mut v0 = 0;
    while v0 < v {
        let vb = rows.min(v - v0);
        let (win, off) = split::window(table, elt, v0 * c, (v0 + vb) * c - 1);
        out.push((v0, vb, Some(win), off));
        v0 += vb;
    }
    Ok(out)
}

pub fn embedding_bwd(g: &Tensor, ids: &Tensor, v: usize, c: usize) -> Result<Tensor> {
    require_f32("embedding", &[g])?;
    let (g, ids) = (dense(g)?, dense(ids)?);
    let n = ids.numel();
    let dw = f32_out(&[v, c])?;
    fill(&dw, 0.0)?;
    let ctx = context()?;
    for tb in token_blocks(&ids, buf(&g), 1, n, c)? {
        let rows = tb.shape[0];
        for (v0, vb, win, w_off) in vocab_blocks(buf(&dw), 4, v, c)? {
            let u = Uniform::new()
                .u(rows)
                .u(c)
                .u(v)
                .u(v0)
                .u(vb)
                .u(w_off)
                .u(tb.offs[0])
                .u(tb.offs[1]);
            let binds = [tb.binds[1], tb.binds[0], (4, buf(&dw), win)];
            ctx.dispatch_bound(
                "embedding",
                "scatter_add",
                &[("W16", 0), ("BF16", 0)],
                &u.0,
                &binds,
                grid_1d(rows * c, WG),
            )?;
        }
    }
    Ok(dw)
}

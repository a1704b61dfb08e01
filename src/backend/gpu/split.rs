//! Tensors over the storage-binding limit. A device binds at most
//! `max_storage_buffer_binding_size` bytes of a buffer to one kernel (128 MiB on lavapipe,
//! 2 GiB on an H100), yet one buffer may be larger (`max_buffer_size`): Qwen2.5-0.5B's
//! embedding is 151,936 x 896 f32 = 519 MiB. Such a tensor lives in one buffer, and a
//! kernel that meets it runs as several dispatches, each binding a window of it: at most
//! the limit, starting on the device's offset alignment, with the element offset inside
//! the window passed in the kernel's uniform.
//!
//! [`plan`] cuts an iteration shape along its leading dimension into blocks whose every
//! operand fits one window; the elementwise, copy, cast, fill, AdamW and reduction kernels
//! use it. The matmul splits over row, column and K blocks, and the embedding over
//! vocabulary blocks (both in `kernels.rs`). The row kernels (softmax, RMSNorm) split
//! over blocks of whole rows ([`row_blocks`]). A kernel with no split path refuses an
//! oversized binding with a [`DeviceLimit`](crate::error::Error::DeviceLimit) error that
//! names it.

use super::{context, Binding, GpuBuffer};
use crate::error::{Error, Result};

/// One operand of a split dispatch: its binding number, buffer and element size in bytes,
/// and where its elements lie over the iteration shape (element offset and strides).
pub struct Operand<'a> {
    pub slot: u32,
    pub buf: &'a GpuBuffer,
    pub elt: usize,
    pub off: usize,
    pub strides: Vec<usize>,
}

impl<'a> Operand<'a> {
    /// A dense operand laid out contiguously over `shape` from element `off`.
    pub fn dense(slot: u32, buf: &'a GpuBuffer, elt: usize, off: usize, shape: &[usize]) -> Self {
        let mut strides = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        Operand {
            slot,
            buf,
            elt,
            off,
            strides,
        }
    }

    fn is_big(&self, limit: u64) -> bool {
        self.buf.size() > limit
    }
}

/// One dispatch of a split op: the block's shape, each operand's element offset inside
/// its binding, and the bindings (a window for each operand over the limit).
pub struct Block<'a> {
    /// The dimension of the iteration shape the block's shape starts at: dimensions
    /// before it are fixed (their index is folded into `offs`).
    pub dim: usize,
    pub shape: Vec<usize>,
    pub offs: Vec<usize>,
    pub binds: Vec<Binding<'a>>,
}

/// The window of `buf` holding elements `first..=last` (of `elt` bytes): its byte offset
/// and size, and the element offset of `first` inside it.
pub fn window(buf: &GpuBuffer, elt: usize, first: usize, last: usize) -> ((u64, u64), usize) {
    let align = context().map(|c| c.binding_align()).unwrap_or(256);
    let start = (first * elt) as u64 / align * align;
    let end = (((last + 1) * elt) as u64)
        .div_ceil(4)
        .saturating_mul(4)
        .min(buf.size());
    ((start, end - start), first - start as usize / elt)
}

/// Elements from an operand's first to its last over `shape` (its span minus one).
fn reach(shape: &[usize], strides: &[usize]) -> usize {
    shape.iter().zip(strides).map(|(&n, &s)| (n - 1) * s).sum()
}

/// Cut the iteration `shape` into blocks along its leading dimension so that every
/// operand over the binding limit fits one window per block. Where one slice of the
/// leading dimension is still too large, each slice is cut again along the next one.
/// Block lengths are multiples of `granule` where they can be (kernels without offsets
/// in their uniform keep every window start on an element boundary that way). An operand
/// under the limit is bound whole with its own offset. One block when nothing is over.
pub fn plan<'a>(shape: &[usize], ops: &[Operand<'a>], granule: usize) -> Result<Vec<Block<'a>>> {
    let ctx = context()?;
    let limit = ctx.binding_limit();
    let shape: Vec<usize> = if shape.is_empty() {
        vec![1]
    } else {
        shape.to_vec()
    };
    if shape.contains(&0) {
        return Ok(Vec::new());
    }
    let whole = |offs: Vec<usize>| Block {
        dim: 0,
        shape: shape.clone(),
        offs,
        binds: ops.iter().map(|o| (o.slot, o.buf, None)).collect(),
    };
    if !ops.iter().any(|o| o.is_big(limit)) {
        return Ok(vec![whole(ops.iter().map(|o| o.off).collect())]);
    }
    let offs: Vec<usize> = ops.iter().map(|o| o.off).collect();
    let mut out = Vec::new();
    cut(
        &shape,
        ops,
        &offs,
        0,
        granule,
        limit,
        ctx.binding_align(),
        &mut out,
    )?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn cut<'a>(
    shape: &[usize],
    ops: &[Operand<'a>],
    offs: &[usize],
    dim: usize,
    granule: usize,
    limit: u64,
    align: u64,
    out: &mut Vec<Block<'a>>,
) -> Result<()> {
    let n0 = shape[dim];
    let inner = &shape[dim + 1..];
    // the longest block along `dim` that keeps every big operand inside one window
    let mut len = n0;
    for o in ops.iter().filter(|o| o.is_big(limit)) {
        let room = (limit.saturating_sub(align) / o.elt as u64) as usize;
        let rest = reach(inner, &o.strides[dim + 1..]) + 1;
        let s0 = o.strides[dim];
        let fit = if rest > room {
            0
        } else {
            // a broadcast operand (stride 0) fits whatever the block's length
            (room - rest).checked_div(s0).map_or(n0, |k| k + 1)
        };
        len = len.min(fit);
    }
    if len == 0 {
        if dim + 1 == shape.len() {
            return Err(Error::Gpu(format!(
                "split: one element does not fit a binding window of {limit} bytes"
            )));
        }
        // one slice is too large: cut each slice along the next dimension
        for i in 0..n0 {
            let o: Vec<usize> = ops
                .iter()
                .zip(offs)
                .map(|(op, &f)| f + i * op.strides[dim])
                .collect();
            cut(shape, ops, &o, dim + 1, granule, limit, align, out)?;
        }
        return Ok(());
    }
    if len >= granule && len < n0 {
        len -= len % granule;
    }
    let mut i0 = 0;
    while i0 < n0 {
        let b = len.min(n0 - i0);
        let mut bshape = vec![b];
        bshape.extend_from_slice(inner);
        let (mut boffs, mut binds) = (Vec::new(), Vec::new());
        for (o, &f) in ops.iter().zip(offs) {
            let first = f + i0 * o.strides[dim];
            if o.is_big(limit) {
                let last = first + reach(&bshape, &o.strides[dim..]);
                let (w, skip) = window(o.buf, o.elt, first, last);
                boffs.push(skip);
                binds.push((o.slot, o.buf, Some(w)));
            } else {
                boffs.push(first);
                binds.push((o.slot, o.buf, None));
            }
        }
        out.push(Block {
            dim,
            shape: bshape,
            offs: boffs,
            binds,
        });
        i0 += b;
    }
    Ok(())
}

/// One block of a row kernel: its first row, its row count, and its bindings.
pub struct RowBlock<'a> {
    pub first: usize,
    pub rows: usize,
    pub binds: Vec<Binding<'a>>,
}

/// Cut `rows` rows of a row kernel, one whose shader indexes every row operand from
/// element 0 (no offsets in its uniform: softmax, RMSNorm). `row_ops` are (binding,
/// buffer, 4-byte words per row); `whole` are bound whole by every block (a weight, a
/// small output). When no row operand is over the binding limit and `rows <= max_rows`,
/// this is one block binding everything whole. Otherwise the blocks are a multiple of
/// `binding_align / 4` rows long, so every row operand's window starts on the alignment
/// exactly at the block's first row and the kernel sees its rows from 0. `max_rows` caps
/// a block for kernels that loop over rows (llvmpipe's loop limiter).
pub fn row_blocks<'a>(
    what: &str,
    rows: usize,
    row_ops: &[(u32, &'a GpuBuffer, usize)],
    whole: &[(u32, &'a GpuBuffer)],
    max_rows: usize,
) -> Result<Vec<RowBlock<'a>>> {
    let ctx = context()?;
    let (limit, align) = (ctx.binding_limit(), ctx.binding_align());
    let bytes = |n: usize, words: usize| (n * words * 4) as u64;
    let over = row_ops.iter().any(|&(_, _, w)| bytes(rows, w) > limit);
    if !over && rows <= max_rows {
        let binds = row_ops
            .iter()
            .map(|&(s, b, _)| (s, b, None))
            .chain(whole.iter().map(|&(s, b)| (s, b, None)))
            .collect();
        return Ok(vec![RowBlock {
            first: 0,
            rows,
            binds,
        }]);
    }
    let granule = (align / 4).max(1) as usize;
    let widest = row_ops.iter().map(|&(_, _, w)| w).max().unwrap_or(1).max(1);
    let mut len = (limit / bytes(1, widest)) as usize;
    len = len.min(max_rows).min(rows);
    if len < rows {
        len -= len % granule;
    }
    if len == 0 {
        return Err(Error::DeviceLimit {
            what: format!(
                "{what}: {granule} rows of {widest} f32 (the smallest block it splits into)"
            ),
            requested: bytes(granule, widest),
            limit,
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    let mut out = Vec::new();
    let mut first = 0;
    while first < rows {
        let n = len.min(rows - first);
        let binds = row_ops
            .iter()
            .map(|&(s, b, w)| (s, b, Some((bytes(first, w), bytes(n, w)))))
            .chain(whole.iter().map(|&(s, b)| (s, b, None)))
            .collect();
        out.push(RowBlock {
            first,
            rows: n,
            binds,
        });
        first += n;
    }
    Ok(out)
}

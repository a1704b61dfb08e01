//! Reductions (`shaders/reduce.wgsl`): sums, maxima and arg-maxima over one dimension, the
//! sum of squares for the gradient norm, and the scatter that reverses a reduction.

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::backend::ReduceOp;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn reduce(
    op: ReduceOp,
    x: &Tensor,
    outer: usize,
    n: usize,
    inner: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    require_f32("reduce", &[x])?;
    let x = dense(x)?;
    let vals = f32_out(&[outer * inner])?;
    let idx = empty(&[outer * inner], DType::U32)?;
    reduce_into(op, false, &x, 0, outer, n, inner, &vals, &idx, 0)?;
    Ok((vals, (op == ReduceOp::Max).then_some(idx)))
}

/// Elements one workgroup of [`sum_squares`] sums: 64 a thread.
pub(super) const SQ_ROW: usize = 256 * 64;

/// The squared L2 norm of all `xs` together, `(1,)`. Each tensor is read as rows of
/// [`SQ_ROW`] elements (and one ragged tail row), one workgroup per row, into a partials
/// buffer: one dispatch per tensor and binding window, every workgroup of the device busy
/// on a 1 GiB arena chunk. One more dispatch sums the partials.
pub fn sum_squares(xs: &[Tensor]) -> Result<Tensor> {
    let split = |n: usize| (n / SQ_ROW, n % SQ_ROW);
    let slots: usize = xs
        .iter()
        .map(|x| {
            let (rows, tail) = split(x.numel());
            rows + (tail > 0) as usize
        })
        .sum();
    let parts = f32_out(&[slots.max(1)])?;
    let idx = empty(&[slots.max(1)], DType::U32)?;
    if slots == 0 {
        fill(&parts, 0.0)?;
    }
    let mut at = 0;
    for x in xs {
        require_f32("sum_squares", &[x])?;
        let x = dense(x)?;
        let (rows, tail) = split(x.numel());
        if rows > 0 {
            reduce_into(
                ReduceOp::Sum,
                true,
                &x,
                0,
                rows,
                SQ_ROW,
                1,
                &parts,
                &idx,
                at,
            )?;
            at += rows;
        }
        if tail > 0 {
            let from = rows * SQ_ROW;
            reduce_into(ReduceOp::Sum, true, &x, from, 1, tail, 1, &parts, &idx, at)?;
            at += 1;
        }
    }
    let (total, _) = reduce(ReduceOp::Sum, &parts, 1, slots.max(1), 1)?;
    Ok(total)
}

/// Reduce dense `x`, from element `x_base`, over `[outer, n, inner]` into `vals`/`idx`
/// from element `v_base` (`square`: sum x^2).
#[allow(clippy::too_many_arguments)]
pub(super) fn reduce_into(
    op: ReduceOp,
    square: bool,
    x: &Tensor,
    x_base: usize,
    outer: usize,
    n: usize,
    inner: usize,
    vals: &Tensor,
    idx: &Tensor,
    v_base: usize,
) -> Result<()> {
    let opc = if op == ReduceOp::Sum { 0 } else { 1 };
    let sq = ("SQ", square as u32);
    let (spec, spec_acc) = (
        [("OP", opc), sg()?, ("ACC", 0), sq],
        [("OP", opc), sg()?, ("ACC", 1), sq],
    );
    // over [outer, n, inner]: X dense, V and I indexed by (outer, inner)
    let ops = [
        split::Operand::dense(1, buf(x), 4, x_base, &[outer, n, inner]),
        split::Operand {
            slot: 2,
            buf: buf(vals),
            elt: 4,
            off: v_base,
            strides: vec![inner, 0, 1],
        },
        split::Operand {
            slot: 3,
            buf: buf(idx),
            elt: 4,
            off: v_base,
            strides: vec![inner, 0, 1],
        },
    ];
    let blocks = split::plan(&[outer, n, inner], &ops, 1)?;
    if blocks.iter().any(|b| b.dim > 1)
        || (op != ReduceOp::Sum && blocks.iter().any(|b| b.dim == 1))
    {
        return Err(Error::DeviceLimit {
            what: format!(
                "reduce over [{outer}, {n}, {inner}] (a row of {inner} elements, or a max over {n} x {inner}, is not split)"
            ),
            requested: (n * inner * 4) as u64,
            limit: context()?.binding_limit(),
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    // Blocks of whole outer slices reduce on their own. Where one slice is over the
    // limit, its blocks of rows follow each other (dim 1): the first writes the sums,
    // the rest add to them.
    let mut prev: Option<(usize, Option<(u64, u64)>)> = None;
    for b in &blocks {
        let (outer_b, n_b, first) = if b.dim == 0 {
            (b.shape[0], n, true)
        } else {
            let key = (b.offs[1], b.binds[1].2);
            let first = prev != Some(key);
            prev = Some(key);
            (1, b.shape[0], first)
        };
        // A thread walks n / 256 elements (rows) or n (columns); past `cap`, each row
        // goes in pieces that add up, as llvmpipe silently stops a shader's loops after
        // 65,535 iterations in all.
        let cap = if inner == 1 { 256 * 16_384 } else { 16_384 };
        if n_b <= cap {
            let spec = if first { &spec[..] } else { &spec_acc[..] };
            reduce_block(spec, outer_b, n_b, inner, b.offs[0], b.offs[1], &b.binds)?;
            continue;
        }
        if op != ReduceOp::Sum {
            return Err(Error::invalid(
                "max",
                format!(
                    "a max over {n_b} elements per row is not supported on the gpu (at most {cap})"
                ),
            ));
        }
        for o in 0..outer_b {
            for c0 in (0..n_b).step_by(cap) {
                let add = c0 > 0 || !first;
                reduce_block(
                    if add { &spec_acc[..] } else { &spec[..] },
                    1,
                    cap.min(n_b - c0),
                    inner,
                    b.offs[0] + (o * n_b + c0) * inner,
                    b.offs[1] + o * inner,
                    &b.binds,
                )?;
            }
        }
    }
    Ok(())
}

/// One `reduce.wgsl` dispatch over [outer, n, inner] elements from X offset `x_off`,
/// writing V (and I) from offset `v_off`.
pub(super) fn reduce_block(
    spec: &[(&'static str, u32)],
    outer: usize,
    n: usize,
    inner: usize,
    x_off: usize,
    v_off: usize,
    binds: &[crate::backend::gpu::Binding],
) -> Result<()> {
    let u = Uniform::new().u(outer).u(n).u(inner).u(x_off).u(v_off);
    // the input read once, one value (and index) written per output
    crate::backend::gpu::profile::cost(0.0, (4 * outer * n * inner + 8 * outer * inner) as f64);
    let (entry, groups) = if inner == 1 {
        ("reduce_rows", grid_1d(outer, 1))
    } else {
        ("reduce_cols", grid_1d(outer * inner, WG))
    };
    context()?.dispatch_bound("reduce", entry, spec, &u.0, binds, groups)
}

pub fn scatter_dim(
    g: &Tensor,
    idx: &Tensor,
    outer: usize,
    n: usize,
    inner: usize,
) -> Result<Tensor> {
    require_f32("max", &[g])?;
    let (g, idx) = (dense(g)?, dense(idx)?);
    let out = f32_out(&[outer * n * inner])?;
    // over [outer, n, inner]: g and the argmax indexed by (outer, inner), dx dense
    let by_oi = |slot, t| split::Operand {
        slot,
        buf: buf(t),
        elt: 4,
        off: 0,
        strides: vec![inner, 0, 1],
    };
    let ops = [
        by_oi(1, &g),
        by_oi(3, &idx),
        split::Operand::dense(2, buf(&out), 4, 0, &[outer, n, inner]),
    ];
    let ctx = context()?;
    for b in split::plan(&[outer, n, inner], &ops, 1)? {
        if b.dim != 0 {
            return Err(Error::DeviceLimit {
                what: format!("max backward over [{outer}, {n}, {inner}] (slices are not split)"),
                requested: (n * inner * 4) as u64,
                limit: ctx.binding_limit(),
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let cnt = b.shape[0] * n * inner;
        let u = Uniform::new()
            .u(b.shape[0])
            .u(n)
            .u(inner)
            .u(b.offs[0])
            .u(b.offs[2])
            .u(b.offs[1]);
        ctx.dispatch_bound(
            "reduce",
            "scatter_dim",
            &[("OP", 0), ("ACC", 0), ("SQ", 0)],
            &u.0,
            &b.binds,
            grid_1d(cnt, WG),
        )?;
    }
    Ok(out)
}

//! The elementwise kernels (`shaders/elementwise.wgsl`): unary and binary ops over strided
//! operands, their gradients, and `where`.

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::shape::{numel, Layout};
use crate::tensor::Tensor;

/// Record an `elementwise.wgsl` entry over `shape`: inputs A, B, C (bindings 1-3) read
/// through their layouts, output O (binding 4) dense. Split into blocks when a tensor is
/// over the binding limit. Uniform: n, p0, p1, od, shape, sa, sb, sc, oa, ob, oc, pad.
pub(super) fn ew_dispatch(
    entry: &'static str,
    code: u32,
    p: (f64, f64),
    shape: &[usize],
    ins: [Option<(&Tensor, &Layout)>; 3],
    out: &Tensor,
) -> Result<()> {
    let mut ops = Vec::new();
    let mut slot_of = [None; 3];
    for (k, i) in ins.iter().enumerate() {
        if let Some((t, l)) = i {
            slot_of[k] = Some(ops.len());
            ops.push(split::Operand {
                slot: k as u32 + 1,
                buf: buf(t),
                elt: 4,
                off: l.offset,
                strides: l.strides.clone(),
            });
        }
    }
    let o = ops.len();
    ops.push(split::Operand::dense(4, buf(out), 4, 0, shape));
    let ctx = context()?;
    for blk in split::plan(shape, &ops, 1)? {
        let n = numel(&blk.shape);
        let mut u = Uniform::new()
            .u(n)
            .f(p.0 as f32)
            .f(p.1 as f32)
            .u(blk.offs[o])
            .v8(&shape8(&blk.shape), 1);
        for k in slot_of {
            u = match k {
                Some(k) => u.v8(&pad8(&ops[k].strides[blk.dim..]), 0),
                None => u.v8(&[], 0),
            };
        }
        for k in slot_of {
            u = u.u(k.map_or(0, |k| blk.offs[k]));
        }
        let u = u.u(0);
        // each input read and the output written, n elements each (a broadcast operand
        // counts in full, so a bias add's GB/s is an upper bound)
        crate::backend::gpu::profile::cost(
            0.0,
            (4 * n * (slot_of.iter().flatten().count() + 1)) as f64,
        );
        ctx.dispatch_bound(
            "elementwise",
            entry,
            &[("OP", code)],
            &u.0,
            &blk.binds,
            grid_1d(n, WG),
        )?;
    }
    Ok(())
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    require_f32(op.name(), &[x])?;
    rank_check(op.name(), x.shape())?;
    let out = f32_out(x.shape())?;
    ew_dispatch(
        "unary",
        op.code(),
        op.params(),
        x.shape(),
        [Some((x, x.layout())), None, None],
        &out,
    )?;
    Ok(out)
}

pub fn unary_grad(op: UnaryOp, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    require_f32(op.name(), &[x, g])?;
    let (x, g) = (dense(x)?, dense(g)?);
    let out = f32_out(x.shape())?;
    let flat = Layout::contiguous(&[x.numel()]);
    ew_dispatch(
        "unary_grad",
        op.code(),
        op.params(),
        &[x.numel()],
        [Some((&x, &flat)), Some((&g, &flat)), None],
        &out,
    )?;
    Ok(out)
}

pub fn binary(
    op: BinaryOp,
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    require_f32(op.name(), &[a, b])?;
    rank_check(op.name(), shape)?;
    let out = f32_out(shape)?;
    ew_dispatch(
        "binary",
        op.code(),
        (0.0, 0.0),
        shape,
        [Some((a, la)), Some((b, lb)), None],
        &out,
    )?;
    Ok(out)
}

pub fn where_select(
    c: &Tensor,
    lc: &Layout,
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    require_f32("where", &[c, a, b])?;
    rank_check("where", shape)?;
    let out = f32_out(shape)?;
    ew_dispatch(
        "where3",
        0,
        (0.0, 0.0),
        shape,
        [Some((a, la)), Some((b, lb)), Some((c, lc))],
        &out,
    )?;
    Ok(out)
}

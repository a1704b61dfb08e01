//! One function per GPU op: check the inputs, allocate the outputs from the pool, build
//! the uniform (shapes, strides, scalars) and record the dispatch. Nothing here waits for
//! the GPU. The matching WGSL lives in `shaders/<family>.wgsl`; each uniform below is
//! written in the field order of that shader's `Params` struct.

use std::sync::Arc;

use super::{context, grid_1d, split, GpuBuffer, Uniform};
use crate::backend::cpu::AdamW;
use crate::backend::{BinaryOp, Gemm, ReduceOp, UnaryOp};

pub use super::attention::{attention, attention_bwd};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::rope::RopeDims;
use crate::shape::{numel, Layout, MAX_RANK};
use crate::tensor::{Storage, Tensor};

const WG: usize = 256;

/// A fresh output tensor (poisoned with NaN when poisoning is on).
pub fn empty(shape: &[usize], dtype: DType) -> Result<Tensor> {
    if dtype == DType::F64 {
        return Err(Error::invalid("gpu", "f64 tensors live on the cpu only"));
    }
    let bytes = (numel(shape) * dtype.size()).div_ceil(4) * 4;
    let buf = context()?.alloc_out(bytes, "output")?;
    Ok(Tensor::from_storage(Storage::Gpu(buf), shape, dtype))
}

/// The subgroup specialisation of the row-reduction kernels.
fn sg() -> Result<(&'static str, u32)> {
    Ok(("SG", context()?.use_subgroups() as u32))
}

pub(super) fn f32_out(shape: &[usize]) -> Result<Tensor> {
    empty(shape, DType::F32)
}

pub(super) fn require_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch {
                op,
                expected: DType::F32,
                got: t.dtype(),
            });
        }
    }
    Ok(())
}

/// The tensor as dense storage starting at element 0 (a copy only for offset/strided views).
pub(super) fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset == 0 {
        return Ok(t.clone());
    }
    let out = empty(t.shape(), t.dtype())?;
    copy(t, &out, &Layout::contiguous(t.shape()))?;
    Ok(out)
}

pub(super) fn buf(t: &Tensor) -> &GpuBuffer {
    t.gpu_buf()
}

fn rank_check(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(Error::bad_shape(
            op,
            format!("rank above {MAX_RANK} is not supported on the gpu"),
            shape,
        ));
    }
    Ok(())
}

fn shape8(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; MAX_RANK - shape.len()];
    s.extend(shape);
    s
}

// ------------------------------------------------------------------ elementwise

/// Strides padded to 8 dims from the left.
fn pad8(strides: &[usize]) -> Vec<usize> {
    let mut s = vec![0; MAX_RANK - strides.len()];
    s.extend(strides);
    s
}

/// Record an `elementwise.wgsl` entry over `shape`: inputs A, B, C (bindings 1-3) read
/// through their layouts, output O (binding 4) dense. Split into blocks when a tensor is
/// over the binding limit. Uniform: n, p0, p1, od, shape, sa, sb, sc, oa, ob, oc, pad.
fn ew_dispatch(
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
        super::profile::cost(0.0, (4 * n * (slot_of.iter().flatten().count() + 1)) as f64);
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
        super::profile::cost(0.0, (8 * n) as f64);
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

pub(super) fn fill_words(b: &GpuBuffer, off: usize, n: usize, bits: u32) -> Result<()> {
    let ops = [split::Operand::dense(2, b, 4, off, &[n])];
    let ctx = context()?;
    for blk in split::plan(&[n], &ops, 1)? {
        let n = blk.shape[0];
        let u = Uniform::new().u(n).u(0).u(blk.offs[0]).u(bits as usize);
        super::profile::cost(0.0, (4 * n) as f64);
        ctx.dispatch_bound("copy", "fill", &[], &u.0, &blk.binds, grid_1d(n, WG))?;
    }
    Ok(())
}

/// The blocks of a 1-D dense kernel with no offsets in its uniform: every operand starts
/// at element 0 and blocks are whole multiples of 128 elements, so every window starts
/// exactly at its block (checked).
fn dense_blocks<'a>(n: usize, ops: &[(u32, &'a GpuBuffer)]) -> Result<Vec<split::Block<'a>>> {
    let ops: Vec<split::Operand> = ops
        .iter()
        .map(|&(slot, b)| split::Operand::dense(slot, b, 4, 0, &[n]))
        .collect();
    let blocks = split::plan(&[n], &ops, 128)?;
    if blocks.iter().any(|b| b.offs.iter().any(|&o| o != 0)) {
        return Err(Error::Gpu(
            "split: a dense block does not start its window".into(),
        ));
    }
    Ok(blocks)
}

// ------------------------------------------------------------------ reductions

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
const SQ_ROW: usize = 256 * 64;

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
fn reduce_into(
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
fn reduce_block(
    spec: &[(&'static str, u32)],
    outer: usize,
    n: usize,
    inner: usize,
    x_off: usize,
    v_off: usize,
    binds: &[super::Binding],
) -> Result<()> {
    let u = Uniform::new().u(outer).u(n).u(inner).u(x_off).u(v_off);
    // the input read once, one value (and index) written per output
    super::profile::cost(0.0, (4 * outer * n * inner + 8 * outer * inner) as f64);
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

// ------------------------------------------------------------------ matmul

/// The most K one matmul dispatch walks; a longer K goes in blocks that add into C.
/// llvmpipe (lavapipe) silently ends all loops of a shader invocation after 65,535
/// iterations in all, and a K tile costs up to ~50 of them (measured: K = 60,000 came
/// out wrong there, 20,000 right); elsewhere the extra dispatches cost nothing visible.
const GEMM_MAX_K: usize = 16_384;

/// Tile configurations: (BM, BN, BK, TM, TN). Threads = (BM/TM) * (BN/TN) = 256.
const TILES: [(u32, u32, u32, u32, u32); 3] =
    [(128, 128, 8, 8, 8), (64, 64, 16, 4, 4), (16, 64, 16, 1, 4)];

pub fn gemm(g: &Gemm, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = f32_out(&[g.batch, g.m, g.n])?;
    gemm_into(g, a, b, &out, false)?;
    Ok(out)
}

/// C += A B into `out`, a dense f32 (batch, m, n) from element 0: the GEMM's own
/// accumulate mode, so no product-sized temporary exists (a gradient summed over chunks).
pub fn gemm_acc(g: &Gemm, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
    if out.dtype() != DType::F32
        || !out.is_contiguous()
        || out.layout().offset != 0
        || out.numel() != g.batch * g.m * g.n
    {
        return Err(Error::Gpu(
            "matmul accumulate: the output must be a dense f32 (batch, m, n)".into(),
        ));
    }
    gemm_into(g, a, b, out, true)
}

/// C = A B (`acc`: C += A B) into the dense `out`.
fn gemm_into(g: &Gemm, a: &Tensor, b: &Tensor, out: &Tensor, acc: bool) -> Result<()> {
    require_f32("matmul", &[a])?;
    let ctx = context()?;
    // B's storage: f32, or 16-bit read natively (shader-f16) or unpacked from words.
    let (f32b, f16n, f16u, bf16) = match b.dtype() {
        DType::F32 => (1, 0, 0, 0),
        DType::F16 if ctx.use_f16() => (0, 1, 0, 0),
        DType::F16 => (0, 0, 1, 0),
        DType::BF16 => (0, 0, 0, 1),
        other => {
            return Err(Error::DTypeMismatch {
                op: "matmul",
                expected: DType::F32,
                got: other,
            })
        }
    };
    if g.m * g.n * g.batch * g.k == 0 {
        if g.m * g.n * g.batch > 0 && !acc {
            fill(out, 0.0)?;
        }
        return Ok(());
    }
    let storage = Storage16 {
        f32b,
        f16n,
        f16u,
        bf16,
    };
    let b_elt = if f32b == 1 { 4 } else { 2 };
    let limit = ctx.binding_limit();
    let (a_big, b_big, c_big) = (
        buf(a).size() > limit,
        buf(b).size() > limit,
        buf(out).size() > limit,
    );
    if !(a_big || b_big || c_big) && g.k <= GEMM_MAX_K {
        let blk = GemmBlock {
            m: g.m,
            n: g.n,
            k: g.k,
            batch: g.batch,
            a: (g.a.off, g.a.sb),
            b: (g.b.off, g.b.sb),
            c: (0, g.m * g.n),
            acc,
        };
        let binds = [(1, buf(a), None), (2, buf(b), None), (3, buf(out), None)];
        gemm_block(g, &storage, &blk, &binds)?;
        return Ok(());
    }
    // Split: blocks of (rows, columns, K) whose every big operand fits one window, one
    // batch at a time; the K blocks after the first add into C.
    let room = |elt: usize| (limit.saturating_sub(ctx.binding_align()) / elt as u64) as usize;
    let span = |n1: usize, s1: usize, n2: usize, s2: usize| (n1 - 1) * s1 + (n2 - 1) * s2 + 1;
    let halve = |x: &mut usize| *x = x.div_ceil(2);
    let (mut mb, mut nb, mut kb) = (g.m, g.n, g.k.min(GEMM_MAX_K));
    loop {
        let over_a = a_big && span(mb, g.a.sr, kb, g.a.sc) > room(4);
        let over_b = b_big && span(kb, g.b.sr, nb, g.b.sc) > room(b_elt);
        let over_c = c_big && span(mb, g.n, nb, 1) > room(4);
        if !(over_a || over_b || over_c) {
            break;
        }
        let before = (mb, nb, kb);
        if over_a {
            if (mb - 1) * g.a.sr >= (kb - 1) * g.a.sc && mb > 1 {
                halve(&mut mb)
            } else {
                halve(&mut kb)
            }
        } else if over_b {
            if (kb - 1) * g.b.sr >= (nb - 1) * g.b.sc && kb > 1 {
                halve(&mut kb)
            } else {
                halve(&mut nb)
            }
        } else if (mb - 1) * g.n >= nb - 1 && mb > 1 {
            halve(&mut mb)
        } else {
            halve(&mut nb)
        }
        if (mb, nb, kb) == before {
            return Err(Error::Gpu(format!(
                "split: no block of matmul {}x{}x{} fits a binding of {limit} bytes",
                g.m, g.n, g.k
            )));
        }
    }
    // whole tiles where the blocks are large enough
    let round = |x: usize, t: usize| if x >= t { x - x % t } else { x };
    let (mb, nb, kb) = (round(mb, 128), round(nb, 128), round(kb, 16));
    for z in 0..g.batch {
        for m0 in (0..g.m).step_by(mb) {
            for n0 in (0..g.n).step_by(nb) {
                for k0 in (0..g.k).step_by(kb) {
                    let (ml, nl, kl) = (mb.min(g.m - m0), nb.min(g.n - n0), kb.min(g.k - k0));
                    let af = g.a.off + z * g.a.sb + m0 * g.a.sr + k0 * g.a.sc;
                    let bf = g.b.off + z * g.b.sb + k0 * g.b.sr + n0 * g.b.sc;
                    let cf = z * g.m * g.n + m0 * g.n + n0;
                    let place = |t: &Tensor, big: bool, elt: usize, first: usize, last: usize| {
                        if big {
                            let (w, off) = split::window(buf(t), elt, first, last);
                            (Some(w), off)
                        } else {
                            (None, first)
                        }
                    };
                    let (aw, ao) = place(a, a_big, 4, af, af + span(ml, g.a.sr, kl, g.a.sc) - 1);
                    let (bw, bo) =
                        place(b, b_big, b_elt, bf, bf + span(kl, g.b.sr, nl, g.b.sc) - 1);
                    let (cw, co) = place(out, c_big, 4, cf, cf + span(ml, g.n, nl, 1) - 1);
                    let blk = GemmBlock {
                        m: ml,
                        n: nl,
                        k: kl,
                        batch: 1,
                        a: (ao, 0),
                        b: (bo, 0),
                        c: (co, 0),
                        acc: acc || k0 > 0,
                    };
                    let binds = [(1, buf(a), aw), (2, buf(b), bw), (3, buf(out), cw)];
                    gemm_block(g, &storage, &blk, &binds)?;
                }
            }
        }
    }
    Ok(())
}

/// How a matmul's B is stored: f32, f16 read natively, f16 or bf16 unpacked from words.
struct Storage16 {
    f32b: u32,
    f16n: u32,
    f16u: u32,
    bf16: u32,
}

/// One matmul dispatch: sizes, (offset, batch stride) of A, B and C inside their
/// bindings, and whether it adds into C.
struct GemmBlock {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
    acc: bool,
}

fn gemm_block(g: &Gemm, s: &Storage16, blk: &GemmBlock, binds: &[super::Binding]) -> Result<()> {
    let t = if blk.m >= 512 && blk.n >= 512 {
        TILES[0]
    } else if blk.m <= 16 {
        TILES[2]
    } else {
        TILES[1]
    };
    let (bm, bn, bk, tm, tn) = t;
    let spec = [
        ("BM", bm),
        ("BN", bn),
        ("BK", bk),
        ("TM", tm),
        ("TN", tn),
        // load order: walk k fastest when A's k stride is 1; n fastest when B's n stride is 1
        ("A_KFAST", (g.a.sc == 1) as u32),
        ("B_NFAST", (g.b.sc == 1 || g.b.sr != 1) as u32),
        ("B_F32", s.f32b),
        ("B_F16N", s.f16n),
        ("F16", s.f16n),
        ("B_F16U", s.f16u),
        ("B_BF16", s.bf16),
        ("ACC", blk.acc as u32),
    ];
    let u = Uniform::new()
        .u(blk.m)
        .u(blk.n)
        .u(blk.k)
        .u(0)
        .u(blk.a.0)
        .u(blk.a.1)
        .u(g.a.sr)
        .u(g.a.sc)
        .u(blk.b.0)
        .u(blk.b.1)
        .u(g.b.sr)
        .u(g.b.sc)
        .u(blk.c.0)
        .u(blk.c.1)
        .u(g.n)
        .u(0);
    let groups = [
        blk.n.div_ceil(bn as usize) as u32,
        blk.m.div_ceil(bm as usize) as u32,
        blk.batch as u32,
    ];
    // for the profiler: 2 M N K FLOPs; A and C once, B once per batch it is not shared by
    let b_elt = if s.f32b == 1 { 4.0 } else { 2.0 };
    let b_batches = if blk.b.1 == 0 { 1 } else { blk.batch };
    super::profile::cost(
        2.0 * (blk.batch * blk.m * blk.n) as f64 * blk.k as f64,
        4.0 * (blk.batch * blk.m * (blk.k + blk.n)) as f64
            + b_elt * (b_batches * blk.k * blk.n) as f64,
    );
    context()?.dispatch_bound("matmul", "gemm", &spec, &u.0, binds, groups)
}

// ------------------------------------------------------------------ softmax, rmsnorm

pub fn softmax(x: &Tensor, n: usize, log: bool) -> Result<Tensor> {
    require_f32("softmax", &[x])?;
    let x = dense(x)?;
    let rows = x.numel() / n.max(1);
    let out = f32_out(x.shape())?;
    let ctx = context()?;
    let row_ops = [(1, buf(&x), n), (2, buf(&out), n)];
    for b in split::row_blocks("softmax:softmax_rows", rows, &row_ops, &[], usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(n).u(0).u(0);
        super::profile::cost(0.0, (8 * b.rows * n) as f64);
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

/// Rows one `rmsnorm_bwd_dw` thread walks per dispatch (it loops over rows; llvmpipe
/// ends a shader invocation's loops after 65,535 iterations in all).
const RMSNORM_DW_MAX_ROWS: usize = 16_384;

pub fn rmsnorm(x: &Tensor, w: &Tensor, c: usize, eps: f32) -> Result<(Tensor, Tensor)> {
    require_f32("rms_norm", &[x, w])?;
    let (x, w) = (dense(x)?, dense(w)?);
    let rows = x.numel() / c.max(1);
    let y = f32_out(x.shape())?;
    let rstd = f32_out(&[rows])?;
    let ctx = context()?;
    let row_ops = [(1, buf(&x), c), (4, buf(&y), c), (5, buf(&rstd), 1)];
    let whole = [(2, buf(&w))];
    for b in split::row_blocks("rmsnorm:rmsnorm_fwd", rows, &row_ops, &whole, usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(c).f(eps).u(0);
        // x read, y written, w and one rstd a row
        super::profile::cost(0.0, (8 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_fwd",
            &[sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    Ok((y, rstd))
}

pub fn rmsnorm_bwd(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    c: usize,
) -> Result<(Tensor, Tensor)> {
    require_f32("rms_norm", &[x, w, rstd, g])?;
    let (x, w, rstd, g) = (dense(x)?, dense(w)?, dense(rstd)?, dense(g)?);
    let rows = x.numel() / c.max(1);
    let dx = f32_out(x.shape())?;
    let dw = f32_out(&[c])?;
    let ctx = context()?;
    let row_ops = [
        (1, buf(&x), c),
        (3, buf(&g), c),
        (5, buf(&rstd), 1),
        (4, buf(&dx), c),
    ];
    let whole = [(2, buf(&w))];
    for b in split::row_blocks("rmsnorm:rmsnorm_bwd_dx", rows, &row_ops, &whole, usize::MAX)? {
        let u = Uniform::new().u(b.rows).u(c).f(0.0).u(0);
        super::profile::cost(0.0, (12 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_bwd_dx",
            &[sg()?],
            &u.0,
            &b.binds,
            grid_1d(b.rows, 1),
        )?;
    }
    // dw sums over every row: later blocks add into it (ACC)
    let row_ops = [(1, buf(&x), c), (3, buf(&g), c), (5, buf(&rstd), 1)];
    let whole = [(6, buf(&dw))];
    let blocks = split::row_blocks(
        "rmsnorm:rmsnorm_bwd_dw",
        rows,
        &row_ops,
        &whole,
        RMSNORM_DW_MAX_ROWS,
    )?;
    for b in blocks {
        let u = Uniform::new().u(b.rows).u(c).f(0.0).u(0);
        super::profile::cost(0.0, (8 * b.rows * c + 4 * c + 4 * b.rows) as f64);
        ctx.dispatch_bound(
            "rmsnorm",
            "rmsnorm_bwd_dw",
            &[("ACC", (b.first > 0) as u32)],
            &u.0,
            &b.binds,
            grid_1d(c, WG),
        )?;
    }
    Ok((dx, dw))
}

// ------------------------------------------------------------------ rope, swiglu

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
        super::profile::cost(0.0, (8 * b.rows * w) as f64);
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

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    require_f32("swiglu", &[gate, up])?;
    let (a, u_) = (dense(gate)?, dense(up)?);
    let out = f32_out(a.shape())?;
    let ctx = context()?;
    for b in dense_blocks(a.numel(), &[(1, buf(&a)), (2, buf(&u_)), (4, buf(&out))])? {
        let u = Uniform::new().u(b.shape[0]).u(0).u(0).u(0);
        super::profile::cost(0.0, (12 * b.shape[0]) as f64);
        ctx.dispatch_bound(
            "swiglu",
            "swiglu_fwd",
            &[],
            &u.0,
            &b.binds,
            grid_1d(b.shape[0], WG),
        )?;
    }
    Ok(out)
}

pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    require_f32("swiglu", &[gate, up, g])?;
    let (a, u_, g) = (dense(gate)?, dense(up)?, dense(g)?);
    let da = f32_out(a.shape())?;
    let du = f32_out(a.shape())?;
    let ctx = context()?;
    let ops = [
        (1, buf(&a)),
        (2, buf(&u_)),
        (3, buf(&g)),
        (4, buf(&da)),
        (5, buf(&du)),
    ];
    for b in dense_blocks(a.numel(), &ops)? {
        let u = Uniform::new().u(b.shape[0]).u(0).u(0).u(0);
        super::profile::cost(0.0, (20 * b.shape[0]) as f64);
        ctx.dispatch_bound(
            "swiglu",
            "swiglu_bwd",
            &[],
            &u.0,
            &b.binds,
            grid_1d(b.shape[0], WG),
        )?;
    }
    Ok((da, du))
}

// ------------------------------------------------------------------ embedding

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
fn token_blocks<'a>(
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
fn vocab_blocks(
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

// ------------------------------------------------------------------ token log-probs

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
        super::profile::cost(0.0, (4 * b.rows * v + 12 * b.rows) as f64);
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
        super::profile::cost(0.0, (8 * b.rows * v + 12 * b.rows) as f64);
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

// ------------------------------------------------------------------ casts, AdamW

pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let (from, n) = (x.dtype(), x.numel());
    let entry = match (from, to) {
        (DType::F16, DType::F32) => "f16_to_f32",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (DType::F32, DType::F16) => "f32_to_f16",
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::U32, DType::F32) => "u32_to_f32",
        (DType::I32, DType::F32) => "i32_to_f32",
        _ => {
            return Err(Error::invalid(
                "to_dtype",
                format!("cannot cast {from} to {to} on the gpu"),
            ))
        }
    };
    let out = empty(x.shape(), to)?;
    // the source may start anywhere (its offset goes in the uniform); the output is
    // dense from 0 and cut in blocks of 128 elements, so its windows start on a word
    let ops = [
        split::Operand::dense(1, buf(x), from.size(), x.layout().offset, &[n]),
        split::Operand::dense(2, buf(&out), to.size(), 0, &[n]),
    ];
    let ctx = context()?;
    for b in split::plan(&[n], &ops, 128)? {
        if b.offs[1] != 0 {
            return Err(Error::Gpu(
                "split: a cast block does not start its window".into(),
            ));
        }
        let len = b.shape[0];
        let u = Uniform::new().u(len).u(b.offs[0]).u(0).u(0);
        let threads = if to.size() == 2 { len.div_ceil(2) } else { len };
        super::profile::cost(0.0, (len * (from.size() + to.size())) as f64);
        ctx.dispatch_bound("cast", entry, &[], &u.0, &b.binds, grid_1d(threads, WG))?;
    }
    Ok(out)
}

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
        super::profile::cost(0.0, (28 * b.shape[0]) as f64);
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

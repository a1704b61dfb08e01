//! One function per GPU op: check the inputs, allocate the outputs from the pool, build
//! the uniform (shapes, strides, scalars) and record the dispatch. Nothing here waits for
//! the GPU. The matching WGSL lives in `shaders/<family>.wgsl`; each uniform below is
//! written in the field order of that shader's `Params` struct.

use std::sync::Arc;

use super::{context, grid_1d, GpuBuffer, Uniform};
use crate::backend::cpu::AdamW;
use crate::backend::{AttnDims, BinaryOp, Gemm, ReduceOp, UnaryOp};
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

fn f32_out(shape: &[usize]) -> Result<Tensor> {
    empty(shape, DType::F32)
}

fn require_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
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
fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset == 0 {
        return Ok(t.clone());
    }
    let out = empty(t.shape(), t.dtype())?;
    copy(t, &out, &Layout::contiguous(t.shape()))?;
    Ok(out)
}

fn buf(t: &Tensor) -> &GpuBuffer {
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

/// Elements of a (possibly broadcast) layout, padded to 8 dims from the left.
fn strides8(l: &Layout, rank: usize) -> Vec<usize> {
    let mut s = vec![0; MAX_RANK - rank];
    s.extend(&l.strides);
    s
}
fn shape8(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; MAX_RANK - shape.len()];
    s.extend(shape);
    s
}

// ------------------------------------------------------------------ elementwise

/// Uniform of `elementwise.wgsl`: n, p0, p1, pad, shape, sa, sb, sc, oa, ob, oc, pad.
fn ew_uniform(shape: &[usize], p: (f64, f64), ls: [Option<&Layout>; 3]) -> Uniform {
    let r = shape.len();
    let mut u = Uniform::new()
        .u(numel(shape))
        .f(p.0 as f32)
        .f(p.1 as f32)
        .u(0)
        .v8(&shape8(shape), 1);
    for l in ls {
        u = match l {
            Some(l) => u.v8(&strides8(l, r), 0),
            None => u.v8(&[], 0),
        };
    }
    for l in ls {
        u = u.u(l.map(|l| l.offset).unwrap_or(0));
    }
    u.u(0)
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    require_f32(op.name(), &[x])?;
    rank_check(op.name(), x.shape())?;
    let out = f32_out(x.shape())?;
    let u = ew_uniform(x.shape(), op.params(), [Some(x.layout()), None, None]);
    context()?.dispatch(
        "elementwise",
        "unary",
        &[("OP", op.code())],
        &u.0,
        &[(1, buf(x)), (4, buf(&out))],
        grid_1d(x.numel(), WG),
    )?;
    Ok(out)
}

pub fn unary_grad(op: UnaryOp, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    require_f32(op.name(), &[x, g])?;
    let (x, g) = (dense(x)?, dense(g)?);
    let out = f32_out(x.shape())?;
    let u = ew_uniform(&[x.numel()], op.params(), [None, None, None]);
    context()?.dispatch(
        "elementwise",
        "unary_grad",
        &[("OP", op.code())],
        &u.0,
        &[(1, buf(&x)), (2, buf(&g)), (4, buf(&out))],
        grid_1d(x.numel(), WG),
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
    let u = ew_uniform(shape, (0.0, 0.0), [Some(la), Some(lb), None]);
    context()?.dispatch(
        "elementwise",
        "binary",
        &[("OP", op.code())],
        &u.0,
        &[(1, buf(a)), (2, buf(b)), (4, buf(&out))],
        grid_1d(numel(shape), WG),
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
    let u = ew_uniform(shape, (0.0, 0.0), [Some(la), Some(lb), Some(lc)]);
    context()?.dispatch(
        "elementwise",
        "where3",
        &[("OP", 0)],
        &u.0,
        &[(1, buf(a)), (2, buf(b)), (3, buf(c)), (4, buf(&out))],
        grid_1d(numel(shape), WG),
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
    let r = src.rank();
    let u = Uniform::new()
        .u(src.numel())
        .u(src.layout().offset)
        .u(dl.offset)
        .u(0)
        .v8(&shape8(src.shape()), 1)
        .v8(&strides8(src.layout(), r), 0)
        .v8(&strides8(dl, r), 0);
    context()?.dispatch(
        "copy",
        "copy",
        &[],
        &u.0,
        &[(1, buf(src)), (2, buf(dst))],
        grid_1d(src.numel(), WG),
    )
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
    let u = Uniform::new().u(n).u(0).u(off).u(bits as usize);
    context()?.dispatch("copy", "fill", &[], &u.0, &[(2, b)], grid_1d(n, WG))
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
    let u = Uniform::new().u(outer).u(n).u(inner).u(0);
    let spec = [("OP", if op == ReduceOp::Sum { 0 } else { 1 }), sg()?];
    let binds = [(1, buf(&x)), (2, buf(&vals)), (3, buf(&idx))];
    let ctx = context()?;
    if inner == 1 {
        ctx.dispatch(
            "reduce",
            "reduce_rows",
            &spec,
            &u.0,
            &binds,
            grid_1d(outer, 1),
        )?;
    } else {
        ctx.dispatch(
            "reduce",
            "reduce_cols",
            &spec,
            &u.0,
            &binds,
            grid_1d(outer * inner, WG),
        )?;
    }
    Ok((vals, (op == ReduceOp::Max).then_some(idx)))
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
    let u = Uniform::new().u(outer).u(n).u(inner).u(0);
    context()?.dispatch(
        "reduce",
        "scatter_dim",
        &[("OP", 0)],
        &u.0,
        &[(1, buf(&g)), (3, buf(&idx)), (2, buf(&out))],
        grid_1d(outer * n * inner, WG),
    )?;
    Ok(out)
}

// ------------------------------------------------------------------ matmul

/// Tile configurations: (BM, BN, BK, TM, TN). Threads = (BM/TM) * (BN/TN) = 256.
const TILES: [(u32, u32, u32, u32, u32); 3] =
    [(128, 128, 8, 8, 8), (64, 64, 16, 4, 4), (16, 64, 16, 1, 4)];

pub fn gemm(g: &Gemm, a: &Tensor, b: &Tensor) -> Result<Tensor> {
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
    let out = f32_out(&[g.batch, g.m, g.n])?;
    if g.m * g.n * g.batch == 0 {
        return Ok(out);
    }
    let t = if g.m >= 512 && g.n >= 512 {
        TILES[0]
    } else if g.m <= 16 {
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
        ("B_F32", f32b),
        ("B_F16N", f16n),
        ("F16", f16n),
        ("B_F16U", f16u),
        ("B_BF16", bf16),
    ];
    let u = Uniform::new()
        .u(g.m)
        .u(g.n)
        .u(g.k)
        .u(0)
        .u(g.a.off)
        .u(g.a.sb)
        .u(g.a.sr)
        .u(g.a.sc)
        .u(g.b.off)
        .u(g.b.sb)
        .u(g.b.sr)
        .u(g.b.sc);
    let groups = [
        g.n.div_ceil(bn as usize) as u32,
        g.m.div_ceil(bm as usize) as u32,
        g.batch as u32,
    ];
    // for the profiler: 2 M N K FLOPs; A and C once, B once per batch it is not shared by
    let b_elt = if f32b == 1 { 4.0 } else { 2.0 };
    let b_batches = if g.b.sb == 0 { 1 } else { g.batch };
    super::profile::cost(
        2.0 * (g.batch * g.m * g.n) as f64 * g.k as f64,
        4.0 * (g.batch * g.m * (g.k + g.n)) as f64 + b_elt * (b_batches * g.k * g.n) as f64,
    );
    ctx.dispatch(
        "matmul",
        "gemm",
        &spec,
        &u.0,
        &[(1, buf(a)), (2, buf(b)), (3, buf(&out))],
        groups,
    )?;
    Ok(out)
}

// ------------------------------------------------------------------ softmax, rmsnorm

pub fn softmax(x: &Tensor, n: usize, log: bool) -> Result<Tensor> {
    require_f32("softmax", &[x])?;
    let x = dense(x)?;
    let rows = x.numel() / n.max(1);
    let out = f32_out(x.shape())?;
    let u = Uniform::new().u(rows).u(n).u(0).u(0);
    context()?.dispatch(
        "softmax",
        "softmax_rows",
        &[("LOG", log as u32), sg()?],
        &u.0,
        &[(1, buf(&x)), (2, buf(&out))],
        grid_1d(rows, 1),
    )?;
    Ok(out)
}

pub fn rmsnorm(x: &Tensor, w: &Tensor, c: usize, eps: f32) -> Result<(Tensor, Tensor)> {
    require_f32("rms_norm", &[x, w])?;
    let (x, w) = (dense(x)?, dense(w)?);
    let rows = x.numel() / c.max(1);
    let y = f32_out(x.shape())?;
    let rstd = f32_out(&[rows])?;
    let u = Uniform::new().u(rows).u(c).f(eps).u(0);
    context()?.dispatch(
        "rmsnorm",
        "rmsnorm_fwd",
        &[sg()?],
        &u.0,
        &[(1, buf(&x)), (2, buf(&w)), (4, buf(&y)), (5, buf(&rstd))],
        grid_1d(rows, 1),
    )?;
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
    let u = Uniform::new().u(rows).u(c).f(0.0).u(0);
    let ctx = context()?;
    ctx.dispatch(
        "rmsnorm",
        "rmsnorm_bwd_dx",
        &[sg()?],
        &u.0,
        &[
            (1, buf(&x)),
            (2, buf(&w)),
            (3, buf(&g)),
            (5, buf(&rstd)),
            (4, buf(&dx)),
        ],
        grid_1d(rows, 1),
    )?;
    ctx.dispatch(
        "rmsnorm",
        "rmsnorm_bwd_dw",
        &[],
        &u.0,
        &[(1, buf(&x)), (3, buf(&g)), (5, buf(&rstd)), (6, buf(&dw))],
        grid_1d(c, WG),
    )?;
    Ok((dx, dw))
}

// ------------------------------------------------------------------ rope, swiglu

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, d: RopeDims, backward: bool) -> Result<Tensor> {
    require_f32("rope", &[x, cos, sin])?;
    let (x, cos, sin) = (dense(x)?, dense(cos)?, dense(sin)?);
    let out = f32_out(x.shape())?;
    let u = Uniform::new()
        .u(d.b)
        .u(d.t)
        .u(d.h)
        .u(d.hd)
        .u(d.table_batched as usize)
        .u(0)
        .u(0)
        .u(0);
    context()?.dispatch(
        "rope",
        "rope",
        &[("BWD", backward as u32)],
        &u.0,
        &[(1, buf(&x)), (2, buf(&cos)), (3, buf(&sin)), (4, buf(&out))],
        grid_1d(x.numel(), WG),
    )?;
    Ok(out)
}

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    require_f32("swiglu", &[gate, up])?;
    let (a, u_) = (dense(gate)?, dense(up)?);
    let out = f32_out(a.shape())?;
    let u = Uniform::new().u(a.numel()).u(0).u(0).u(0);
    context()?.dispatch(
        "swiglu",
        "swiglu_fwd",
        &[],
        &u.0,
        &[(1, buf(&a)), (2, buf(&u_)), (4, buf(&out))],
        grid_1d(a.numel(), WG),
    )?;
    Ok(out)
}

pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    require_f32("swiglu", &[gate, up, g])?;
    let (a, u_, g) = (dense(gate)?, dense(up)?, dense(g)?);
    let da = f32_out(a.shape())?;
    let du = f32_out(a.shape())?;
    let u = Uniform::new().u(a.numel()).u(0).u(0).u(0);
    context()?.dispatch(
        "swiglu",
        "swiglu_bwd",
        &[],
        &u.0,
        &[
            (1, buf(&a)),
            (2, buf(&u_)),
            (3, buf(&g)),
            (4, buf(&da)),
            (5, buf(&du)),
        ],
        grid_1d(a.numel(), WG),
    )?;
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
    let u = Uniform::new().u(n).u(c).u(w.shape()[0]).u(0);
    context()?.dispatch(
        "embedding",
        "gather",
        &[("W16", w16), ("BF16", bf16)],
        &u.0,
        &[(1, buf(&w)), (2, buf(&ids)), (3, buf(&out))],
        grid_1d(n * c, WG),
    )?;
    Ok(out)
}

pub fn embedding_bwd(g: &Tensor, ids: &Tensor, v: usize, c: usize) -> Result<Tensor> {
    require_f32("embedding", &[g])?;
    let (g, ids) = (dense(g)?, dense(ids)?);
    let n = ids.numel();
    let dw = f32_out(&[v, c])?;
    fill(&dw, 0.0)?;
    let u = Uniform::new().u(n).u(c).u(v).u(0);
    context()?.dispatch(
        "embedding",
        "scatter_add",
        &[("W16", 0), ("BF16", 0)],
        &u.0,
        &[(1, buf(&g)), (2, buf(&ids)), (4, buf(&dw))],
        grid_1d(n * c, WG),
    )?;
    Ok(dw)
}

// ------------------------------------------------------------------ attention

/// Queries per workgroup in the attention kernels (one thread per query row).
const ATT_Q: usize = 64;

fn attn_spec(hd: usize) -> Result<Vec<(&'static str, u32)>> {
    // Two tiles of BKV keys x HD floats (K and V, or q and dO) plus two BKV-float rows
    // share the workgroup memory the device offers (16 KiB on the smallest).
    let budget = context()?.limits.max_compute_workgroup_storage_size as usize;
    let bkv = (budget.saturating_sub(64) / (8 * hd + 8)).clamp(1, 64) as u32;
    Ok(vec![("HD", hd as u32), ("BKV", bkv), ("WQ", ATT_Q as u32)])
}

fn attn_uniform(d: &AttnDims, has_ranges: bool) -> Uniform {
    Uniform::new()
        .u(d.b)
        .u(d.t)
        .u(d.s)
        .u(d.nh)
        .u(d.nkv)
        .f(d.scale as f32)
        .u(d.causal as usize)
        .u(has_ranges as usize)
        .u(d.q_str.0)
        .u(d.q_str.1)
        .u(d.q_str.2)
        .u(0)
        .u(d.k_str.0)
        .u(d.k_str.1)
        .u(d.k_str.2)
        .u(0)
        .u(d.v_str.0)
        .u(d.v_str.1)
        .u(d.v_str.2)
        .u(0)
}

fn check_hd(d: &AttnDims) -> Result<()> {
    if d.hd > 256 {
        return Err(Error::invalid(
            "attention",
            format!("head dim {} is above the gpu kernel's 256", d.hd),
        ));
    }
    Ok(())
}

pub fn attention(
    d: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ranges: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    require_f32("attention", &[q, k, v])?;
    check_hd(d)?;
    let out = f32_out(&[d.b, d.t, d.nh, d.hd])?;
    let lse = f32_out(&[d.b, d.nh, d.t])?;
    let r = match ranges {
        Some(r) => dense(r)?,
        None => empty(&[2], DType::U32)?,
    };
    let u = attn_uniform(d, ranges.is_some());
    let groups = [d.t.div_ceil(ATT_Q) as u32, d.nh as u32, d.b as u32];
    // for the profiler: QK^T and PV over the causal half; q, k, v read and o written once
    super::profile::cost(
        (if d.causal { 2.0 } else { 4.0 }) * (d.b * d.nh * d.t * d.s * d.hd) as f64,
        4.0 * (2 * d.b * d.t * d.nh * d.hd + 2 * d.b * d.s * d.nkv * d.hd) as f64,
    );
    context()?.dispatch(
        "attention",
        "attn_fwd",
        &attn_spec(d.hd)?,
        &u.0,
        &[
            (1, buf(q)),
            (2, buf(k)),
            (3, buf(v)),
            (4, buf(&r)),
            (5, buf(&out)),
            (6, buf(&lse)),
        ],
        groups,
    )?;
    Ok((out, lse))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    d: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    ranges: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    require_f32("attention", &[q, k, v, o, lse, dout])?;
    check_hd(d)?;
    let (o, lse, dout) = (dense(o)?, dense(lse)?, dense(dout)?);
    let r = match ranges {
        Some(r) => dense(r)?,
        None => empty(&[2], DType::U32)?,
    };
    let ctx = context()?;
    let u = attn_uniform(d, ranges.is_some());
    let spec = attn_spec(d.hd)?;
    let rows = d.b * d.nh * d.t;
    // stats[row] = (lse, D = dO . O)
    let stats = f32_out(&[rows, 2])?;
    ctx.dispatch(
        "attention",
        "attn_bwd_pre",
        &spec,
        &u.0,
        &[
            (1, buf(&o)),
            (2, buf(&lse)),
            (8, buf(&dout)),
            (6, buf(&stats)),
        ],
        grid_1d(rows, ATT_Q),
    )?;
    let dq = f32_out(&[d.b, d.t, d.nh, d.hd])?;
    let dk = f32_out(&[d.b, d.s, d.nkv, d.hd])?;
    let dv = f32_out(&[d.b, d.s, d.nkv, d.hd])?;
    ctx.dispatch(
        "attention",
        "attn_bwd_dq",
        &spec,
        &u.0,
        &[
            (1, buf(q)),
            (2, buf(k)),
            (3, buf(v)),
            (4, buf(&r)),
            (5, buf(&dq)),
            (7, buf(&stats)),
            (8, buf(&dout)),
        ],
        [d.t.div_ceil(ATT_Q) as u32, d.nh as u32, d.b as u32],
    )?;
    ctx.dispatch(
        "attention",
        "attn_bwd_dkdv",
        &spec,
        &u.0,
        &[
            (1, buf(q)),
            (2, buf(k)),
            (3, buf(v)),
            (4, buf(&r)),
            (5, buf(&dk)),
            (6, buf(&dv)),
            (7, buf(&stats)),
            (8, buf(&dout)),
        ],
        [d.s.div_ceil(ATT_Q) as u32, d.nkv as u32, d.b as u32],
    )?;
    Ok((dq, dk, dv))
}

// ------------------------------------------------------------------ token log-probs

pub fn token_logprobs(x: &Tensor, targets: &Tensor, v: usize) -> Result<(Tensor, Tensor)> {
    require_f32("token_logprobs", &[x])?;
    let (x, tg) = (dense(x)?, dense(targets)?);
    let rows = x.numel() / v;
    let lp = f32_out(&[rows])?;
    let lse = f32_out(&[rows])?;
    let u = Uniform::new().u(rows).u(v).u(0).u(0);
    context()?.dispatch(
        "logprob",
        "logprob_fwd",
        &[sg()?],
        &u.0,
        &[(1, buf(&x)), (2, buf(&tg)), (4, buf(&lp)), (5, buf(&lse))],
        grid_1d(rows, 1),
    )?;
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
    let u = Uniform::new().u(rows).u(v).u(0).u(0);
    context()?.dispatch(
        "logprob",
        "logprob_bwd",
        &[],
        &u.0,
        &[
            (1, buf(&x)),
            (2, buf(&tg)),
            (3, buf(&g)),
            (5, buf(&lse)),
            (6, buf(&dx)),
        ],
        grid_1d(rows * v, WG),
    )?;
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
    let off = x.layout().offset;
    let u = Uniform::new().u(n).u(off).u(0).u(0);
    let threads = if to.size() == 2 { n.div_ceil(2) } else { n };
    context()?.dispatch(
        "cast",
        entry,
        &[],
        &u.0,
        &[(1, buf(x)), (2, buf(&out))],
        grid_1d(threads, WG),
    )?;
    Ok(out)
}

pub fn adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamW) -> Result<()> {
    require_f32("adamw", &[p, g, m, v])?;
    let g = dense(g)?;
    let (bc1, bc2) = h.bias_corrections();
    let n = p.numel();
    let u = Uniform::new()
        .u(n)
        .f(h.lr)
        .f(h.beta1)
        .f(h.beta2)
        .f(h.eps)
        .f(h.weight_decay)
        .f(bc1)
        .f(bc2);
    context()?.dispatch(
        "adamw",
        "adamw",
        &[],
        &u.0,
        &[(1, buf(&g)), (2, buf(p)), (3, buf(m)), (4, buf(v))],
        grid_1d(n, WG),
    )
}

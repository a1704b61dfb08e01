//! The fused attention kernels (`shaders/attention.wgsl`): forward with the saved
//! log-sum-exp, and the flash-style backward (row statistics, dq, then dk/dv summed over
//! each kv group's query heads). A call whose tensors do not fit one storage binding runs
//! over blocks of batch items and kv groups, each gathered into dense tensors under the
//! limit and written back into the outputs; when one kv group of one item is itself over
//! the limit, over blocks of its query heads, their dk/dv summed.

use super::common::{buf, dense, empty, f32_out, require_f32};
use crate::backend::gpu::{context, grid_1d, Uniform};
use crate::backend::AttnDims;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Layout;
use crate::tensor::Tensor;

/// Queries per workgroup in the attention kernels (one thread per query row).
const ATT_Q: usize = 64;

fn attn_spec(hd: usize) -> Result<Vec<(&'static str, u32)>> {
    // Two tiles of BKV keys x HD floats (K and V, or q and dO) plus two BKV-float rows
    // share the workgroup memory the device offers (16 KiB on the smallest).
    let budget = context()?.limits.max_compute_workgroup_storage_size as usize;
    let bkv = (budget.saturating_sub(64) / (8 * hd + 8)).clamp(1, 64) as u32;
    let u4 = hd.is_multiple_of(4) as u32;
    Ok(vec![
        ("HD", hd as u32),
        ("BKV", bkv),
        ("WQ", ATT_Q as u32),
        ("U4", u4),
        ("STEP", if u4 == 1 { 4 } else { 1 }),
    ])
}

/// The attention uniform. `heads` is for `attn_bwd_dkdv` only: (first query head of the
/// kv group this dispatch sums, how many, whether it adds to dk/dv).
/// `ranges` as the shader's `has_ranges`: 0 none, 1 one per batch row `(B, 2)`, 2 one per
/// query `(B, T, 2)` (packed sequences), 3 one per query with a hole `(B, T, 4)` (answers
/// sharing a prompt).
fn ranges_mode(d: &AttnDims, ranges: Option<&Tensor>) -> usize {
    match ranges {
        None => 0,
        Some(r) if r.numel() == 2 * d.b => 1,
        Some(r) if r.numel() == 4 * d.b * d.t => 3,
        Some(_) => 2,
    }
}

fn attn_uniform(d: &AttnDims, has_ranges: usize, heads: (usize, usize, bool)) -> Uniform {
    Uniform::new()
        .u(d.b)
        .u(d.t)
        .u(d.s)
        .u(d.nh)
        .u(d.nkv)
        .f(d.scale as f32)
        .u(d.causal as usize)
        .u(has_ranges)
        .u(d.q_str.0)
        .u(d.q_str.1)
        .u(d.q_str.2)
        .u(heads.0)
        .u(d.k_str.0)
        .u(d.k_str.1)
        .u(d.k_str.2)
        .u(heads.2 as usize)
        .u(d.v_str.0)
        .u(d.v_str.1)
        .u(d.v_str.2)
        .u(heads.1)
}

/// llvmpipe (lavapipe) ends all loops of a shader invocation, silently, once their
/// iterations together pass 65,535; the share of that the attention kernels plan for.
const LLVMPIPE_LOOP_BUDGET: usize = 60_000;

/// Loop iterations an attention thread spends per key (or query) it walks: two loops
/// over the head dim, four elements an iteration when HD is a multiple of 4 (`U4`).
fn attn_iters_per_row(hd: usize) -> usize {
    2 * hd.div_ceil(if hd.is_multiple_of(4) { 4 } else { 1 }) + 3
}

fn check_hd(d: &AttnDims) -> Result<()> {
    if d.hd > 256 {
        return Err(Error::invalid(
            "attention",
            format!("head dim {} is above the gpu kernel's 256", d.hd),
        ));
    }
    // A thread walks every key (or query) once: refuse, on a software rasteriser, what
    // would pass llvmpipe's loop limiter rather than return garbage.
    let ctx = context()?;
    if ctx.is_software() {
        let iters = d.s.max(d.t) * attn_iters_per_row(d.hd) + 8 * d.hd;
        if iters > LLVMPIPE_LOOP_BUDGET {
            return Err(Error::invalid(
                "attention",
                format!(
                    "{} keys x head dim {} is more than a software rasteriser ({}) runs in one shader invocation (its loop limiter stops at 65,535 iterations); use --device cpu",
                    d.s.max(d.t),
                    d.hd,
                    ctx.info.name
                ),
            ));
        }
    }
    Ok(())
}

fn attention_block(
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
    let u = attn_uniform(d, ranges_mode(d, ranges), (0, 0, false));
    let groups = [d.t.div_ceil(ATT_Q) as u32, d.nh as u32, d.b as u32];
    // for the profiler: QK^T and PV over the causal half; q, k, v read and o written once
    crate::backend::gpu::profile::cost(
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
fn attention_bwd_block(
    d: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    ranges: Option<&Tensor>,
    add_to: Option<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    require_f32("attention", &[q, k, v, o, lse, dout])?;
    check_hd(d)?;
    let (o, lse, dout) = (dense(o)?, dense(lse)?, dense(dout)?);
    let r = match ranges {
        Some(r) => dense(r)?,
        None => empty(&[2], DType::U32)?,
    };
    let ctx = context()?;
    let u = attn_uniform(d, ranges_mode(d, ranges), (0, 0, false));
    let spec = attn_spec(d.hd)?;
    let rows = d.b * d.nh * d.t;
    // stats[row] = (lse, D = dO . O)
    let stats = f32_out(&[rows, 2])?;
    // O and dO rows read, lse read, (lse, D) written
    crate::backend::gpu::profile::cost(0.0, (8 * rows * d.hd + 12 * rows) as f64);
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
    // dk/dv: fresh, or (`add_to`) the sums of earlier query heads of the same kv heads,
    // which every dk/dv dispatch below then adds to
    let adding = add_to.is_some();
    let (dk, dv) = match add_to {
        Some(kv) => kv,
        None => (
            f32_out(&[d.b, d.s, d.nkv, d.hd])?,
            f32_out(&[d.b, d.s, d.nkv, d.hd])?,
        ),
    };
    // the inputs both gradient kernels read; each adds its outputs
    let inputs = [
        (1, buf(q)),
        (2, buf(k)),
        (3, buf(v)),
        (4, buf(&r)),
        (7, buf(&stats)),
        (8, buf(&dout)),
    ];
    // FLOPs over the causal half, as the forward counts them: the dq pass recomputes
    // QK^T and forms dP = dO V^T and dS K (3 products), the dk/dv pass QK^T, dP, P^T dO
    // and dS^T q (4)
    let half = if d.causal { 1.0 } else { 2.0 };
    let prod = half * (d.b * d.nh * d.t * d.s * d.hd) as f64;
    let qrows = 4.0 * (d.b * d.t * d.nh * d.hd) as f64;
    let kvrows = 4.0 * (d.b * d.s * d.nkv * d.hd) as f64;
    // q, dO and dq rows, k and v rows
    crate::backend::gpu::profile::cost(3.0 * prod, 3.0 * qrows + 2.0 * kvrows);
    ctx.dispatch(
        "attention",
        "attn_bwd_dq",
        &spec,
        &u.0,
        &[&inputs[..], &[(5, buf(&dq))]].concat(),
        [d.t.div_ceil(ATT_Q) as u32, d.nh as u32, d.b as u32],
    )?;
    // A thread sums its key's gradient over the query heads of its kv group. On a
    // software rasteriser that can pass llvmpipe's loop limiter (65,535 iterations per
    // invocation: group x T x HD), so there the heads go in as many dispatches as it
    // takes, the later ones adding to dk and dv.
    let group = (d.nh / d.nkv.max(1)).max(1);
    let per_dispatch = if ctx.is_software() {
        (LLVMPIPE_LOOP_BUDGET / (d.t.max(1) * attn_iters_per_row(d.hd))).clamp(1, group)
    } else {
        group
    };
    for hh in (0..group).step_by(per_dispatch) {
        let heads = (hh, per_dispatch.min(group - hh), hh > 0 || adding);
        let u = attn_uniform(d, ranges_mode(d, ranges), heads);
        // this dispatch's share of the heads: q and dO rows read, k, v, dk, dv
        let share = heads.1 as f64 / group as f64;
        crate::backend::gpu::profile::cost(4.0 * prod * share, 2.0 * qrows * share + 4.0 * kvrows);
        ctx.dispatch(
            "attention",
            "attn_bwd_dkdv",
            &spec,
            &u.0,
            &[&inputs[..], &[(5, buf(&dk)), (6, buf(&dv))]].concat(),
            [d.s.div_ceil(ATT_Q) as u32, d.nkv as u32, d.b as u32],
        )?;
    }
    Ok((dq, dk, dv))
}

// ------------------------------------------------------------------ over the binding limit

/// One block of a split call: batch items `b0..b0+nb`, kv groups `g0..g0+ng`, and of each
/// group's query heads those from `hs0`, `nhs` of them (all of them unless one group of
/// one item is itself over the limit; then `ng` is 1).
#[derive(Clone, Copy, Debug)]
struct AttnBlock {
    b0: usize,
    nb: usize,
    g0: usize,
    ng: usize,
    hs0: usize,
    nhs: usize,
}

/// Blocks that keep every tensor of one dispatch under the binding limit; `None` when
/// the whole call fits as it is.
fn blocks(d: &AttnDims, bufs: &[&Tensor]) -> Result<Option<Vec<AttnBlock>>> {
    let ctx = context()?;
    let limit = ctx.binding_limit();
    if bufs.iter().all(|t| buf(t).size() <= limit) {
        let (b, nh, t) = (d.b as u64, d.nh as u64, d.t as u64);
        // the outputs and the backward's row statistics (lse, D) per query row
        let out = 4 * b * t * nh * d.hd as u64;
        let kv = 4 * b * d.s as u64 * d.nkv as u64 * d.hd as u64;
        if out.max(kv).max(8 * b * nh * t) <= limit {
            return Ok(None);
        }
    }
    let group = d.nh / d.nkv;
    // bytes of `heads` query heads of one batch item and one kv group: their q/o/dq/dO
    // rows, the group's k/v/dk/dv rows, and the heads' (lse, D) statistics
    let per = |heads: usize| {
        [4 * d.t * heads * d.hd, 4 * d.s * d.hd, 8 * heads * d.t]
            .into_iter()
            .max()
            .unwrap() as u64
    };
    let mut out = Vec::new();
    let fit = (limit / per(group).max(1)) as usize;
    if fit == 0 {
        // one kv group of one item is over the limit: its query heads go in blocks of
        // as many as fit, the backward summing their dk/dv
        let heads = (1..=group)
            .rev()
            .find(|&h| per(h) <= limit)
            .ok_or_else(|| Error::DeviceLimit {
                what: format!(
                    "attention: one query head of one sequence, or its kv head's keys ({} queries, {} keys, head dim {})",
                    d.t, d.s, d.hd
                ),
                requested: per(1),
                limit,
                limit_name: "max_storage_buffer_binding_size",
            })?;
        for b0 in 0..d.b {
            for g0 in 0..d.nkv {
                for hs0 in (0..group).step_by(heads) {
                    let nhs = heads.min(group - hs0);
                    out.push(AttnBlock {
                        b0,
                        nb: 1,
                        g0,
                        ng: 1,
                        hs0,
                        nhs,
                    });
                }
            }
        }
        return Ok(Some(out));
    }
    // whole batch items when one fits, else kv groups of one item
    let (items, groups) = if fit >= d.nkv {
        ((fit / d.nkv).min(d.b), d.nkv)
    } else {
        (1, fit)
    };
    for b0 in (0..d.b).step_by(items) {
        for g0 in (0..d.nkv).step_by(groups) {
            let (nb, ng) = (items.min(d.b - b0), groups.min(d.nkv - g0));
            out.push(AttnBlock {
                b0,
                nb,
                g0,
                ng,
                hs0: 0,
                nhs: group,
            });
        }
    }
    Ok(Some(out))
}

/// Items `b0..b0+nb` and heads `h0..h0+nh` (dims `hdim`) of `x`, copied into a dense
/// tensor of their own (a view would keep the oversized buffer).
fn gather(x: &Tensor, b0: usize, nb: usize, hdim: isize, h0: usize, nh: usize) -> Result<Tensor> {
    let view = crate::autograd::no_grad(|| x.narrow(0, b0, nb)?.narrow(hdim, h0, nh))?;
    let out = empty(view.shape(), view.dtype())?;
    super::copy::copy(&view, &out, &Layout::contiguous(view.shape()))?;
    Ok(out)
}

/// Write dense block `src` into items `b0..` and heads `h0..` of `dst`.
fn scatter(src: &Tensor, dst: &Tensor, b0: usize, hdim: isize, h0: usize) -> Result<()> {
    let (nb, nh) = (src.shape()[0], src.shape()[hdim as usize]);
    let view = crate::autograd::no_grad(|| dst.narrow(0, b0, nb)?.narrow(hdim, h0, nh))?;
    let l: Layout = view.layout().clone();
    super::copy::copy(src, dst, &l)
}

/// The dims of dense block `blk`, and the first of its query heads in the whole call.
fn block_dims(d: &AttnDims, blk: &AttnBlock) -> (AttnDims, usize) {
    let nh = blk.ng * blk.nhs;
    let (ng, h0) = (blk.ng, blk.g0 * (d.nh / d.nkv) + blk.hs0);
    let bd = AttnDims {
        b: blk.nb,
        nh,
        nkv: ng,
        q_str: (d.t * nh * d.hd, nh * d.hd, 0),
        k_str: (d.s * ng * d.hd, ng * d.hd, 0),
        v_str: (d.s * ng * d.hd, ng * d.hd, 0),
        ..*d
    };
    (bd, h0)
}

/// Block `blk`'s dims, first query head, and dense q, k, v (and padding ranges).
fn gather_qkv(
    d: &AttnDims,
    blk: &AttnBlock,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    ranges: Option<&Tensor>,
) -> Result<(AttnDims, usize, [Tensor; 3], Option<Tensor>)> {
    let AttnBlock { b0, nb, g0, ng, .. } = *blk;
    let (bd, h0) = block_dims(d, blk);
    let qkv = [
        gather(q, b0, nb, 2, h0, bd.nh)?,
        gather(k, b0, nb, 2, g0, ng)?,
        gather(v, b0, nb, 2, g0, ng)?,
    ];
    // (B, 2), (B, T, 2) or (B, T, 4): items b0.. of any, the last dim whole
    let rb = ranges
        .map(|r| gather(r, b0, nb, r.rank() as isize - 1, 0, r.shape()[r.rank() - 1]))
        .transpose()?;
    Ok((bd, h0, qkv, rb))
}

/// q `(B,T,NH,HD)` against k, v `(B,S,NKV,HD)` (views as `d` describes them): the output
/// and the log-sum-exp `(B,NH,T)`.
pub fn attention(
    d: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ranges: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let Some(plan) = blocks(d, &[q, k, v])? else {
        return attention_block(d, q, k, v, ranges);
    };
    require_f32("attention", &[q, k, v])?;
    let out = f32_out(&[d.b, d.t, d.nh, d.hd])?;
    let lse = f32_out(&[d.b, d.nh, d.t])?;
    for blk in plan {
        let (bd, h0, [qb, kb, vb], rb) = gather_qkv(d, &blk, (q, k, v), ranges)?;
        let (ob, lb) = attention_block(&bd, &qb, &kb, &vb, rb.as_ref())?;
        scatter(&ob, &out, blk.b0, 2, h0)?;
        scatter(&lb, &lse, blk.b0, 1, h0)?;
    }
    Ok((out, lse))
}

/// The backward of [`attention`]: dq, dk, dv.
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
    let Some(plan) = blocks(d, &[q, k, v, o, dout])? else {
        return attention_bwd_block(d, q, k, v, o, lse, dout, ranges, None);
    };
    require_f32("attention", &[q, k, v, o, lse, dout])?;
    let group = d.nh / d.nkv;
    let dq = f32_out(&[d.b, d.t, d.nh, d.hd])?;
    let dk = f32_out(&[d.b, d.s, d.nkv, d.hd])?;
    let dv = f32_out(&[d.b, d.s, d.nkv, d.hd])?;
    let lse = lse.reshape(&[d.b, d.nh, d.t])?;
    // dk/dv of a kv group whose query heads span several blocks: each block adds to them
    let mut partial: Option<(Tensor, Tensor)> = None;
    for blk in plan {
        let (bd, h0, [qb, kb, vb], rb) = gather_qkv(d, &blk, (q, k, v), ranges)?;
        let (b0, nb, nh) = (blk.b0, blk.nb, bd.nh);
        let ob = gather(o, b0, nb, 2, h0, nh)?;
        let gb = gather(dout, b0, nb, 2, h0, nh)?;
        let lb = gather(&lse, b0, nb, 1, h0, nh)?;
        let (dqb, dkb, dvb) = attention_bwd_block(
            &bd,
            &qb,
            &kb,
            &vb,
            &ob,
            &lb,
            &gb,
            rb.as_ref(),
            partial.take(),
        )?;
        scatter(&dqb, &dq, b0, 2, h0)?;
        if blk.hs0 + blk.nhs < group {
            partial = Some((dkb, dvb));
            continue;
        }
        scatter(&dkb, &dk, b0, 2, blk.g0)?;
        scatter(&dvb, &dv, b0, 2, blk.g0)?;
    }
    Ok((dq, dk, dv))
}

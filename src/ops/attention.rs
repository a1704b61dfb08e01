//! Causal self-attention with grouped-query heads, fused. The forward returns the output
//! and saves the log-sum-exp of each query row; the backward recomputes probabilities from
//! it (flash-attention style), so no T x S matrix is ever stored.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels, AttnDims};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Options of one attention call.
#[derive(Clone, Debug, Default)]
pub struct AttnOpts {
    /// Query t (absolute position t + S - T) sees keys at positions <= its own.
    pub causal: bool,
    /// Score scale; default 1/sqrt(HD).
    pub scale: Option<f64>,
    /// Valid keys `[start, end)`, u32: `(B, 2)`, one range per batch row (padding on
    /// either side), or `(B, T, 2)`, one per query (sequences packed end to end, each
    /// query seeing only its own sequence: block-diagonal causal attention; see
    /// [`AttnOpts::packed_ranges`]), or `(B, T, 4)`, one per query with a hole:
    /// `[start, end)` less `[skip_start, skip_end)` (answers packed after one shared
    /// prompt, each seeing the prompt and itself; see [`AttnOpts::shared_ranges`]).
    pub kv_ranges: Option<Tensor>,
    /// Rows that share cached positions, `(B, 3)` u32 on the host: `[row, start, len]`
    /// per batch row, a promise that its keys and values at `[lo, lo + len)` (lo: the
    /// start of its `kv_ranges` range) equal batch row `row`'s at `[start, start + len)`,
    /// as the samples of one prompt hold the prompt's positions in their own slots. A
    /// hint: the CPU's single-query kernel then reads those positions once for the rows
    /// that name the same ones (same results); other paths read every row's own.
    pub kv_shared: Option<std::sync::Arc<[u32]>>,
}

impl AttnOpts {
    /// Per-query key ranges `(B, T, 2)` for sequences packed end to end in each row:
    /// `cu_seqlens[b]` holds row b's sequence boundaries `0 = c_0 < c_1 < ... <= T`, and a
    /// query in `[c_i, c_(i+1))` sees keys from `c_i` on (causal attention cuts them at
    /// itself). Positions past the last boundary (padding) see no key.
    pub fn packed_ranges(cu_seqlens: &[Vec<usize>], t: usize) -> Vec<u32> {
        let mut r = Vec::with_capacity(cu_seqlens.len() * t * 2);
        for cu in cu_seqlens {
            let mut seg = 0;
            for p in 0..t {
                while seg + 1 < cu.len() && p >= cu[seg + 1] {
                    seg += 1;
                }
                if seg + 1 < cu.len() {
                    r.extend([cu[seg] as u32, cu[seg + 1] as u32]);
                } else {
                    r.extend([0, 0]);
                }
            }
        }
        r
    }
}

/// One group of a packed row whose answers share a prompt: the prompt's `prompt` tokens
/// at `start`, then each answer's tokens (`answers` holds their lengths), end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedGroup {
    pub start: usize,
    pub prompt: usize,
    pub answers: Vec<usize>,
}

impl SharedGroup {
    /// One past the group's last token.
    pub fn end(&self) -> usize {
        self.start + self.prompt + self.answers.iter().sum::<usize>()
    }
}

impl AttnOpts {
    /// Per-query key ranges with holes `(B, T, 4)` for groups packed end to end in each
    /// row (`groups[b]`, in order): a query of a group sees keys from the group's start
    /// (causal attention cuts them at itself) less, for its group's second and later
    /// answers, the answers between the prompt and its own: each answer sees the shared
    /// prompt and itself, as if it followed the prompt alone. Positions past the last
    /// group (padding) see no key.
    pub fn shared_ranges(groups: &[Vec<SharedGroup>], t: usize) -> Vec<u32> {
        let mut r = vec![0u32; groups.len() * t * 4];
        for (b, row) in groups.iter().enumerate() {
            for g in row {
                let (lo, hi, pe) = (g.start, g.end(), g.start + g.prompt);
                let mut at = g.start;
                for (i, len) in std::iter::once(g.prompt)
                    .chain(g.answers.iter().copied())
                    .enumerate()
                {
                    // i = 0 is the prompt; answer 1 follows it directly
                    let skip = if i >= 2 { (pe, at) } else { (lo, lo) };
                    for p in at..at + len {
                        let o = 4 * (b * t + p);
                        r[o..o + 4].copy_from_slice(&[lo, hi, skip.0, skip.1].map(|x| x as u32));
                    }
                    at += len;
                }
            }
        }
        r
    }
}

/// Dims of q (B,T,NH,HD) against k,v (B,S,NKV,HD); batch/seq strides come from the views.
fn dims(q: &Tensor, k: &Tensor, v: &Tensor, o: &AttnOpts) -> Result<AttnDims> {
    let bad = |msg: &str| {
        Err(Error::shape(
            "attention",
            msg.to_string(),
            q.shape(),
            k.shape(),
        ))
    };
    if q.rank() != 4 || k.rank() != 4 || v.shape() != k.shape() {
        return bad("q must be (B, T, NH, HD) and k, v (B, S, NKV, HD)");
    }
    let (b, t, nh, hd) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (bk, s, nkv, hdk) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    if bk != b || hdk != hd {
        return bad("batch or head dim differ");
    }
    if nkv == 0 || nh % nkv != 0 {
        return bad("NKV must divide NH");
    }
    if o.causal && s < t {
        return bad("causal attention needs S >= T");
    }
    let strides = |x: &Tensor| -> Option<(usize, usize, usize)> {
        let l = x.layout();
        let (h, d) = (l.shape[2], l.shape[3]);
        let dense = (l.strides[3] == 1 || d == 1) && (l.strides[2] == d || h == 1);
        dense.then_some((l.strides[0], l.strides[1], l.offset))
    };
    let (Some(qs), Some(ks), Some(vs)) = (strides(q), strides(k), strides(v)) else {
        return Err(Error::invalid(
            "attention",
            "heads and head dim must be dense (call contiguous)",
        ));
    };
    Ok(AttnDims {
        b,
        t,
        s,
        nh,
        nkv,
        hd,
        scale: o.scale.unwrap_or(1.0 / (hd as f64).sqrt()),
        causal: o.causal,
        q_str: qs,
        k_str: ks,
        v_str: vs,
    })
}

/// Make the head and head-dim axes dense if they are not.
fn dense_heads(x: &Tensor) -> Result<Tensor> {
    let l = x.layout();
    if l.rank() == 4
        && (l.strides[3] == 1 || l.shape[3] == 1)
        && (l.strides[2] == l.shape[3] || l.shape[2] == 1)
    {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

impl Tensor {
    /// Fused attention: q `(B, T, NH, HD)`, k and v `(B, S, NKV, HD)` -> `(B, T, NH, HD)`.
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttnOpts) -> Result<Tensor> {
        Ok(Tensor::attention_with_lse(q, k, v, opts)?.0)
    }

    /// As [`Tensor::attention`], also returning the saved log-sum-exp `(B, NH, T)`.
    pub fn attention_with_lse(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttnOpts,
    ) -> Result<(Tensor, Tensor)> {
        let (dev, dt) = check("attention", &[q, k, v])?;
        if q.rank() != 4 || k.rank() != 4 {
            return Err(Error::shape(
                "attention",
                "q must be (B, T, NH, HD) and k, v (B, S, NKV, HD)",
                q.shape(),
                k.shape(),
            ));
        }
        let (qd, kd, vd) = (dense_heads(q)?, dense_heads(k)?, dense_heads(v)?);
        let d = dims(&qd, &kd, &vd, opts)?;
        let ranges = match &opts.kv_ranges {
            None => None,
            Some(r) => {
                super::same_device("attention", &[q, r])?;
                let per_query = r.shape() == [d.b, d.t, 2] || r.shape() == [d.b, d.t, 4];
                if (r.shape() != [d.b, 2] && !per_query) || r.dtype() != DType::U32 {
                    return Err(Error::bad_shape(
                        "attention",
                        "kv_ranges must be (B, 2), (B, T, 2) or (B, T, 4) u32",
                        r.shape(),
                    ));
                }
                Some(r.contiguous()?)
            }
        };
        // FLOPs counted as torch's peers do: 4 T S NH HD per batch row, halved when causal;
        // for packed sequences (per-query ranges), 4 NH HD per key each query really sees
        let dc = d;
        let fwd_flops = move |rv: Option<&[u32]>| match rv {
            Some(r) if dc.t > 1 && r.len() >= 2 * dc.b * dc.t => {
                let keys: usize = (0..dc.b * dc.t)
                    .map(|i| cpu::attn_keys(&dc, Some(r), i / dc.t, i % dc.t).count())
                    .sum();
                4.0 * (keys * dc.nh * dc.hd) as f64
            }
            _ => {
                let (b, t, s) = (dc.b, dc.t, dc.s);
                4.0 * (b * t * s * dc.nh * dc.hd) as f64 / if dc.causal { 2.0 } else { 1.0 }
            }
        };
        let shared = opts
            .kv_shared
            .as_deref()
            .filter(|sh| dt == DType::F32 && d.t == 1 && sh.len() == 3 * d.b)
            // not with holes in the ranges (B, 1, 4): the decoding kernel has none
            .filter(|_| ranges.as_ref().is_none_or(|r| r.shape().last() == Some(&2)));
        let (out, lse) = match dev {
            Device::Cpu if shared.is_some() => {
                let rv = ranges.as_ref().map(|r| r.to_vec_u32()).transpose()?;
                let (o, l) = qd.cpu_strided("attention", |qs: &[f32], _| {
                    kd.cpu_strided("attention", |ks: &[f32], _| {
                        vd.cpu_strided("attention", |vs: &[f32], _| {
                            crate::backend::cpu::profile::flops(fwd_flops(rv.as_deref()));
                            cpu::attention_decode_shared(&d, qs, ks, vs, rv.as_deref(), shared)
                        })
                    })
                })???;
                (cpu_tensor(o, q.shape())?, cpu_tensor(l, &[d.b, d.nh, d.t])?)
            }
            Device::Cpu => with_real!("attention", dt, T => {
                let rv = ranges.as_ref().map(|r| r.to_vec_u32()).transpose()?;
                let (o, l) = qd.cpu_strided("attention", |qs: &[T], _| kd.cpu_strided("attention", |ks: &[T], _| vd.cpu_strided("attention", |vs: &[T], _| {
                    crate::backend::cpu::profile::flops(fwd_flops(rv.as_deref()));
                    cpu::attention(&d, qs, ks, vs, rv.as_deref())
                })))???;
                (cpu_tensor(o, q.shape())?, cpu_tensor(l, &[d.b, d.nh, d.t])?)
            }),
            Device::Gpu => kernels::attention(&d, &qd, &kd, &vd, ranges.as_ref())?,
        };
        let (o_saved, lse_saved) = (out.detach(), lse.clone());
        let (kshape, qshape) = (k.shape().to_vec(), q.shape().to_vec());
        let out = record(out, "attention", &[q, k, v], move |g| {
            // backward (see cpu::attention_bwd): recompute p from lse, then dq, dk, dv
            let g = g.contiguous()?;
            let (dq, dk, dv) = match g.device() {
                Device::Cpu => with_real!("attention", g.dtype(), T => {
                    let rv = ranges.as_ref().map(|r| r.to_vec_u32()).transpose()?;
                    let (dq, dk, dv) = qd.cpu_strided("attention", |qs: &[T], _| kd.cpu_strided("attention", |ks: &[T], _| vd.cpu_strided("attention", |vs: &[T], _| {
                        o_saved.cpu_read("attention", |os: &[T]| lse_saved.cpu_read("attention", |ls: &[T]| g.cpu_read("attention", |gs: &[T]| {
                            crate::backend::cpu::profile::flops(2.5 * fwd_flops(rv.as_deref()));
                            cpu::attention_bwd(&d, qs, ks, vs, os, ls, gs, rv.as_deref())
                        })))
                    })))??????;
                    (cpu_tensor(dq, &qshape)?, cpu_tensor(dk, &kshape)?, cpu_tensor(dv, &kshape)?)
                }),
                Device::Gpu => kernels::attention_bwd(
                    &d,
                    &qd,
                    &kd,
                    &vd,
                    &o_saved,
                    &lse_saved,
                    &g,
                    ranges.as_ref(),
                )?,
            };
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        });
        Ok((out, lse))
    }
}

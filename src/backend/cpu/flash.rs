//! Flash attention in f32 on the CPU: the same math as [`super::attention::attention_ref`]
//! and [`super::attention::attention_bwd_ref`], tiled so that every product runs on the
//! GEMM micro-kernel of [`super::matmul`] and no T x S matrix is ever stored.
//!
//! Forward, one task per (batch, query head, block of BR queries):
//!   S = (scale log2(e) Q) K_j^T, in log2 units so that weights are powers of two, for each block of BC keys that some query of the block can see
//!   (fully masked causal blocks are never visited), then the online softmax
//!   m' = max(m, rowmax S), P = 2^(S - m'), l = l 2^(m - m') + rowsum P,
//!   O = O 2^(m - m') + P V_j; at the end O /= l and lse = (m + log2 l) ln 2.
//! Backward, one task per (batch, kv head), which owns that head's dK and dV and the dQ of
//! the query heads that share it (so no two tasks write the same gradient); with too few
//! such pairs for the threads, one task per query head, whose dK and dV shares are summed
//! afterwards in head order:
//!   P = 2^(S - lse log2 e), dP = dO V_j^T, dS = scale P (dP - D) with D = rowsum(dO * O),
//!   dV_j += P^T dO, dK_j += dS^T Q, dQ += dS K_j.
//! Grouped-query heads read their kv head's packed K and V; nothing is repeated in memory.
//! Every element is summed by one task in a fixed order, so results do not depend on the
//! number of threads.
//!
//! Operands are packed once into the micro-kernel's layouts: "A" panels (MR rows, each
//! k-step's MR values together) and "B" panels (NR columns, each k-step's NR values
//! together). A block of rows or of the k range is then a contiguous slice of a panel.

use rayon::prelude::*;

use super::attention::{attn_keys, Keys};
use super::microkernel::{Kernel, MR, NR};
use super::vmath::{exp2_softmax, max_lanes, sum_lanes};
use super::{AttnDims, LSE_MASKED};
use std::f32::consts::{LN_2, LOG2_E};

/// Queries per block (a multiple of MR).
const BR: usize = 48;
/// Keys per block (a multiple of NR).
const BC: usize = 128;
/// Keys per block of the forward where a query block's keys span at most
/// [`SHORT_SPAN`] (a multiple of NR, at most BC). Prefilling 48 chat prompts of ~72
/// tokens packed end to end (SmolLM2-135M, 2 threads), attention took 429-515 ms with
/// 32 against 605-714 ms with 128 throughout and 596-638 ms with 16.
const BC_SHORT: usize = 32;
/// The widest key range of a query block that still takes [`BC_SHORT`] tiles.
const SHORT_SPAN: usize = 2 * BC;
const _: () = assert!(BC_SHORT.is_multiple_of(NR) && BC_SHORT <= BC);

/// Backward tasks: one per (batch, kv head), or one per query head when there are fewer
/// (batch, kv head) pairs than this. Measured on 2 threads: one packed row of SmolLM2's
/// 3 kv heads, 10% faster split; two rows (6 pairs), 3% slower split.
const SPLIT_BELOW: usize = 4;

/// Below this many queries per sequence the plain loops are as fast (decoding).
pub const MIN_T: usize = 8;

/// A matrix of `rows` rows of length `k` as A panels: element (r, p) at
/// `(r / MR) * k * MR + p * MR + r % MR`; rows past the end are zero.
fn pack_a(rows: usize, k: usize, row: impl Fn(usize) -> usize, src: &[f32], mul: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.div_ceil(MR) * MR * k];
    for r in 0..rows {
        let s = &src[row(r)..row(r) + k];
        let base = (r / MR) * k * MR + r % MR;
        for (p, &v) in s.iter().enumerate() {
            out[base + p * MR] = v * mul;
        }
    }
    out
}

/// `n` rows of length `k` as the columns of B panels (B = X^T): element (p, j) = X[j][p]
/// at `(j / NR) * k * NR + p * NR + j % NR`; columns past the end are zero.
fn pack_bt(n: usize, k: usize, row: impl Fn(usize) -> usize, src: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; n.div_ceil(NR) * NR * k];
    for j in 0..n {
        let s = &src[row(j)..row(j) + k];
        let base = (j / NR) * k * NR + j % NR;
        for (p, &v) in s.iter().enumerate() {
            out[base + p * NR] = v;
        }
    }
    out
}

/// `k` rows of length `w` as B panels (B = X): element (p, c) = X[p][c] at
/// `(c / NR) * k * NR + p * NR + c % NR`, so rows p0.. of panel c are one slice.
fn pack_b(k: usize, w: usize, row: impl Fn(usize) -> usize, src: &[f32]) -> Vec<f32> {
    let panels = w.div_ceil(NR);
    let mut out = vec![0.0f32; panels * k * NR];
    for p in 0..k {
        let s = &src[row(p)..row(p) + w];
        for (c, &v) in s.iter().enumerate() {
            out[(c / NR) * k * NR + p * NR + c % NR] = v;
        }
    }
    out
}

/// `tile` (m x n, row stride `ld`), or its transpose, as A panels with k = n (or m).
fn pack_tile(tile: &[f32], m: usize, n: usize, ld: usize, transpose: bool, out: &mut Vec<f32>) {
    let (rows, k) = if transpose { (n, m) } else { (m, n) };
    // every value is written below except the padding past the last row: zero only that
    out.resize(rows.div_ceil(MR) * MR * k, 0.0);
    if rows % MR != 0 {
        let last = &mut out[(rows / MR) * k * MR..];
        for dst in last.chunks_exact_mut(MR) {
            dst[rows % MR..].fill(0.0);
        }
    }
    if transpose {
        // A row = a tile column j; k step = tile row i: MR adjacent columns of each tile
        // row land side by side
        for (pj, panel) in out.chunks_exact_mut(k * MR).enumerate() {
            let (j0, w) = (pj * MR, MR.min(n - pj * MR));
            for (i, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let src = &tile[i * ld + j0..i * ld + j0 + w];
                if let (Ok(d), Ok(s)) = (
                    <&mut [f32; MR]>::try_from(&mut *dst),
                    <&[f32; MR]>::try_from(src),
                ) {
                    *d = *s; // a fixed-size copy the compiler inlines
                } else {
                    dst[..w].copy_from_slice(src);
                }
            }
        }
    } else {
        // A row = a tile row i; k step = tile column j
        for (pi, panel) in out.chunks_exact_mut(k * MR).enumerate() {
            for rr in 0..MR.min(m - pi * MR) {
                let src = &tile[(pi * MR + rr) * ld..(pi * MR + rr) * ld + n];
                for (dst, &v) in panel.chunks_exact_mut(MR).zip(src) {
                    dst[rr] = v;
                }
            }
        }
    }
}

/// C (m x n, row stride ldc) (+)= A (m x k, A panels from `a`) . B (k x n, B panels
/// starting at `b`, one every `bstride` values).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm(
    kern: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bstride: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    if k == 0 {
        if !acc {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    for jr in (0..n).step_by(NR) {
        let bp = &b[(jr / NR) * bstride..];
        for ir in (0..m).step_by(MR) {
            let ap = &a[(ir / MR) * k * MR..];
            let (mr, nr) = (MR.min(m - ir), NR.min(n - jr));
            kern.run(k, ap, bp, &mut c[ir * ldc + jr..], ldc, mr, nr, acc);
        }
    }
}

/// Whether this machine runs the AVX2 kernel; the task bodies below are then compiled
/// for AVX2 too, so that their softmax loops vectorise.
fn avx2() -> bool {
    Kernel::detect().is_avx2()
}

/// Per query row of a block: its valid keys.
fn row_ranges(
    d: &AttnDims,
    ranges: Option<&[u32]>,
    bi: usize,
    t0: usize,
    rows: usize,
) -> Vec<Keys> {
    (0..rows)
        .map(|r| attn_keys(d, ranges, bi, t0 + r))
        .collect()
}

/// Mask a row of a key tile starting at `j0` to the query's keys: `fill` before and after
/// them and in their hole. Returns the unmasked span `[a, b)` within the tile (the hole,
/// if any, lies inside it).
#[inline(always)]
fn mask_row(row: &mut [f32], keys: &Keys, j0: usize, fill: f32) -> (usize, usize) {
    let n = row.len();
    let at = |j: usize| j.clamp(j0, j0 + n) - j0;
    let (a, b) = (at(keys.lo), at(keys.hi).max(at(keys.lo)));
    row[..a].fill(fill);
    row[b..].fill(fill);
    let (ha, hb) = (at(keys.skip.0), at(keys.skip.1));
    if ha < hb {
        row[ha..hb].fill(fill);
    }
    (a, b)
}

/// K and V of one (batch, kv head), packed for the forward: K^T as B panels (k = HD),
/// V as B panels (k = S).
struct KvPacks {
    kt: Vec<f32>,
    v: Vec<f32>,
}

fn kv_packs(d: &AttnDims, k: &[f32], v: &[f32], bi: usize, kvh: usize) -> KvPacks {
    let hd = d.hd;
    let krow = |j: usize| d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kvh * hd;
    let vrow = |j: usize| d.v_str.2 + bi * d.v_str.0 + j * d.v_str.1 + kvh * hd;
    KvPacks {
        kt: pack_bt(d.s, hd, krow, k),
        v: pack_b(d.s, hd, vrow, v),
    }
}

/// Forward of one block of queries of one head: returns its out rows `(rows, HD)` and lse.
/// Scores are kept in log2 units (log2 e folded into the packed Q), so that the softmax
/// weights are powers of two: 2^(S - m).
#[inline(always)]
fn fwd_block<const FMA: bool>(
    d: &AttnDims,
    q: &[f32],
    kv: &KvPacks,
    ranges: Option<&[u32]>,
    bi: usize,
    h: usize,
    t0: usize,
) -> (Vec<f32>, Vec<f32>) {
    let kern = Kernel::detect();
    let hd = d.hd;
    let rows = BR.min(d.t - t0);
    let rr = row_ranges(d, ranges, bi, t0, rows);
    let mut out = vec![0.0f32; rows * hd];
    let mut lse = vec![LSE_MASKED; rows];
    let live = rr.iter().filter(|k| k.count() > 0);
    let (Some(klo), Some(khi)) = (live.clone().map(|k| k.lo).min(), live.map(|k| k.hi).max())
    else {
        return (out, lse);
    };
    let qrow = |r: usize| d.q_str.2 + bi * d.q_str.0 + (t0 + r) * d.q_str.1 + h * hd;
    let qa = pack_a(rows, hd, qrow, q, d.scale as f32 * LOG2_E);
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0.0f32; rows];
    let mut s = vec![0.0f32; rows * BC];
    let mut pa = Vec::new();
    // rows that see few keys (short sequences packed end to end) walk them in narrower
    // tiles, so that less of each tile is masked
    let bc = if khi - klo <= SHORT_SPAN {
        BC_SHORT
    } else {
        BC
    };
    for j0 in (klo / bc * bc..khi).step_by(bc) {
        let n = bc.min(d.s - j0);
        // a tile no row sees (the answers between a shared prompt and a later answer)
        // would add exact zeros
        if !rr.iter().any(|k| k.sees(j0, j0 + n)) {
            continue;
        }
        // S = (scale Q) K_j^T   (rows, n)
        let kt = &kv.kt[(j0 / NR) * hd * NR..];
        gemm(kern, rows, n, hd, &qa, kt, hd * NR, &mut s, BC, false);
        // P goes straight into A panels (k = n) as each row is finished; rows past `rows`
        // stay zero (the buffer is cleared whenever the layout changes)
        let size = rows.div_ceil(MR) * MR * n;
        if pa.len() != size {
            pa.clear();
            pa.resize(size, 0.0);
        }
        for r in 0..rows {
            let srow = &mut s[r * BC..r * BC + n];
            // keys this row does not see do not exist for it
            mask_row(srow, &rr[r], j0, f32::NEG_INFINITY);
            let m_new = m[r].max(max_lanes(srow));
            if m_new == f32::NEG_INFINITY {
                srow.fill(0.0);
            } else {
                let alpha = exp2_softmax::<FMA>(m[r] - m_new);
                for x in srow.iter_mut() {
                    *x = exp2_softmax::<FMA>(*x - m_new);
                }
                let sum = sum_lanes(srow);
                l[r] = l[r] * alpha + sum;
                m[r] = m_new;
                if alpha != 1.0 {
                    for o in &mut out[r * hd..(r + 1) * hd] {
                        *o *= alpha;
                    }
                }
            }
            let panel = &mut pa[(r / MR) * n * MR..(r / MR + 1) * n * MR];
            for (dst, &v) in panel.chunks_exact_mut(MR).zip(srow.iter()) {
                dst[r % MR] = v;
            }
        }
        // O += P V_j
        gemm(
            kern,
            rows,
            hd,
            n,
            &pa,
            &kv.v[j0 * NR..],
            d.s * NR,
            &mut out,
            hd,
            true,
        );
    }
    for r in 0..rows {
        if l[r] > 0.0 {
            let inv = 1.0 / l[r];
            for o in &mut out[r * hd..(r + 1) * hd] {
                *o *= inv;
            }
            lse[r] = (m[r] + l[r].log2()) * LN_2;
        }
    }
    (out, lse)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_block_avx2(
    d: &AttnDims,
    q: &[f32],
    kv: &KvPacks,
    ranges: Option<&[u32]>,
    bi: usize,
    h: usize,
    t0: usize,
) -> (Vec<f32>, Vec<f32>) {
    fwd_block::<true>(d, q, kv, ranges, bi, h, t0)
}

/// Causal grouped-query attention forward (see the module comment): out `(B, T, NH, HD)`
/// and lse `(B, NH, T)`.
pub fn attention(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let packs: Vec<KvPacks> = (0..d.b * d.nkv)
        .into_par_iter()
        .map(|bk| kv_packs(d, k, v, bk / d.nkv, bk % d.nkv))
        .collect();
    let blocks = d.t.div_ceil(BR);
    let simd = avx2();
    // later query blocks see more keys: hand them out first
    let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..d.b * d.nh * blocks)
        .into_par_iter()
        .map(|task| {
            let (bh, blk) = (task / blocks, blocks - 1 - task % blocks);
            let (bi, h) = (bh / d.nh, bh % d.nh);
            let kv = &packs[bi * d.nkv + h / group];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: avx2() saw AVX2 and FMA on this CPU.
                return unsafe { fwd_block_avx2(d, q, kv, ranges, bi, h, blk * BR) };
            }
            let _ = simd;
            fwd_block::<false>(d, q, kv, ranges, bi, h, blk * BR)
        })
        .collect();
    let mut out = vec![0.0f32; d.b * d.t * d.nh * hd];
    let mut lse = vec![0.0f32; d.b * d.nh * d.t];
    for (task, (o, l)) in parts.into_iter().enumerate() {
        let (bh, blk) = (task / blocks, blocks - 1 - task % blocks);
        let (bi, h) = (bh / d.nh, bh % d.nh);
        let t0 = blk * BR;
        for (r, orow) in o.chunks_exact(hd).enumerate() {
            let oo = ((bi * d.t + t0 + r) * d.nh + h) * hd;
            out[oo..oo + hd].copy_from_slice(orow);
        }
        lse[bh * d.t + t0..bh * d.t + t0 + l.len()].copy_from_slice(&l);
    }
    (out, lse)
}

/// Backward of query heads `g0..g0 + gn` of one (batch, kv head)'s group: their dq
/// `(gn, T, HD)`, and their share of dk and dv `(S, HD)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_kv_head<const FMA: bool>(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    ranges: Option<&[u32]>,
    bi: usize,
    kvh: usize,
    (g0, gn): (usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let kern = Kernel::detect();
    let (hd, group, t, s) = (d.hd, d.nh / d.nkv, d.t, d.s);
    let scale = d.scale as f32;
    let krow = |j: usize| d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kvh * hd;
    let vrow = |j: usize| d.v_str.2 + bi * d.v_str.0 + j * d.v_str.1 + kvh * hd;
    let kt = pack_bt(s, hd, krow, k); // for S = Q K^T
    let vt = pack_bt(s, hd, vrow, v); // for dP = dO V^T
    let kb = pack_b(s, hd, krow, k); // for dQ = dS K
    let rr = row_ranges(d, ranges, bi, 0, t);
    let mut dq = vec![0.0f32; gn * t * hd];
    let mut dk = vec![0.0f32; s * hd];
    let mut dv = vec![0.0f32; s * hd];
    let (mut st, mut dpt) = (vec![0.0f32; BR * BC], vec![0.0f32; BR * BC]);
    let mut pa = Vec::new();
    debug_assert!(g0 + gn <= group);
    for g in 0..gn {
        let h = kvh * group + g0 + g;
        let qrow = |r: usize| d.q_str.2 + bi * d.q_str.0 + r * d.q_str.1 + h * hd;
        let orow = |r: usize| ((bi * t + r) * d.nh + h) * hd;
        let qa = pack_a(t, hd, qrow, q, scale * LOG2_E); // for S, as in the forward
        let qb = pack_b(t, hd, qrow, q); // for dK = dS^T Q
        let doa = pack_a(t, hd, orow, dout, 1.0); // for dP = dO V^T
        let dob = pack_b(t, hd, orow, dout); // for dV = P^T dO
                                             // D = rowsum(dO * O)
        let dd: Vec<f32> = (0..t)
            .map(|r| {
                let (x, y) = (&dout[orow(r)..orow(r) + hd], &o[orow(r)..orow(r) + hd]);
                x.iter().zip(y).map(|(a, b)| a * b).sum()
            })
            .collect();
        let l = &lse[(bi * d.nh + h) * t..(bi * d.nh + h + 1) * t];
        let dqg = &mut dq[g * t * hd..(g + 1) * t * hd];
        for j0 in (0..s).step_by(BC) {
            let n = BC.min(s - j0);
            for t0 in (0..t).step_by(BR) {
                let rows = BR.min(t - t0);
                let blk = &rr[t0..t0 + rows];
                if !blk.iter().any(|k| k.sees(j0, j0 + n)) {
                    continue;
                }
                // S and P = exp(S - lse), zero outside each row's keys
                let qa_blk = &qa[(t0 / MR) * hd * MR..];
                gemm(
                    kern,
                    rows,
                    n,
                    hd,
                    qa_blk,
                    &kt[(j0 / NR) * hd * NR..],
                    hd * NR,
                    &mut st,
                    BC,
                    false,
                );
                // dP = dO V^T
                let doa_blk = &doa[(t0 / MR) * hd * MR..];
                gemm(
                    kern,
                    rows,
                    n,
                    hd,
                    doa_blk,
                    &vt[(j0 / NR) * hd * NR..],
                    hd * NR,
                    &mut dpt,
                    BC,
                    false,
                );
                for r in 0..rows {
                    let prow = &mut st[r * BC..r * BC + n];
                    let dprow = &mut dpt[r * BC..r * BC + n];
                    let (lr, dr) = (l[t0 + r] * LOG2_E, dd[t0 + r]);
                    // the hole's scores become exp2(-inf - lr) = 0 and their dS 0
                    let (a, b) = mask_row(prow, &blk[r], j0, f32::NEG_INFINITY);
                    mask_row(dprow, &blk[r], j0, 0.0);
                    for (p, dp) in prow[a..b].iter_mut().zip(&mut dprow[a..b]) {
                        *p = exp2_softmax::<FMA>(*p - lr);
                        *dp = scale * *p * (*dp - dr);
                    }
                    prow[..a].fill(0.0);
                    prow[b..].fill(0.0);
                }
                // dV_j += P^T dO
                pack_tile(&st, rows, n, BC, true, &mut pa);
                let dob_blk = &dob[t0 * NR..];
                gemm(
                    kern,
                    n,
                    hd,
                    rows,
                    &pa,
                    dob_blk,
                    t * NR,
                    &mut dv[j0 * hd..],
                    hd,
                    true,
                );
                // dK_j += dS^T Q
                pack_tile(&dpt, rows, n, BC, true, &mut pa);
                gemm(
                    kern,
                    n,
                    hd,
                    rows,
                    &pa,
                    &qb[t0 * NR..],
                    t * NR,
                    &mut dk[j0 * hd..],
                    hd,
                    true,
                );
                // dQ += dS K_j
                pack_tile(&dpt, rows, n, BC, false, &mut pa);
                gemm(
                    kern,
                    rows,
                    hd,
                    n,
                    &pa,
                    &kb[j0 * NR..],
                    s * NR,
                    &mut dqg[t0 * hd..],
                    hd,
                    true,
                );
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_kv_head_avx2(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    ranges: Option<&[u32]>,
    bi: usize,
    kvh: usize,
    heads: (usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    bwd_kv_head::<true>(d, q, k, v, o, lse, dout, ranges, bi, kvh, heads)
}

/// Backward of [`attention`] (see the module comment): dq `(B, T, NH, HD)`, dk and dv
/// `(B, S, NKV, HD)`. `o` and `dout` are dense `(B, T, NH, HD)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let simd = avx2();
    // Few (batch, kv head) pairs (one packed row of a 3-kv-head model: three tasks for
    // the threads) split further, a task per query head, whose dK and dV shares are then
    // summed in head order. The split depends on the shapes only, never on the thread
    // count, so neither do the results.
    let per = if d.b * d.nkv < SPLIT_BELOW { 1 } else { group };
    let tasks = group / per;
    let parts: Vec<_> = (0..d.b * d.nkv * tasks)
        .into_par_iter()
        .map(|task| {
            let (bk, part) = (task / tasks, task % tasks);
            let (bi, kvh, heads) = (bk / d.nkv, bk % d.nkv, (part * per, per));
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: avx2() saw AVX2 and FMA on this CPU.
                return unsafe {
                    bwd_kv_head_avx2(d, q, k, v, o, lse, dout, ranges, bi, kvh, heads)
                };
            }
            let _ = simd;
            bwd_kv_head::<false>(d, q, k, v, o, lse, dout, ranges, bi, kvh, heads)
        })
        .collect();
    let mut dq = vec![0.0f32; d.b * d.t * d.nh * hd];
    let mut dk = vec![0.0f32; d.b * d.s * d.nkv * hd];
    let mut dv = vec![0.0f32; d.b * d.s * d.nkv * hd];
    for (task, (gq, gk, gv)) in parts.into_iter().enumerate() {
        let (bk, part) = (task / tasks, task % tasks);
        let (bi, kvh) = (bk / d.nkv, bk % d.nkv);
        for g in 0..per {
            let h = kvh * group + part * per + g;
            for r in 0..d.t {
                let oo = ((bi * d.t + r) * d.nh + h) * hd;
                dq[oo..oo + hd].copy_from_slice(&gq[(g * d.t + r) * hd..(g * d.t + r + 1) * hd]);
            }
        }
        for j in 0..d.s {
            let dense = ((bi * d.s + j) * d.nkv + kvh) * hd;
            let (src_k, src_v) = (&gk[j * hd..(j + 1) * hd], &gv[j * hd..(j + 1) * hd]);
            if part == 0 {
                dk[dense..dense + hd].copy_from_slice(src_k);
                dv[dense..dense + hd].copy_from_slice(src_v);
            } else {
                for (x, y) in dk[dense..dense + hd].iter_mut().zip(src_k) {
                    *x += y;
                }
                for (x, y) in dv[dense..dense + hd].iter_mut().zip(src_v) {
                    *x += y;
                }
            }
        }
    }
    (dq, dk, dv)
}

/// f32: flash-tiled for prefill and training shapes, per-kv-head loops for decoding.
pub(super) fn attention_f32(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    if d.t >= MIN_T {
        attention(d, q, k, v, ranges)
    } else if ranges.is_some_and(|r| r.len() == 4 * d.b * d.t) {
        // a few queries of answers sharing a prompt: not a decoding shape
        super::attention::attention_ref(d, q, k, v, ranges)
    } else {
        super::decode::attention_decode(d, q, k, v, ranges)
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention_bwd_f32(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    if d.t >= MIN_T {
        attention_bwd(d, q, k, v, o, lse, dout, ranges)
    } else {
        super::attention::attention_bwd_ref(d, q, k, v, o, lse, dout, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{attention_bwd_ref, attention_ref};

    fn f64s(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    /// Largest |a - b| / (1 + |b|), and where.
    fn worst(a: &[f32], b: &[f64]) -> (f64, usize) {
        assert_eq!(a.len(), b.len());
        let mut w = (0.0, 0);
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let e = (x as f64 - y).abs() / (1.0 + y.abs());
            if e.is_nan() || e > w.0 {
                w = (e, i);
            }
        }
        w
    }

    /// (B, T, S, NH, NKV, HD, causal, key ranges)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        Option<Vec<u32>>,
    );

    #[test]
    fn flash_matches_the_f64_reference_forward_and_backward() {
        use crate::ops::attention::SharedGroup;
        // (B, T, S, NH, NKV, HD, causal, key ranges)
        let cases: &[Case] = &[
            (1, 8, 8, 1, 1, 4, true, None),
            (2, 33, 33, 4, 2, 8, true, None),
            (1, 129, 129, 3, 1, 24, true, None),
            // long enough that the later query blocks see over SHORT_SPAN keys and take
            // BC-wide tiles (the earlier ones take BC_SHORT)
            (1, 300, 300, 2, 1, 16, true, None),
            (2, 100, 170, 2, 1, 16, true, None), // a cached prefix: S > T
            (1, 50, 77, 2, 2, 40, false, None),
            // left padding on row 0, right padding on row 1, a fully masked row 2
            (3, 97, 97, 6, 3, 64, true, Some(vec![13, 97, 0, 60, 5, 5])),
            (2, 65, 65, 2, 1, 8, false, Some(vec![3, 64, 0, 1])),
            // sequences packed end to end (per-query ranges): row 0 holds 1, 40, 70 and 19
            // tokens, boundaries inside and across query and key tiles; row 1 holds 130
            // tokens and then padding that sees nothing
            (
                2,
                130,
                130,
                4,
                2,
                16,
                true,
                Some(crate::ops::attention::AttnOpts::packed_ranges(
                    &[vec![0, 1, 41, 111, 130], vec![0, 97]],
                    130,
                )),
            ),
            // answers packed after a shared prompt (per-query ranges with holes): row 0
            // holds a prompt of 20 and answers of 70, 3 and 40, then a prompt of 1 with one
            // answer of 5, then a lone 30-token sequence; row 1 a prompt of 64 with three
            // answers of 118, 128 and 40 (the last skips a key tile whole), then padding
            (
                2,
                300,
                300,
                4,
                2,
                16,
                true,
                Some(crate::ops::attention::AttnOpts::shared_ranges(
                    &[
                        vec![
                            SharedGroup {
                                start: 0,
                                prompt: 20,
                                answers: vec![70, 3, 40],
                            },
                            SharedGroup {
                                start: 133,
                                prompt: 1,
                                answers: vec![5],
                            },
                            SharedGroup {
                                start: 139,
                                prompt: 30,
                                answers: vec![],
                            },
                        ],
                        vec![SharedGroup {
                            start: 0,
                            prompt: 10,
                            answers: vec![118, 128, 40],
                        }],
                    ],
                    300,
                )),
            ),
            // the same with a few queries: the reference loops
            (
                1,
                6,
                6,
                2,
                1,
                8,
                true,
                Some(crate::ops::attention::AttnOpts::shared_ranges(
                    &[vec![SharedGroup {
                        start: 0,
                        prompt: 2,
                        answers: vec![1, 2],
                    }]],
                    6,
                )),
            ),
        ];
        for (ci, (b, t, s, nh, nkv, hd, causal, ranges)) in cases.iter().cloned().enumerate() {
            // q strided as a view of a fused projection: an offset and a wider row
            let (qoff, qrow) = (5, nh * hd + 3 * hd);
            let q = crate::util::randn_vec(qoff + b * t * qrow, 1.5, 10 + ci as u64);
            let k = crate::util::randn_vec(b * s * nkv * hd, 1.5, 20 + ci as u64);
            let v = crate::util::randn_vec(b * s * nkv * hd, 1.0, 30 + ci as u64);
            let d = AttnDims {
                b,
                t,
                s,
                nh,
                nkv,
                hd,
                scale: 1.0 / (hd as f64).sqrt(),
                causal,
                q_str: (t * qrow, qrow, qoff),
                k_str: (s * nkv * hd, nkv * hd, 0),
                v_str: (s * nkv * hd, nkv * hd, 0),
            };
            let r = ranges.as_deref();
            let (o, l) = attention(&d, &q, &k, &v, r);
            let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
            let (o_ref, l_ref) = attention_ref(&d, &q64, &k64, &v64, r);
            let (eo, at) = worst(&o, &o_ref);
            assert!(eo < 2e-6, "case {ci}: out differs by {eo:e} at {at}");
            let (el, at) = worst(&l, &l_ref);
            assert!(el < 2e-6, "case {ci}: lse differs by {el:e} at {at}");
            let dout = crate::util::randn_vec(b * t * nh * hd, 1.0, 40 + ci as u64);
            let (dq, dk, dv) = attention_bwd(&d, &q, &k, &v, &o, &l, &dout, r);
            let (dq_ref, dk_ref, dv_ref) =
                attention_bwd_ref(&d, &q64, &k64, &v64, &o_ref, &l_ref, &f64s(&dout), r);
            for (name, x, y) in [
                ("dq", &dq, &dq_ref),
                ("dk", &dk, &dk_ref),
                ("dv", &dv, &dv_ref),
            ] {
                let (e, at) = worst(x, y);
                assert!(e < 1e-5, "case {ci}: {name} differs by {e:e} at {at}");
            }
        }
    }
}

//! f32 attention for a few queries per row (decoding over a KV cache): the reference
//! loops' math, arranged for the cache's bytes. One task per batch row (or per row and kv
//! head, for few rows) reads each cached position's keys and values once for all the
//! query heads that share them; the dots and axpys run in 16 lanes (fused multiply-adds
//! where the CPU has them) and the exponentials are vectorised. The softmax sum is added in f64.
//!   s_j = scale q . k_j,  p_j = e^(s_j - m) / l,  o = sum_j p_j v_j,  lse = m + ln l

use super::attention::attn_key_range;
use super::vmath::{self, fmadd};
use crate::backend::{AttnDims, LSE_MASKED};

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is set only inside task_avx2, which runs where has_avx2() saw AVX2
        // and FMA.
        return unsafe { dot_avx2(a, b) };
    }
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `a . b` in two 8-lane FMA chains, then a tree over the lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8 <= n (or i + 16 <= n) of both slices.
    unsafe {
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
    }
    let s = _mm256_add_ps(s0, s1);
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    let mut r = _mm_cvtss_f32(h);
    while i < n {
        r = a[i].mul_add(b[i], r);
        i += 1;
    }
    r
}

/// Cached rows read this many keys ahead: each row is a few cache lines at a stride of
/// the kv width, which the hardware prefetcher follows poorly across pages. The pass over
/// the keys asks for them this far ahead into L2 and for the values of the keys it is on
/// (used by the next pass): on an EPYC (Zen 4) with the cache in memory, that made the
/// call 20-35% faster than asking 16 keys ahead into L1 and the values just before use.
const AHEAD: usize = 32;

/// Ask for `x[at..at + n]` in cache: into L1, or with `L2` into L2 only (for lines wanted
/// a pass later, or far ahead). Nothing past the end; no effect off x86-64.
#[inline(always)]
fn prefetch<const L2: bool>(x: &[f32], at: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + n <= x.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        for line in (0..n).step_by(16) {
            // SAFETY: at + line < x.len(): the address is inside the slice.
            let p = unsafe { x.as_ptr().add(at + line) } as *const i8;
            if L2 {
                // SAFETY: a prefetch of an address inside the slice.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(p) };
            } else {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            }
        }
    }
}

/// Before the eight keys from `i` meet the queries: the keys [`AHEAD`] further on into L2,
/// and these keys' values, which this pass does not touch, so that the pass over the
/// values finds them there.
#[inline(always)]
fn prefetch_keys(k: &[f32], v: &[f32], ko: &[usize], vo: &[usize], i: usize, kvw: usize) {
    for ii in i..i + 8 {
        if let Some(&o) = ko.get(ii + AHEAD) {
            prefetch::<true>(k, o, kvw);
        }
        prefetch::<true>(v, vo[ii], kvw);
    }
}

/// While keys `[i, i + 8)` of `[from, to)` meet the queries: the matching share of the
/// keys (and values) of `nx` from `nfrom` on into L2, so that what runs next finds its
/// cache there rather than in memory; the last block of eight asks for the rest. Spread
/// so, the next row's bytes come in while this row computes.
#[inline(always)]
fn prefetch_share(
    k: &[f32],
    v: &[f32],
    nx: &Span,
    nfrom: usize,
    (from, to): (usize, usize),
    i: usize,
    kvw: usize,
) {
    let (len, nlen) = (to.saturating_sub(from), nx.n.saturating_sub(nfrom));
    if len == 0 || nlen == 0 {
        return;
    }
    let a = nfrom + (i - from) * nlen / len;
    let b = if i + 16 > to {
        nx.n
    } else {
        nfrom + (i + 8 - from) * nlen / len
    };
    for j in a..b.min(nx.n) {
        prefetch::<true>(k, nx.ko[j], kvw);
        prefetch::<true>(v, nx.vo[j], kvw);
    }
}

/// `y += a * x`.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = fmadd::<FMA>(a, xi, *yi);
    }
}

/// Where a row reads the first positions of its key range from: `(row, start, len)` says
/// that its keys and values at `[lo, lo + len)` (lo: the start of its range) are those of
/// batch row `row` at `[start, start + len)` (the samples of one prompt, whose prompt
/// positions hold the same values in every slot). See [`attention_decode_shared`].
type Prefix = (usize, usize, usize);

/// What one task computes: batch rows that run one after another (all naming one
/// [`Prefix`], or none) and the kv heads it takes of each; and the first row (with its
/// prefix) of the unit its thread takes next, whose keys and values it asks for ahead.
struct Unit<'a> {
    rows: &'a [usize],
    kv: std::ops::Range<usize>,
    prefix: Option<Prefix>,
    next: Option<(usize, Option<Prefix>)>,
}

/// Where one row's keys are for the query at hand: `n` keys, the first `pre` of them
/// read from the prefix's row; the offset of each key in k and in v.
#[derive(Default)]
struct Span {
    n: usize,
    pre: usize,
    ko: Vec<usize>,
    vo: Vec<usize>,
}

impl Span {
    /// Row `bi`'s keys `[lo, hi)` with their first `len` (at most) at `src = (row, start)`;
    /// panics unless every key's kv heads lie inside k and v.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        d: &AttnDims,
        (k, v): (usize, usize),
        bi: usize,
        (lo, hi): (usize, usize),
        (src, len): ((usize, usize), usize),
        kv0: usize,
        kvw: usize,
    ) {
        let split = lo + len.min(hi - lo);
        (self.n, self.pre) = (hi - lo, split - lo);
        // where key i (position lo + i) starts, in k and in v: computed once, so the
        // passes below only index
        for (dst, str, total) in [(&mut self.ko, d.k_str, k), (&mut self.vo, d.v_str, v)] {
            dst.clear();
            dst.extend((lo..hi).map(|j| {
                let (row, j) = if j < split {
                    (src.0, src.1 + j - lo)
                } else {
                    (bi, j)
                };
                str.2 + row * str.0 + j * str.1 + kv0 * d.hd
            }));
            // every later read is inside [offset, offset + kvw)
            assert!(
                dst.iter().all(|&o| o + kvw <= total),
                "attention: cache too short"
            );
        }
    }
}

/// [`task`]'s buffers, kept per thread from call to call: per row of the unit, its
/// results (`out` then `lse`, as [`task`] says), its scores and its keys' offsets.
#[derive(Default)]
struct Scratch {
    out: Vec<f32>,
    lse: Vec<f32>,
    s: Vec<f32>,
    w: Vec<f32>,
    inv: Vec<f32>,
    spans: Vec<Span>,
    live: Vec<usize>,
    /// The next unit's first row.
    ahead: Span,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Batch rows `rows` (one after another) and the query heads of kv heads `kv`: per row,
/// out `(T, heads, HD)` and lse `(heads, T)`. Each cached position's keys (then values) of
/// those kv heads are read together: with all of them, the row's cache is one sequential
/// stream rather than NKV strided ones. With a [`Prefix`] (a single query; all `rows`
/// name it), the first positions are read from the row it names instead, and on the AVX2
/// path the positions that every row reads there go through the cache once for all of
/// them: each block of keys (then of values) meets every row's queries while it is in L1.
/// Every row's sums are the same, in the same order, as when it runs alone.
///
/// While a row's keys meet its queries, the next row's keys and values (or the next
/// unit's first row's, `next`) are asked for into L2, so that fetching them overlaps
/// this row's work.
#[inline(always)]
fn task<const FMA: bool, const WIDE: bool>(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    unit: Unit,
    x: &mut Scratch,
) {
    let Unit {
        rows,
        kv,
        prefix,
        next,
    } = unit;
    let (hd, group) = (d.hd, d.nh / d.nkv);
    // query heads h0.. of this task, and their offset in the row's cache rows
    let (h0, nh) = (kv.start * group, kv.len() * group);
    let scale = d.scale as f32;
    let kvw = kv.len() * hd;
    // row r's out at out[r * ow..] and lse at lse[r * lw..]; the sums over the values
    // start from zero
    let (ow, lw) = (d.t * nh * hd, nh * d.t);
    let Scratch {
        out,
        lse,
        s,
        w,
        inv,
        spans,
        live,
        ahead,
    } = x;
    out.clear();
    out.resize(rows.len() * ow, 0.0);
    lse.clear();
    lse.resize(rows.len() * lw, 0.0);
    // row r's scores of head h at s[(r * nh + h) * d.s..] (each written before it is
    // read); row r's 1 / l of head h at inv[r * nh + h], for the scalar pass over the
    // values
    s.resize(rows.len() * nh * d.s, 0.0);
    w.resize(d.s, 0.0);
    inv.resize(rows.len() * nh, 0.0);
    spans.resize_with(spans.len().max(rows.len()), Span::default);
    // the AVX2 pass over the values (else the scalar one)
    #[cfg(target_arch = "x86_64")]
    let simd = FMA && hd.is_multiple_of(avx2::PIECE);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    // row bi's keys for query t (false: it has none); keys lo..lo + len come from the
    // prefix's row (at its start), the rest from the row itself
    let locate = |sp: &mut Span, bi: usize, prefix: Option<Prefix>, t: usize| {
        let (lo, hi) = attn_key_range(d, ranges, bi, t);
        if lo == hi {
            sp.n = 0;
            return false;
        }
        let src = match prefix {
            Some((row, start, len)) if d.t == 1 => ((row, start), len),
            _ => ((bi, lo), 0),
        };
        sp.fill(d, (k.len(), v.len()), bi, (lo, hi), src, kv.start, kvw);
        true
    };
    // the next unit's first row, asked for while this unit's last row runs
    let ahead = match next {
        Some((nb, np)) if d.t == 1 && locate(ahead, nb, np, 0) => Some(&*ahead),
        _ => None,
    };
    for t in 0..d.t {
        let qo = |bi: usize, h: usize| d.q_str.2 + bi * d.q_str.0 + t * d.q_str.1 + (h0 + h) * hd;
        for (r, &bi) in rows.iter().enumerate() {
            if !locate(&mut spans[r], bi, prefix, t) {
                for h in 0..nh {
                    lse[r * lw + h * d.t + t] = LSE_MASKED;
                }
            }
        }
        live.clear();
        live.extend((0..rows.len()).filter(|&r| spans[r].n > 0));
        // the first `common` keys of every live row are the same positions of one row
        let common = match (prefix, live.len()) {
            (Some(_), 2..) if simd && d.t == 1 => {
                live.iter().map(|&r| spans[r].pre).min().unwrap_or(0)
            }
            _ => 0,
        };
        // the scores: blocks of eight shared keys for every row, then each row's own
        let mut from = 0;
        #[cfg(target_arch = "x86_64")]
        if common >= 8 {
            let ko = &spans[live[0]].ko;
            let mut i = 0;
            while i + 8 <= common {
                prefetch_keys(k, v, ko, &spans[live[0]].vo, i, kvw);
                // the first row's own keys come next
                prefetch_share(k, v, &spans[live[0]], common, (0, common), i, kvw);
                for &r in live.iter() {
                    // SAFETY: `common > 0` only where `simd`, so FMA is set, which happens
                    // only inside task_avx2 or task_avx512, where has_avx2() saw AVX2 and
                    // FMA (and with WIDE, has_avx512() AVX-512).
                    unsafe { scores8::<WIDE>(d, q, &qo, k, ko, (r, rows[r], i), (nh, scale), s) };
                }
                i += 8;
            }
            from = i;
        }
        for (li, &r) in live.iter().enumerate() {
            let (bi, sp) = (rows[r], &spans[r]);
            // what comes after this row: the next row's own keys (its shared ones are in
            // cache by now), or all of the next unit's first row's
            let after = match live.get(li + 1) {
                Some(&x) => Some((&spans[x], from)),
                None => ahead.map(|a| (a, 0)),
            };
            let mut i = from;
            #[cfg(target_arch = "x86_64")]
            if FMA && hd.is_multiple_of(8) {
                // eight keys at a time: their eight dots end in one vector tree
                while i + 8 <= sp.n {
                    prefetch_keys(k, v, &sp.ko, &sp.vo, i, kvw);
                    if let Some((nx, nfrom)) = after {
                        prefetch_share(k, v, nx, nfrom, (from, sp.n), i, kvw);
                    }
                    // SAFETY: as above (FMA only inside task_avx2 or task_avx512).
                    unsafe { scores8::<WIDE>(d, q, &qo, k, &sp.ko, (r, bi, i), (nh, scale), s) };
                    i += 8;
                }
            }
            let sr = &mut s[r * nh * d.s..(r + 1) * nh * d.s];
            for i in i..sp.n {
                prefetch::<false>(k, sp.ko.get(i + AHEAD).copied().unwrap_or(k.len()), kvw);
                for h in 0..nh {
                    let kh = sp.ko[i] + (h / group) * hd;
                    sr[h * d.s + i] =
                        dot::<FMA>(&q[qo(bi, h)..qo(bi, h) + hd], &k[kh..kh + hd]) * scale;
                }
            }
            // the softmax; on the AVX2 path the weights p_j = e_j / l in place (the same
            // product the scalar loop below forms)
            for h in 0..nh {
                let sh = &mut sr[h * d.s..h * d.s + sp.n];
                let m = vmath::max(sh);
                let l = vmath::exp_weights(sh, m, 1.0, Some(&mut w[..sp.n]));
                lse[r * lw + h * d.t + t] = (m as f64 + l.ln()) as f32;
                let il = (1.0 / l) as f32;
                inv[r * nh + h] = il;
                if simd {
                    for (x, &e) in sh.iter_mut().zip(&w[..sp.n]) {
                        *x = e * il;
                    }
                } else {
                    sh.copy_from_slice(&w[..sp.n]);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            // blocks of consecutive rows of one source: the prefix's (those every row
            // shares first, block by block for all rows), then each row's. Each block's
            // products are added in row order onto the sums so far, so where the blocks
            // are cut does not change the sums.
            let blocks = |a: usize, b: usize| {
                (a..b)
                    .step_by(PV_BLOCK)
                    .map(move |ib| (ib, (ib + PV_BLOCK).min(b)))
            };
            let vo0 = &spans[live.first().copied().unwrap_or(0)].vo;
            for (ib, ie) in blocks(0, common) {
                let vb = &v[vo0[ib]..vo0[ie - 1] + kvw];
                for &r in live.iter() {
                    let o = &mut out[r * ow + t * nh * hd..r * ow + (t + 1) * nh * hd];
                    let sr = &s[r * nh * d.s + ib..];
                    // SAFETY: as above (FMA only inside task_avx2 or task_avx512).
                    unsafe { pv::<WIDE>(ie - ib, vb, d.v_str.1, hd, group, sr, d.s, o) };
                }
            }
            for &r in live.iter() {
                let sp = &spans[r];
                let o = &mut out[r * ow + t * nh * hd..r * ow + (t + 1) * nh * hd];
                for (ib, ie) in blocks(common, sp.pre).chain(blocks(sp.pre, sp.n)) {
                    let vb = &v[sp.vo[ib]..sp.vo[ie - 1] + kvw];
                    let sr = &s[r * nh * d.s + ib..];
                    // SAFETY: as above (FMA only inside task_avx2 or task_avx512).
                    unsafe { pv::<WIDE>(ie - ib, vb, d.v_str.1, hd, group, sr, d.s, o) };
                }
            }
            continue;
        }
        for &r in live.iter() {
            let sp = &spans[r];
            let sr = &s[r * nh * d.s..(r + 1) * nh * d.s];
            for (i, &vo) in sp.vo.iter().enumerate() {
                prefetch::<false>(v, vo.saturating_add(AHEAD * d.v_str.1), kvw);
                for h in 0..nh {
                    let (o, vh) = ((t * nh + h) * hd, vo + (h / group) * hd);
                    axpy::<FMA>(
                        &mut out[r * ow + o..r * ow + o + hd],
                        sr[h * d.s + i] * inv[r * nh + h],
                        &v[vh..vh + hd],
                    );
                }
            }
        }
    }
}

/// Keys per block of the AVX2 pass over the values: 32 cached rows of three kv heads are
/// 24 KiB, which stay in L1 while every head's accumulators pass over them.
const PV_BLOCK: usize = 32;

/// [`task`]'s two passes over the cache in AVX2 registers (`avx2.rs`).
#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    unit: Unit,
    x: &mut Scratch,
) {
    task::<true, false>(d, q, k, v, ranges, unit, x)
}

/// [`task_avx2`] with the 512-bit passes (`avx512.rs`) where the head dim allows them.
/// With AVX-512VL the 256-bit steps reach all 32 registers too: without it, the trees
/// after the key loop crowded that loop's 24 sums onto the stack.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn task_avx512(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    unit: Unit,
    x: &mut Scratch,
) {
    task::<true, true>(d, q, k, v, ranges, unit, x)
}

/// [`task`]'s 512-bit passes (`avx512.rs`): the avx2 ones' bits.
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Row `r`'s (batch row `bi`'s) scores of the eight keys at `ko[i..i + 8]` for every
/// query head of the task, into `s[(r * nh + h) * d.s + i..][..8]`. With `WIDE` (and a
/// head dim of whole 16-float vectors) each kv head's keys meet its query heads three at
/// a time in 512-bit registers, else one head at a time in 256-bit ones: the same bits.
///
/// # Safety
/// The CPU has AVX2 and FMA, and with `WIDE` AVX-512F; every `ko[i + j]` + the task's kv
/// width is within `k` (as [`Span::fill`] asserts).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scores8<const WIDE: bool>(
    d: &AttnDims,
    q: &[f32],
    qo: &impl Fn(usize, usize) -> usize,
    k: &[f32],
    ko: &[usize],
    (r, bi, i): (usize, usize, usize),
    (nh, scale): (usize, f32),
    s: &mut [f32],
) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let at = |h: usize| (r * nh + h) * d.s + i;
    assert!(nh > 0 && at(nh - 1) + 8 <= s.len() && i + 8 <= ko.len());
    let sp = s.as_mut_ptr();
    for kvh in 0..nh / group {
        // SAFETY: the caller's promise (each key's kv heads lie within k).
        let keys: [*const f32; 8] =
            std::array::from_fn(|j| unsafe { k.as_ptr().add(ko[i + j] + kvh * hd) });
        let heads = kvh * group..(kvh + 1) * group;
        if WIDE && hd.is_multiple_of(16) {
            let mut h = heads.start;
            while h < heads.end {
                let qp = |x: usize| q[qo(bi, h + x)..][..hd].as_ptr();
                // SAFETY: at(h) + 8 <= s.len() for every head (asserted above).
                let dp = |x: usize| unsafe { sp.add(at(h + x)) };
                let set = 3.min(heads.end - h);
                // SAFETY: AVX-512 (the caller's promise); the keys and queries hold hd
                // floats, each destination 8.
                unsafe {
                    match set {
                        1 => avx512::dots8_heads::<1>(hd, [qp(0)], keys, scale, [dp(0)]),
                        2 => avx512::dots8_heads::<2>(
                            hd,
                            [qp(0), qp(1)],
                            keys,
                            scale,
                            [dp(0), dp(1)],
                        ),
                        _ => avx512::dots8_heads::<3>(
                            hd,
                            [qp(0), qp(1), qp(2)],
                            keys,
                            scale,
                            [dp(0), dp(1), dp(2)],
                        ),
                    }
                }
                h += set;
            }
        } else {
            for h in heads {
                // SAFETY: AVX2 and FMA (the caller's promise); hd floats a key.
                unsafe { avx2::dots8(&q[qo(bi, h)..][..hd], keys, scale, &mut s[at(h)..][..8]) };
            }
        }
    }
}

/// [`avx2::pv_block`], or with `WIDE` (and a head dim of whole [`avx512::PIECE`]s) its
/// 512-bit twin: the same bits.
///
/// # Safety
/// As [`scores8`]'s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv<const WIDE: bool>(
    n: usize,
    v: &[f32],
    stride: usize,
    hd: usize,
    group: usize,
    w: &[f32],
    ws: usize,
    o: &mut [f32],
) {
    // SAFETY: the caller's promise; the passes assert their bounds.
    unsafe {
        if WIDE && hd.is_multiple_of(avx512::PIECE) {
            avx512::pv_block(n, v, stride, hd, group, w, ws, o)
        } else {
            avx2::pv_block(n, v, stride, hd, group, w, ws, o)
        }
    }
}

/// Attention forward for decoding shapes; returns out `(B, T, NH, HD)` and lse `(B, NH, T)`.
pub fn attention_decode(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    attention_decode_shared(d, q, k, v, ranges, None)
}

/// [`attention_decode`] for rows that share cached positions. `shared` holds `[row,
/// start, len]` per batch row `(B, 3)`: the caller's promise that the row's keys and
/// values at `[lo, lo + len)` (lo: the start of its key range) equal those of batch row
/// `row` at `[start, start + len)`, as the samples of one prompt hold the prompt's
/// positions. The rows naming the same `(row, start, len)` run one after another in one
/// task, and read those positions from that row: from memory once, then from the
/// core's cache. The same sums in the same order, so the same results as without it;
/// ignored unless every row has a task of its own (single queries, enough rows) and
/// `shared` is `(B, 3)`.
pub fn attention_decode_shared(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    shared: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    let simd = vmath::has_avx2();
    let wide = simd && vmath::has_avx512();
    // a task per row (all kv heads: one stream) when rows keep every thread busy, else
    // per (row, kv head)
    let per_row = d.b >= 4 * rayon::current_num_threads();
    // units: rows that run one after another (naming one prefix, or none), each with all
    // kv heads or one
    type OwnedUnit = (Vec<usize>, Option<Prefix>, std::ops::Range<usize>);
    let units: Vec<OwnedUnit> = match shared {
        Some(sh) if per_row && d.t == 1 && sh.len() == 3 * d.b => {
            let mut groups: Vec<(Prefix, Vec<usize>)> = Vec::new();
            for bi in 0..d.b {
                let p = (
                    sh[3 * bi] as usize,
                    sh[3 * bi + 1] as usize,
                    sh[3 * bi + 2] as usize,
                );
                // a prefix that names no row, or reaches past the cache, is not used
                let p = if p.0 < d.b && p.2 > 0 && p.1 + p.2 <= d.s {
                    p
                } else {
                    (bi, 0, 0)
                };
                match groups.iter_mut().find(|(g, _)| *g == p && p.2 > 0) {
                    Some((_, rows)) => rows.push(bi),
                    None => groups.push((p, vec![bi])),
                }
            }
            groups
                .into_iter()
                .map(|(p, rows)| (rows, (p.2 > 0).then_some(p), 0..d.nkv))
                .collect()
        }
        _ if per_row => (0..d.b).map(|bi| (vec![bi], None, 0..d.nkv)).collect(),
        _ => (0..d.b * d.nkv)
            .map(|u| (vec![u / d.nkv], None, u % d.nkv..u % d.nkv + 1))
            .collect(),
    };
    // the longest units first, so that the threads' shares come out even (each unit's
    // results do not depend on where or when it runs)
    let keys = |bi: usize| {
        (0..d.t)
            .map(|t| {
                let (lo, hi) = attn_key_range(d, ranges, bi, t);
                hi - lo
            })
            .sum::<usize>()
    };
    let mut order: Vec<(usize, usize)> = units
        .iter()
        .enumerate()
        .map(|(u, (rows, _, kv))| (rows.iter().map(|&bi| keys(bi)).sum::<usize>() * kv.len(), u))
        .collect();
    order.sort_by_key(|&(cost, u)| (std::cmp::Reverse(cost), u));
    let (hd, group) = (d.hd, d.nh / d.nkv);
    // the units cover every (row, kv head) once, so every element is written below
    let mut out = super::gemm::uninit::<f32>(d.b * d.t * d.nh * hd);
    let mut lse = super::gemm::uninit::<f32>(d.b * d.nh * d.t);
    let (out_w, lse_w) = (
        super::threads::Disjoint::new(&mut out),
        super::threads::Disjoint::new(&mut lse),
    );
    let (out_len, lse_len) = (out.len(), lse.len());
    let put = |dst: &super::threads::Disjoint<std::mem::MaybeUninit<f32>>,
               len: usize,
               at: usize,
               src: &[f32]| {
        assert!(
            at + src.len() <= len,
            "attention: output part out of bounds"
        );
        // SAFETY: in bounds (asserted); each (row, kv head) belongs to one unit, so no
        // other task writes these elements, and both buffers outlive the tasks.
        let dst = unsafe { dst.part(at, src.len()) };
        for (x, &y) in dst.iter_mut().zip(src) {
            x.write(y);
        }
    };
    // each thread's units, dealt longest first to the thread with the least work so
    // far: a thread knows the unit it runs next, and asks for its cache ahead
    let threads = rayon::current_num_threads().clamp(1, units.len().max(1));
    let mut lists: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for &(cost, u) in &order {
        if let Some(l) = lists.iter_mut().min_by_key(|l| l.0) {
            l.0 += cost.max(1);
            l.1.push(u);
        }
    }
    super::threads::par_for(threads, |th| {
        let list = &lists[th].1;
        for (at, &u) in list.iter().enumerate() {
            let (rows, prefix, kv) = &units[u];
            let (h0, nh) = (kv.start * group, kv.len() * group);
            // (its keys are located for these kv heads: only a unit of the same ones)
            let next = list
                .get(at + 1)
                .filter(|&&n| units[n].2 == *kv)
                .map(|&n| (units[n].0[0], units[n].1));
            let unit = Unit {
                rows,
                kv: kv.clone(),
                prefix: *prefix,
                next,
            };
            SCRATCH.with_borrow_mut(|x| {
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: has_avx512() saw AVX-512F, AVX2 and FMA on this CPU.
                    unsafe { task_avx512(d, q, k, v, ranges, unit, x) }
                } else if simd {
                    // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
                    unsafe { task_avx2(d, q, k, v, ranges, unit, x) }
                } else {
                    task::<false, false>(d, q, k, v, ranges, unit, x)
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (simd, wide);
                    task::<false, false>(d, q, k, v, ranges, unit, x)
                }
                let (ow, lw) = (d.t * nh * hd, nh * d.t);
                for (r, &bi) in rows.iter().enumerate() {
                    for t in 0..d.t {
                        let (oo, from) = (((bi * d.t + t) * d.nh + h0) * hd, r * ow + t * nh * hd);
                        put(&out_w, out_len, oo, &x.out[from..from + nh * hd]);
                    }
                    put(
                        &lse_w,
                        lse_len,
                        (bi * d.nh + h0) * d.t,
                        &x.lse[r * lw..(r + 1) * lw],
                    );
                }
            });
        }
    });
    // SAFETY: written in full above (every row's heads of every kv head, every query).
    unsafe {
        (
            super::gemm::assume_init_vec(out),
            super::gemm::assume_init_vec(lse),
        )
    }
}

#[cfg(test)]
mod tests;

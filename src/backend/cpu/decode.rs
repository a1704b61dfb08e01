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
/// the kv width, which the hardware prefetcher follows poorly across pages.
const AHEAD: usize = 16;

/// Ask for `x[at..at + n]` in cache (nothing past the end; no effect off x86-64).
#[inline(always)]
fn prefetch(x: &[f32], at: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + n <= x.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for line in (0..n).step_by(16) {
            // SAFETY: at + line < x.len(): the address is inside the slice.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(at + line) as *const i8) };
        }
    }
}

/// `y += a * x`.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = fmadd::<FMA>(a, xi, *yi);
    }
}

/// One batch row and the query heads of kv heads `kv`: out `(T, heads, HD)` and lse
/// `(heads, T)`. Each cached position's keys (then values) of those kv heads are read
/// together: with all of them, the row's cache is one sequential stream rather than NKV
/// strided ones.
#[inline(always)]
fn task<const FMA: bool>(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    (bi, kv): (usize, std::ops::Range<usize>),
) -> (Vec<f32>, Vec<f32>) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    // query heads h0.. of this task, and their offset in the row's cache rows
    let (h0, nh) = (kv.start * group, kv.len() * group);
    let scale = d.scale as f32;
    let mut out = vec![0.0f32; d.t * nh * hd];
    let mut lse = vec![0.0f32; nh * d.t];
    let mut s = vec![0.0f32; nh * d.s];
    let mut w = vec![0.0f32; d.s];
    let mut inv = vec![0.0f32; nh];
    let kvw = kv.len() * hd;
    for t in 0..d.t {
        let (lo, hi) = attn_key_range(d, ranges, bi, t);
        if lo == hi {
            for h in 0..nh {
                lse[h * d.t + t] = LSE_MASKED;
            }
            continue;
        }
        let n = hi - lo;
        let qo = |h: usize| d.q_str.2 + bi * d.q_str.0 + t * d.q_str.1 + (h0 + h) * hd;
        for j in lo..hi {
            let ko = d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kv.start * hd;
            prefetch(k, ko + AHEAD * d.k_str.1, kvw);
            for h in 0..nh {
                let kh = ko + (h / group) * hd;
                s[h * d.s + j - lo] = dot::<FMA>(&q[qo(h)..qo(h) + hd], &k[kh..kh + hd]) * scale;
            }
        }
        for h in 0..nh {
            let sh = &mut s[h * d.s..h * d.s + n];
            let m = vmath::max(sh);
            let l = vmath::exp_weights(sh, m, 1.0, Some(&mut w[..n]));
            sh.copy_from_slice(&w[..n]);
            lse[h * d.t + t] = (m as f64 + l.ln()) as f32;
            inv[h] = (1.0 / l) as f32;
        }
        for j in lo..hi {
            let vo = d.v_str.2 + bi * d.v_str.0 + j * d.v_str.1 + kv.start * hd;
            prefetch(v, vo + AHEAD * d.v_str.1, kvw);
            for h in 0..nh {
                let (o, vh) = ((t * nh + h) * hd, vo + (h / group) * hd);
                axpy::<FMA>(
                    &mut out[o..o + hd],
                    s[h * d.s + j - lo] * inv[h],
                    &v[vh..vh + hd],
                );
            }
        }
    }
    (out, lse)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
    unit: (usize, std::ops::Range<usize>),
) -> (Vec<f32>, Vec<f32>) {
    task::<true>(d, q, k, v, ranges, unit)
}

/// Attention forward for decoding shapes; returns out `(B, T, NH, HD)` and lse `(B, NH, T)`.
pub fn attention_decode(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    let simd = vmath::has_avx2();
    // a task per row (all kv heads: one stream) when rows keep every thread busy, else
    // per (row, kv head)
    let per_row = d.b >= 4 * rayon::current_num_threads();
    let units: Vec<(usize, std::ops::Range<usize>)> = if per_row {
        (0..d.b).map(|bi| (bi, 0..d.nkv)).collect()
    } else {
        (0..d.b * d.nkv)
            .map(|u| (u / d.nkv, u % d.nkv..u % d.nkv + 1))
            .collect()
    };
    let parts: Vec<(Vec<f32>, Vec<f32>)> = super::threads::par_map(units.len(), |u| {
        let unit = &units[u];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
            return unsafe { task_avx2(d, q, k, v, ranges, unit.clone()) };
        }
        let _ = simd;
        task::<false>(d, q, k, v, ranges, unit.clone())
    });
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let mut out = vec![0.0f32; d.b * d.t * d.nh * hd];
    let mut lse = vec![0.0f32; d.b * d.nh * d.t];
    for ((bi, kv), (o, l)) in units.into_iter().zip(parts) {
        let (h0, nh) = (kv.start * group, kv.len() * group);
        for t in 0..d.t {
            let oo = ((bi * d.t + t) * d.nh + h0) * hd;
            out[oo..oo + nh * hd].copy_from_slice(&o[t * nh * hd..(t + 1) * nh * hd]);
        }
        let at = (bi * d.nh + h0) * d.t;
        lse[at..at + nh * d.t].copy_from_slice(&l);
    }
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention_ref;

    #[test]
    fn decode_matches_the_f64_reference() {
        // (B, T, S, NH, NKV, HD, key ranges): one or a few queries over a cache, strided
        // rows as a narrowed cache gives them, a head dim with a remainder after 16 lanes,
        // and a row that sees nothing
        type Case = (usize, usize, usize, usize, usize, usize, Option<Vec<u32>>);
        let cases: &[Case] = &[
            (3, 1, 40, 9, 3, 64, Some(vec![5, 40, 0, 17, 39, 40])),
            (2, 2, 33, 4, 2, 20, None),
            (2, 1, 12, 2, 1, 8, Some(vec![12, 12, 0, 12])),
            // enough rows for a task per row (all kv heads at once)
            (
                40,
                1,
                30,
                9,
                3,
                64,
                Some((0..40).flat_map(|i| [i % 7, 30 - i % 3]).collect()),
            ),
        ];
        for (ci, (b, t, s, nh, nkv, hd, ranges)) in cases.iter().cloned().enumerate() {
            let cap = s + 7; // the cache's rows are longer than the positions read
            let q = crate::util::randn_vec(b * t * nh * hd, 1.5, 40 + ci as u64);
            let k = crate::util::randn_vec(b * cap * nkv * hd, 1.5, 50 + ci as u64);
            let v = crate::util::randn_vec(b * cap * nkv * hd, 1.0, 60 + ci as u64);
            let d = AttnDims {
                b,
                t,
                s,
                nh,
                nkv,
                hd,
                scale: 1.0 / (hd as f64).sqrt(),
                causal: true,
                q_str: (t * nh * hd, nh * hd, 0),
                k_str: (cap * nkv * hd, nkv * hd, 0),
                v_str: (cap * nkv * hd, nkv * hd, 0),
            };
            let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
            let (o, l) = attention_decode(&d, &q, &k, &v, ranges.as_deref());
            let (ro, rl) = attention_ref(&d, &f64s(&q), &f64s(&k), &f64s(&v), ranges.as_deref());
            for (i, (a, b)) in o.iter().zip(&ro).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 2e-6 * (1.0 + b.abs()),
                    "case {ci} out {i}: {a} vs {b}"
                );
            }
            for (i, (a, b)) in l.iter().zip(&rl).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 2e-6 * (1.0 + b.abs()),
                    "case {ci} lse {i}: {a} vs {b}"
                );
            }
        }
    }
}

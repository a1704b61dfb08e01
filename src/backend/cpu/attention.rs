//! Causal attention, forward and backward, with per-row key ranges and GQA.

#[allow(unused_imports)]
use super::*;

/// The keys one query sees: `[lo, hi)` less the hole `[skip.0, skip.1)`, which lies
/// inside it (and is empty but for an answer that shares its prompt with another: it
/// skips the answers laid between the prompt and itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    pub lo: usize,
    pub hi: usize,
    pub skip: (usize, usize),
}

impl Keys {
    /// How many keys the query sees.
    pub fn count(&self) -> usize {
        self.hi - self.lo - (self.skip.1 - self.skip.0)
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> {
        (self.lo..self.skip.0).chain(self.skip.1..self.hi)
    }

    /// Whether the query sees any key in `[j0, j1)`.
    pub fn sees(&self, j0: usize, j1: usize) -> bool {
        let (a, b) = (self.lo.max(j0), self.hi.min(j1));
        a < b && !(self.skip.0 <= a && self.skip.1 >= b)
    }
}

/// Valid keys for query `t` of batch `bi`: `[lo, hi)`, the hull of [`attn_keys`].
pub fn attn_key_range(d: &AttnDims, ranges: Option<&[u32]>, bi: usize, t: usize) -> (usize, usize) {
    let k = attn_keys(d, ranges, bi, t);
    (k.lo, k.hi)
}

/// Valid keys for query `t` of batch `bi`. `ranges` holds one `[start, end)` per batch
/// row `(B, 2)` (padding); or one per query `(B, T, 2)` (sequences packed end to end:
/// each query sees only its own sequence, cu_seqlens style); or one per query with a hole
/// `(B, T, 4)`: `[start, end)` less `[skip_start, skip_end)` (answers sharing one prompt,
/// see [`crate::ops::attention::AttnOpts::shared_ranges`]). The first two agree at T = 1.
pub fn attn_keys(d: &AttnDims, ranges: Option<&[u32]>, bi: usize, t: usize) -> Keys {
    let (mut lo, mut hi, mut skip) = (0, d.s, (0, 0));
    if let Some(r) = ranges {
        if r.len() == 2 * d.b {
            (lo, hi) = (r[2 * bi] as usize, r[2 * bi + 1] as usize);
        } else if r.len() == 4 * d.b * d.t {
            let i = 4 * (bi * d.t + t);
            (lo, hi) = (r[i] as usize, r[i + 1] as usize);
            skip = (r[i + 2] as usize, r[i + 3] as usize);
        } else {
            let i = 2 * (bi * d.t + t);
            (lo, hi) = (r[i] as usize, r[i + 1] as usize);
        }
        hi = hi.min(d.s);
    }
    if d.causal {
        hi = hi.min(t + d.s - d.t + 1);
    }
    let hi = hi.max(lo);
    let a = skip.0.clamp(lo, hi);
    let b = skip.1.clamp(a, hi);
    // a hole at either end only moves that end
    let (lo, hi, skip) = if a == lo {
        (b, hi, (b, b))
    } else if b == hi {
        (lo, a, (a, a))
    } else {
        (lo, hi, (a, b))
    };
    Keys { lo, hi, skip }
}

/// `a . b` with eight partial sums, so the compiler can keep them in one SIMD register.
pub(super) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let mut acc = [T::zero(); 8];
    let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = T::zero();
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    acc.iter().fold(s, |s, &x| s + x)
}

/// `y += a * x`.
pub(super) fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Causal grouped-query attention in any [`Real`]: for f32 the flash-tiled kernels once
/// there are enough queries to fill a tile (`flash.rs`), else the reference loops.
pub fn attention<T: Real>(
    d: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    ranges: Option<&[u32]>,
) -> (Vec<T>, Vec<T>) {
    T::attention(d, q, k, v, ranges)
}

/// Backward of [`attention`], in the same split.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    d: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    ranges: Option<&[u32]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    T::attention_bwd(d, q, k, v, o, lse, dout, ranges)
}

/// Causal grouped-query attention, reference loops. Returns out `(B, T, NH, HD)` and the
/// log-sum-exp of the scaled scores `(B, NH, T)` (LSE_MASKED for rows with no key).
///   s_j = scale * q . k_j,  p_j = softmax(s)_j,  o = sum_j p_j v_j,  kv head = h / (NH/NKV)
/// Each (batch, head) is one task on rayon's threads, written to its own buffer and then
/// scattered into place.
pub fn attention_ref<T: Real>(
    d: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    ranges: Option<&[u32]>,
) -> (Vec<T>, Vec<T>) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let scale = T::from_f64(d.scale);
    // one (batch, head): out (T, HD) and lse (T)
    let head = |bh: usize| -> (Vec<T>, Vec<T>) {
        let (bi, h) = (bh / d.nh, bh % d.nh);
        let kvh = h / group;
        let mut out = vec![T::zero(); d.t * hd];
        let mut lse = vec![T::zero(); d.t];
        let mut s = vec![T::zero(); d.s];
        for t in 0..d.t {
            let qo = d.q_str.2 + bi * d.q_str.0 + t * d.q_str.1 + h * hd;
            let qrow = &q[qo..qo + hd];
            let keys = attn_keys(d, ranges, bi, t);
            if keys.count() == 0 {
                lse[t] = T::from_f64(LSE_MASKED as f64);
                continue;
            }
            let mut m = T::from_f64(f64::NEG_INFINITY);
            for j in keys.iter() {
                let ko = d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kvh * hd;
                s[j] = dot(qrow, &k[ko..ko + hd]) * scale;
                m = m.maxv(s[j]);
            }
            let mut l = T::zero();
            for j in keys.iter() {
                s[j] = (s[j] - m).exp();
                l += s[j];
            }
            let orow = &mut out[t * hd..(t + 1) * hd];
            for j in keys.iter() {
                let vo = d.v_str.2 + bi * d.v_str.0 + j * d.v_str.1 + kvh * hd;
                axpy(orow, s[j] / l, &v[vo..vo + hd]);
            }
            lse[t] = m + l.ln();
        }
        (out, lse)
    };
    let parts: Vec<(Vec<T>, Vec<T>)> = (0..d.b * d.nh).into_par_iter().map(head).collect();
    let mut out = vec![T::zero(); d.b * d.t * d.nh * hd];
    let mut lse = vec![T::zero(); d.b * d.nh * d.t];
    for (bh, (o, l)) in parts.into_iter().enumerate() {
        let (bi, h) = (bh / d.nh, bh % d.nh);
        for t in 0..d.t {
            let oo = ((bi * d.t + t) * d.nh + h) * hd;
            out[oo..oo + hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
        }
        lse[bh * d.t..(bh + 1) * d.t].copy_from_slice(&l);
    }
    (out, lse)
}

/// Backward of [`attention_ref`], recomputing probabilities from the saved logsumexp:
///   p_j = exp(s_j - lse),  dp_j = do . v_j,  D = do . o,  ds_j = p_j (dp_j - D)
///   dq = scale sum_j ds_j k_j,  dk_j += scale ds_j q,  dv_j += p_j do
/// Returns dq `(B,T,NH,HD)`, dk and dv `(B,S,NKV,HD)` (dense). Each (batch, kv head) is
/// one task: it owns that kv head's dk and dv and the dq of the query heads sharing it.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_ref<T: Real>(
    d: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    ranges: Option<&[u32]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (hd, group) = (d.hd, d.nh / d.nkv);
    let scale = T::from_f64(d.scale);
    // one (batch, kv head): dq (GROUP, T, HD), dk and dv (S, HD)
    let kv_head = |bk: usize| -> (Vec<T>, Vec<T>, Vec<T>) {
        let (bi, kvh) = (bk / d.nkv, bk % d.nkv);
        let mut dq = vec![T::zero(); group * d.t * hd];
        let mut dk = vec![T::zero(); d.s * hd];
        let mut dv = vec![T::zero(); d.s * hd];
        for g in 0..group {
            let h = kvh * group + g;
            for t in 0..d.t {
                let keys = attn_keys(d, ranges, bi, t);
                let qo = d.q_str.2 + bi * d.q_str.0 + t * d.q_str.1 + h * hd;
                let oo = ((bi * d.t + t) * d.nh + h) * hd;
                let (qrow, dorow) = (&q[qo..qo + hd], &dout[oo..oo + hd]);
                let l = lse[(bi * d.nh + h) * d.t + t];
                let dd = dot(dorow, &o[oo..oo + hd]);
                let dqrow = &mut dq[(g * d.t + t) * hd..(g * d.t + t + 1) * hd];
                for j in keys.iter() {
                    let ko = d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kvh * hd;
                    let vo = d.v_str.2 + bi * d.v_str.0 + j * d.v_str.1 + kvh * hd;
                    let krow = &k[ko..ko + hd];
                    let p = (dot(qrow, krow) * scale - l).exp();
                    let ds = p * (dot(dorow, &v[vo..vo + hd]) - dd);
                    axpy(dqrow, scale * ds, krow);
                    axpy(&mut dk[j * hd..(j + 1) * hd], scale * ds, qrow);
                    axpy(&mut dv[j * hd..(j + 1) * hd], p, dorow);
                }
            }
        }
        (dq, dk, dv)
    };
    let parts: Vec<_> = (0..d.b * d.nkv).into_par_iter().map(kv_head).collect();
    let mut dq = vec![T::zero(); d.b * d.t * d.nh * hd];
    let mut dk = vec![T::zero(); d.b * d.s * d.nkv * hd];
    let mut dv = vec![T::zero(); d.b * d.s * d.nkv * hd];
    for (bk, (gq, gk, gv)) in parts.into_iter().enumerate() {
        let (bi, kvh) = (bk / d.nkv, bk % d.nkv);
        for g in 0..group {
            let h = kvh * group + g;
            for t in 0..d.t {
                let oo = ((bi * d.t + t) * d.nh + h) * hd;
                dq[oo..oo + hd].copy_from_slice(&gq[(g * d.t + t) * hd..(g * d.t + t + 1) * hd]);
            }
        }
        for j in 0..d.s {
            let dense = ((bi * d.s + j) * d.nkv + kvh) * hd;
            dk[dense..dense + hd].copy_from_slice(&gk[j * hd..(j + 1) * hd]);
            dv[dense..dense + hd].copy_from_slice(&gv[j * hd..(j + 1) * hd]);
        }
    }
    (dq, dk, dv)
}

//! The CPU backend: the readable reference. Every function here is a plain loop over
//! contiguous slices (strided only where a view is the point: broadcasting and copies),
//! written so that a reader can check it against the math in its comment. Functions are
//! generic over [`Real`] so that gradient checks can run them in f64. Only matmul is
//! blocked and threaded (see [`matmul`]).

// Reference loops index the way the math is written (x[i], s[j]).
#![allow(clippy::needless_range_loop)]

pub mod matmul;

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use rayon::prelude::*;

use super::{AttnDims, BinaryOp, ReduceOp, UnaryOp, LSE_MASKED};

/// Tensors at least this large run their elementwise and row loops on rayon's threads.
/// Each element (or row) is still computed by exactly one thread in a fixed order, so
/// results do not depend on the thread count.
const PAR_MIN: usize = 1 << 15;
use crate::dtype::DType;
use crate::shape::Layout;
use crate::tensor::CpuData;

/// A float type the reference loops run in (f32, or f64 for gradient checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, p: Self) -> Self;
    fn abs(self) -> Self;
    fn maxv(self, o: Self) -> Self;
    fn minv(self, o: Self) -> Self;
    fn slice(d: &CpuData) -> Option<&[Self]>;
    fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
    /// Matrix multiply: the blocked SIMD path for f32, the reference loops for f64.
    fn gemm(g: &matmul::Gemm, a: &[Self], b: &[Self]) -> Vec<Self>;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
}

macro_rules! impl_real {
    ($t:ty, $dt:expr, $variant:ident, $gemm:path) => {
        impl Real for $t {
            const DTYPE: DType = $dt;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn maxv(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            fn minv(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            fn slice(d: &CpuData) -> Option<&[Self]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuData {
                CpuData::$variant(v)
            }
            fn gemm(g: &matmul::Gemm, a: &[Self], b: &[Self]) -> Vec<Self> {
                $gemm(g, a, b)
            }
        }
    };
}
impl_real!(f32, DType::F32, F32, matmul::gemm_f32);
impl_real!(f64, DType::F64, F64, matmul::gemm_ref);

fn sigmoid<T: Real>(x: T) -> T {
    // 1 / (1 + e^-x), written so that neither branch overflows.
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

// ------------------------------------------------------------------ elementwise

/// y = f(x) elementwise.
pub fn unary<T: Real>(op: UnaryOp, x: &[T]) -> Vec<T> {
    let (p0, p1) = op.params();
    let (p0, p1) = (T::from_f64(p0), T::from_f64(p1));
    let f = |x: T| -> T {
        match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => T::one() / x.sqrt(),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sigmoid => sigmoid(x),
            // log sigmoid(x) = min(x, 0) - log(1 + e^-|x|)
            UnaryOp::LogSigmoid => x.minv(T::zero()) - (-x.abs()).exp().ln_1p(),
            UnaryOp::Relu => x.maxv(T::zero()),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(_) => x.powf(p0),
            UnaryOp::Affine(..) => p0 * x + p1,
        }
    };
    if x.len() >= PAR_MIN {
        return x.par_iter().map(|&v| f(v)).collect();
    }
    x.iter().map(|&v| f(v)).collect()
}

/// dx = g * f'(x), the backward of [`unary`].
pub fn unary_grad<T: Real>(op: UnaryOp, x: &[T], g: &[T]) -> Vec<T> {
    let (p0, _) = op.params();
    let p0 = T::from_f64(p0);
    let half = T::from_f64(0.5);
    let df = |x: T| -> T {
        match op {
            UnaryOp::Neg => -T::one(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => T::one() / x,
            // d sqrt(x) = 1 / (2 sqrt(x))
            UnaryOp::Sqrt => half / x.sqrt(),
            // d x^-1/2 = -1/2 x^-3/2
            UnaryOp::Rsqrt => -half / (x * x.sqrt()),
            // d x s(x) = s + x s (1 - s)
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s + x * s * (T::one() - s)
            }
            UnaryOp::Sigmoid => {
                let s = sigmoid(x);
                s * (T::one() - s)
            }
            // d log s(x) = 1 - s(x) = s(-x)
            UnaryOp::LogSigmoid => sigmoid(-x),
            UnaryOp::Relu => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            UnaryOp::Abs => {
                if x > T::zero() {
                    T::one()
                } else if x < T::zero() {
                    -T::one()
                } else {
                    T::zero()
                }
            }
            // d x^p = p x^(p-1)
            UnaryOp::Powf(_) => p0 * x.powf(p0 - T::one()),
            UnaryOp::Affine(..) => p0,
        }
    };
    if x.len() >= PAR_MIN {
        return x.par_iter().zip(g).map(|(&x, &g)| g * df(x)).collect();
    }
    x.iter().zip(g).map(|(&x, &g)| g * df(x)).collect()
}

fn binary_scalar<T: Real>(op: BinaryOp, a: T, b: T) -> T {
    let flag = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.maxv(b),
        BinaryOp::Min => a.minv(b),
        BinaryOp::Gt => flag(a > b),
        BinaryOp::Ge => flag(a >= b),
        BinaryOp::Lt => flag(a < b),
        BinaryOp::Le => flag(a <= b),
        BinaryOp::Eq => flag(a == b),
    }
}

/// Storage offset of the start of every innermost row of `l` (row-major order), the row
/// length and the inner stride: strided loops walk rows, not elements.
fn rows_of(l: &Layout) -> (Vec<usize>, usize, usize) {
    if l.rank() == 0 {
        return (vec![l.offset], 1, 1);
    }
    let r = l.rank();
    let outer = Layout {
        shape: l.shape[..r - 1].to_vec(),
        strides: l.strides[..r - 1].to_vec(),
        offset: l.offset,
    };
    (outer.indices().collect(), l.shape[r - 1], l.strides[r - 1])
}

/// c = a (op) b, where `la` and `lb` are already broadcast to the output shape.
pub fn binary<T: Real>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    if la.is_contiguous() && lb.is_contiguous() {
        let (a, b) = (
            &a[la.offset..la.offset + la.numel()],
            &b[lb.offset..lb.offset + lb.numel()],
        );
        if a.len() >= PAR_MIN {
            return a
                .par_iter()
                .zip(b)
                .map(|(&x, &y)| binary_scalar(op, x, y))
                .collect();
        }
        return a
            .iter()
            .zip(b)
            .map(|(&x, &y)| binary_scalar(op, x, y))
            .collect();
    }
    let (ra, n, sa) = rows_of(la);
    let (rb, _, sb) = rows_of(lb);
    let mut out = vec![T::zero(); la.numel()];
    if n == 0 {
        return out;
    }
    let row = |(i, o): (usize, &mut [T])| {
        let (oa, ob) = (ra[i], rb[i]);
        for (j, c) in o.iter_mut().enumerate() {
            *c = binary_scalar(op, a[oa + j * sa], b[ob + j * sb]);
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        out.chunks_mut(n).enumerate().for_each(row);
    }
    out
}

/// out = cond != 0 ? a : b, all three broadcast to the output shape.
pub fn where_select<T: Real>(
    c: &[T],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
) -> Vec<T> {
    lc.indices()
        .zip(la.indices())
        .zip(lb.indices())
        .map(|((i, j), k)| if c[i] != T::zero() { a[j] } else { b[k] })
        .collect()
}

/// Copy a strided view into a strided destination of the same shape.
pub fn copy_strided<S: Copy + Send + Sync>(src: &[S], ls: &Layout, dst: &mut [S], ld: &Layout) {
    let (rs, n, ss) = rows_of(ls);
    let (rd, _, sd) = rows_of(ld);
    if n == 0 {
        return;
    }
    if ld.is_contiguous() {
        // rows of a dense destination are disjoint slices: fill them in parallel
        let dense = &mut dst[ld.offset..ld.offset + ld.numel()];
        let fill = |(i, o): (usize, &mut [S])| {
            let base = rs[i];
            if ss == 1 {
                o.copy_from_slice(&src[base..base + n]);
            } else {
                for (j, d) in o.iter_mut().enumerate() {
                    *d = src[base + j * ss];
                }
            }
        };
        if dense.len() >= PAR_MIN {
            dense.par_chunks_mut(n).enumerate().for_each(fill);
        } else {
            dense.chunks_mut(n).enumerate().for_each(fill);
        }
        return;
    }
    for (&s0, &d0) in rs.iter().zip(&rd) {
        for j in 0..n {
            dst[d0 + j * sd] = src[s0 + j * ss];
        }
    }
}

// ------------------------------------------------------------------ reductions

/// Reduce `x` viewed as `(outer, n, inner)` over the middle axis. `Max` also returns the
/// index of the first maximum. Sums accumulate in f64.
pub fn reduce<T: Real>(
    op: ReduceOp,
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
) -> (Vec<T>, Vec<u32>) {
    let mut out = vec![T::zero(); outer * inner];
    let mut idx = Vec::new();
    match op {
        ReduceOp::Sum => {
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0.0f64;
                    for j in 0..n {
                        acc += x[(o * n + j) * inner + i].to_f64();
                    }
                    out[o * inner + i] = T::from_f64(acc);
                }
            }
        }
        ReduceOp::Max => {
            idx = vec![0u32; outer * inner];
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = x[o * n * inner + i];
                    let mut arg = 0;
                    for j in 1..n {
                        let v = x[(o * n + j) * inner + i];
                        if v > best {
                            best = v;
                            arg = j;
                        }
                    }
                    out[o * inner + i] = best;
                    idx[o * inner + i] = arg as u32;
                }
            }
        }
    }
    (out, idx)
}

/// The backward of max along a dim: dx[o, j, i] = g[o, i] if j == argmax[o, i] else 0.
pub fn scatter_dim<T: Real>(g: &[T], idx: &[u32], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut out = vec![T::zero(); outer * n * inner];
    for o in 0..outer {
        for i in 0..inner {
            let j = idx[o * inner + i] as usize;
            out[(o * n + j) * inner + i] = g[o * inner + i];
        }
    }
    out
}

// ------------------------------------------------------------------ softmax

/// Row-wise softmax (or log_softmax) over the last axis of `(rows, n)`.
/// softmax(x)_i = e^(x_i - m) / sum_j e^(x_j - m), m = max_j x_j
pub fn softmax_rows<T: Real>(x: &[T], n: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(yr, xr)| {
            let m = xr.iter().fold(xr[0], |a, &b| a.maxv(b));
            let sum: f64 = xr.iter().map(|&v| (v - m).exp().to_f64()).sum();
            let sum = T::from_f64(sum);
            for (y, &v) in yr.iter_mut().zip(xr) {
                *y = if log {
                    v - m - sum.ln()
                } else {
                    (v - m).exp() / sum
                };
            }
        });
    out
}

// ------------------------------------------------------------------ RMSNorm

/// y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), per row of `(rows, c)`.
/// Returns (y, rstd).
pub fn rmsnorm<T: Real>(x: &[T], w: &[T], c: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let c = c.max(1);
    let rows = x.len() / c;
    let mut y = vec![T::zero(); x.len()];
    let mut rstd = vec![T::zero(); rows];
    y.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|((yr, rs), xr)| {
            let ms: f64 = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / c as f64;
            let r = T::from_f64(1.0 / (ms + eps).sqrt());
            *rs = r;
            for j in 0..c {
                yr[j] = xr[j] * r * w[j];
            }
        });
    (y, rstd)
}

/// Backward of [`rmsnorm`]: with gw = g * w,
/// dx_j = rstd * gw_j - x_j * rstd^3 * mean_i(gw_i * x_i);  dw_j = sum_rows g_j * x_j * rstd.
pub fn rmsnorm_bwd<T: Real>(x: &[T], w: &[T], rstd: &[T], g: &[T], c: usize) -> (Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(g.par_chunks(c))
        .zip(rstd.par_iter())
        .for_each(|(((dxr, xr), gr), &rs)| {
            let dot: f64 = (0..c).map(|j| (gr[j] * w[j] * xr[j]).to_f64()).sum::<f64>() / c as f64;
            let k = T::from_f64(dot) * rs * rs * rs;
            for j in 0..c {
                dxr[j] = rs * gr[j] * w[j] - xr[j] * k;
            }
        });
    // dw_j = sum over rows, accumulated row by row (a fixed order)
    let mut dw = vec![0.0f64; c];
    for (r, &rs) in rstd.iter().enumerate() {
        let (xr, gr) = (&x[r * c..(r + 1) * c], &g[r * c..(r + 1) * c]);
        for j in 0..c {
            dw[j] += (gr[j] * xr[j] * rs).to_f64();
        }
    }
    (dx, dw.into_iter().map(T::from_f64).collect())
}

// ------------------------------------------------------------------ rotary embedding

/// Rotary embedding, HF `rotate_half` convention, on x `(B, T, H, HD)` with tables
/// cos/sin `(B or 1, T, HD)`:
///   y = x * cos + rotate_half(x) * sin,  rotate_half(x) = cat(-x[h:], x[:h]),  h = HD/2.
/// With `backward`, applies the transpose: dx = g * cos + cat((g sin)[h:], -(g sin)[:h]).
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
    table_batched: bool,
    backward: bool,
) -> Vec<T> {
    let half = hd / 2;
    let mut y = vec![T::zero(); x.len()];
    for bi in 0..b {
        for ti in 0..t {
            let tab = ((if table_batched { bi } else { 0 }) * t + ti) * hd;
            let (c, s) = (&cos[tab..tab + hd], &sin[tab..tab + hd]);
            for hi in 0..h {
                let base = ((bi * t + ti) * h + hi) * hd;
                let xr = &x[base..base + hd];
                for i in 0..hd {
                    let v = if !backward {
                        let rot = if i < half {
                            -xr[i + half]
                        } else {
                            xr[i - half]
                        };
                        xr[i] * c[i] + rot * s[i]
                    } else if i < half {
                        xr[i] * c[i] + xr[i + half] * s[i + half]
                    } else {
                        xr[i] * c[i] - xr[i - half] * s[i - half]
                    };
                    y[base + i] = v;
                }
            }
        }
    }
    y
}

// ------------------------------------------------------------------ SwiGLU

/// y = silu(gate) * up.
pub fn swiglu<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.iter()
        .zip(up)
        .map(|(&a, &u)| a * sigmoid(a) * u)
        .collect()
}

/// d gate = g * up * silu'(gate),  d up = g * silu(gate).
pub fn swiglu_bwd<T: Real>(gate: &[T], up: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dgate = vec![T::zero(); gate.len()];
    let mut dup = vec![T::zero(); gate.len()];
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .enumerate()
        .for_each(|(i, (dg, du))| {
            let (a, u, gi) = (gate[i], up[i], g[i]);
            let s = sigmoid(a);
            *dg = gi * u * (s + a * s * (T::one() - s));
            *du = gi * a * s;
        });
    (dgate, dup)
}

// ------------------------------------------------------------------ embedding

/// out[n, :] = w[ids[n], :] for w `(V, C)`. Ids are checked by the caller.
pub fn embedding<T: Real>(w: &[T], ids: &[u32], c: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * c);
    for &id in ids {
        let r = id as usize * c;
        out.extend_from_slice(&w[r..r + c]);
    }
    out
}

/// dw[ids[n], :] += g[n, :]  (scatter-add; repeated ids accumulate).
pub fn embedding_bwd<T: Real>(g: &[T], ids: &[u32], v: usize, c: usize) -> Vec<T> {
    let mut dw = vec![T::zero(); v * c];
    for (n, &id) in ids.iter().enumerate() {
        let r = id as usize * c;
        for j in 0..c {
            dw[r + j] += g[n * c + j];
        }
    }
    dw
}

// ------------------------------------------------------------------ attention

/// Valid keys for query `t` of batch `bi`: `[lo, hi)`.
pub fn attn_key_range(d: &AttnDims, ranges: Option<&[u32]>, bi: usize, t: usize) -> (usize, usize) {
    let (mut lo, mut hi) = (0, d.s);
    if let Some(r) = ranges {
        lo = r[2 * bi] as usize;
        hi = (r[2 * bi + 1] as usize).min(d.s);
    }
    if d.causal {
        hi = hi.min(t + d.s - d.t + 1);
    }
    (lo, hi.max(lo))
}

/// `a . b` with eight partial sums, so the compiler can keep them in one SIMD register.
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
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
fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Causal grouped-query attention, reference loops. Returns out `(B, T, NH, HD)` and the
/// log-sum-exp of the scaled scores `(B, NH, T)` (LSE_MASKED for rows with no key).
///   s_j = scale * q . k_j,  p_j = softmax(s)_j,  o = sum_j p_j v_j,  kv head = h / (NH/NKV)
/// Each (batch, head) is one task on rayon's threads, written to its own buffer and then
/// scattered into place.
pub fn attention<T: Real>(
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
            let (lo, hi) = attn_key_range(d, ranges, bi, t);
            if lo == hi {
                lse[t] = T::from_f64(LSE_MASKED as f64);
                continue;
            }
            let mut m = T::from_f64(f64::NEG_INFINITY);
            for j in lo..hi {
                let ko = d.k_str.2 + bi * d.k_str.0 + j * d.k_str.1 + kvh * hd;
                s[j] = dot(qrow, &k[ko..ko + hd]) * scale;
                m = m.maxv(s[j]);
            }
            let mut l = T::zero();
            for sj in &mut s[lo..hi] {
                *sj = (*sj - m).exp();
                l += *sj;
            }
            let orow = &mut out[t * hd..(t + 1) * hd];
            for j in lo..hi {
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

/// Backward of [`attention`], recomputing probabilities from the saved logsumexp:
///   p_j = exp(s_j - lse),  dp_j = do . v_j,  D = do . o,  ds_j = p_j (dp_j - D)
///   dq = scale sum_j ds_j k_j,  dk_j += scale ds_j q,  dv_j += p_j do
/// Returns dq `(B,T,NH,HD)`, dk and dv `(B,S,NKV,HD)` (dense). Each (batch, kv head) is
/// one task: it owns that kv head's dk and dv and the dq of the query heads sharing it.
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
                let (lo, hi) = attn_key_range(d, ranges, bi, t);
                let qo = d.q_str.2 + bi * d.q_str.0 + t * d.q_str.1 + h * hd;
                let oo = ((bi * d.t + t) * d.nh + h) * hd;
                let (qrow, dorow) = (&q[qo..qo + hd], &dout[oo..oo + hd]);
                let l = lse[(bi * d.nh + h) * d.t + t];
                let dd = dot(dorow, &o[oo..oo + hd]);
                let dqrow = &mut dq[(g * d.t + t) * hd..(g * d.t + t + 1) * hd];
                for j in lo..hi {
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

// ------------------------------------------------------------------ token log-probs

/// Per row of logits `(N, V)`: lp_n = x[n, t_n] - logsumexp(x[n, :]). Rows whose target is
/// negative (ignored) give 0. Returns (lp, lse).
pub fn token_logprobs<T: Real>(x: &[T], targets: &[i32], v: usize) -> (Vec<T>, Vec<T>) {
    let mut lp = vec![T::zero(); targets.len()];
    let mut lse = vec![T::zero(); targets.len()];
    lp.par_iter_mut()
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(n, (lp, lse))| {
            let row = &x[n * v..(n + 1) * v];
            let m = row.iter().fold(row[0], |a, &b| a.maxv(b));
            let sum: f64 = row.iter().map(|&z| (z - m).exp().to_f64()).sum();
            let l = m + T::from_f64(sum.ln());
            *lse = l;
            let t = targets[n];
            if t >= 0 {
                *lp = row[t as usize] - l;
            }
        });
    (lp, lse)
}

/// Backward of [`token_logprobs`]: dx[n, j] = g_n * ([j == t_n] - exp(x[n, j] - lse_n)).
pub fn token_logprobs_bwd<T: Real>(
    x: &[T],
    targets: &[i32],
    lse: &[T],
    g: &[T],
    v: usize,
) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(v.max(1))
        .enumerate()
        .for_each(|(n, row)| {
            let t = targets[n];
            if t < 0 {
                return;
            }
            for j in 0..v {
                let p = (x[n * v + j] - lse[n]).exp();
                let onehot = if j == t as usize { T::one() } else { T::zero() };
                row[j] = g[n] * (onehot - p);
            }
        });
    dx
}

// ------------------------------------------------------------------ AdamW

/// One AdamW step in place, PyTorch semantics (decoupled decay, bias correction):
///   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
///   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count after this update.
    pub step: u32,
}

impl AdamW {
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

pub fn adamw<T: Real>(h: &AdamW, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let (bc1, bc2) = h.bias_corrections();
    let f = |x: f32| T::from_f64(x as f64);
    let (lr, b1, b2, eps, wd) = (f(h.lr), f(h.beta1), f(h.beta2), f(h.eps), f(h.weight_decay));
    let (bc1, bc2) = (f(bc1), f(bc2));
    p.par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .for_each(|(((p, m), v), &g)| {
            *p -= lr * wd * *p;
            *m = b1 * *m + (T::one() - b1) * g;
            *v = b2 * *v + (T::one() - b2) * g * g;
            let denom = (*v / bc2).sqrt() + eps;
            *p -= lr * (*m / bc1) / denom;
        });
}

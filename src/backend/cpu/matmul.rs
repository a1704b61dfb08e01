//! CPU matrix multiply. `gemm_ref` is the plain triple loop (any [`Real`], any strides);
//! `gemm_f32` is the fast path: BLIS-style packing of A into MR-row panels and B into
//! NR-column panels, an FMA micro-kernel held in registers (AVX2 where the CPU has it,
//! portable Rust otherwise), and rayon threads over blocks of output rows. Each output
//! element is summed by one thread in a fixed order, so results do not depend on the
//! number of threads.

use rayon::prelude::*;

use super::Real;

/// A strided matrix operand: element (batch, row, col) lives at
/// `off + batch*sb + row*sr + col*sc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub off: usize,
    pub sb: usize,
    pub sr: usize,
    pub sc: usize,
}

/// C[b] = A[b] (m x k) @ B[b] (k x n), C dense `(batch, m, n)`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
}

/// c[i, j] = sum_p a[i, p] b[p, j], the reference.
pub fn gemm_ref<T: Real>(g: &Gemm, a: &[T], b: &[T]) -> Vec<T> {
    let mut c = vec![T::zero(); g.batch * g.m * g.n];
    c.par_chunks_mut(g.n.max(1))
        .enumerate()
        .for_each(|(row, crow)| {
            let (bi, i) = (row / g.m.max(1), row % g.m.max(1));
            for p in 0..g.k {
                let av = a[g.a.off + bi * g.a.sb + i * g.a.sr + p * g.a.sc];
                let bo = g.b.off + bi * g.b.sb + p * g.b.sr;
                for (j, cv) in crow.iter_mut().enumerate() {
                    *cv += av * b[bo + j * g.b.sc];
                }
            }
        });
    c
}

const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 96;
const NC: usize = 2048;

/// An element the fast path can read as f32: f32 itself, or 16-bit stored weights
/// (widened while packing, so a bf16 model never needs an f32 copy).
pub trait AsF32: Copy + Send + Sync {
    fn as_f32(self) -> f32;
    /// The slice itself when it already is f32 (no widening copy needed).
    fn f32_slice(s: &[Self]) -> Option<&[f32]> {
        let _ = s;
        None
    }
}
impl AsF32 for f32 {
    #[inline(always)]
    fn as_f32(self) -> f32 {
        self
    }
    fn f32_slice(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
}
impl AsF32 for half::f16 {
    fn as_f32(self) -> f32 {
        self.to_f32()
    }
}
impl AsF32 for half::bf16 {
    #[inline(always)]
    fn as_f32(self) -> f32 {
        // bf16 is the top half of an f32 (NaN payloads stay NaN)
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// The fast f32 path (see the module comment).
pub fn gemm_f32<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return vec![0.0; g.batch * m * n];
    }
    if m <= SMALL_M && (g.b.sr == 1 || g.b.sc == 1) && n >= 64 {
        return gemm_small_m(g, a, b);
    }
    let mut c = vec![0.0f32; g.batch * m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let kern = Kernel::detect();
    // Small problems: pack once, no threads.
    let parallel = m * n * k >= 64 * 64 * 64;
    let mut bpack = vec![0.0f32; KC * NC.min(n.div_ceil(NR) * NR)];
    for bi in 0..g.batch {
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_b(g, b, bi, pc, kc, jc, nc, &mut bpack);
                let bp = &bpack[..];
                let work = |(blk, cblock): (usize, &mut [f32])| {
                    let ic = blk * MC;
                    let mc = MC.min(m - ic);
                    let mut apack = [0.0f32; KC * MC];
                    pack_a(g, a, bi, ic, mc, pc, kc, &mut apack);
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let bpanel = &bp[(jr / NR) * KC * NR..];
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let apanel = &apack[(ir / MR) * KC * MR..];
                            let cptr = &mut cblock[ir * n + jc + jr..];
                            kern.run(kc, apanel, bpanel, cptr, n, mr, nr, pc > 0);
                        }
                    }
                };
                if parallel {
                    cb.par_chunks_mut(MC * n).enumerate().for_each(work);
                } else {
                    cb.chunks_mut(MC * n).enumerate().for_each(work);
                }
            }
        }
    }
    c
}

/// Rows at or below which a product is a few matrix-vector products (decoding).
const SMALL_M: usize = 16;
/// Output columns per task in the small-M path.
const SMALL_N_CHUNK: usize = 64;

/// Few rows of A: no packing; threads split the output columns. Each B column (a weight
/// row for x @ W^T) is widened once and dotted with every row of A, or, for a row-major B,
/// whole B rows are scaled into the accumulators. Each output element is still summed by
/// one thread in a fixed order.
fn gemm_small_m<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let simd = Kernel::detect();
    let mut c = vec![0.0f32; g.batch * m * n];
    for bi in 0..g.batch {
        // A rows, contiguous
        let rows: Vec<Vec<f32>> = (0..m)
            .map(|i| {
                (0..k)
                    .map(|p| a[g.a.off + bi * g.a.sb + i * g.a.sr + p * g.a.sc])
                    .collect()
            })
            .collect();
        let bbase = g.b.off + bi * g.b.sb;
        // C^T for this batch: (n, m), split over column chunks
        let mut ct = vec![0.0f32; n * m];
        ct.par_chunks_mut(SMALL_N_CHUNK * m)
            .enumerate()
            .for_each(|(ci, out)| {
                let j0 = ci * SMALL_N_CHUNK;
                let width = out.len() / m;
                let mut col = vec![0.0f32; k];
                if g.b.sr == 1 {
                    simd.col_dots(
                        &rows,
                        &b[bbase + j0 * g.b.sc..],
                        g.b.sc,
                        width,
                        &mut col,
                        out,
                    );
                } else {
                    let mut acc = vec![0.0f32; width * m];
                    let mut brow = vec![0.0f32; width];
                    for p in 0..k {
                        let start = bbase + p * g.b.sr + j0;
                        for (d, v) in brow.iter_mut().zip(&b[start..start + width]) {
                            *d = v.as_f32();
                        }
                        for (i, row) in rows.iter().enumerate() {
                            let av = row[p];
                            for (jj, &bv) in brow.iter().enumerate() {
                                acc[jj * m + i] += av * bv;
                            }
                        }
                    }
                    out.copy_from_slice(&acc);
                }
            });
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        for j in 0..n {
            for i in 0..m {
                cb[i * n + j] = ct[j * m + i];
            }
        }
    }
    c
}

/// Pack B[pc..pc+kc, jc..jc+nc] as panels of NR columns: panel-major, then p, then column.
/// Columns past the edge are zero.
#[allow(clippy::too_many_arguments)]
fn pack_b<B: AsF32>(
    g: &Gemm,
    b: &[B],
    bi: usize,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    out: &mut [f32],
) {
    let base = g.b.off + bi * g.b.sb;
    for (pi, jr) in (0..nc).step_by(NR).enumerate() {
        let nr = NR.min(nc - jr);
        let panel = &mut out[pi * KC * NR..pi * KC * NR + kc * NR];
        if g.b.sr == 1 && g.b.sc != 1 {
            // B is a transposed row-major matrix (x @ W^T): walk each column along k.
            panel.fill(0.0);
            for j in 0..nr {
                let col = base + pc + (jc + jr + j) * g.b.sc;
                for (p, v) in b[col..col + kc].iter().enumerate() {
                    panel[p * NR + j] = v.as_f32();
                }
            }
            continue;
        }
        for p in 0..kc {
            let row = base + (pc + p) * g.b.sr;
            let dst = &mut panel[p * NR..(p + 1) * NR];
            if g.b.sc == 1 {
                let s = row + jc + jr;
                for (d, v) in dst[..nr].iter_mut().zip(&b[s..s + nr]) {
                    *d = v.as_f32();
                }
            } else {
                for j in 0..nr {
                    dst[j] = b[row + (jc + jr + j) * g.b.sc].as_f32();
                }
            }
            dst[nr..].fill(0.0);
        }
    }
}

/// Pack A[ic..ic+mc, pc..pc+kc] as panels of MR rows: panel-major, then p, then row.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    g: &Gemm,
    a: &[f32],
    bi: usize,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    out: &mut [f32],
) {
    let base = g.a.off + bi * g.a.sb;
    for (pi, ir) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - ir);
        let panel = &mut out[pi * KC * MR..pi * KC * MR + kc * MR];
        for r in 0..MR {
            if r >= mr {
                for p in 0..kc {
                    panel[p * MR + r] = 0.0;
                }
                continue;
            }
            let row = base + (ic + ir + r) * g.a.sr + pc * g.a.sc;
            for p in 0..kc {
                panel[p * MR + r] = a[row + p * g.a.sc];
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// AVX2+FMA when the CPU has them and `PONDER_CPU_PORTABLE` is unset; decided once.
    fn detect() -> Kernel {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::env::var("PONDER_CPU_PORTABLE").is_err()
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    return Kernel::Avx2;
                }
            }
            Kernel::Portable
        })
    }

    /// C[0..mr, 0..nr] (row stride ldc) (+)= Apanel (kc x MR) ^T . Bpanel (kc x NR).
    #[allow(clippy::too_many_arguments)]
    fn run(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        mr: usize,
        nr: usize,
        acc: bool,
    ) {
        assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        assert!(c.len() >= (mr - 1) * ldc + nr);
        let mut tile = [[0.0f32; NR]; MR];
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx2+fma; the asserts above bound every pointer read.
            Kernel::Avx2 => unsafe { avx2::kernel(kc, a.as_ptr(), b.as_ptr(), &mut tile) },
            Kernel::Portable => portable_kernel(kc, a, b, &mut tile),
        }
        for r in 0..mr {
            let row = &mut c[r * ldc..r * ldc + nr];
            if acc {
                for (cv, tv) in row.iter_mut().zip(&tile[r][..nr]) {
                    *cv += tv;
                }
            } else {
                row.copy_from_slice(&tile[r][..nr]);
            }
        }
    }
}

/// sum_i x_i y_i with 8 independent partial sums (vectorisable), in a fixed order.
#[inline(always)]
fn dot8(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

/// out[jj * m + i] = rows[i] . widen(b[jj * stride .. + k]) for `width` columns of B.
#[inline(always)]
fn col_dots<B: AsF32>(
    rows: &[Vec<f32>],
    b: &[B],
    stride: usize,
    width: usize,
    col: &mut [f32],
    out: &mut [f32],
    dot4: impl Fn([&[f32]; 4], &[f32]) -> [f32; 4],
) {
    let m = rows.len();
    let k = col.len();
    for jj in 0..width {
        let src = &b[jj * stride..jj * stride + k];
        let col: &[f32] = match B::f32_slice(src) {
            Some(f) => f,
            None => {
                for (d, v) in col.iter_mut().zip(src) {
                    *d = v.as_f32();
                }
                col
            }
        };
        // four rows at a time: four independent accumulator chains share each load of col
        let mut i = 0;
        while i + 4 <= m {
            let d = dot4([&rows[i], &rows[i + 1], &rows[i + 2], &rows[i + 3]], col);
            out[jj * m + i..jj * m + i + 4].copy_from_slice(&d);
            i += 4;
        }
        for (r, row) in rows.iter().enumerate().skip(i) {
            out[jj * m + r] = dot8(row, col);
        }
    }
}

/// Four dot products against one vector, each in the fixed order of [`dot8`].
#[inline(always)]
fn dot8x4(x: [&[f32]; 4], y: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    let n8 = y.len() / 8 * 8;
    for c in (0..n8).step_by(8) {
        let yc = &y[c..c + 8];
        for r in 0..4 {
            let xc = &x[r][c..c + 8];
            for l in 0..8 {
                acc[r][l] += xc[l] * yc[l];
            }
        }
    }
    let mut out = [0.0f32; 4];
    for r in 0..4 {
        let a = &acc[r];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for l in n8..y.len() {
            s += x[r][l] * y[l];
        }
        out[r] = s;
    }
    out
}

impl Kernel {
    fn col_dots<B: AsF32>(
        self,
        rows: &[Vec<f32>],
        b: &[B],
        stride: usize,
        width: usize,
        col: &mut [f32],
        out: &mut [f32],
    ) {
        assert!(width == 0 || b.len() >= (width - 1) * stride + col.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx2+fma; all indexing is bounds-checked.
            Kernel::Avx2 => unsafe { avx2::col_dots(rows, b, stride, width, col, out) },
            Kernel::Portable => col_dots(rows, b, stride, width, col, out, dot8x4),
        }
    }
}

fn portable_kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
    for p in 0..kc {
        let ar: &[f32; MR] = a[p * MR..(p + 1) * MR].try_into().unwrap();
        let br: &[f32; NR] = b[p * NR..(p + 1) * NR].try_into().unwrap();
        for r in 0..MR {
            for j in 0..NR {
                tile[r][j] += ar[r] * br[j];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The portable small-M loop compiled with AVX2/FMA enabled (auto-vectorised).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn col_dots<B: super::AsF32>(
        rows: &[Vec<f32>],
        b: &[B],
        stride: usize,
        width: usize,
        col: &mut [f32],
        out: &mut [f32],
    ) {
        super::col_dots(rows, b, stride, width, col, out, |x, y| unsafe {
            dot4(x, y)
        })
    }

    /// Four dot products against one vector: four FMA chains share each load of y.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4(x: [&[f32]; 4], y: &[f32]) -> [f32; 4] {
        let n = y.len();
        assert!(x.iter().all(|r| r.len() >= n));
        let n8 = n / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < n8 {
            let yv = _mm256_loadu_ps(y.as_ptr().add(c));
            for r in 0..4 {
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r].as_ptr().add(c)), yv, acc[r]);
            }
            c += 8;
        }
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
            let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for l in n8..n {
                s += x[r][l] * y[l];
            }
            out[r] = s;
        }
        out
    }

    /// 6x16 outer-product accumulation: 12 ymm accumulators, 2 loads of B and 6
    /// broadcasts of A per k step.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, tile: &mut [[f32; NR]; MR]) {
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
                cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
            }
        }
        for r in 0..MR {
            _mm256_storeu_ps(tile[r].as_mut_ptr(), c[r][0]);
            _mm256_storeu_ps(tile[r].as_mut_ptr().add(8), c[r][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(off: usize, sb: usize, sr: usize, sc: usize) -> Operand {
        Operand { off, sb, sr, sc }
    }

    #[test]
    fn fast_path_matches_reference_on_awkward_shapes() {
        for &(bt, m, n, k) in &[
            (1, 1, 1, 1),
            (2, 7, 33, 129),
            (1, 97, 17, 300),
            (3, 13, 40, 5),
            (1, 130, 2100, 20),
        ] {
            let a = crate::util::randn_vec(bt * m * k + 3, 1.0, 1);
            let b = crate::util::randn_vec(bt * k * n + 5, 1.0, 2);
            // A transposed in memory, B row-major with an offset.
            let g = Gemm {
                batch: bt,
                m,
                n,
                k,
                a: op(3, m * k, 1, m),
                b: op(5, k * n, n, 1),
            };
            let fast = gemm_f32(&g, &a, &b);
            // and B as the transpose of a row-major (N, K) matrix (x @ W^T)
            let gt = Gemm {
                b: op(5, k * n, 1, k),
                ..g
            };
            let fast_t = gemm_f32(&gt, &a, &b);
            let slow_t = gemm_ref(
                &gt,
                &a.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &b.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            );
            for (x, y) in fast_t.iter().zip(&slow_t) {
                assert!(
                    (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f64).sqrt(),
                    "{bt}x{m}x{n}x{k} (B^T): {x} vs {y}"
                );
            }
            let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
            let slow = gemm_ref(&g, &a64, &b64);
            for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f64).sqrt(),
                    "{bt}x{m}x{n}x{k} at {i}: {x} vs {y}"
                );
            }
        }
    }
}

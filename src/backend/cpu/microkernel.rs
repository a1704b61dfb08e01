//! The GEMM micro-kernels: C[0..MR, 0..NR] (+)= A panel^T . B panel over k, held in
//! registers (AVX-512 or AVX2+FMA where the CPU has them, portable Rust otherwise), plus
//! the matrix-vector loops of few-row products. [`super::matmul`] packs operands for
//! them and splits the work over threads; flash attention calls them on its tiles.

/// Rows of an A panel and columns of a B panel: one micro-kernel tile.
pub(super) const MR: usize = 6;
pub(super) const NR: usize = 16;
/// Weight rows per group of the wide kernels ([`Kernel::rows_tile_wide`] takes 24, 12
/// or 8 of them at a time, against one, two or three panels).
pub(super) const WR: usize = 24;

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

#[derive(Clone, Copy)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 for everything but whole 6x16 tiles, which use one 512-bit register per row:
    /// the same arithmetic (one FMA per element and k step, in k order) in half the
    /// instructions.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    /// AVX2+FMA when the CPU has them and `PONDER_CPU_PORTABLE` is unset; decided once.
    pub(super) fn detect() -> Kernel {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::env::var("PONDER_CPU_PORTABLE").is_err()
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    if std::env::var("PONDER_CPU_NO_AVX512").is_err()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512vl")
                    {
                        return Kernel::Avx512;
                    }
                    return Kernel::Avx2;
                }
            }
            Kernel::Portable
        })
    }

    /// `tile[r][c] += rows[r] . b[:, c]` over k, with the MR "A" rows given as slices (no
    /// packing) and B an NR-column panel (`b[p * NR + c]`): the products are summed in k
    /// order in registers, then added to the tile.
    pub(super) fn rows_tile(
        self,
        k: usize,
        rows: [&[f32]; MR],
        b: &[f32],
        tile: &mut [[f32; NR]; MR],
    ) {
        assert!(rows.iter().all(|r| r.len() >= k) && b.len() >= k * NR);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx2+fma; the assert above bounds every read.
            Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::rows_kernel(k, rows, b, tile) },
            Kernel::Portable => {
                let mut acc = [[0.0f32; NR]; MR];
                for p in 0..k {
                    let br = &b[p * NR..(p + 1) * NR];
                    for (r, t) in acc.iter_mut().enumerate() {
                        let av = rows[r][p];
                        for (tv, &bv) in t.iter_mut().zip(br) {
                            *tv += av * bv;
                        }
                    }
                }
                for (t, a) in tile.iter_mut().zip(&acc) {
                    for (tv, av) in t.iter_mut().zip(a) {
                        *tv += av;
                    }
                }
            }
        }
    }

    /// [`Kernel::rows_tile`] on the first NR / 2 columns of the panel only (a last
    /// panel of A^T with at most 8 live columns): `tile[r][c] += rows[r] . b[:, c]` for
    /// `c < NR / 2`, the rest of the tile untouched. Each element is summed as the full
    /// kernel sums it (one chain in k order), so a row of A gets the same bits in a half
    /// panel as in a whole one; with six chains rather than twelve, at some cost in
    /// speed on the at most eight rows of a last panel.
    pub(super) fn rows_tile_half(
        self,
        k: usize,
        rows: [&[f32]; MR],
        b: &[f32],
        tile: &mut [[f32; NR]; MR],
    ) {
        assert!(rows.iter().all(|r| r.len() >= k) && b.len() >= (k.max(1) - 1) * NR + NR / 2);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx2+fma; the assert above bounds every read.
            Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::rows_kernel_half(k, rows, b, tile) },
            Kernel::Portable => {
                let mut acc = [[0.0f32; NR / 2]; MR];
                for p in 0..k {
                    let br = &b[p * NR..p * NR + NR / 2];
                    for (r, t) in acc.iter_mut().enumerate() {
                        let av = rows[r][p];
                        for (tv, &bv) in t.iter_mut().zip(br) {
                            *tv += av * bv;
                        }
                    }
                }
                for (t, a) in tile.iter_mut().zip(&acc) {
                    for (tv, av) in t.iter_mut().zip(a) {
                        *tv += av;
                    }
                }
            }
        }
    }

    /// Whether [`Kernel::rows_tile_wide`] runs here (AVX-512, not turned off).
    pub(super) fn has_wide(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => true,
            _ => false,
        }
    }

    /// `out[r * ld + c] += w_r . x_c` over k for the R rows `w_r = w[r * stride..][..k]`
    /// of a weight and the `NP * NR` columns of `NP` A^T panels (`panels[q][p * NR + c]`),
    /// summed in k order in registers. R x NP is at most 24 zmm accumulators, so that the
    /// FMA units never wait on one another's results (the 6 x 16 kernels keep at most 12
    /// chains, which on a CPU with two full-width FMA units leaves half of them idle).
    /// With `pf`, each weight row's stream is asked for ahead into L2 (for the first pass
    /// over rows that come from memory). Only on the AVX-512 kernel ([`Kernel::has_wide`]).
    pub(super) fn rows_tile_wide<const R: usize, const NP: usize>(
        self,
        k: usize,
        (w, stride, pf): (&[f32], usize, bool),
        panels: [&[f32]; NP],
        out: &mut [f32],
        ld: usize,
    ) {
        assert!(w.len() >= (R - 1) * stride + k && panels.iter().all(|b| b.len() >= k * NR));
        assert!(out.len() >= (R - 1) * ld + NP * NR);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe {
                avx512::rows_kernel_wide::<R, NP>(
                    k,
                    (w.as_ptr(), stride, pf),
                    panels.map(|b| b.as_ptr()),
                    out.as_mut_ptr(),
                    ld,
                )
            },
            _ => panic!("rows_tile_wide needs the AVX-512 kernel"),
        }
    }

    /// [`Kernel::rows_tile_wide`] for one panel whose live columns are its first NR / 2
    /// (`out[r * ld + c] += w_r . x_c` for `c < NR / 2`; the rest of the row untouched):
    /// 256-bit FMAs, so half the work of the whole panel, with the same sums.
    pub(super) fn rows_tile_wide_half<const R: usize>(
        self,
        k: usize,
        (w, stride, pf): (&[f32], usize, bool),
        panel: &[f32],
        out: &mut [f32],
        ld: usize,
    ) {
        assert!(w.len() >= (R - 1) * stride + k && panel.len() >= (k.max(1) - 1) * NR + NR / 2);
        assert!(out.len() >= (R - 1) * ld + NR / 2);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx512f and avx512vl (and avx2, fma); the asserts
            // above bound every access.
            Kernel::Avx512 => unsafe {
                avx512::rows_kernel_wide_half::<R>(
                    k,
                    (w.as_ptr(), stride, pf),
                    panel.as_ptr(),
                    out.as_mut_ptr(),
                    ld,
                )
            },
            _ => panic!("rows_tile_wide_half needs the AVX-512 kernel"),
        }
    }

    /// Whether this is the AVX2+FMA kernel (callers compile their own loops to match).
    pub(super) fn is_avx2(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => true,
            Kernel::Portable => false,
        }
    }

    /// C[0..mr, 0..nr] (row stride ldc) (+)= Apanel (kc x MR) ^T . Bpanel (kc x NR).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
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
        assert!(c.len() >= (mr - 1) * ldc + nr);
        // SAFETY: c holds the whole tile (asserted); run_raw checks the panels.
        unsafe { self.run_raw(kc, a, b, c.as_mut_ptr(), ldc, mr, nr, acc) }
    }

    /// As [`Kernel::run`], with C as a pointer, for callers whose threads write disjoint
    /// tiles of one matrix.
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of rows `0..mr` (stride `ldc`), columns
    /// `0..nr`, and no other thread may access those elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_raw(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        acc: bool,
    ) {
        assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        assert!((1..=MR).contains(&mr) && (1..=NR).contains(&nr));
        #[cfg(target_arch = "x86_64")]
        if let (Kernel::Avx2, MR, NR) = (self, mr, nr) {
            // a whole tile: the kernel stores (or adds) straight into C
            // SAFETY: detect() checked avx2+fma; the panels are asserted above, C by the caller.
            unsafe { avx2::kernel_to(kc, a.as_ptr(), b.as_ptr(), c, ldc, acc) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let (Kernel::Avx512, MR, NR) = (self, mr, nr) {
            // SAFETY: detect() checked avx512f; the panels are asserted above, C by the caller.
            unsafe { avx512::kernel_to(kc, a.as_ptr(), b.as_ptr(), c, ldc, acc) };
            return;
        }
        let mut tile = [[0.0f32; NR]; MR];
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() checked avx2+fma; the asserts above bound every pointer read.
            Kernel::Avx2 | Kernel::Avx512 => unsafe {
                avx2::kernel(kc, a.as_ptr(), b.as_ptr(), &mut tile)
            },
            Kernel::Portable => portable_kernel(kc, a, b, &mut tile),
        }
        for (r, t) in tile.iter().enumerate().take(mr) {
            // SAFETY: the caller guarantees rows 0..mr x columns 0..nr of C.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), nr) };
            if acc {
                for (cv, tv) in row.iter_mut().zip(&t[..nr]) {
                    *cv += tv;
                }
            } else {
                row.copy_from_slice(&t[..nr]);
            }
        }
    }
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
        // the last one to three rows go through the same four chains, the last row
        // repeated (its copies discarded): on the FMA path too, every row is summed the
        // same way whatever m is, and each load of col still feeds four chains
        if i < m {
            let x: [&[f32]; 4] = std::array::from_fn(|r| &rows[(i + r).min(m - 1)][..]);
            let d = dot4(x, col);
            out[jj * m + i..jj * m + m].copy_from_slice(&d[..m - i]);
        }
    }
}

/// Four dot products against one vector, each with 8 partial sums (vectorisable) added
/// in a fixed order.
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
    pub(super) fn col_dots<B: AsF32>(
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
            Kernel::Avx2 | Kernel::Avx512 => unsafe {
                avx2::col_dots(rows, b, stride, width, col, out)
            },
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
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Weight floats between the k step a wide kernel is on and the one each row's
    /// stream is asked for into L2: four cache lines (about 1,500 cycles of 24 FMAs per
    /// step at one 16-float line each 16 steps). With a few rows of A the products are
    /// as much reading as arithmetic, and the CPU's prefetcher follows 24 streams at a
    /// stride poorly: on an EPYC (Zen 4), 12 and 24 rows of A against weights from
    /// memory went from 74-89 to 101-121 and from 70-118 to 119-133 GFLOP/s.
    const W_AHEAD: usize = 64;

    /// Every 16 k steps (one cache line of each weight row), ask for the line
    /// [`W_AHEAD`] floats on of each of the R rows: beyond the slice, it is the next
    /// slice's start, which the caller reads next.
    #[inline(always)]
    unsafe fn prefetch_rows<const R: usize>(w: *const f32, stride: usize, p: usize) {
        for r in 0..R {
            // a prefetch never faults, so the address may run past the weight's end
            let at = w.wrapping_add(r * stride + p + W_AHEAD);
            _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
        }
    }

    /// R weight rows (broadcast from their own streams) against NP A^T panels: per k
    /// step NP loads, R broadcasts and R x NP FMAs into as many zmm accumulators.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows_kernel_wide<const R: usize, const NP: usize>(
        k: usize,
        (w, stride, pf): (*const f32, usize, bool),
        panels: [*const f32; NP],
        out: *mut f32,
        ld: usize,
    ) {
        const { assert!(NR == 16 && NP * R <= 24) };
        let mut c = [[_mm512_setzero_ps(); NP]; R];
        for p0 in (0..k).step_by(16) {
            if pf {
                prefetch_rows::<R>(w, stride, p0);
            }
            for p in p0..k.min(p0 + 16) {
                let x: [__m512; NP] =
                    std::array::from_fn(|q| _mm512_loadu_ps(panels[q].add(p * NR)));
                for (r, cr) in c.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*w.add(r * stride + p));
                    for q in 0..NP {
                        cr[q] = _mm512_fmadd_ps(a, x[q], cr[q]);
                    }
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            for (q, cq) in cr.iter().enumerate() {
                let at = out.add(r * ld + q * NR);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *cq));
            }
        }
    }

    /// [`rows_kernel_wide`] against the first NR / 2 columns of one panel (a last panel
    /// of A^T with at most 8 live rows of A) in 256-bit registers: half the FMA work of
    /// the whole panel, the same sum per element (one FMA per k step, in k order).
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub unsafe fn rows_kernel_wide_half<const R: usize>(
        k: usize,
        (w, stride, pf): (*const f32, usize, bool),
        panel: *const f32,
        out: *mut f32,
        ld: usize,
    ) {
        const { assert!(NR == 16 && R <= 24) };
        let mut c = [_mm256_setzero_ps(); R];
        for p0 in (0..k).step_by(16) {
            if pf {
                prefetch_rows::<R>(w, stride, p0);
            }
            for p in p0..k.min(p0 + 16) {
                let x = _mm256_loadu_ps(panel.add(p * NR));
                for (r, cr) in c.iter_mut().enumerate() {
                    *cr = _mm256_fmadd_ps(_mm256_set1_ps(*w.add(r * stride + p)), x, *cr);
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            let at = out.add(r * ld);
            _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *cr));
        }
    }

    /// 6x16 outer-product accumulation with one zmm accumulator per row: per k step one
    /// load of B, six broadcasts of A and six FMAs. Stores (or adds) into C.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel_to(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        const { assert!(NR == 16) };
        if acc {
            // C's tile is read once the sums are done: start its rows on their way to L1
            // now, so a long-K product does not stall on every tile it adds into
            for r in 0..MR {
                _mm_prefetch(c.add(r * ldc) as *const i8, _MM_HINT_T0);
                _mm_prefetch(c.add(r * ldc + NR - 1) as *const i8, _MM_HINT_T0);
            }
        }
        let mut t = [_mm512_setzero_ps(); MR];
        for p in 0..kc {
            let bv = _mm512_loadu_ps(b.add(p * NR));
            let ap = a.add(p * MR);
            for (r, tr) in t.iter_mut().enumerate() {
                *tr = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r)), bv, *tr);
            }
        }
        for (r, tr) in t.iter().enumerate() {
            let row = c.add(r * ldc);
            if acc {
                _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), *tr));
            } else {
                _mm512_storeu_ps(row, *tr);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 6x8 accumulation with the six A rows read in place: per k step six broadcasts, one
    /// load of B, six FMAs, each element in one chain as in the 6x16 kernel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_kernel_half(
        k: usize,
        rows: [&[f32]; MR],
        b: &[f32],
        tile: &mut [[f32; NR]; MR],
    ) {
        let mut c = [_mm256_setzero_ps(); MR];
        let ptrs: [*const f32; MR] = std::array::from_fn(|r| rows[r].as_ptr());
        let bp = b.as_ptr();
        for p in 0..k {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            for (r, cr) in c.iter_mut().enumerate() {
                *cr = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ptrs[r].add(p)), b0, *cr);
            }
        }
        for (r, cr) in c.iter().enumerate() {
            let t = tile[r].as_mut_ptr();
            _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), *cr));
        }
    }

    /// 6x16 accumulation with the six A rows read in place: per k step six broadcasts
    /// (one from each row's stream), two loads of B, twelve FMAs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_kernel(k: usize, rows: [&[f32]; MR], b: &[f32], tile: &mut [[f32; NR]; MR]) {
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        let ptrs: [*const f32; MR] = std::array::from_fn(|r| rows[r].as_ptr());
        let bp = b.as_ptr();
        for p in 0..k {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ptrs[r].add(p));
                cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
                cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
            }
        }
        for r in 0..MR {
            let t = tile[r].as_mut_ptr();
            _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), c[r][0]));
            _mm256_storeu_ps(t.add(8), _mm256_add_ps(_mm256_loadu_ps(t.add(8)), c[r][1]));
        }
    }

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

    /// As [`kernel`], storing the 6x16 result into C (row stride ldc), or adding it to
    /// what C holds when `acc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_to(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        let mut t = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (r, tr) in t.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                tr[0] = _mm256_fmadd_ps(av, b0, tr[0]);
                tr[1] = _mm256_fmadd_ps(av, b1, tr[1]);
            }
        }
        for (r, tr) in t.iter().enumerate() {
            let row = c.add(r * ldc);
            if acc {
                // c + tile, the same single rounding as the tile path's `c += tile`
                _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), tr[0]));
                _mm256_storeu_ps(
                    row.add(8),
                    _mm256_add_ps(_mm256_loadu_ps(row.add(8)), tr[1]),
                );
            } else {
                _mm256_storeu_ps(row, tr[0]);
                _mm256_storeu_ps(row.add(8), tr[1]);
            }
        }
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

    /// Every micro-kernel this CPU can run, the portable one first.
    fn kernels() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                k.push(Kernel::Avx2);
                if is_x86_feature_detected!("avx512f") {
                    k.push(Kernel::Avx512);
                }
            }
        }
        k
    }

    #[test]
    fn every_kernel_on_this_cpu_matches_the_portable_one() {
        let kc = 37;
        let a = crate::util::randn_vec(kc * MR, 1.0, 3);
        let b = crate::util::randn_vec(kc * NR, 1.0, 4);
        let c0 = crate::util::randn_vec(MR * 20, 1.0, 5);
        let rows: Vec<Vec<f32>> = (0..MR)
            .map(|r| crate::util::randn_vec(kc, 1.0, 6 + r as u64))
            .collect();
        let rows_ref: [&[f32]; MR] = std::array::from_fn(|r| &rows[r][..]);
        let ks = kernels();
        println!("kernels on this cpu: {}", ks.len());
        let mut want: Vec<Vec<f32>> = Vec::new();
        for (i, kern) in ks.iter().enumerate() {
            let mut got = Vec::new();
            // whole and partial tiles, stored and accumulated, in a C of row stride 20
            for (mr, nr, acc) in [
                (MR, NR, false),
                (MR, NR, true),
                (4, 9, false),
                (1, 16, true),
            ] {
                let mut c = c0.clone();
                kern.run(kc, &a, &b, &mut c, 20, mr, nr, acc);
                got.push(c);
            }
            let mut tile = [[0.5f32; NR]; MR];
            kern.rows_tile(kc, rows_ref, &b, &mut tile);
            got.push(tile.concat());
            // the half kernel: the first NR / 2 columns, odd and even k
            for kh in [kc, kc - 1] {
                let mut half = [[0.5f32; NR]; MR];
                kern.rows_tile_half(kh, rows_ref, &b, &mut half);
                // and the same bits as the whole panel's kernel in those columns
                let mut whole = [[0.5f32; NR]; MR];
                kern.rows_tile(kh, rows_ref, &b, &mut whole);
                for r in 0..MR {
                    for c in 0..NR {
                        if c < NR / 2 {
                            assert_eq!(
                                half[r][c].to_bits(),
                                whole[r][c].to_bits(),
                                "kernel {i} half, k {kh}, ({r}, {c}): not the whole kernel's bits"
                            );
                        }
                        let want: f64 = if c < NR / 2 {
                            0.5 + (0..kh)
                                .map(|p| rows[r][p] as f64 * b[p * NR + c] as f64)
                                .sum::<f64>()
                        } else {
                            0.5
                        };
                        let got = half[r][c] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "kernel {i} half, k {kh}, ({r}, {c}): {got} vs {want}"
                        );
                    }
                }
            }
            if i == 0 {
                want = got;
                continue;
            }
            for (x, y) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "kernel {i}: {x} vs {y}"
                );
            }
        }
    }

    /// `out[r * ld + q * NR + c] + w_r . panel_q[:, c]`, summed plainly in f64.
    fn wide_want(
        k: usize,
        w: &[f32],
        stride: usize,
        rows: usize,
        panels: &[&[f32]],
        out: &[f32],
        ld: usize,
    ) -> Vec<f64> {
        let mut want: Vec<f64> = out.iter().map(|&x| x as f64).collect();
        for r in 0..rows {
            for (q, b) in panels.iter().enumerate() {
                for c in 0..NR {
                    let dot: f64 = (0..k)
                        .map(|p| w[r * stride + p] as f64 * b[p * NR + c] as f64)
                        .sum();
                    want[r * ld + q * NR + c] += dot;
                }
            }
        }
        want
    }

    #[test]
    fn the_wide_kernels_add_their_products_to_the_tile() {
        let Some(kern) = kernels().into_iter().find(|k| k.has_wide()) else {
            println!("skipped: this CPU has no AVX-512 (the wide kernels need it)");
            return;
        };
        let (k, stride, ld) = (37, 41, 3 * NR + 5);
        let w = crate::util::randn_vec(24 * stride, 1.0, 11);
        let p: Vec<Vec<f32>> = (0..3)
            .map(|q| crate::util::randn_vec(k * NR, 1.0, 12 + q))
            .collect();
        let out0 = crate::util::randn_vec(24 * ld, 1.0, 15);
        let check = |rows: usize, np: usize, got: &[f32]| {
            let panels: Vec<&[f32]> = p.iter().take(np).map(|v| &v[..]).collect();
            let want = wide_want(k, &w, stride, rows, &panels, &out0, ld);
            for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*x as f64 - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{rows}x{np} at {i}: {x} vs {y}"
                );
            }
        };
        let mut out = out0.clone();
        kern.rows_tile_wide::<24, 1>(k, (&w, stride, true), [&p[0]], &mut out, ld);
        check(24, 1, &out);
        let mut out = out0.clone();
        kern.rows_tile_wide::<12, 2>(k, (&w, stride, false), [&p[0], &p[1]], &mut out, ld);
        check(12, 2, &out);
        let mut out = out0.clone();
        kern.rows_tile_wide::<8, 3>(k, (&w, stride, true), [&p[0], &p[1], &p[2]], &mut out, ld);
        check(8, 3, &out);
        // the half-width kernel: the panel's first NR / 2 columns, the rest untouched
        let mut out = out0.clone();
        kern.rows_tile_wide_half::<24>(k, (&w, stride, true), &p[0], &mut out, ld);
        let want = wide_want(k, &w, stride, 24, &[&p[0]], &out0, ld);
        for (i, (x, y)) in out.iter().zip(&want).enumerate() {
            if i % ld < NR / 2 {
                assert!(
                    (*x as f64 - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "half at {i}"
                );
            } else {
                assert_eq!(x.to_bits(), out0[i].to_bits(), "half wrote {i}");
            }
        }
        // and the same bits as the whole panel's kernel in those columns
        let mut whole = out0.clone();
        kern.rows_tile_wide::<24, 1>(k, (&w, stride, false), [&p[0]], &mut whole, ld);
        for i in (0..24 * ld).filter(|i| i % ld < NR / 2) {
            assert_eq!(out[i].to_bits(), whole[i].to_bits(), "half vs whole at {i}");
        }
    }
}

//! The skinny path of the CPU matrix multiply: few rows of A (decoding's 1 to 96, up to
//! 384) against B = W^T with W row-major f32, a linear layer's weight read in place. Also
//! the same A against several weights in one pass ([`skinny_many`]: a layer's q, k and v
//! projections, or its gate and up projections), which packs A once and wakes the
//! threads once.
//!
//! Every kernel here (the wide AVX-512 ones, the 6-row ones, the few-row one, and their
//! half-panel forms) sums an output element the same way: in [`k_step`] steps, each a
//! chain in k order from zero (fused multiply-adds where the CPU has them), each step's
//! sum added to the steps before. So a row of A gets the same bits whatever the number
//! of rows beside it, and a decoding row's tokens do not depend on the pool's size.

use std::mem::MaybeUninit;

use super::gemm::{assume_init, assume_init_vec, uninit, Gemm, SharedOut};
use super::microkernel::{Kernel, MR, NR, WR};

mod few;
pub(super) use few::gemm_few;

/// Rows of A that [`products`] takes at once: up to MC rows it beats the wide path,
/// which repacks the weight on every call: 96 x 1536 x 576 at 172-187 against 90-143
/// GFLOP/s, the 96-row LM head at 175 against 144-149 (decoding a pool of 96 rows).
pub(super) const SKINNY_M: usize = 96;
/// Below this many rows of A a padded 16-column panel would waste most of its work:
/// [`few_rows`] takes them instead, with the same sums.
pub(super) const SKINNY_MIN_M: usize = 8;
/// Rows of A up to which [`gemm_skinny`] takes f32 products with a transposed B, in
/// blocks of at most [`SKINNY_M`] rows ([`row_blocks`]). Past SKINNY_M the blocked path
/// splits few row blocks poorly over the threads: x 1536 x 576 over 30 weights (from
/// memory) at 97 rows 65 against 160 GFLOP/s here, at 288 rows 115 against 185. From
/// about 400 rows on the two are even (640 x 576 x 576: 199 against 194), and the
/// blocked path leads at a prefill's 3468 rows (4.1-4.4 against 4.4-4.7 s over 48
/// prompts).
pub(super) const SKINNY_CAP: usize = 4 * SKINNY_M;

/// Whether an `m x k` by `k x n` product with B = W^T (W row-major) takes the skinny
/// path. Every row count from 1 to [`SKINNY_CAP`] does, whatever the size, so that a
/// row's results hold the same bits however many rows share its product (a decoding
/// pool's rows, whatever its size or how far it has drained).
pub fn applies(m: usize, n: usize, k: usize) -> bool {
    (1..=SKINNY_CAP).contains(&m) && n >= MR && k > 0
}

/// One weight of a skinny product: its row `j < n` is `w[off + j * stride..][..k]` (f32,
/// or 16-bit for [`gemm_few`]).
#[derive(Clone, Copy)]
pub struct WeightRows<'a, B = f32> {
    pub w: &'a [B],
    pub off: usize,
    pub stride: usize,
    pub n: usize,
}

/// Few rows of A against B = W^T with W row-major f32 (a linear layer while decoding):
/// computed as C^T = W A^T, so that the weight is read in place and never packed. A^T is
/// packed once per block of rows as NR-column panels (the rows of A, zero-padded to a
/// multiple of NR), and
/// the micro-kernel takes its MR "A" rows straight from MR rows of W, each a contiguous
/// stream. Threads split W's rows; each output element is one dot product summed in k
/// order by one thread.
pub(super) fn gemm_skinny(g: &Gemm, a: &[f32], w: &[f32]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    // C and A^T are written in full below, so neither is zeroed first (at decode sizes
    // the two memsets cost a twentieth of the product)
    let mut c = uninit(g.batch * m * n);
    for (bi, cb) in c.chunks_exact_mut(m * n).enumerate() {
        let rows = WeightRows {
            w,
            off: g.b.off + bi * g.b.sb,
            stride: g.b.sc,
            n,
        };
        let a = (a, g.a.off + bi * g.a.sb, g.a.sr, g.a.sc);
        by_blocks(m, k, a, &[rows], &mut [cb]);
    }
    // SAFETY: by_blocks wrote every element of each batch's C.
    unsafe { assume_init_vec(c) }
}

/// `x @ W^T` for every weight of `ws` (x row-major `(m, k)`, dense), as one pass: A^T is
/// packed once and every weight's rows are split over the threads together. Each result
/// holds the same bits as [`gemm_skinny`] on that weight alone (every output element is
/// the same one dot product, summed in k order). The caller checks [`applies`] for each.
pub fn skinny_many(x: &[f32], m: usize, k: usize, ws: &[WeightRows]) -> Vec<Vec<f32>> {
    assert_eq!(x.len(), m * k, "skinny_many: x is not (m, k)");
    let mut outs: Vec<Vec<MaybeUninit<f32>>> = ws.iter().map(|r| uninit(m * r.n)).collect();
    let mut views: Vec<&mut [MaybeUninit<f32>]> = outs.iter_mut().map(|c| &mut c[..]).collect();
    by_blocks(m, k, (x, 0, k, 1), ws, &mut views);
    // SAFETY: by_blocks wrote every element of every output.
    outs.into_iter()
        .map(|c| unsafe { assume_init_vec(c) })
        .collect()
}

/// C_i = A W_i^T into `outs[i]` (`(m, n_i)` row-major, every element written), A's
/// element (i, p) at `a[off + i * sr + p * sc]`: [`products`] over A's rows in
/// [`row_blocks`], each block's A^T packed in turn.
fn by_blocks(
    m: usize,
    k: usize,
    (a, off, sr, sc): (&[f32], usize, usize, usize),
    ws: &[WeightRows],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    if m < SKINNY_MIN_M {
        few::few_rows(m, k, (a, off, sr, sc), ws, outs);
        return;
    }
    let mut at = uninit(m.min(SKINNY_M).div_ceil(NR) * k * NR);
    for (i0, mb) in row_blocks(m) {
        let at = &mut at[..mb.div_ceil(NR) * k * NR];
        pack_at(mb, k, a, (off + i0 * sr, sr, sc), at);
        // SAFETY: pack_at wrote every element of `at`.
        let at: &[f32] = unsafe { assume_init(at) };
        let shared: Vec<SharedOut> = outs
            .iter_mut()
            .zip(ws)
            .map(|(c, r)| {
                let cb = &mut c[i0 * r.n..(i0 + mb) * r.n];
                SharedOut(cb.as_mut_ptr().cast(), cb.len())
            })
            .collect();
        products(mb, k, at, ws, &shared);
    }
}

/// Blocks `(first row, rows)` of A that [`products`] takes one at a time: as few as
/// keep each within [`SKINNY_M`] rows, of equal size (the last one shorter by less than
/// one row per block).
fn row_blocks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = m.div_ceil(m.div_ceil(SKINNY_M).max(1)).max(1);
    (0..m).step_by(per).map(move |i0| (i0, per.min(m - i0)))
}

/// A^T as NR-column panels: element (p, i) of panel q at `q*k*NR + p*NR + i%NR`, rows
/// past m zero, from A's element (i, p) at `a[off + i * sr + p * sc]`. Rows of A with
/// unit stride along k are transposed in 8 x 8 blocks in AVX registers where the CPU has
/// them. The panels are split over the threads: A was written by the op before, on both
/// threads, and packing it on one left the other waiting for it (1% of a decoding run's
/// time, on each thread).
fn pack_at(
    m: usize,
    k: usize,
    a: &[f32],
    (off, sr, sc): (usize, usize, usize),
    at: &mut [MaybeUninit<f32>],
) {
    let at_ = |i: usize, p: usize| if i < m { a[off + i * sr + p * sc] } else { 0.0 };
    let k8 = if sc == 1 && super::vmath::has_avx2() {
        k / 8 * 8
    } else {
        0
    };
    let panels = m.div_ceil(NR);
    assert_eq!(
        at.len(),
        panels * k * NR,
        "pack_at: A^T is not m x k in panels"
    );
    let dst = super::threads::Disjoint::new(at);
    let pack = |q: usize| {
        // SAFETY: panel q's own k * NR elements, inside `at` (asserted), for this task
        // alone.
        let panel = unsafe { dst.part(q * k * NR, k * NR) };
        #[cfg(target_arch = "x86_64")]
        for half in 0..NR / 8 {
            let i0 = q * NR + half * 8;
            let rows: [Option<&[f32]>; 8] = std::array::from_fn(|r| {
                (i0 + r < m).then(|| &a[off + (i0 + r) * sr..off + (i0 + r) * sr + k8])
            });
            if k8 > 0 {
                // SAFETY: k8 > 0 only where has_avx2() saw AVX2.
                unsafe { avx2::transpose_rows(&rows, k8, &mut panel[half * 8..]) };
            }
        }
        for i in q * NR..(q + 1) * NR {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate().skip(k8) {
                dst[i % NR] = MaybeUninit::new(at_(i, p));
            }
        }
    };
    super::threads::par_for(panels, pack);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `dst[p * NR + r] = rows[r][p]` for p < k8 (a multiple of 8) and r < 8 (a missing
    /// row is zero): eight rows of A transposed, 8 x 8 at a time, into a panel of A^T whose
    /// rows are NR = 16 apart.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_rows(
        rows: &[Option<&[f32]>; 8],
        k8: usize,
        dst: &mut [MaybeUninit<f32>],
    ) {
        assert!(k8.is_multiple_of(8) && rows.iter().flatten().all(|r| r.len() >= k8));
        assert!(k8 == 0 || dst.len() >= (k8 - 1) * NR + 8);
        for p0 in (0..k8).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|i| match rows[i] {
                // SAFETY: p0 + 8 <= k8 <= row.len() (asserted).
                Some(row) => unsafe { _mm256_loadu_ps(row.as_ptr().add(p0)) },
                None => _mm256_setzero_ps(),
            });
            let dst: *mut f32 = dst.as_mut_ptr().cast();
            for (p, c) in transpose8(r).iter().enumerate() {
                // SAFETY: (p0 + 7) * NR + 8 <= dst.len() (asserted); MaybeUninit<f32> is
                // f32's layout.
                unsafe { _mm256_storeu_ps(dst.add((p0 + p) * NR), *c) };
            }
        }
    }

    /// C's columns `j..j + MR` of rows `i0..i0 + rows` (row stride `n`) from a tile of C^T:
    /// `c[(i0 + r) * n + j + w] = tile[w][r]` for r < `rows` (at most NR), w < MR, with
    /// `c = dst.sub(i0 * n + j)`: two stores per row rather than MR.
    ///
    /// # Safety
    /// Those `rows x MR` elements of C must be valid for writes by this thread alone.
    #[target_feature(enable = "avx2")]
    pub unsafe fn scatter_tile(tile: &[[f32; NR]; MR], rows: usize, dst: *mut f32, n: usize) {
        const { assert!(MR == 6 && NR == 16) };
        for half in 0..rows.div_ceil(8) {
            let r: [__m256; 8] = std::array::from_fn(|w| {
                if w < MR {
                    // SAFETY: half * 8 + 8 <= NR floats of the tile row.
                    unsafe { _mm256_loadu_ps(tile[w].as_ptr().add(half * 8)) }
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (p, col) in transpose8(r).iter().enumerate().take(rows - half * 8) {
                // SAFETY: the caller's rows x MR elements of C (MR = 4 + 2 stored here).
                unsafe {
                    let at = dst.add((half * 8 + p) * n);
                    _mm_storeu_ps(at, _mm256_castps256_ps128(*col));
                    let high = _mm_castps_pd(_mm256_extractf128_ps::<1>(*col));
                    _mm_storel_pd(at.add(4).cast(), high);
                }
            }
        }
    }

    /// `c[i * n + r] = acc[r * ld + i]` for r < `rows` (a multiple of 8) and i < `m`
    /// (`ld` at least `m` rounded up to 8): 8 x 8 blocks through registers.
    ///
    /// # Safety
    /// Those `m x rows` elements of C must be valid for writes by this thread alone.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_into(
        acc: &[f32],
        ld: usize,
        rows: usize,
        m: usize,
        c: *mut f32,
        n: usize,
    ) {
        assert!(rows.is_multiple_of(8) && ld >= m.div_ceil(8) * 8 && acc.len() >= rows * ld);
        for r0 in (0..rows).step_by(8) {
            for i0 in (0..m).step_by(8) {
                // SAFETY: (r0 + a) * ld + i0 + 8 <= rows * ld <= acc.len() (asserted).
                let x: [__m256; 8] = std::array::from_fn(|a| unsafe {
                    _mm256_loadu_ps(acc.as_ptr().add((r0 + a) * ld + i0))
                });
                for (b, col) in transpose8(x).iter().enumerate().take(m - i0) {
                    // SAFETY: row i0 + b < m of C, columns r0..r0 + 8 <= rows: the
                    // caller's.
                    unsafe { _mm256_storeu_ps(c.add((i0 + b) * n + r0), *col) };
                }
            }
        }
    }

    /// The 8 x 8 transpose: `out[p]` holds `r[0][p], ..., r[7][p]`.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }
}

/// C_i = A W_i^T for every weight, into `outs[i]` (`(m, n_i)`, every element written),
/// from A^T packed by [`pack_at`]. Tasks are runs of consecutive rows of one weight, cut
/// so that every thread takes several.
fn products(m: usize, k: usize, at: &[f32], ws: &[WeightRows], outs: &[SharedOut]) {
    let kern = Kernel::detect();
    let panels = m.div_ceil(NR);
    // W rows per task: several MR groups, enough tasks for every thread to take a few
    let tasks = 8 * rayon::current_num_threads().max(1);
    let grp = if kern.has_wide() { WR } else { MR };
    let total: usize = ws.iter().map(|r| r.n).sum();
    let rows_per = (total.div_ceil(tasks).div_ceil(grp) * grp).max(grp);
    let units: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, r)| (0..r.n.div_ceil(rows_per)).map(move |ti| (wi, ti)))
        .collect();
    super::threads::par_for(units.len(), |u| {
        let (wi, ti) = units[u];
        let (r, shared) = (&ws[wi], outs[wi]);
        let (n, w, stride) = (r.n, r.w, r.stride);
        let (j0, j1) = (ti * rows_per, ((ti + 1) * rows_per).min(n));
        let mut jg = j0;
        // blocks of whole WR-row groups on the wide kernel where the CPU has it, straight
        // into C's columns j0..jg
        let wide = if kern.has_wide() {
            (j1 - j0) / WR * WR
        } else {
            0
        };
        while jg - j0 < wide {
            let rows = ((j0 + wide - jg) / WR).min(WIDE_GROUPS) * WR;
            let wrows = &w[r.off + jg * stride..];
            wide_rows(kern, k, (wrows, stride, rows), at, m, (shared, n, jg));
            jg += rows;
        }
        for jg in (jg..j1).step_by(MR) {
            let live = MR.min(j1 - jg);
            // MR rows of W; a short last group repeats its last row (discarded)
            let rows: [&[f32]; MR] = std::array::from_fn(|i| {
                let at = r.off + (jg + i.min(live - 1)) * stride;
                &w[at..at + k]
            });
            // k in steps, so that each step's A^T panel stays in L1
            let mut tiles = [[[0.0f32; NR]; MR]; SKINNY_M / NR];
            for pc in (0..k).step_by(k_step(k)) {
                let kc = k_step(k).min(k - pc);
                let rows_pc: [&[f32]; MR] = std::array::from_fn(|i| &rows[i][pc..pc + kc]);
                for (q, tile) in tiles.iter_mut().enumerate().take(panels) {
                    let panel = &at[q * k * NR + pc * NR..(q + 1) * k * NR];
                    // a last panel of at most NR / 2 live rows of A: half the work
                    if m - q * NR <= NR / 2 {
                        kern.rows_tile_half(kc, rows_pc, panel, tile);
                    } else {
                        kern.rows_tile(kc, rows_pc, panel, tile);
                    }
                }
            }
            // the tiles hold C^T (weight row i, A row q*NR + c): C's row q*NR + c gets
            // `live` consecutive columns from jg
            for (q, tile) in tiles.iter().enumerate().take(panels) {
                let rows = NR.min(m - q * NR);
                #[cfg(target_arch = "x86_64")]
                if live == MR && kern.is_avx2() {
                    // bounds: the first and the last of the rows
                    let first = shared.tile(q * NR * n + jg, MR);
                    shared.tile((q * NR + rows - 1) * n + jg, MR);
                    // SAFETY: AVX2 (is_avx2); the rows' MR columns from jg are in bounds
                    // (checked above) and this task's alone.
                    unsafe { avx2::scatter_tile(tile, rows, first, n) };
                    continue;
                }
                for c in 0..rows {
                    let dst = shared.tile((q * NR + c) * n + jg, live);
                    for (i, trow) in tile.iter().enumerate().take(live) {
                        // SAFETY: in bounds (checked by tile); tasks own disjoint columns.
                        unsafe { *dst.add(i) = trow[c] };
                    }
                }
            }
        }
    });
}

/// C's columns `j0..j0 + rows` (`rows` a multiple of WR; C row-major, row stride `ldc`) from as
/// many consecutive weight rows (`w[r * stride..][..k]`) against every A^T panel of `at`
/// (`m` columns, zero-padded to whole panels). Each group of WR = 24 weight rows meets
/// the panels in sets of three, two or one, on the kernel with 24 accumulators for that
/// set (8 rows x 3 panels, 12 x 2, 24 x 1). k runs in steps, and within a step each
/// panel set meets every weight group in turn, so the set stays in L1 and the groups'
/// slices in L2 (a set per group would fetch all of A^T from L2 for every group). A last
/// panel with at most NR / 2 live rows meets each group on its own, in 256-bit registers
/// (half the work of a whole panel: with 69 rows of A, 72 columns are computed instead
/// of 80). The sums, C^T, are transposed into C in 8 x 8 blocks.
fn wide_rows(
    kern: Kernel,
    k: usize,
    (w, stride, rows): (&[f32], usize, usize),
    at: &[f32],
    m: usize,
    (c, ldc, j0): (SharedOut, usize, usize),
) {
    let panels = m.div_ceil(NR);
    let (ld, groups) = (panels * NR, rows / WR);
    // a last panel with at most NR / 2 live rows of A runs on its own, at half width
    let half = (1..=NR / 2).contains(&(m % NR));
    let full = panels - usize::from(half);
    // panel sets: threes, and a last two (or two twos for four), or a lone one
    let mut sets = Vec::new();
    let mut q = 0;
    while q < full {
        let left = full - q;
        let n = if left == 4 || left == 2 {
            2
        } else {
            left.min(3)
        };
        sets.push((q, n));
        q += n;
    }
    let step = k_step(k);
    let mut acc = vec![0.0f32; groups * WR * ld];
    // k step `pc` for weight groups `gs`: each set of panels meets every group in turn
    let mut run = |pc: usize, gs: std::ops::Range<usize>| {
        let kc = step.min(k - pc);
        let panel = |q: usize| &at[q * k * NR + pc * NR..(q + 1) * k * NR];
        // the first pass over this step's weight slices reads them from memory: it asks
        // for each row's stream ahead; the later passes find them in L2
        for (si, &(q, n)) in sets.iter().enumerate() {
            for g in gs.clone() {
                for sub in 0..WR * n / 24 {
                    let r0 = g * WR + sub * (24 / n);
                    let (rows, o) = (&w[r0 * stride + pc..], &mut acc[r0 * ld + q * NR..]);
                    let wr = (rows, stride, si == 0);
                    match n {
                        1 => kern.rows_tile_wide::<24, 1>(kc, wr, [panel(q)], o, ld),
                        2 => kern.rows_tile_wide::<12, 2>(kc, wr, [panel(q), panel(q + 1)], o, ld),
                        _ => kern.rows_tile_wide::<8, 3>(
                            kc,
                            wr,
                            [panel(q), panel(q + 1), panel(q + 2)],
                            o,
                            ld,
                        ),
                    }
                }
            }
        }
        if half {
            for g in gs {
                let r0 = g * WR;
                let (rows, o) = (&w[r0 * stride + pc..], &mut acc[r0 * ld + full * NR..]);
                let wr = (rows, stride, sets.is_empty());
                kern.rows_tile_wide_half::<WR>(kc, wr, panel(full), o, ld);
            }
        }
    };
    if panels == 1 {
        // a lone panel (at most NR rows of A, 36 KiB over a 576-wide k) is cheap to
        // read again: each weight group takes all its k steps before the next, so its
        // rows stream from memory in one sweep rather than one slice per pass over all
        // groups. The same steps, so the same sums.
        for g in 0..groups {
            for pc in (0..k).step_by(step) {
                run(pc, g..g + 1);
            }
        }
    } else {
        for pc in (0..k).step_by(step) {
            run(pc, 0..groups);
        }
    }
    // C[i][j0 + r] = acc[r][i]: the first and the last element bound the block
    let first = c.tile(j0, rows);
    c.tile((m - 1) * ldc + j0, rows);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the wide kernels run only on AVX-512 CPUs, which have AVX2; rows of
        // C 0..m at columns j0..j0 + rows are in bounds (checked above) and this task's
        // alone.
        unsafe { avx2::transpose_into(&acc, ld, rows, m, first, ldc) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (r, arow) in acc.chunks_exact(ld).enumerate() {
        for (i, &x) in arow[..m].iter().enumerate() {
            // SAFETY: in bounds (checked above); tasks own disjoint columns.
            unsafe { *first.add(i * ldc + r) = x };
        }
    }
}

/// The longest k step of the skinny path: three 16-column panels of 192 steps are 36 KiB.
const KC_WIDE: usize = 192;

/// The k range of every skinny kernel (wide, 6-row and few-row) split into equal steps of
/// at most [`KC_WIDE`]: each output element is summed step by step, in k order within a
/// step from zero, each step's sum then added to those before. One rule for all of them,
/// so that an element's bits do not depend on which kernel took it.
fn k_step(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC_WIDE).max(1)).max(1)
}
/// Weight groups per call of [`wide_rows`]: 96 rows x 192 steps is 72 KiB of L2.
const WIDE_GROUPS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of A gets the same bits whatever the number of rows beside it (1 to
    /// SKINNY_CAP: the few-row kernel, one panel or several, a half-width last panel or
    /// not, one block of rows or several), on whole groups of WR weight rows (the wide
    /// kernels where the CPU has AVX-512) and on a weight whose last rows take the 6-row
    /// kernels, over a k of uneven steps: a decoding row's logits do not depend on how
    /// many rows share its step.
    #[test]
    fn a_row_gets_the_same_bits_with_any_row_count() {
        let (k, ns) = (600, [8 * WR, 2 * WR, 2 * WR + 5]);
        let x = crate::util::randn_vec(SKINNY_CAP * k, 1.0, 91);
        let ws: Vec<Vec<f32>> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| crate::util::randn_vec(n * k, 0.5, 92 + i as u64))
            .collect();
        let rows: Vec<WeightRows> = ws
            .iter()
            .zip(ns)
            .map(|(w, n)| WeightRows {
                w,
                off: 0,
                stride: k,
                n,
            })
            .collect();
        // every row alone
        let alone: Vec<Vec<Vec<f32>>> = (0..SKINNY_CAP)
            .map(|i| skinny_many(&x[i * k..(i + 1) * k], 1, k, &rows))
            .collect();
        let ms = (1..=9).chain([12, 16, 17, 24, 40, SKINNY_M, SKINNY_M + 1, 200, SKINNY_CAP]);
        for m in ms {
            let got = skinny_many(&x[..m * k], m, k, &rows);
            for (wi, g) in got.iter().enumerate() {
                let n = ns[wi];
                for (i, want) in alone.iter().enumerate().take(m) {
                    let row = &g[i * n..(i + 1) * n];
                    let diff = (0..n).find(|&e| row[e].to_bits() != want[wi][e].to_bits());
                    assert!(
                        diff.is_none(),
                        "weight {wi}: row {i} of {m} differs from the row alone at {diff:?}"
                    );
                }
            }
        }
    }
}

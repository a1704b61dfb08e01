//! The skinny path's few-row kernel: fewer than [`SKINNY_MIN_M`] rows of A against
//! B = W^T, with the other skinny kernels' sums (see the parent module), so that a row of
//! A gets the same bits here as among more rows.

use std::mem::MaybeUninit;

use super::super::gemm::{assume_init_vec, uninit, Gemm, SharedOut};
use super::super::microkernel::{AsF32, Kernel};
use super::{k_step, WeightRows, SKINNY_MIN_M};

/// Weight rows per task of [`few_rows`].
const FEW_BLOCK: usize = 256;
/// Weight rows per call of the few-row kernel, at most.
const FEW_MAX: usize = 16;

/// Sets of eight weight rows that the few-row kernel takes at once for `m` rows of A
/// (each row of A and set is one chain of FMAs): two up to four rows, for more chains at
/// once; four sets were no faster from memory, their 32 weight rows being read as 32
/// strands.
fn few_sets(m: usize) -> usize {
    match m {
        1..=4 => 2,
        _ => 1,
    }
}

/// C_i = A W_i^T into `outs[i]` for fewer than [`SKINNY_MIN_M`] rows of A, as
/// the parent's `by_blocks` says: eight weight rows at a time are transposed in registers and meet
/// every row of A, so each weight row is read once and no A^T panel is padded. Each
/// element is summed as the panel kernels sum it ([`k_step`] steps, each a chain in k
/// order from zero, added in turn), so a row of A gets the same bits here as among more
/// rows. Threads split each weight's rows in blocks of [`FEW_BLOCK`].
pub(super) fn few_rows<B: AsF32>(
    m: usize,
    k: usize,
    (a, off, sr, sc): (&[f32], usize, usize, usize),
    ws: &[WeightRows<B>],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    assert!((1..SKINNY_MIN_M).contains(&m));
    // A's rows, dense
    let ad: Vec<f32> = (0..m)
        .flat_map(|i| (0..k).map(move |p| a[off + i * sr + p * sc]))
        .collect();
    let kern = Kernel::detect();
    let step = k_step(k);
    let units: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, r)| (0..r.n.div_ceil(FEW_BLOCK)).map(move |u| (wi, u)))
        .collect();
    let shared: Vec<SharedOut> = outs
        .iter_mut()
        .map(|c| SharedOut(c.as_mut_ptr().cast(), c.len()))
        .collect();
    // weight rows per kernel call: with few rows of A, several sets of eight, so that
    // enough independent FMA chains run at once
    let wide = 8 * few_sets(m);
    crate::backend::cpu::threads::par_for(units.len(), |u| {
        let (wi, ui) = units[u];
        let (r, c) = (&ws[wi], shared[wi]);
        let (j0, j1) = (ui * FEW_BLOCK, ((ui + 1) * FEW_BLOCK).min(r.n));
        // 16-bit weight rows are widened here first, `wide` at a time
        let mut widened = Vec::new();
        for jb in (j0..j1).step_by(wide) {
            let live = wide.min(j1 - jb);
            let row = |i: usize| {
                let at = r.off + (jb + i) * r.stride;
                &r.w[at..at + k]
            };
            if B::f32_slice(r.w).is_none() {
                widened.clear();
                widened.extend((0..live).flat_map(|i| row(i).iter().map(|x| x.as_f32())));
            }
            // a short last block repeats its last row (discarded)
            let rows: [&[f32]; FEW_MAX] = std::array::from_fn(|i| {
                let i = i.min(live - 1);
                match B::f32_slice(row(i)) {
                    Some(f) => f,
                    None => &widened[i * k..(i + 1) * k],
                }
            });
            let mut tile = [[0.0f32; FEW_MAX]; SKINNY_MIN_M - 1];
            #[cfg(target_arch = "x86_64")]
            if kern.is_avx2() {
                // SAFETY: is_avx2() saw AVX2 and FMA; `ad` holds m rows of k and every
                // row of `rows` k floats.
                unsafe { avx2::few_rows(m, k, step, &ad, rows, &mut tile) };
            } else {
                few_rows_portable(m, k, step, &ad, rows, &mut tile);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = kern;
                few_rows_portable(m, k, step, &ad, rows, &mut tile);
            }
            for (i, t) in tile.iter().enumerate().take(m) {
                let dst = c.tile(i * r.n + jb, live);
                for (e, &x) in t.iter().enumerate().take(live) {
                    // SAFETY: in bounds (checked by tile); tasks own disjoint columns.
                    unsafe { *dst.add(e) = x };
                }
            }
        }
    });
}

/// `A @ W^T` for fewer than [`SKINNY_MIN_M`] rows of A with a 16-bit W (B = W^T, batched
/// as `g` says): [`few_rows`] on the widened weight rows, so the sums are those of an f32
/// copy of the weight.
pub(in crate::backend::cpu) fn gemm_few<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mut c = uninit(g.batch * m * n);
    for (bi, cb) in c.chunks_exact_mut(m * n).enumerate() {
        let rows = WeightRows {
            w: b,
            off: g.b.off + bi * g.b.sb,
            stride: g.b.sc,
            n,
        };
        let a = (a, g.a.off + bi * g.a.sb, g.a.sr, g.a.sc);
        few_rows(m, k, a, &[rows], &mut [cb]);
    }
    // SAFETY: few_rows wrote every element of each batch's C.
    unsafe { assume_init_vec(c) }
}

/// [`avx2::few_rows`] without SIMD: the portable panel kernels' sums (a product, then an
/// add), in the same order.
fn few_rows_portable(
    m: usize,
    k: usize,
    step: usize,
    a: &[f32],
    w: [&[f32]; FEW_MAX],
    tile: &mut [[f32; FEW_MAX]; SKINNY_MIN_M - 1],
) {
    for (i, t) in tile.iter_mut().enumerate().take(m) {
        for (r, x) in t.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for p0 in (0..k).step_by(step) {
                let mut s = 0.0f32;
                for p in p0..(p0 + step).min(k) {
                    s += w[r][p] * a[i * k + p];
                }
                acc += s;
            }
            *x = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::avx2::transpose8;
    use std::arch::x86_64::*;

    /// `tile[i][r] = a_i . w[r]` for rows i < m (< 8) of `a` (`m x k`, dense) and the
    /// first `8 * few_sets(m)` weight rows of `w`, summed in `step`s: within a step one
    /// FMA chain in k order from zero, then added to the steps before (the panel
    /// kernels' sums). Eight k at a time, each set of eight weight rows is transposed
    /// 8 x 8 so that a vector holds one k of all eight and meets a broadcast element of
    /// each row of A.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn few_rows(
        m: usize,
        k: usize,
        step: usize,
        a: &[f32],
        w: [&[f32]; super::FEW_MAX],
        tile: &mut [[f32; super::FEW_MAX]; 7],
    ) {
        // SAFETY (each arm): as this function's.
        unsafe {
            match m {
                1 => few::<1, 2>(k, step, a, w, tile),
                2 => few::<2, 2>(k, step, a, w, tile),
                3 => few::<3, 2>(k, step, a, w, tile),
                4 => few::<4, 2>(k, step, a, w, tile),
                5 => few::<5, 1>(k, step, a, w, tile),
                6 => few::<6, 1>(k, step, a, w, tile),
                7 => few::<7, 1>(k, step, a, w, tile),
                _ => panic!("few_rows: {m} rows"),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn few<const M: usize, const NB: usize>(
        k: usize,
        step: usize,
        a: &[f32],
        w: [&[f32]; super::FEW_MAX],
        tile: &mut [[f32; super::FEW_MAX]; 7],
    ) {
        assert!(M <= 7 && NB == super::few_sets(M) && step > 0 && a.len() >= M * k);
        assert!(w.iter().take(8 * NB).all(|r| r.len() >= k));
        let ap = a.as_ptr();
        let wp: [[*const f32; 8]; NB] =
            std::array::from_fn(|set| std::array::from_fn(|r| w[set * 8 + r].as_ptr()));
        // (an address only asked for, never read: a prefetch does not fault)
        let next = w[0].as_ptr().wrapping_add(8 * NB * k);
        let mut acc = [[_mm256_setzero_ps(); M]; NB];
        let mut p0 = 0;
        while p0 < k {
            let p1 = (p0 + step).min(k);
            let mut c = [[_mm256_setzero_ps(); M]; NB];
            let mut p = p0;
            // SAFETY (the loads): p + 8 <= p1 <= k, inside every weight row, and
            // i * k + p + t < M * k <= a.len().
            while p + 8 <= p1 {
                // the next call's weight rows (the 8 * NB after these, where rows are
                // contiguous) into L2, four lines per set for each eight k: they stream
                // in in order rather than as 8 * NB strands (x 1536 x 576 over 30 weights
                // from memory, 1 row of A: 8 -> 12 GFLOP/s; into L1 they evicted each
                // other)
                for l in 0..4 * NB {
                    let at = next.wrapping_add((p / 8 * 4 * NB + l) * 16);
                    _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
                }
                for set in 0..NB {
                    let q = &wp[set];
                    // (no closure here: one would not inherit the target features)
                    let cols = transpose8([
                        _mm256_loadu_ps(q[0].add(p)),
                        _mm256_loadu_ps(q[1].add(p)),
                        _mm256_loadu_ps(q[2].add(p)),
                        _mm256_loadu_ps(q[3].add(p)),
                        _mm256_loadu_ps(q[4].add(p)),
                        _mm256_loadu_ps(q[5].add(p)),
                        _mm256_loadu_ps(q[6].add(p)),
                        _mm256_loadu_ps(q[7].add(p)),
                    ]);
                    for (t, col) in cols.iter().enumerate() {
                        for i in 0..M {
                            let x = _mm256_broadcast_ss(&*ap.add(i * k + p + t));
                            c[set][i] = _mm256_fmadd_ps(x, *col, c[set][i]);
                        }
                    }
                }
                p += 8;
            }
            while p < p1 {
                for (set, cs) in c.iter_mut().enumerate() {
                    let r = &w[set * 8..set * 8 + 8];
                    let col = _mm256_setr_ps(
                        r[0][p], r[1][p], r[2][p], r[3][p], r[4][p], r[5][p], r[6][p], r[7][p],
                    );
                    for (i, ci) in cs.iter_mut().enumerate() {
                        *ci = _mm256_fmadd_ps(_mm256_set1_ps(a[i * k + p]), col, *ci);
                    }
                }
                p += 1;
            }
            for (sa, sc) in acc.iter_mut().zip(&c) {
                for (s, ci) in sa.iter_mut().zip(sc) {
                    *s = _mm256_add_ps(*s, *ci);
                }
            }
            p0 = p1;
        }
        for (set, sa) in acc.iter().enumerate() {
            for (t, s) in tile.iter_mut().zip(sa) {
                // SAFETY: eight floats of the tile row, from set * 8 + 8 <= FEW_MAX.
                unsafe { _mm256_storeu_ps(t.as_mut_ptr().add(set * 8), *s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms of the kernel (the portable one, which CI's x86 machines never take
    /// otherwise, and the AVX2 one where the CPU has it) against the sums in f64, for
    /// every row count, with k in several steps and a tail in each.
    #[test]
    fn the_kernels_match_f64_sums() {
        let (k, step) = (37, 16);
        let a = crate::util::randn_vec(7 * k, 1.0, 51);
        let w = crate::util::randn_vec(FEW_MAX * k, 1.0, 52);
        let rows: [&[f32]; FEW_MAX] = std::array::from_fn(|r| &w[r * k..(r + 1) * k]);
        for m in 1..SKINNY_MIN_M {
            let mut tiles = vec![[[f32::NAN; FEW_MAX]; SKINNY_MIN_M - 1]];
            few_rows_portable(m, k, step, &a, rows, &mut tiles[0]);
            #[cfg(target_arch = "x86_64")]
            if Kernel::detect().is_avx2() {
                let mut t = [[f32::NAN; FEW_MAX]; SKINNY_MIN_M - 1];
                // SAFETY: is_avx2() saw AVX2 and FMA; `a` holds 7 rows of k.
                unsafe { avx2::few_rows(m, k, step, &a, rows, &mut t) };
                tiles.push(t);
            }
            for (ti, tile) in tiles.iter().enumerate() {
                // the AVX2 kernel fills the first 8 * few_sets(m) columns
                let cols = if ti == 0 { FEW_MAX } else { 8 * few_sets(m) };
                for (i, trow) in tile.iter().enumerate().take(m) {
                    for (r, &got) in trow.iter().enumerate().take(cols) {
                        let want: f64 = (0..k)
                            .map(|p| a[i * k + p] as f64 * w[r * k + p] as f64)
                            .sum();
                        assert!(
                            (got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                            "kernel {ti}, {m} rows: ({i}, {r}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

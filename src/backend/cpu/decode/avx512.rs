//! [`super::task`]'s two passes over the cache in 512-bit registers, where the CPU has
//! AVX-512: the same sums in the same order as [`super::avx2`]'s (so the same bits), with
//! each key's bytes loaded once for all the query heads that share it, and each value row
//! once per set of heads.

use super::avx2::{reduce8, Piece};
use std::arch::x86_64::*;

/// Head-dim floats per pass over a block of values: four vectors per head.
pub const PIECE: usize = 64;

/// Lanes 0-7 plus lanes 8-15.
#[inline(always)]
unsafe fn halves(x: __m512) -> __m256 {
    _mm256_add_ps(
        _mm512_castps512_ps256(x),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
    )
}

/// [`super::avx2::dots8`] for the `H` query heads `q[h]` that read the same eight keys:
/// `dst[h][i] = (q[h] . keys[i]) * scale`. Each 16-float step of a dot holds the avx2
/// pass's two chains side by side (its even 8-float chunks in lanes 0-7, its odd ones in
/// lanes 8-15), so the halves' sum and the tree give the same bits. Per step, 8 + H
/// loads feed 8 x H fused multiply-adds (the avx2 pass: 10 loads for 8). `hd` is a
/// multiple of 16, every pointer reads `hd` floats and every `dst[h]` takes 8.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn dots8_heads<const H: usize>(
    hd: usize,
    q: [*const f32; H],
    keys: [*const f32; 8],
    scale: f32,
    dst: [*mut f32; H],
) {
    const { assert!(H >= 1 && H <= 3) };
    debug_assert!(hd.is_multiple_of(16));
    let mut acc = [[_mm512_setzero_ps(); 8]; H];
    for c in (0..hd).step_by(16) {
        let qv: [__m512; H] = std::array::from_fn(|h| _mm512_loadu_ps(q[h].add(c)));
        for (j, key) in keys.iter().enumerate() {
            let x = _mm512_loadu_ps(key.add(c));
            for h in 0..H {
                acc[h][j] = _mm512_fmadd_ps(qv[h], x, acc[h][j]);
            }
        }
    }
    let sc = _mm256_set1_ps(scale);
    for h in 0..H {
        let sums: [__m256; 8] = std::array::from_fn(|j| halves(acc[h][j]));
        _mm256_storeu_ps(dst[h], _mm256_mul_ps(reduce8(sums), sc));
    }
}

/// [`super::avx2::pv_sets`] in 512-bit registers, `hd` a multiple of [`PIECE`]: per
/// element the same fused multiply-adds in the same (row) order, so the same bits, with
/// each row's piece of values loaded once per set of up to three heads.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn pv_block(
    n: usize,
    v: &[f32],
    stride: usize,
    hd: usize,
    group: usize,
    w: &[f32],
    ws: usize,
    o: &mut [f32],
) {
    // SAFETY: this function's features are the width's.
    unsafe { super::avx2::pv_sets::<Zmm>(n, v, stride, hd, group, w, ws, o) }
}

struct Zmm;

impl Piece for Zmm {
    const PIECE: usize = PIECE;

    #[inline(always)]
    unsafe fn run<const H: usize>(
        n: usize,
        v: *const f32,
        stride: usize,
        w: [*const f32; H],
        o: [*mut f32; H],
    ) {
        let mut acc: [[__m512; 4]; H] =
            std::array::from_fn(|h| std::array::from_fn(|c| _mm512_loadu_ps(o[h].add(16 * c))));
        for j in 0..n {
            let row = v.add(j * stride);
            let x: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(row.add(16 * c)));
            for h in 0..H {
                let a = _mm512_set1_ps(*w[h].add(j));
                for c in 0..4 {
                    acc[h][c] = _mm512_fmadd_ps(a, x[c], acc[h][c]);
                }
            }
        }
        for h in 0..H {
            for c in 0..4 {
                _mm512_storeu_ps(o[h].add(16 * c), acc[h][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kernels give the avx2 pass's bits, on a CPU with AVX-512 (else they are not
    /// used, and the test says so).
    #[test]
    fn the_512_bit_passes_give_the_avx2_bits() {
        if !crate::backend::cpu::vmath::has_avx512() {
            eprintln!("skipped: no AVX-512 on this CPU (the 512-bit passes never run)");
            return;
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for hd in [16, 64, 128] {
            // eight keys at a stride, three query heads
            let stride = 3 * hd + 5;
            let k = crate::util::randn_vec(8 * stride, 1.5, 81 + hd as u64);
            let q = crate::util::randn_vec(3 * hd, 1.5, 82 + hd as u64);
            let keys: [*const f32; 8] = std::array::from_fn(|j| k[j * stride..].as_ptr());
            let mut want = vec![f32::NAN; 24];
            for h in 0..3 {
                // SAFETY: the test runs the avx2 pass only where AVX-512 (so AVX2 and
                // FMA) is; every key and query reads hd floats.
                unsafe {
                    super::super::avx2::dots8(&q[h * hd..][..hd], keys, 0.125, &mut want[8 * h..])
                };
            }
            let qp = |h: usize| q[h * hd..].as_ptr();
            // three heads at once, then two and one (each into its own poisoned buffer)
            let (mut got3, mut got2, mut got1) =
                (vec![f32::NAN; 24], vec![f32::NAN; 16], vec![f32::NAN; 8]);
            let (g3, g2, g1) = (got3.as_mut_ptr(), got2.as_mut_ptr(), got1.as_mut_ptr());
            // SAFETY: has_avx512() holds; the pointers read hd floats and write 8.
            unsafe {
                dots8_heads::<3>(
                    hd,
                    [qp(0), qp(1), qp(2)],
                    keys,
                    0.125,
                    [g3, g3.add(8), g3.add(16)],
                );
                dots8_heads::<2>(hd, [qp(1), qp(2)], keys, 0.125, [g2, g2.add(8)]);
                dots8_heads::<1>(hd, [qp(0)], keys, 0.125, [g1]);
            }
            assert_eq!(bits(&got3), bits(&want), "dots of 3 heads, hd {hd}");
            assert_eq!(bits(&got2), bits(&want[8..]), "dots of 2 heads, hd {hd}");
            assert_eq!(bits(&got1), bits(&want[..8]), "dots of 1 head, hd {hd}");
            if !hd.is_multiple_of(PIECE) {
                continue;
            }
            // values: 37 rows of two kv heads, seven query heads each (sets of 3, 3, 1)
            let (n, group, nh) = (37, 7, 14);
            let vstride = 2 * hd + 3;
            let v = crate::util::randn_vec(n * vstride, 1.0, 83 + hd as u64);
            let ws = n + 2;
            let w = crate::util::randn_vec(nh * ws, 0.3, 84 + hd as u64);
            let o0 = crate::util::randn_vec(nh * hd, 1.0, 85 + hd as u64);
            let (mut want, mut got) = (o0.clone(), o0);
            // SAFETY: as above; the slices hold what the passes assert.
            unsafe {
                super::super::avx2::pv_block(n, &v, vstride, hd, group, &w, ws, &mut want);
                pv_block(n, &v, vstride, hd, group, &w, ws, &mut got);
            }
            assert_eq!(bits(&got), bits(&want), "values, hd {hd}");
        }
    }
}

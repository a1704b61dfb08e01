//! [`super::task`]'s two passes over the cache in AVX2 registers: the same sums in the same order
//! as its `dot` and `axpy` loops (so the same bits), with fewer instructions per key.

use std::arch::x86_64::*;

/// Head-dim floats per pass over a block of values: four vectors per head.
pub const PIECE: usize = 32;

/// Lane i of the result is `((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))` for
/// x = v[i]: the tree that ends `dot_avx2`, for eight vectors at once.
#[inline(always)]
pub(super) unsafe fn reduce8(v: [__m256; 8]) -> __m256 {
    // halves added ([v.lo + v.hi] per vector), then pairs of lanes, then neighbours;
    // the inputs are taken in the order that brings the sums out as v[0..8]
    let a = [v[0], v[4], v[1], v[5], v[2], v[6], v[3], v[7]];
    let half = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(x, y),
            _mm256_permute2f128_ps::<0x31>(x, y),
        )
    };
    let (w0, w1, w2, w3) = (
        half(a[0], a[1]),
        half(a[2], a[3]),
        half(a[4], a[5]),
        half(a[6], a[7]),
    );
    let pairs = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    };
    let (x0, x1) = (pairs(w0, w1), pairs(w2, w3));
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(x0, x1),
        _mm256_shuffle_ps::<0b11_01_11_01>(x0, x1),
    )
}

/// `dst[i] = (q . keys[i]) * scale` for eight keys, each dot summed as `dot_avx2`
/// sums it (even and odd 8-float chunks in two chains, a lone last chunk to the
/// first, then the tree). `q.len()` is a multiple of 8, and each key points at
/// `q.len()` readable floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dots8(q: &[f32], keys: [*const f32; 8], scale: f32, dst: &mut [f32]) {
    let n = q.len();
    assert!(n.is_multiple_of(8) && dst.len() >= 8);
    let mut sums = [_mm256_setzero_ps(); 8];
    // SAFETY: every load reads 8 floats at i + 8 <= n of q and of each key.
    unsafe {
        for quad in 0..2 {
            let kp = [0, 1, 2, 3].map(|r| keys[quad * 4 + r]);
            let (mut s0, mut s1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            let mut i = 0;
            while i + 16 <= n {
                let (q0, q1) = (
                    _mm256_loadu_ps(q.as_ptr().add(i)),
                    _mm256_loadu_ps(q.as_ptr().add(i + 8)),
                );
                for r in 0..4 {
                    s0[r] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(kp[r].add(i)), s0[r]);
                    s1[r] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(kp[r].add(i + 8)), s1[r]);
                }
                i += 16;
            }
            if i + 8 <= n {
                let q0 = _mm256_loadu_ps(q.as_ptr().add(i));
                for r in 0..4 {
                    s0[r] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(kp[r].add(i)), s0[r]);
                }
            }
            for r in 0..4 {
                sums[quad * 4 + r] = _mm256_add_ps(s0[r], s1[r]);
            }
        }
        let dots = _mm256_mul_ps(reduce8(sums), _mm256_set1_ps(scale));
        _mm256_storeu_ps(dst.as_mut_ptr(), dots);
    }
}

/// One width's pass over a block of values for a set of `H` heads of one kv head and
/// [`Piece::PIECE`] floats of the head dim: `o[h][..PIECE] += sum_j w[h][j] v_j[..PIECE]`
/// over rows j < n of `v` (row j at `j * stride`), each element's products added in j
/// order, one fused multiply-add each, as the scalar `axpy` loop adds them.
pub(super) trait Piece {
    const PIECE: usize;
    /// # Safety
    /// The CPU has the width's instructions; rows 0..n of `v` hold PIECE floats, each
    /// `w[h]` n values and each `o[h]` PIECE floats.
    unsafe fn run<const H: usize>(
        n: usize,
        v: *const f32,
        stride: usize,
        w: [*const f32; H],
        o: [*mut f32; H],
    );
}

/// `o[h] += sum_j w[h][j] v_j[h / group]` over the `n` cached rows of `v` (row j at
/// `j * stride`, kv head g's values at `g * hd`), for the heads of `o` (`nh * hd`),
/// with head h's weights at `w[h * ws..]`, in `P`'s registers. Heads go in sets of up
/// to three and the head dim in pieces of `P::PIECE`, so that the sums stay in twelve
/// registers while a set passes over the rows.
///
/// # Safety
/// The CPU has `P`'s instructions.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn pv_sets<P: Piece>(
    n: usize,
    v: &[f32],
    stride: usize,
    hd: usize,
    group: usize,
    w: &[f32],
    ws: usize,
    o: &mut [f32],
) {
    let nh = o.len() / hd;
    assert!(n > 0 && hd.is_multiple_of(P::PIECE) && nh.is_multiple_of(group));
    assert!(v.len() >= (n - 1) * stride + nh / group * hd);
    assert!(w.len() >= (nh - 1) * ws + n);
    let ob = o.as_mut_ptr();
    let mut h0 = 0;
    while h0 < nh {
        // a set of heads never spans two kv heads
        let set = 3.min(group - h0 % group);
        let kvo = h0 / group * hd;
        for c in (0..hd).step_by(P::PIECE) {
            let vp = v[kvo + c..].as_ptr();
            let wp = |h: usize| w[(h0 + h) * ws..].as_ptr();
            // SAFETY: (h0 + h) * hd + c + PIECE <= nh * hd <= o.len().
            let op = |h: usize| unsafe { ob.add((h0 + h) * hd + c) };
            // SAFETY: the caller's instructions; rows 0..n of vp hold PIECE floats at
            // j * stride (asserted above), the weights n values, and each head's output
            // PIECE floats.
            unsafe {
                match set {
                    1 => P::run::<1>(n, vp, stride, [wp(0)], [op(0)]),
                    2 => P::run::<2>(n, vp, stride, [wp(0), wp(1)], [op(0), op(1)]),
                    _ => P::run::<3>(n, vp, stride, [wp(0), wp(1), wp(2)], [op(0), op(1), op(2)]),
                }
            }
        }
        h0 += set;
    }
}

/// [`pv_sets`] in 256-bit registers (four per head and piece).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
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
    unsafe { pv_sets::<Ymm>(n, v, stride, hd, group, w, ws, o) }
}

struct Ymm;

impl Piece for Ymm {
    const PIECE: usize = PIECE;

    #[inline(always)]
    unsafe fn run<const H: usize>(
        n: usize,
        v: *const f32,
        stride: usize,
        w: [*const f32; H],
        o: [*mut f32; H],
    ) {
        let mut acc: [[__m256; 4]; H] =
            std::array::from_fn(|h| std::array::from_fn(|c| _mm256_loadu_ps(o[h].add(8 * c))));
        // the weights in H registers and one vector of the row at a time: with twelve
        // sums that is all sixteen registers, so no sum is spilled to the stack
        for j in 0..n {
            let row = v.add(j * stride);
            let a: [__m256; H] = std::array::from_fn(|h| _mm256_set1_ps(*w[h].add(j)));
            for c in 0..4 {
                let x = _mm256_loadu_ps(row.add(8 * c));
                for h in 0..H {
                    acc[h][c] = _mm256_fmadd_ps(a[h], x, acc[h][c]);
                }
            }
        }
        for h in 0..H {
            for c in 0..4 {
                _mm256_storeu_ps(o[h].add(8 * c), acc[h][c]);
            }
        }
    }
}

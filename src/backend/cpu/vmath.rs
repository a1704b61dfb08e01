//! Elementwise math written so that the compiler vectorises it: straight-line f32
//! arithmetic and selects, no calls into libm. Used by the hot loops (flash attention's
//! softmax tiles) inside functions compiled for AVX2, where a loop over a slice of these
//! becomes 8-wide code.

/// e^x in f32, within 2 ulp of the exact value over the whole range (denormals and
/// overflow to inf included); NaN stays NaN.
///
/// x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (plus rounding), so e^x = 2^n e^r. ln2 is split
/// in two (Cody-Waite) so that r is exact to f32, e^r is a degree-6 polynomial (Cephes'
/// expf coefficients), and 2^n is built from exponent bits in two halves so that n may
/// reach the denormal range without a special case.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // outside [-104, 89] the result is 0 or inf anyway; comparisons keep NaN as it is
    let x = x.clamp(-104.0, 89.0);
    // round to nearest by the 1.5 * 2^23 trick (no libm call where SSE4.1 is off)
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n as 2^a * 2^b, a = n / 2, b = n - a, each a normal f32 for n in [-150, 129].
    // n is integral: adding 1.5 * 2^23 puts it in the low mantissa bits, which reads it
    // out without a saturating float-to-int conversion (that would stop vectorisation).
    let ni = (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
    let a = ni >> 1;
    let b = ni - a;
    let pa = f32::from_bits(((a + 127) as u32) << 23);
    let pb = f32::from_bits(((b + 127) as u32) << 23);
    y * pa * pb
}

/// `a * b + c`: one fused instruction where the caller is compiled with FMA (`FMA`),
/// two rounded ones otherwise (a software fma would be far slower than either).
#[inline(always)]
pub fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// 2^x for the log2-scaled scores of a softmax (x <= 0 but for rounding): exactly 0 for
/// x < -126, else within 2 ulp (degree-7 Taylor polynomial of 2^f on |f| <= 1/2, with
/// 2^n from exponent bits); NaN stays NaN. Cheaper than [`exp`]: no range split of ln 2
/// and no denormal results.
#[inline(always)]
pub fn exp2_softmax<const FMA: bool>(x: f32) -> f32 {
    const L: [f32; 8] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        5.550_411e-2,
        9.618_129e-3,
        1.333_355_8e-3,
        1.540_353e-4,
        1.525_273_4e-5,
    ];
    let xc = if x < -126.0 { -126.0 } else { x };
    let xc = if xc > 127.0 { 127.0 } else { xc };
    let n = (xc + 12_582_912.0) - 12_582_912.0;
    let f = xc - n;
    let mut p = L[7];
    for c in L[..7].iter().rev() {
        p = fmadd::<FMA>(p, f, *c);
    }
    // n is integral: 1.5 * 2^23 + n holds it in the low mantissa bits
    let ni = (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
    let y = p * f32::from_bits(((ni + 127) as u32) << 23);
    if x < -126.0 {
        0.0
    } else {
        y
    }
}

/// Sum with eight f32 lanes, then pairwise (vectorises where inlined for AVX2).
#[inline(always)]
pub fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    rest.iter().fold(s, |a, &b| a + b)
}

/// Largest element with eight running maxima (vectorises where inlined for AVX2).
#[inline(always)]
pub fn max_lanes(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            m[l] = m[l].max(c[l]);
        }
    }
    rest.iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// 1 / (1 + e^-x) with [`exp`]: e^-x overflows to inf for very negative x, giving 0.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Whether this CPU runs the AVX2+FMA builds of the hot loops (decided once, with the
/// GEMM kernel; `PONDER_CPU_PORTABLE` turns them off).
pub fn has_avx2() -> bool {
    super::microkernel::Kernel::detect().is_avx2()
}

/// Whether AVX-512 is there and not turned off (`PONDER_CPU_NO_AVX512`): the loops below
/// then compile to 16 lanes and 32 registers, where the 8-lane code spills its
/// constants. The same operations per element in the same order, so the same bits.
pub fn has_avx512() -> bool {
    super::microkernel::Kernel::detect().has_wide()
}

/// Largest element (-inf for an empty slice; NaNs are skipped, as f32::max does).
pub fn max(x: &[f32]) -> f32 {
    #[inline(always)]
    fn body(x: &[f32]) -> f32 {
        max_lanes(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &[f32]) -> f32 {
        body(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512(x: &[f32]) -> f32 {
        body(x)
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: has_avx512() saw AVX-512F (and AVX2 and FMA) on this CPU.
        return unsafe { avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
        return unsafe { avx2(x) };
    }
    body(x)
}

/// `sum x_i^2` in f64: element i into lane i % 4 of its block of four, the lanes added in
/// a fixed tree, then the last `len % 4` elements in order. Four independent chains of
/// adds rather than one (a row of rms_norm waited on each add's latency), and one fixed
/// order whatever the caller.
pub fn sum_squares<T: super::Real>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for q in chunks {
        for l in 0..4 {
            acc[l] += q[l].to_f64() * q[l].to_f64();
        }
    }
    rest.iter()
        .fold(lanes_total(acc), |s, &v| s + v.to_f64() * v.to_f64())
}

/// Adds `w` into four f64 lanes (element i to lane i % 4 of its block of four), the
/// order [`exp_weights`] and [`exp_weights_pair`] sum in.
#[inline(always)]
fn add_lanes(acc: &mut [f64; 4], w: &[f32]) {
    let chunks = w.chunks_exact(4);
    let rest = chunks.remainder();
    for q in chunks {
        for l in 0..4 {
            acc[l] += q[l] as f64;
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        acc[l] += v as f64;
    }
}

/// The lanes of [`add_lanes`] added in a fixed tree.
#[inline(always)]
fn lanes_total(acc: [f64; 4]) -> f64 {
    (acc[0] + acc[2]) + (acc[1] + acc[3])
}

/// `out[i] = e^((x[i] - sub) * mul)`; returns the sum of `out`, added in f64 in four
/// lanes (a fixed order). With `out` None only the sum is kept.
pub fn exp_weights(x: &[f32], sub: f32, mul: f32, out: Option<&mut [f32]>) -> f64 {
    #[inline(always)]
    fn body(x: &[f32], sub: f32, mul: f32, out: Option<&mut [f32]>) -> f64 {
        // exponentials in blocks (a plain map vectorises), then their f64 sum in lanes
        let mut buf = [0.0f32; 256];
        let mut acc = [0.0f64; 4];
        let mut out = out;
        for (bi, xs) in x.chunks(256).enumerate() {
            let w = match out.as_deref_mut() {
                Some(o) => &mut o[bi * 256..bi * 256 + xs.len()],
                None => &mut buf[..xs.len()],
            };
            for (w, &v) in w.iter_mut().zip(xs) {
                *w = exp((v - sub) * mul);
            }
            add_lanes(&mut acc, w);
        }
        lanes_total(acc)
    }
    if let Some(o) = &out {
        assert_eq!(o.len(), x.len(), "exp_weights: out and x differ in length");
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &[f32], sub: f32, mul: f32, out: Option<&mut [f32]>) -> f64 {
        body(x, sub, mul, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512(x: &[f32], sub: f32, mul: f32, out: Option<&mut [f32]>) -> f64 {
        body(x, sub, mul, out)
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: has_avx512() saw AVX-512F (and AVX2 and FMA) on this CPU.
        return unsafe { avx512(x, sub, mul, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
        return unsafe { avx2(x, sub, mul, out) };
    }
    body(x, sub, mul, out)
}

/// [`exp_weights`] twice in one pass over `x`: `out[i] = e^((x[i] - sub) * mul)` with
/// its sum, and the sum of `e^(x[i] - sub)` (kept only as a sum). Each sum holds the same
/// bits as [`exp_weights`] gives for it (the same exponentials, added in the same order).
pub fn exp_weights_pair(x: &[f32], sub: f32, mul: f32, out: &mut [f32]) -> (f64, f64) {
    #[inline(always)]
    fn body(x: &[f32], sub: f32, mul: f32, out: &mut [f32]) -> (f64, f64) {
        let mut plain = [0.0f32; 256];
        let (mut acc, mut acc1) = ([0.0f64; 4], [0.0f64; 4]);
        for (bi, xs) in x.chunks(256).enumerate() {
            let w = &mut out[bi * 256..bi * 256 + xs.len()];
            let p = &mut plain[..xs.len()];
            for ((w, p), &v) in w.iter_mut().zip(p.iter_mut()).zip(xs) {
                *w = exp((v - sub) * mul);
                *p = exp((v - sub) * 1.0);
            }
            add_lanes(&mut acc, w);
            add_lanes(&mut acc1, p);
        }
        (lanes_total(acc), lanes_total(acc1))
    }
    assert_eq!(
        out.len(),
        x.len(),
        "exp_weights_pair: out and x differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &[f32], sub: f32, mul: f32, out: &mut [f32]) -> (f64, f64) {
        body(x, sub, mul, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512(x: &[f32], sub: f32, mul: f32, out: &mut [f32]) -> (f64, f64) {
        body(x, sub, mul, out)
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: has_avx512() saw AVX-512F (and AVX2 and FMA) on this CPU.
        return unsafe { avx512(x, sub, mul, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
        return unsafe { avx2(x, sub, mul, out) };
    }
    body(x, sub, mul, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        let ulp = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = 0;
        // every 4099th f32 bit pattern below 89 (both signs), plus the edges
        let mut xs: Vec<f32> = (0..u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .filter(|x| x.is_finite() && *x < 89.0)
            .flat_map(|x| [x, -x])
            .collect();
        xs.extend([
            0.0, -0.0, 88.72, 88.73, -87.33, -87.34, -103.0, -150.0, 1e30, -1e30,
        ]);
        for x in xs {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want == 0.0 || want.is_infinite() {
                assert!(
                    got == want || (want == 0.0 && got < 1e-44),
                    "exp({x}) = {got}, want {want}"
                );
                continue;
            }
            let d = ulp(got, want);
            // denormal results carry fewer bits: allow their absolute error instead
            if want < f32::MIN_POSITIVE {
                assert!((got - want).abs() <= 2.0 * f32::from_bits(1), "exp({x})");
                continue;
            }
            assert!(d <= 2, "exp({x}) = {got}, want {want} ({d} ulp)");
            worst = worst.max(d);
        }
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        println!("worst error {worst} ulp");
    }

    #[test]
    fn exp2_softmax_is_within_two_ulp() {
        let ulp = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = 0;
        for i in 0..2_000_000 {
            let x = -130.0 + i as f32 * (131.0 / 2e6);
            let want = (x as f64).exp2() as f32;
            for got in [exp2_softmax::<false>(x), exp2_softmax::<true>(x)] {
                if x < -126.0 {
                    assert_eq!(got, 0.0, "2^{x}");
                    continue;
                }
                let d = ulp(got, want);
                assert!(d <= 2, "2^{x} = {got}, want {want} ({d} ulp)");
                worst = worst.max(d);
            }
        }
        assert!(exp2_softmax::<true>(f32::NAN).is_nan());
        assert_eq!(exp2_softmax::<true>(f32::NEG_INFINITY), 0.0);
        println!("worst error {worst} ulp");
    }

    #[test]
    fn slice_helpers_match_plain_loops() {
        for n in [0usize, 1, 7, 8, 9, 100, 4099] {
            let x = crate::util::randn_vec(n, 4.0, n as u64 + 1);
            let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(max(&x), m);
            let mut out = vec![f32::NAN; n];
            let s = exp_weights(&x, m, 0.5, Some(&mut out));
            let want: f64 = x.iter().map(|&v| ((v as f64 - m as f64) * 0.5).exp()).sum();
            assert!(
                (s - want).abs() <= 1e-6 * want.max(1.0),
                "n {n}: {s} vs {want}"
            );
            for (o, &v) in out.iter().zip(&x) {
                let w = ((v as f64 - m as f64) * 0.5).exp();
                assert!((*o as f64 - w).abs() <= 1e-6 * w, "{o} vs {w}");
            }
            assert_eq!(exp_weights(&x, m, 0.5, None), s);
            // both sums of the fused pass, and its weights, are exp_weights' bits
            let mut pair = vec![f32::NAN; n];
            let (t, z) = exp_weights_pair(&x, m, 0.5, &mut pair);
            assert_eq!(t.to_bits(), s.to_bits(), "n {n}");
            assert_eq!(
                z.to_bits(),
                exp_weights(&x, m, 1.0, None).to_bits(),
                "n {n}"
            );
            assert!(pair
                .iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            // whichever vector width ran above (16 lanes with AVX-512, 8 with AVX2), the
            // weights and the sum are the bits of the plain scalar steps
            let plain: Vec<f32> = x.iter().map(|&v| exp((v - m) * 0.5)).collect();
            let mut acc = [0.0f64; 4];
            add_lanes(&mut acc, &plain);
            assert_eq!(s.to_bits(), lanes_total(acc).to_bits(), "n {n}");
            assert!(plain
                .iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

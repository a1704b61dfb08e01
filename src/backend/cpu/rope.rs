//! Rotary position embedding, forward and backward.

#[allow(unused_imports)]
use super::*;

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
    let n = b * t * h * hd;
    assert!(x.len() >= n, "rope: x holds {} of {n} elements", x.len());
    assert!(hd.is_multiple_of(2), "rope: the head dim {hd} is odd");
    // rows 0..b*t are written below and the rest zeroed, so not zeroed first
    let mut y = super::gemm::uninit::<T>(x.len());
    for v in &mut y[n..] {
        v.write(T::zero());
    }
    let out = super::threads::Disjoint::new(&mut y);
    // one (row, position) of every head
    let one = |r: usize| {
        let (bi, ti) = (r / t, r % t);
        let tab = ((if table_batched { bi } else { 0 }) * t + ti) * hd;
        let (c, s) = (&cos[tab..tab + hd], &sin[tab..tab + hd]);
        let (c0, c1, s0, s1) = (&c[..half], &c[half..hd], &s[..half], &s[half..hd]);
        let base = r * h * hd;
        let xs = &x[base..base + h * hd];
        assert!(base + h * hd <= n, "rope: row {r} out of bounds");
        // SAFETY: in bounds (asserted); rows own disjoint ranges of y, which outlives them.
        let ys = unsafe { out.part(base, h * hd) };
        rotate::run((xs, ys), hd, (c0, c1, s0, s1), backward);
    };
    if x.len() >= PAR_MIN {
        // blocks of rows: a decode step's 96 rows are twelve tasks
        super::threads::par_runs(b * t, ROWS_PER_TASK, |r| r.for_each(one));
    } else {
        (0..b * t).for_each(one);
    }
    // SAFETY: every row r < b*t wrote its h*hd elements (n in all), and the rest was
    // zeroed above.
    unsafe { super::gemm::assume_init_vec(y) }
}

/// Elements from which the rows are split over the threads (a decode step's queries:
/// 96 rows x 9 heads x 64).
const PAR_MIN: usize = 16 * 1024;
/// Rows per task when they are.
const ROWS_PER_TASK: usize = 8;

/// One (row, position)'s heads rotated: the two halves of each head as separate loops,
/// so that they vectorise (the same products and sums per element on every path; no
/// step is fused).
mod rotate {
    use super::Real;
    use std::mem::MaybeUninit;

    type Tables<'a, T> = (&'a [T], &'a [T], &'a [T], &'a [T]);

    #[inline(always)]
    fn body<T: Real>(
        (xs, ys): (&[T], &mut [MaybeUninit<T>]),
        hd: usize,
        (c0, c1, s0, s1): Tables<T>,
        backward: bool,
    ) {
        let half = hd / 2;
        for (xr, yr) in xs.chunks_exact(hd).zip(ys.chunks_exact_mut(hd)) {
            let (x0, x1) = xr.split_at(half);
            let (y0, y1) = yr.split_at_mut(half);
            // every slice cut to `half` first, so that the loops index without bounds
            // checks and vectorise
            let (x1, y1) = (&x1[..half], &mut y1[..half]);
            let (c0, c1, s0, s1) = (&c0[..half], &c1[..half], &s0[..half], &s1[..half]);
            if !backward {
                for i in 0..half {
                    y0[i].write(x0[i] * c0[i] + (-x1[i]) * s0[i]);
                    y1[i].write(x1[i] * c1[i] + x0[i] * s1[i]);
                }
            } else {
                for i in 0..half {
                    y0[i].write(x0[i] * c0[i] + x1[i] * s1[i]);
                    y1[i].write(x1[i] * c1[i] - x0[i] * s0[i]);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<T: Real>(
        io: (&[T], &mut [MaybeUninit<T>]),
        hd: usize,
        tabs: Tables<T>,
        backward: bool,
    ) {
        body(io, hd, tabs, backward)
    }

    /// Writes every element of `ys` (as long as `xs`, whole heads of `hd`).
    pub fn run<T: Real>(
        io: (&[T], &mut [MaybeUninit<T>]),
        hd: usize,
        tabs: Tables<T>,
        backward: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::super::vmath::has_avx2() {
            // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
            return unsafe { avx2(io, hd, tabs, backward) };
        }
        body(io, hd, tabs, backward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element (r, h, i) of x rotated by the definition: forward
    /// `x_i cos_i + rotate_half(x)_i sin_i`, backward its transpose.
    fn by_definition(x: &[f32], c: &[f32], s: &[f32], r: usize, hd: usize, back: bool) -> f32 {
        let half = hd / 2;
        let (h, i) = (r / hd, r % hd);
        let xh = &x[h * hd..(h + 1) * hd];
        match (back, i < half) {
            (false, true) => xh[i] * c[i] - xh[i + half] * s[i],
            (false, false) => xh[i] * c[i] + xh[i - half] * s[i],
            (true, true) => xh[i] * c[i] + xh[i + half] * s[i + half],
            (true, false) => xh[i] * c[i] - xh[i - half] * s[i - half],
        }
    }

    #[test]
    fn rows_split_over_threads_match_the_definition() {
        // (B, T, H, HD) on both sides of PAR_MIN, tables per row or shared
        for (b, t, h, hd) in [(2, 3, 2, 8), (96, 1, 9, 64), (3, 40, 4, 32)] {
            for batched in [false, true] {
                let x = crate::util::randn_vec(b * t * h * hd, 1.0, 7);
                let rows = if batched { b } else { 1 };
                let cos = crate::util::randn_vec(rows * t * hd, 1.0, 8);
                let sin = crate::util::randn_vec(rows * t * hd, 1.0, 9);
                for back in [false, true] {
                    let y = rope(&x, &cos, &sin, b, t, h, hd, batched, back);
                    for (e, got) in y.iter().enumerate() {
                        let (bt, rest) = (e / (h * hd), e % (h * hd));
                        let tab = ((if batched { bt / t } else { 0 }) * t + bt % t) * hd;
                        let (c, s) = (&cos[tab..tab + hd], &sin[tab..tab + hd]);
                        let xr = &x[bt * h * hd..(bt + 1) * h * hd];
                        let want = by_definition(xr, c, s, rest, hd, back);
                        assert!(
                            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                            "{b}x{t}x{h}x{hd} batched {batched} back {back} at {e}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

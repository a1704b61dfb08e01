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

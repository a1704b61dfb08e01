//! Softmax and log-softmax over rows.

#[allow(unused_imports)]
use super::*;

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

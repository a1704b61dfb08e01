//! Token log-probs from logits, forward and backward.

#[allow(unused_imports)]
use super::*;

/// Per row of logits `(N, V)`: lp_n = x[n, t_n] - logsumexp(x[n, :]). Rows whose target is
/// negative (ignored) give 0. Returns (lp, lse).
pub fn token_logprobs<T: Real>(x: &[T], targets: &[i32], v: usize) -> (Vec<T>, Vec<T>) {
    let mut lp = vec![T::zero(); targets.len()];
    let mut lse = vec![T::zero(); targets.len()];
    lp.par_iter_mut()
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(n, (lp, lse))| {
            let row = &x[n * v..(n + 1) * v];
            let m = row.iter().fold(row[0], |a, &b| a.maxv(b));
            let sum: f64 = row.iter().map(|&z| (z - m).exp().to_f64()).sum();
            let l = m + T::from_f64(sum.ln());
            *lse = l;
            let t = targets[n];
            if t >= 0 {
                *lp = row[t as usize] - l;
            }
        });
    (lp, lse)
}

/// Backward of [`token_logprobs`]: dx[n, j] = g_n * ([j == t_n] - exp(x[n, j] - lse_n)).
pub fn token_logprobs_bwd<T: Real>(
    x: &[T],
    targets: &[i32],
    lse: &[T],
    g: &[T],
    v: usize,
) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(v.max(1))
        .enumerate()
        .for_each(|(n, row)| {
            let t = targets[n];
            if t < 0 {
                return;
            }
            for j in 0..v {
                let p = (x[n * v + j] - lse[n]).exp();
                let onehot = if j == t as usize { T::one() } else { T::zero() };
                row[j] = g[n] * (onehot - p);
            }
        });
    dx
}

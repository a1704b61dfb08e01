//! Reductions over one dimension and the scatter that reverses them.

#[allow(unused_imports)]
use super::*;

/// Reduce `x` viewed as `(outer, n, inner)` over the middle axis. `Max` also returns the
/// index of the first maximum. Sums accumulate in f64.
pub fn reduce<T: Real>(
    op: ReduceOp,
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
) -> (Vec<T>, Vec<u32>) {
    let mut out = vec![T::zero(); outer * inner];
    let mut idx = Vec::new();
    match op {
        ReduceOp::Sum => {
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0.0f64;
                    for j in 0..n {
                        acc += x[(o * n + j) * inner + i].to_f64();
                    }
                    out[o * inner + i] = T::from_f64(acc);
                }
            }
        }
        ReduceOp::Max => {
            idx = vec![0u32; outer * inner];
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = x[o * n * inner + i];
                    let mut arg = 0;
                    for j in 1..n {
                        let v = x[(o * n + j) * inner + i];
                        if v > best {
                            best = v;
                            arg = j;
                        }
                    }
                    out[o * inner + i] = best;
                    idx[o * inner + i] = arg as u32;
                }
            }
        }
    }
    (out, idx)
}

/// The backward of max along a dim: dx[o, j, i] = g[o, i] if j == argmax[o, i] else 0.
pub fn scatter_dim<T: Real>(g: &[T], idx: &[u32], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut out = vec![T::zero(); outer * n * inner];
    for o in 0..outer {
        for i in 0..inner {
            let j = idx[o * inner + i] as usize;
            out[(o * n + j) * inner + i] = g[o * inner + i];
        }
    }
    out
}

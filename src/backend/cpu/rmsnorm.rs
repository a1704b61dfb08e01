//! RMSNorm forward and backward.

#[allow(unused_imports)]
use super::*;

/// y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), per row of `(rows, c)`.
/// Returns (y, rstd).
pub fn rmsnorm<T: Real>(x: &[T], w: &[T], c: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let c = c.max(1);
    assert!(
        x.len().is_multiple_of(c),
        "rmsnorm: {} values are not rows of {c}",
        x.len()
    );
    let rows = x.len() / c;
    // both written in full below, so not zeroed first
    let mut y = super::gemm::uninit::<T>(x.len());
    let mut rstd = super::gemm::uninit::<T>(rows);
    y.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|((yr, rs), xr)| {
            let ms: f64 = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / c as f64;
            let r = T::from_f64(1.0 / (ms + eps).sqrt());
            rs.write(r);
            for j in 0..c {
                yr[j].write(xr[j] * r * w[j]);
            }
        });
    // SAFETY: every row of y (rows x c = all of it) and every rstd was written above.
    unsafe {
        (
            super::gemm::assume_init_vec(y),
            super::gemm::assume_init_vec(rstd),
        )
    }
}

/// Backward of [`rmsnorm`]: with gw = g * w,
/// dx_j = rstd * gw_j - x_j * rstd^3 * mean_i(gw_i * x_i);  dw_j = sum_rows g_j * x_j * rstd.
pub fn rmsnorm_bwd<T: Real>(x: &[T], w: &[T], rstd: &[T], g: &[T], c: usize) -> (Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(g.par_chunks(c))
        .zip(rstd.par_iter())
        .for_each(|(((dxr, xr), gr), &rs)| {
            let dot: f64 = (0..c).map(|j| (gr[j] * w[j] * xr[j]).to_f64()).sum::<f64>() / c as f64;
            let k = T::from_f64(dot) * rs * rs * rs;
            for j in 0..c {
                dxr[j] = rs * gr[j] * w[j] - xr[j] * k;
            }
        });
    // dw_j = sum over rows, accumulated row by row (a fixed order)
    let mut dw = vec![0.0f64; c];
    for (r, &rs) in rstd.iter().enumerate() {
        let (xr, gr) = (&x[r * c..(r + 1) * c], &g[r * c..(r + 1) * c]);
        for j in 0..c {
            dw[j] += (gr[j] * xr[j] * rs).to_f64();
        }
    }
    (dx, dw.into_iter().map(T::from_f64).collect())
}

//! RMSNorm forward and backward.

#[allow(unused_imports)]
use super::*;

/// Elements per task of the forward.
const ROW_BLOCK: usize = 1 << 14;

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
    let (ys, rs) = (
        super::threads::Disjoint::new(&mut y),
        super::threads::Disjoint::new(&mut rstd),
    );
    let row = |i: usize| {
        let xr = &x[i * c..(i + 1) * c];
        let ms = super::vmath::sum_squares(xr) / c as f64;
        let r = T::from_f64(1.0 / (ms + eps).sqrt());
        // SAFETY: row i's c elements of y and its one rstd (i < rows), written by this
        // task alone; both buffers outlive the tasks.
        let (yr, rr) = unsafe { (ys.part(i * c, c), rs.part(i, 1)) };
        rr[0].write(r);
        // cut to c first, so that the loop indexes without bounds checks and vectorises
        let (yr, xr, w) = (&mut yr[..c], &xr[..c], &w[..c]);
        for j in 0..c {
            yr[j].write(xr[j] * r * w[j]);
        }
    };
    // blocks of rows of about ROW_BLOCK elements on the threads (a decode step's 96 rows
    // of 576 are four), or all rows here when they are few
    let per = (ROW_BLOCK / c).max(1);
    if x.len() >= ROW_BLOCK {
        super::threads::par_runs(rows, per, |r| r.for_each(row));
    } else {
        (0..rows).for_each(row);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward against plain f64 arithmetic, on rows whose length is not a multiple
    /// of the four partial sums.
    #[test]
    fn forward_matches_f64_on_awkward_rows() {
        for c in [1, 7, 8, 13, 576] {
            let rows = 5;
            let x = crate::util::randn_vec(rows * c, 1.5, 3);
            let w = crate::util::randn_vec(c, 1.0, 4);
            let (y, rstd) = rmsnorm(&x, &w, c, 1e-5);
            for r in 0..rows {
                let xr = &x[r * c..(r + 1) * c];
                let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
                let want_r = 1.0 / (ms + 1e-5).sqrt();
                assert!(
                    (rstd[r] as f64 - want_r).abs() <= 1e-6 * want_r,
                    "rstd {r}, c {c}"
                );
                for j in 0..c {
                    let want = xr[j] as f64 * want_r * w[j] as f64;
                    let got = y[r * c + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "y ({r}, {j}), c {c}"
                    );
                }
            }
        }
    }

    /// Rows in blocks on the threads give each row's plain steps, bit for bit: few rows
    /// (serial), a decode step's 96 x 576 and a ragged last block.
    #[test]
    fn forward_rows_match_plain_steps() {
        for (rows, c) in [(3, 40), (96, 576), (61, 300)] {
            let x = crate::util::randn_vec(rows * c, 2.0, 21);
            let w = crate::util::randn_vec(c, 1.0, 22);
            let (y, rstd) = rmsnorm(&x, &w, c, 1e-6);
            for (i, xr) in x.chunks(c).enumerate() {
                let r = (1.0 / (vmath::sum_squares(xr) / c as f64 + 1e-6).sqrt()) as f32;
                assert_eq!(rstd[i].to_bits(), r.to_bits(), "{rows}x{c} row {i}");
                for (j, &v) in xr.iter().enumerate() {
                    let want = v * r * w[j];
                    assert_eq!(
                        y[i * c + j].to_bits(),
                        want.to_bits(),
                        "{rows}x{c} ({i}, {j})"
                    );
                }
            }
        }
    }
}

//! Llama 3.1 rope scaling as llama.cpp stores it: not its parameters but the divisor of
//! each inverse frequency (`rope_freqs.weight`), written from the parameters and solved
//! back into them.

/// Llama 3.1's rope scaling as llama.cpp stores it (`rope_freqs.weight`): per frequency
/// i < HD/2, the divisor of its inverse frequency (1 kept, `factor` for long wavelengths,
/// `1 / ((1 - smooth) / factor + smooth)` between), computed as llama.cpp's converter does.
pub fn llama3_factors(
    theta: f64,
    head_dim: usize,
    (factor, low, high, old): (f64, f64, f64, f64),
) -> Vec<f32> {
    let (low_wl, high_wl) = (old / low, old / high);
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wl = 2.0 * std::f64::consts::PI / f;
            let d = if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let smooth = (old / wl - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            d as f32
        })
        .collect()
}

/// Llama 3.1 parameters `(factor, low_freq_factor, high_freq_factor,
/// original_max_position_embeddings)` that give `factors` (see [`llama3_factors`]), or
/// None. Only the ratios of the last three matter, so low_freq_factor is taken as 1 (as
/// every Llama 3.x sets it); the blend between the kept and the scaled frequencies,
/// linear in 1 / wavelength, gives the other two from two or more blended frequencies.
/// The answer is checked by recomputing the factors.
pub fn llama3_from_factors(
    theta: f64,
    head_dim: usize,
    factors: &[f32],
) -> Option<(f64, f64, f64, f64)> {
    if factors.len() != head_dim / 2 || factors.iter().any(|f| !f.is_finite() || *f < 1.0) {
        return None;
    }
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    if factor == 1.0 {
        return None;
    }
    // blended frequencies: s = (1/f - 1/factor) / (1 - 1/factor) against x = 1 / wavelength
    let pts: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 1.0 && (f as f64) < factor)
        .map(|(i, &f)| {
            let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let x = inv / (2.0 * std::f64::consts::PI);
            (x, (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor))
        })
        .collect();
    if pts.len() < 2 {
        return None;
    }
    // least squares s = a x + b; with low = 1: s = (old x - 1) / (high - 1)
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (sxx, sxy) = pts.iter().fold((0.0, 0.0), |(a, b), p| {
        (a + (p.0 - mx) * (p.0 - mx), b + (p.0 - mx) * (p.1 - my))
    });
    let a = sxy / sxx;
    let b = my - a * mx;
    if b.is_nan() || b >= 0.0 || !a.is_finite() {
        return None;
    }
    let high = 1.0 - 1.0 / b;
    let old = -a / b;
    // the stored factors are f32: snap to the round values configs use where they fit
    let snap = |v: f64, step: f64| {
        let r = (v / step).round() * step;
        if (r - v).abs() <= 1e-3 * v.abs() {
            r
        } else {
            v
        }
    };
    let p = (factor, 1.0, snap(high, 0.25), snap(old, 1.0));
    let again = llama3_factors(theta, head_dim, p);
    let same = again
        .iter()
        .zip(factors)
        .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs());
    same.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_parameters_come_back_from_llama_cpp_factors() {
        // (theta, head dim, factor, low, high, original max positions): Llama 3.1 8B,
        // Llama 3.2 1B, and a low_freq_factor of 2 (only the ratios matter: the same
        // factors come back as low 1 and the equivalent high and old)
        for (theta, hd, p, want) in [
            (
                500000.0,
                128,
                (8.0, 1.0, 4.0, 8192.0),
                (8.0, 1.0, 4.0, 8192.0),
            ),
            (
                500000.0,
                64,
                (32.0, 1.0, 4.0, 8192.0),
                (32.0, 1.0, 4.0, 8192.0),
            ),
            (
                10000.0,
                128,
                (4.0, 2.0, 8.0, 4096.0),
                (4.0, 1.0, 4.0, 2048.0),
            ),
        ] {
            let f = llama3_factors(theta, hd, p);
            assert!(
                f.iter().any(|&x| x > 1.0 && (x as f64) < p.0),
                "{p:?}: no blend"
            );
            assert_eq!(llama3_from_factors(theta, hd, &f), Some(want), "{p:?}");
        }
        // factors that follow no such blend, and plain ones, give nothing
        let mut f = llama3_factors(500000.0, 64, (32.0, 1.0, 4.0, 8192.0));
        f[16] *= 1.5;
        assert_eq!(llama3_from_factors(500000.0, 64, &f), None);
        assert_eq!(llama3_from_factors(500000.0, 64, &[1.0; 32]), None);
    }
}

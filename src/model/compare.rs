//! Comparing logits with a reference (PyTorch's, dumped by models/reference/dump_logits.py):
//! per position, the largest absolute difference, KL(reference || ours) of the softmaxes,
//! and whether the top-1 tokens agree.

/// One position's comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositionDiff {
    pub max_abs: f64,
    /// KL(reference || ours), in nats.
    pub kl: f64,
    pub top1_agrees: bool,
}

/// `log_softmax(x)` in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = x.iter().map(|&a| (a as f64 - mx).exp()).sum::<f64>().ln() + mx;
    x.iter().map(|&a| a as f64 - z).collect()
}

/// The first index of the largest value (torch.argmax's choice).
pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &a)| if a > x[b] { i } else { b })
}

/// Compare `(T, V)` row-major logits, position by position.
pub fn compare_logits(ours: &[f32], reference: &[f32], v: usize) -> Vec<PositionDiff> {
    ours.chunks(v.max(1))
        .zip(reference.chunks(v.max(1)))
        .map(|(g, w)| {
            let max_abs = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            let (lg, lw) = (log_softmax(g), log_softmax(w));
            let kl = lw.iter().zip(&lg).map(|(a, b)| a.exp() * (a - b)).sum();
            PositionDiff {
                max_abs,
                kl,
                top1_agrees: argmax(g) == argmax(w),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_exactly_and_a_shift_changes_nothing_but_max_abs() {
        let x = [0.5f32, -1.0, 2.0, 0.25];
        let d = compare_logits(&x, &x, 4);
        assert_eq!(d[0].max_abs, 0.0);
        assert!(d[0].kl.abs() < 1e-15 && d[0].top1_agrees);
        // softmax is shift-invariant: KL stays 0, the raw difference is the shift
        let y: Vec<f32> = x.iter().map(|a| a + 3.0).collect();
        let d = compare_logits(&y, &x, 4);
        assert!((d[0].max_abs - 3.0).abs() < 1e-6 && d[0].kl.abs() < 1e-12);
        // KL(p || q) for p = softmax([0, 0]), q = softmax([ln 3, 0]) = ln(1/2 / 3/4)/2 + ln(1/2 / 1/4)/2
        let d = compare_logits(&[3f32.ln(), 0.0], &[0.0, 0.0], 2);
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        assert!((d[0].kl - want).abs() < 1e-7, "{} vs {want}", d[0].kl);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}

//! Building preference pairs and SFT sets from labelled samples: token-set Jaccard
//! similarity, deduplication, the least similar positive x negative pairs, and a
//! per-question cap at a percentile of the counts (DPO-augmented self-training's rules).

use std::collections::HashSet;

/// Jaccard similarity of two token sets: |A n B| / |A u B| (1 for two empty sets).
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (sa, sb): (HashSet<u32>, HashSet<u32>) =
        (a.iter().copied().collect(), b.iter().copied().collect());
    let union = sa.union(&sb).count();
    if union == 0 {
        return 1.0;
    }
    sa.intersection(&sb).count() as f64 / union as f64
}

/// Indices of `items` kept after dropping each one whose similarity to an earlier kept
/// one is at least `threshold` (first come, first kept).
pub fn dedup(items: &[&[u32]], threshold: f64) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if kept.iter().all(|&k| jaccard(items[k], it) < threshold) {
            kept.push(i);
        }
    }
    kept
}

/// The `k` least similar (positive, negative) index pairs, ties broken by order.
pub fn least_similar_pairs(pos: &[&[u32]], neg: &[&[u32]], k: usize) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, usize, usize)> = Vec::with_capacity(pos.len() * neg.len());
    for (i, p) in pos.iter().enumerate() {
        for (j, n) in neg.iter().enumerate() {
            all.push((jaccard(p, n), i, j));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    all.into_iter().take(k).map(|(_, i, j)| (i, j)).collect()
}

/// The `q`-th percentile (0..=100) of `counts`, by linear interpolation between order
/// statistics (numpy's default), rounded down; at least 1 when any count is positive.
pub fn percentile_cap(counts: &[usize], q: f64) -> usize {
    if counts.is_empty() {
        return 0;
    }
    let mut v: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    v.sort_by(f64::total_cmp);
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let x = v[lo] + (v[hi] - v[lo]) * (pos - lo as f64);
    (x.floor() as usize).max(usize::from(v[v.len() - 1] > 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_known_answers() {
        assert_eq!(jaccard(&[1, 2, 3], &[1, 2, 3]), 1.0);
        assert_eq!(jaccard(&[1, 2], &[3, 4]), 0.0);
        // {1,2,3} vs {2,3,4}: 2 shared of 4
        assert_eq!(jaccard(&[1, 2, 3, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 1.0);
    }

    #[test]
    fn dedup_keeps_the_first_of_near_copies() {
        let a: &[u32] = &[1, 2, 3, 4];
        let b: &[u32] = &[1, 2, 3, 5]; // 3/5 = 0.6 with a
        let c: &[u32] = &[1, 2, 3, 4, 4]; // same set as a
        assert_eq!(dedup(&[a, b, c], 0.7), vec![0, 1]);
        assert_eq!(dedup(&[a, b, c], 0.5), vec![0]);
    }

    #[test]
    fn least_similar_pairs_come_first() {
        let p: Vec<&[u32]> = vec![&[1, 2, 3], &[7, 8]];
        let n: Vec<&[u32]> = vec![&[1, 2, 4], &[9]];
        // similarities: (0,0)=0.5, (0,1)=0, (1,0)=0, (1,1)=0
        assert_eq!(least_similar_pairs(&p, &n, 3), vec![(0, 1), (1, 0), (1, 1)]);
    }

    #[test]
    fn percentile_cap_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], 90) = 7.6 -> 7
        assert_eq!(percentile_cap(&[1, 2, 3, 4, 10], 90.0), 7);
        assert_eq!(percentile_cap(&[3], 90.0), 3);
        assert_eq!(percentile_cap(&[0, 0, 1], 10.0), 1);
        assert_eq!(percentile_cap(&[], 90.0), 0);
    }
}

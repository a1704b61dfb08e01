//! Embedding lookup and its scatter-add backward.

#[allow(unused_imports)]
use super::*;

/// out[n, :] = w[ids[n], :] for w `(V, C)`. Ids are checked by the caller.
pub fn embedding<T: Real>(w: &[T], ids: &[u32], c: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * c);
    for &id in ids {
        let r = id as usize * c;
        out.extend_from_slice(&w[r..r + c]);
    }
    out
}

/// dw[ids[n], :] += g[n, :]  (scatter-add; repeated ids accumulate).
pub fn embedding_bwd<T: Real>(g: &[T], ids: &[u32], v: usize, c: usize) -> Vec<T> {
    let mut dw = vec![T::zero(); v * c];
    for (n, &id) in ids.iter().enumerate() {
        let r = id as usize * c;
        for j in 0..c {
            dw[r + j] += g[n * c + j];
        }
    }
    dw
}

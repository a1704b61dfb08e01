//! SwiGLU, forward and backward.

#[allow(unused_imports)]
use super::*;

/// y = silu(gate) * up.
pub fn swiglu<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.iter()
        .zip(up)
        .map(|(&a, &u)| a * sigmoid(a) * u)
        .collect()
}

/// d gate = g * up * silu'(gate),  d up = g * silu(gate).
pub fn swiglu_bwd<T: Real>(gate: &[T], up: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dgate = vec![T::zero(); gate.len()];
    let mut dup = vec![T::zero(); gate.len()];
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .enumerate()
        .for_each(|(i, (dg, du))| {
            let (a, u, gi) = (gate[i], up[i], g[i]);
            let s = sigmoid(a);
            *dg = gi * u * (s + a * s * (T::one() - s));
            *du = gi * a * s;
        });
    (dgate, dup)
}

//! The AdamW update.

#[allow(unused_imports)]
use super::*;

pub fn adamw<T: Real>(h: &AdamW, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let (bc1, bc2) = h.bias_corrections();
    let f = |x: f32| T::from_f64(x as f64);
    let (lr, b1, b2, eps, wd) = (f(h.lr), f(h.beta1), f(h.beta2), f(h.eps), f(h.weight_decay));
    let (bc1, bc2) = (f(bc1), f(bc2));
    p.par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .for_each(|(((p, m), v), &g)| {
            *p -= lr * wd * *p;
            *m = b1 * *m + (T::one() - b1) * g;
            *v = b2 * *v + (T::one() - b2) * g * g;
            let denom = (*v / bc2).sqrt() + eps;
            *p -= lr * (*m / bc1) / denom;
        });
}

//! SwiGLU, forward and backward. f32 runs on rayon's threads in fixed blocks with the
//! vectorised exponential of [`super::vmath`]; other types (f64 for gradient checks) run
//! the plain loops.

#[allow(unused_imports)]
use super::*;

/// Elements per parallel block of the f32 path.
const BLOCK: usize = 1 << 13;

/// y = silu(gate) * up.
pub fn swiglu<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    if let (Some(a), Some(u)) = (f32_view(gate), f32_view(up)) {
        // written in full below, so not zeroed first
        let mut y = super::gemm::uninit::<f32>(a.len());
        y.par_chunks_mut(BLOCK).enumerate().for_each(|(i, y)| {
            let (a, u) = (&a[i * BLOCK..][..y.len()], &u[i * BLOCK..][..y.len()]);
            simd::fwd(a, u, y)
        });
        // SAFETY: simd::fwd wrote every element of every block.
        return from_f32_vec(unsafe { super::gemm::assume_init_vec(y) });
    }
    gate.iter()
        .zip(up)
        .map(|(&a, &u)| a * sigmoid(a) * u)
        .collect()
}

/// d gate = g * up * silu'(gate),  d up = g * silu(gate).
pub fn swiglu_bwd<T: Real>(gate: &[T], up: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    if let (Some(a), Some(u), Some(g)) = (f32_view(gate), f32_view(up), f32_view(g)) {
        let mut dgate = vec![0.0f32; a.len()];
        let mut dup = vec![0.0f32; a.len()];
        dgate
            .par_chunks_mut(BLOCK)
            .zip(dup.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(|(i, (dg, du))| {
                let o = i * BLOCK;
                let (a, u, g) = (
                    &a[o..][..dg.len()],
                    &u[o..][..dg.len()],
                    &g[o..][..dg.len()],
                );
                simd::bwd(a, u, g, dg, du)
            });
        return (from_f32_vec(dgate), from_f32_vec(dup));
    }
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

/// The f32 loops, compiled for AVX2 where the CPU has it (the forward for AVX-512).
mod simd {
    use std::mem::MaybeUninit;

    use super::vmath;

    /// Writes every element of `y` (a, u and y have one length).
    #[inline(always)]
    fn fwd_body(a: &[f32], u: &[f32], y: &mut [MaybeUninit<f32>]) {
        assert!(
            a.len() == y.len() && u.len() == y.len(),
            "swiglu: block lengths differ"
        );
        for ((y, &a), &u) in y.iter_mut().zip(a).zip(u) {
            y.write(a * vmath::sigmoid(a) * u);
        }
    }

    #[inline(always)]
    fn bwd_body(a: &[f32], u: &[f32], g: &[f32], dg: &mut [f32], du: &mut [f32]) {
        let ins = a.iter().zip(u).zip(g);
        for ((dg, du), ((&a, &u), &g)) in dg.iter_mut().zip(du.iter_mut()).zip(ins) {
            let s = vmath::sigmoid(a);
            *dg = g * u * (s + a * s * (1.0 - s));
            *du = g * a * s;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fwd_avx2(a: &[f32], u: &[f32], y: &mut [MaybeUninit<f32>]) {
        fwd_body(a, u, y)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bwd_avx2(a: &[f32], u: &[f32], g: &[f32], dg: &mut [f32], du: &mut [f32]) {
        bwd_body(a, u, g, dg, du)
    }

    /// The same steps in 16 lanes and 32 registers (the same bits: no step is fused).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn fwd_avx512(a: &[f32], u: &[f32], y: &mut [MaybeUninit<f32>]) {
        fwd_body(a, u, y)
    }

    pub fn fwd(a: &[f32], u: &[f32], y: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if vmath::has_avx512() {
            // SAFETY: has_avx512() saw AVX-512F (and AVX2 and FMA) on this CPU.
            return unsafe { fwd_avx512(a, u, y) };
        }
        #[cfg(target_arch = "x86_64")]
        if vmath::has_avx2() {
            // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
            return unsafe { fwd_avx2(a, u, y) };
        }
        fwd_body(a, u, y)
    }

    pub fn bwd(a: &[f32], u: &[f32], g: &[f32], dg: &mut [f32], du: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if vmath::has_avx2() {
            // SAFETY: has_avx2() saw AVX2 and FMA on this CPU.
            return unsafe { bwd_avx2(a, u, g, dg, du) };
        }
        bwd_body(a, u, g, dg, du)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever vector width the CPU runs (AVX-512, AVX2 or none), the forward gives the
    /// bits of the plain scalar steps, over several blocks and a ragged last one.
    #[test]
    fn forward_keeps_the_scalar_bits() {
        let n = 2 * BLOCK + 37;
        let gate = crate::util::randn_vec(n, 3.0, 5);
        let up = crate::util::randn_vec(n, 1.0, 6);
        let y = swiglu(&gate, &up);
        for (i, ((&a, &u), &y)) in gate.iter().zip(&up).zip(&y).enumerate() {
            let want = a * vmath::sigmoid(a) * u;
            assert_eq!(y.to_bits(), want.to_bits(), "element {i}: {y} vs {want}");
        }
    }
}

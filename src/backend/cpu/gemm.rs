//! What the CPU matrix multiply's paths share: the product's shape and strided operands,
//! the k step, and the output buffer that threads write in disjoint tiles.

use std::mem::MaybeUninit;

/// A strided matrix operand: element (batch, row, col) lives at
/// `off + batch*sb + row*sr + col*sc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub off: usize,
    pub sb: usize,
    pub sr: usize,
    pub sc: usize,
}

/// C[b] = A[b] (m x k) @ B[b] (k x n), C dense `(batch, m, n)`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
}

/// The longest k step of the blocked and skinny paths.
pub(super) const KC: usize = 256;

/// The k range split into equal steps of at most KC (576 = 2 x 288, not 384 + 192), so
/// that no step is short and pays the micro-kernel's fixed cost for little work.
pub(super) fn k_step(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// C's storage, shared by the units of `gemm_f32`, which write disjoint tiles of it.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32, pub(super) usize);

impl SharedOut {
    /// A pointer to element `at`, after checking that `span` more elements exist.
    pub(super) fn tile(self, at: usize, span: usize) -> *mut f32 {
        assert!(at + span <= self.1, "gemm tile out of bounds");
        // SAFETY: at < len (asserted), so the pointer stays inside the allocation.
        unsafe { self.0.add(at) }
    }
}
// SAFETY: the units that share it write disjoint elements (see gemm_f32).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// A vector of `len` slots, not yet written (for outputs written in full, which then
/// skip a zeroing pass).
pub(super) fn uninit<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation, and the capacity is len.
    unsafe { v.set_len(len) };
    v
}

/// `v` as f32s. SAFETY: the caller has written every element.
pub(super) unsafe fn assume_init(v: &[MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller guarantees initialisation.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) }
}

/// [`assume_init`] for an owned vector. SAFETY: as there.
pub(super) unsafe fn assume_init_vec<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout, length and capacity; the caller guarantees
    // initialisation, and the original is never dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

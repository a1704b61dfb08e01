//! The CPU backend: the readable reference. Every function here is a plain loop over
//! contiguous slices (strided only where a view is the point: broadcasting and copies),
//! written so that a reader can check it against the math in its comment. Functions are
//! generic over [`Real`] so that gradient checks can run them in f64. Only matmul is
//! blocked and threaded (see [`matmul`]).

// Reference loops index the way the math is written (x[i], s[j]).
#![allow(clippy::needless_range_loop)]

pub mod allocator;
mod gemm;
pub mod matmul;
mod microkernel;
pub mod skinny;
pub mod threads;

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use rayon::prelude::*;

use super::{AttnDims, BinaryOp, ReduceOp, UnaryOp, LSE_MASKED};

/// Tensors at least this large run their elementwise and row loops on rayon's threads.
/// Each element (or row) is still computed by exactly one thread in a fixed order, so
/// results do not depend on the thread count.
const PAR_MIN: usize = 1 << 15;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Layout;
use crate::tensor::{CpuData, Storage};

/// A float type the reference loops run in (f32, or f64 for gradient checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, p: Self) -> Self;
    fn abs(self) -> Self;
    fn maxv(self, o: Self) -> Self;
    fn minv(self, o: Self) -> Self;
    fn slice(d: &CpuData) -> Option<&[Self]>;
    fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
    /// Matrix multiply: the blocked SIMD path for f32, the reference loops for f64.
    fn gemm(g: &matmul::Gemm, a: &[Self], b: &[Self]) -> Vec<Self>;
    /// Attention forward: flash-tiled for f32, the reference loops for f64.
    fn attention(
        d: &AttnDims,
        q: &[Self],
        k: &[Self],
        v: &[Self],
        ranges: Option<&[u32]>,
    ) -> (Vec<Self>, Vec<Self>);
    /// Attention backward, split as the forward.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        d: &AttnDims,
        q: &[Self],
        k: &[Self],
        v: &[Self],
        o: &[Self],
        lse: &[Self],
        dout: &[Self],
        ranges: Option<&[u32]>,
    ) -> (Vec<Self>, Vec<Self>, Vec<Self>);
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
}

macro_rules! impl_real {
    ($t:ty, $dt:expr, $variant:ident, $gemm:path, $attn:path, $attn_bwd:path) => {
        impl Real for $t {
            const DTYPE: DType = $dt;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn maxv(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            fn minv(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            fn slice(d: &CpuData) -> Option<&[Self]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuData {
                CpuData::$variant(v)
            }
            fn gemm(g: &matmul::Gemm, a: &[Self], b: &[Self]) -> Vec<Self> {
                $gemm(g, a, b)
            }
            fn attention(
                d: &AttnDims,
                q: &[Self],
                k: &[Self],
                v: &[Self],
                ranges: Option<&[u32]>,
            ) -> (Vec<Self>, Vec<Self>) {
                $attn(d, q, k, v, ranges)
            }
            fn attention_bwd(
                d: &AttnDims,
                q: &[Self],
                k: &[Self],
                v: &[Self],
                o: &[Self],
                lse: &[Self],
                dout: &[Self],
                ranges: Option<&[u32]>,
            ) -> (Vec<Self>, Vec<Self>, Vec<Self>) {
                $attn_bwd(d, q, k, v, o, lse, dout, ranges)
            }
        }
    };
}
impl_real!(
    f32,
    DType::F32,
    F32,
    matmul::gemm_f32,
    flash::attention_f32,
    flash::attention_bwd_f32
);
impl_real!(
    f64,
    DType::F64,
    F64,
    matmul::gemm_ref,
    attention::attention_ref,
    attention::attention_bwd_ref
);

/// Run `f` over the f32 storages of several CPU tensors at once, each with its layout's
/// offset (the caller reads them through their layouts). Errors if one lives on the GPU
/// or holds another dtype.
pub(crate) fn with_f32_storages<R>(
    op: &'static str,
    ts: &[&crate::tensor::Tensor],
    f: impl FnOnce(&[(&[f32], usize)]) -> R,
) -> Result<R> {
    let mut guards = Vec::with_capacity(ts.len());
    for t in ts {
        let Storage::Cpu(data) = &**t.storage() else {
            return Err(Error::invalid(op, "expected a cpu tensor"));
        };
        profile::bytes((t.layout().numel() * t.dtype().size()) as f64);
        guards.push((data.read_recursive(), t.layout().offset));
    }
    let mut views = Vec::with_capacity(ts.len());
    for (g, off) in &guards {
        match <f32 as Real>::slice(g) {
            Some(s) => views.push((s, *off)),
            None => {
                return Err(Error::DTypeMismatch {
                    op,
                    expected: DType::F32,
                    got: g.dtype(),
                })
            }
        }
    }
    Ok(f(&views))
}

/// Typed access to a CPU tensor's storage for the reference loops (here, beside [`Real`],
/// so that the tensor type does not depend on the backend).
impl crate::tensor::Tensor {
    /// Run `f` over this CPU tensor's contiguous elements as `T` (copies first if the view
    /// is strided). Errors if the tensor lives on the GPU or holds another dtype.
    pub(crate) fn cpu_read<T: Real, R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&[T]) -> R,
    ) -> Result<R> {
        let t = if self.is_contiguous() {
            self.clone()
        } else {
            crate::autograd::no_grad(|| self.contiguous())?
        };
        t.cpu_strided(op, |data: &[T], l| f(&data[l.offset..l.offset + l.numel()]))
    }

    /// Run `f` over this CPU tensor's whole storage as `T`, with its layout (no copy).
    pub(crate) fn cpu_strided<T: Real, R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&[T], &Layout) -> R,
    ) -> Result<R> {
        let Storage::Cpu(data) = &**self.storage() else {
            return Err(Error::invalid(op, "expected a cpu tensor"));
        };
        threads::keep_warm();
        let _span = profile::span(op, false);
        profile::bytes((self.layout().numel() * self.dtype().size()) as f64);
        let d = data.read_recursive();
        match T::slice(&d) {
            Some(s) => Ok(f(s, self.layout())),
            None => Err(Error::DTypeMismatch {
                op,
                expected: T::DTYPE,
                got: d.dtype(),
            }),
        }
    }
}

/// The sum of squares of an f32 CPU tensor's elements, added in f64 (in parallel blocks
/// of fixed size, then in block order, so the result does not depend on the threads).
pub fn sum_squares(t: &crate::tensor::Tensor) -> Result<f64> {
    t.cpu_read("sum_squares", |x: &[f32]| {
        const BLOCK: usize = 1 << 14;
        let parts: Vec<f64> = x.par_chunks(BLOCK).map(vmath::sum_squares).collect();
        parts.iter().sum()
    })
}

/// `x` as f32 when `T` is f32 (the fast paths' entry), else None.
fn f32_view<T: Real>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32 (same type, so same size and alignment).
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// A fast path's f32 result as `Vec<T>`; only called when `T` is f32.
fn from_f32_vec<T: Real>(v: Vec<f32>) -> Vec<T> {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: T is f32 (asserted), so the allocation's layout is T's.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

fn sigmoid<T: Real>(x: T) -> T {
    // 1 / (1 + e^-x), written so that neither branch overflows.
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

mod adamw;
mod attention;
mod decode;
mod elementwise;
mod embedding;
pub mod flash;
mod logprob;
pub mod profile;
mod reduce;
mod rmsnorm;
mod rope;
mod softmax;
mod swiglu;
pub mod vmath;

pub use super::AdamW;
pub use adamw::adamw;
pub use attention::{
    attention, attention_bwd, attention_bwd_ref, attention_ref, attn_key_range, attn_keys, Keys,
};
pub use decode::attention_decode_shared;
pub use elementwise::{binary, copy_strided, unary, unary_grad, where_select};
pub use embedding::{embedding, embedding_bwd};
pub use logprob::{token_logprobs, token_logprobs_bwd};
pub use reduce::{reduce, scatter_dim};
pub use rmsnorm::{rmsnorm, rmsnorm_bwd};
pub use rope::rope;
pub use softmax::softmax_rows;
pub use swiglu::{swiglu, swiglu_bwd};

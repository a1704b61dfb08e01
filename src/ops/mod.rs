//! The op set. One file per op family; each holds the forward (dispatching to the CPU
//! reference loops or the GPU kernels) and, right next to it, the hand-written backward
//! that autograd calls. Backward closures run with gradients off and are themselves built
//! from ops, so they run on whichever device the tensors live on.

pub mod attention;
pub mod cast;
pub mod elementwise;
pub mod embedding;
pub mod lm_head;
pub mod logprob;
pub mod matmul;
pub mod movement;
pub mod optim;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Run `$body` with `$T` bound to the Rust float type of `$dtype` (f32 or f64), or return
/// a dtype error naming `$op`.
macro_rules! with_real {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                #[allow(unused_imports)]
                use $crate::backend::cpu::Real as _;
                type $T = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                #[allow(unused_imports)]
                use $crate::backend::cpu::Real as _;
                type $T = f64;
                $body
            }
            other => {
                return Err($crate::error::Error::DTypeMismatch {
                    op: $op,
                    expected: $crate::dtype::DType::F32,
                    got: other,
                })
            }
        }
    };
}
pub(crate) use with_real;

/// A CPU result vector wrapped as a contiguous tensor.
pub(crate) fn cpu_tensor<T: crate::backend::cpu::Real>(
    v: Vec<T>,
    shape: &[usize],
) -> Result<Tensor> {
    Tensor::from_cpu_data(T::wrap(v), shape)
}

/// All tensors on one device; returns it.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch {
                op,
                lhs: d.to_string(),
                rhs: t.device().to_string(),
            });
        }
    }
    Ok(d)
}

/// All tensors hold the same compute float type (f32, or f64 on the CPU); returns it.
pub(crate) fn same_float(op: &'static str, ts: &[&Tensor]) -> Result<DType> {
    let d = ts[0].dtype();
    if !matches!(d, DType::F32 | DType::F64) {
        return Err(Error::DTypeMismatch {
            op,
            expected: DType::F32,
            got: d,
        });
    }
    for t in &ts[1..] {
        if t.dtype() != d {
            return Err(Error::DTypeMismatch {
                op,
                expected: d,
                got: t.dtype(),
            });
        }
    }
    Ok(d)
}

/// Device and float-dtype agreement in one call.
pub(crate) fn check(op: &'static str, ts: &[&Tensor]) -> Result<(Device, DType)> {
    Ok((same_device(op, ts)?, same_float(op, ts)?))
}

/// The last dimension, or an error for rank-0 tensors.
pub(crate) fn last_dim(op: &'static str, t: &Tensor) -> Result<usize> {
    t.shape()
        .last()
        .copied()
        .ok_or_else(|| Error::bad_shape(op, "needs at least one dimension", t.shape()))
}

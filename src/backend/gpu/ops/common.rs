//! What every op's dispatch shares (as `shaders/common.wgsl` is the shaders' prelude):
//! output allocation, dtype and rank checks, shape padding, the subgroup switch, and dense
//! blocks under the binding limit.

#[allow(unused_imports)]
use super::*;

use crate::backend::gpu::{context, split, GpuBuffer};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::{numel, Layout, MAX_RANK};
use crate::tensor::{Storage, Tensor};

pub(super) const WG: usize = 256;

/// A fresh output tensor (poisoned with NaN when poisoning is on).
pub fn empty(shape: &[usize], dtype: DType) -> Result<Tensor> {
    if dtype == DType::F64 {
        return Err(Error::invalid("gpu", "f64 tensors live on the cpu only"));
    }
    let bytes = (numel(shape) * dtype.size()).div_ceil(4) * 4;
    let buf = context()?.alloc_out(bytes, "output")?;
    Ok(Tensor::from_storage(Storage::Gpu(buf), shape, dtype))
}

/// The subgroup specialisation of the row-reduction kernels.
pub(super) fn sg() -> Result<(&'static str, u32)> {
    Ok(("SG", context()?.use_subgroups() as u32))
}

pub(super) fn f32_out(shape: &[usize]) -> Result<Tensor> {
    empty(shape, DType::F32)
}

pub(super) fn require_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch {
                op,
                expected: DType::F32,
                got: t.dtype(),
            });
        }
    }
    Ok(())
}

/// The tensor as dense storage starting at element 0 (a copy only for offset/strided views).
pub(super) fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset == 0 {
        return Ok(t.clone());
    }
    let out = empty(t.shape(), t.dtype())?;
    copy(t, &out, &Layout::contiguous(t.shape()))?;
    Ok(out)
}

pub(super) fn buf(t: &Tensor) -> &GpuBuffer {
    t.gpu_buf()
}

pub(super) fn rank_check(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(Error::bad_shape(
            op,
            format!("rank above {MAX_RANK} is not supported on the gpu"),
            shape,
        ));
    }
    Ok(())
}

pub(super) fn shape8(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; MAX_RANK - shape.len()];
    s.extend(shape);
    s
}

/// The blocks of a 1-D dense kernel with no offsets in its uniform: every operand starts
/// at element 0 and blocks are whole multiples of 128 elements, so every window starts
/// exactly at its block (checked).
pub(super) fn dense_blocks<'a>(
    n: usize,
    ops: &[(u32, &'a GpuBuffer)],
) -> Result<Vec<split::Block<'a>>> {
    let ops: Vec<split::Operand> = ops
        .iter()
        .map(|&(slot, b)| split::Operand::dense(slot, b, 4, 0, &[n]))
        .collect();
    let blocks = split::plan(&[n], &ops, 128)?;
    if blocks.iter().any(|b| b.offs.iter().any(|&o| o != 0)) {
        return Err(Error::Gpu(
            "split: a dense block does not start its window".into(),
        ));
    }
    Ok(blocks)
}

/// Strides padded to 8 dims from the left.
pub(super) fn pad8(strides: &[usize]) -> Vec<usize> {
    let mut s = vec![0; MAX_RANK - strides.len()];
    s.extend(strides);
    s
}

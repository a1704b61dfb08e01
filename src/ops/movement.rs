//! Views and movement: reshape, permute/transpose, narrow, broadcast, (un)squeeze,
//! contiguous and cat. Views share storage and only change the layout; contiguous and
//! cat copy through a strided copy kernel.

use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::error::{Error, Result};
use crate::shape::{resolve_dim, Layout};
use crate::tensor::{CpuData, Device, Storage, Tensor};

/// Copy the elements of `src` (any layout) into `dst`'s storage at `dl` (same shape).
pub(crate) fn copy_into(src: &Tensor, dst: &Tensor, dl: &Layout) -> Result<()> {
    if src.dtype() != dst.dtype() {
        return Err(Error::DTypeMismatch {
            op: "copy",
            expected: dst.dtype(),
            got: src.dtype(),
        });
    }
    match (&**src.storage(), &**dst.storage()) {
        (Storage::Cpu(s), Storage::Cpu(d)) => {
            let ls = src.layout();
            if std::sync::Arc::ptr_eq(src.storage(), dst.storage()) {
                return Err(Error::invalid(
                    "copy",
                    "source and destination share storage",
                ));
            }
            let s = s.read_recursive();
            let mut d = d.write();
            match (&*s, &mut *d) {
                (CpuData::F32(a), CpuData::F32(b)) => cpu::copy_strided(a, ls, b, dl),
                (CpuData::F64(a), CpuData::F64(b)) => cpu::copy_strided(a, ls, b, dl),
                (CpuData::F16(a), CpuData::F16(b)) => cpu::copy_strided(a, ls, b, dl),
                (CpuData::BF16(a), CpuData::BF16(b)) => cpu::copy_strided(a, ls, b, dl),
                (CpuData::U32(a), CpuData::U32(b)) => cpu::copy_strided(a, ls, b, dl),
                (CpuData::I32(a), CpuData::I32(b)) => cpu::copy_strided(a, ls, b, dl),
                _ => unreachable!("dtypes checked above"),
            }
            Ok(())
        }
        (Storage::Gpu(_), Storage::Gpu(_)) => kernels::copy(src, dst, dl),
        _ => Err(Error::DeviceMismatch {
            op: "copy",
            lhs: src.device().to_string(),
            rhs: dst.device().to_string(),
        }),
    }
}

/// Fresh, uninitialised (CPU: zeroed; GPU: pooled, poisoned in tests) contiguous storage.
pub(crate) fn empty(shape: &[usize], dtype: crate::dtype::DType, device: Device) -> Result<Tensor> {
    use crate::dtype::DType;
    let n = crate::shape::numel(shape);
    match device {
        Device::Cpu => {
            let data = match dtype {
                DType::F32 => CpuData::F32(vec![0.0; n]),
                DType::F64 => CpuData::F64(vec![0.0; n]),
                DType::F16 => CpuData::F16(vec![half::f16::ZERO; n]),
                DType::BF16 => CpuData::BF16(vec![half::bf16::ZERO; n]),
                DType::U32 => CpuData::U32(vec![0; n]),
                DType::I32 => CpuData::I32(vec![0; n]),
            };
            Tensor::from_cpu_data(data, shape)
        }
        Device::Gpu => kernels::empty(shape, dtype),
    }
}

impl Tensor {
    /// Same elements, new shape. A view when the layout allows, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if crate::shape::numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                "element counts differ",
                self.shape(),
                shape,
            ));
        }
        let src = if self.is_contiguous() {
            self.clone()
        } else {
            self.contiguous()?
        };
        let out = src.with_layout(src.layout().reshape(shape)?);
        let in_shape = self.shape().to_vec();
        Ok(record(out, "reshape", &[&src], move |g| {
            Ok(vec![Some(g.reshape(&in_shape)?)])
        }))
    }

    /// Reorder dimensions (a view).
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout().permute(dims)?);
        let mut inv = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            inv[d] = i;
        }
        Ok(record(out, "permute", &[self], move |g| {
            Ok(vec![Some(g.permute(&inv)?)])
        }))
    }

    /// Swap two dimensions (a view). Negative dims count from the end.
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let r = self.rank();
        let (a, b) = (
            resolve_dim("transpose", d0, r)?,
            resolve_dim("transpose", d1, r)?,
        );
        let mut dims: Vec<usize> = (0..r).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// Swap the last two dimensions.
    pub fn t(&self) -> Result<Tensor> {
        self.transpose(-2, -1)
    }

    /// Elements `start..start+len` along `dim` (a view).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = resolve_dim("narrow", dim, self.rank())?;
        let out = self.with_layout(self.layout().narrow(d, start, len)?);
        let in_shape = self.shape().to_vec();
        Ok(record(out, "narrow", &[self], move |g| {
            // backward: the gradient lands in a zero tensor at the same window
            let dx = empty(&in_shape, g.dtype(), g.device())?;
            kernels_fill_zero(&dx)?;
            let win = dx.layout().narrow(d, start, len)?;
            copy_into(g, &dx, &win)?;
            Ok(vec![Some(dx)])
        }))
    }

    /// Expand size-1 (or missing leading) dimensions to `shape` (a stride-0 view).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout().broadcast_to(shape)?);
        let in_shape = self.shape().to_vec();
        Ok(record(out, "broadcast", &[self], move |g| {
            Ok(vec![Some(g.sum_to(&in_shape)?)])
        }))
    }

    /// Insert a size-1 dimension at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        let mut s = self.shape().to_vec();
        s.insert(dim, 1);
        self.reshape(&s)
    }

    /// Remove a size-1 dimension.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("squeeze", dim, self.rank())?;
        if self.shape()[d] != 1 {
            return Err(Error::bad_shape(
                "squeeze",
                format!("dimension {d} is not 1"),
                self.shape(),
            ));
        }
        let mut s = self.shape().to_vec();
        s.remove(d);
        self.reshape(&s)
    }

    /// A row-major copy, or `self` when already contiguous with no offset gaps.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = empty(self.shape(), self.dtype(), self.device())?;
        copy_into(self, &out, &Layout::contiguous(self.shape()))?;
        Ok(record(out, "contiguous", &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// Concatenate along `dim`. All tensors share dtype, device and the other dims.
    pub fn cat(ts: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = ts
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = resolve_dim("cat", dim, first.rank())?;
        let mut shape = first.shape().to_vec();
        shape[d] = 0;
        for t in ts {
            let ok = t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == d || t.shape()[i] == first.shape()[i]);
            if !ok {
                return Err(Error::shape(
                    "cat",
                    format!("shapes differ outside dim {d}"),
                    first.shape(),
                    t.shape(),
                ));
            }
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "cat",
                    expected: first.dtype(),
                    got: t.dtype(),
                });
            }
            super::same_device("cat", &[first, t])?;
            shape[d] += t.shape()[d];
        }
        let out = empty(&shape, first.dtype(), first.device())?;
        let mut start = 0;
        let mut starts = Vec::new();
        for t in ts {
            let win = out.layout().narrow(d, start, t.shape()[d])?;
            copy_into(t, &out, &win)?;
            starts.push((start, t.shape()[d]));
            start += t.shape()[d];
        }
        Ok(record(out, "cat", ts, move |g| {
            starts
                .iter()
                .map(|&(s, l)| Ok(Some(g.narrow(d as isize, s, l)?.contiguous()?)))
                .collect()
        }))
    }

    /// Sum a broadcast gradient back down to `shape` (the backward of broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if shape.len() > self.rank() {
            return Err(Error::shape(
                "sum_to",
                "target has higher rank",
                self.shape(),
                shape,
            ));
        }
        let mut t = self.clone();
        for _ in 0..self.rank() - shape.len() {
            t = t.sum(0, false)?;
        }
        for (d, &s) in shape.iter().enumerate() {
            if s == 1 && t.shape()[d] != 1 {
                t = t.sum(d as isize, true)?;
            } else if s != t.shape()[d] {
                return Err(Error::shape(
                    "sum_to",
                    "shapes do not broadcast",
                    self.shape(),
                    shape,
                ));
            }
        }
        Ok(t)
    }
}

/// Zero a fresh tensor in place.
fn kernels_fill_zero(t: &Tensor) -> Result<()> {
    match t.device() {
        Device::Cpu => Ok(()), // `empty` zeroes on the CPU
        Device::Gpu => kernels::fill(t, 0.0),
    }
}

impl Tensor {
    /// Overwrite this tensor's elements with `src`'s (same shape and dtype), in place.
    /// Used to restore parameters and optimizer state from a checkpoint.
    pub fn assign_(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape(
                "assign",
                "shapes differ",
                self.shape(),
                src.shape(),
            ));
        }
        let src = src.to_device(self.device())?.to_dtype(self.dtype())?;
        crate::autograd::no_grad(|| copy_into(&src, self, &self.layout().clone()))
    }
}

//! Sum, mean and max along one dimension.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels, ReduceOp};
use crate::error::{Error, Result};
use crate::shape::{numel, resolve_dim};
use crate::tensor::{Device, Tensor};

/// `x` viewed as (outer, n, inner) around dimension `d`.
fn split(shape: &[usize], d: usize) -> (usize, usize, usize) {
    (numel(&shape[..d]), shape[d], numel(&shape[d + 1..]))
}

fn out_shape(shape: &[usize], d: usize, keepdim: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if keepdim {
        s[d] = 1;
    } else {
        s.remove(d);
    }
    s
}

impl Tensor {
    /// Reduce along `d`; returns values (keepdim shape) and, for max, the argmax (u32).
    fn reduce_raw(&self, op: ReduceOp, d: usize) -> Result<(Tensor, Option<Tensor>)> {
        let name = if op == ReduceOp::Sum { "sum" } else { "max" };
        let (dev, dt) = check(name, &[self])?;
        let (outer, n, inner) = split(self.shape(), d);
        if op == ReduceOp::Max && n == 0 {
            return Err(Error::bad_shape(
                "max",
                format!("dimension {d} is empty"),
                self.shape(),
            ));
        }
        let keep = out_shape(self.shape(), d, true);
        let x = self.contiguous()?;
        match dev {
            Device::Cpu => with_real!(name, dt, T => {
                let (v, idx) = x.cpu_read(name, |xs: &[T]| cpu::reduce(op, xs, outer, n, inner))?;
                let idx = if op == ReduceOp::Max { Some(Tensor::from_u32(idx, &keep, Device::Cpu)?) } else { None };
                Ok((cpu_tensor(v, &keep)?, idx))
            }),
            Device::Gpu => {
                let (v, idx) = kernels::reduce(op, &x, outer, n, inner)?;
                Ok((
                    v.reshape(&keep)?,
                    idx.map(|i| i.reshape(&keep)).transpose()?,
                ))
            }
        }
    }

    /// Sum along `dim`.
    pub fn sum(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim("sum", dim, self.rank())?;
        let (v, _) = crate::autograd::no_grad(|| self.reduce_raw(ReduceOp::Sum, d))?;
        let out = v.reshape(&out_shape(self.shape(), d, keepdim))?.detach();
        let (in_shape, keep) = (self.shape().to_vec(), out_shape(self.shape(), d, true));
        // backward of y = sum_j x_j: every x_j gets g (broadcast back)
        Ok(record(out, "sum", &[self], move |g| {
            Ok(vec![Some(g.reshape(&keep)?.broadcast_to(&in_shape)?)])
        }))
    }

    /// Mean along `dim`.
    pub fn mean(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim("mean", dim, self.rank())?;
        let n = self.shape()[d];
        self.sum(dim, keepdim)?.scale(1.0 / n.max(1) as f64)
    }

    /// Max along `dim`. The gradient goes to the first maximum (as PyTorch's max(dim)).
    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim("max", dim, self.rank())?;
        let (v, idx) = crate::autograd::no_grad(|| self.reduce_raw(ReduceOp::Max, d))?;
        let idx = idx.expect("max returns indices");
        let out = v.reshape(&out_shape(self.shape(), d, keepdim))?.detach();
        let (in_shape, keep) = (self.shape().to_vec(), out_shape(self.shape(), d, true));
        let (outer, n, inner) = split(self.shape(), d);
        Ok(record(out, "max", &[self], move |g| {
            // backward: dx[o, j, i] = g[o, i] where j is the argmax, else 0
            let g = g.reshape(&keep)?.contiguous()?;
            let dx = match g.device() {
                Device::Cpu => with_real!("max", g.dtype(), T => {
                    let ids = idx.to_vec_u32()?;
                    cpu_tensor(g.cpu_read("max", |gs: &[T]| cpu::scatter_dim(gs, &ids, outer, n, inner))?, &in_shape)?
                }),
                Device::Gpu => {
                    kernels::scatter_dim(&g, &idx, outer, n, inner)?.reshape(&in_shape)?
                }
            };
            Ok(vec![Some(dx)])
        }))
    }

    /// Index of the first maximum along `dim` (u32, no gradient).
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim("argmax", dim, self.rank())?;
        let (_, idx) = crate::autograd::no_grad(|| self.reduce_raw(ReduceOp::Max, d))?;
        idx.expect("max returns indices")
            .reshape(&out_shape(self.shape(), d, keepdim))
    }

    /// Sum of all elements (a scalar tensor of shape []).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])?.sum(0, false)
    }

    /// Mean of all elements.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.scale(1.0 / self.numel().max(1) as f64)
    }
}

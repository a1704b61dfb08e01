//! softmax and log_softmax along the last dimension (fused row kernels).

use super::{check, cpu_tensor, last_dim, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::error::Result;
use crate::tensor::{Device, Tensor};

impl Tensor {
    fn softmax_impl(&self, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        let (dev, dt) = check(name, &[self])?;
        let n = last_dim(name, self)?;
        let x = self.contiguous()?;
        let out = match dev {
            Device::Cpu => with_real!(name, dt, T => {
                cpu_tensor(x.cpu_read(name, |xs: &[T]| cpu::softmax_rows(xs, n, log))?, self.shape())?
            }),
            Device::Gpu => kernels::softmax(&x, n, log)?,
        };
        let y = out.detach();
        Ok(record(out, name, &[self], move |g| {
            let dx = if log {
                // y = x - lse(x):  dx = g - softmax(x) * sum(g)
                g.sub(&y.exp()?.mul(&g.sum(-1, true)?)?)?
            } else {
                // y = softmax(x):  dx_i = y_i (g_i - sum_j g_j y_j)
                y.mul(&g.sub(&g.mul(&y)?.sum(-1, true)?)?)?
            };
            Ok(vec![Some(dx)])
        }))
    }

    /// softmax over the last dimension.
    pub fn softmax(&self) -> Result<Tensor> {
        self.softmax_impl(false)
    }

    /// log_softmax over the last dimension.
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.softmax_impl(true)
    }
}

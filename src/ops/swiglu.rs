//! SwiGLU: silu(gate) * up, fused forward and backward. (SiLU alone is a unary op.)

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

impl Tensor {
    /// silu(self) * up, elementwise (same shapes).
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        let (dev, dt) = check("swiglu", &[self, up])?;
        if self.shape() != up.shape() {
            return Err(Error::shape(
                "swiglu",
                "gate and up differ",
                self.shape(),
                up.shape(),
            ));
        }
        let (a, u) = (self.contiguous()?, up.contiguous()?);
        let out = match dev {
            Device::Cpu => with_real!("swiglu", dt, T => {
                cpu_tensor(a.cpu_read("swiglu", |x: &[T]| u.cpu_read("swiglu", |y: &[T]| cpu::swiglu(x, y)))??, self.shape())?
            }),
            Device::Gpu => kernels::swiglu(&a, &u)?,
        };
        Ok(record(out, "swiglu", &[self, up], move |g| {
            // backward: d gate = g * up * silu'(gate),  d up = g * silu(gate)
            let g = g.contiguous()?;
            let (da, du) = match g.device() {
                Device::Cpu => with_real!("swiglu", g.dtype(), T => {
                    let (da, du) = a.cpu_read("swiglu", |x: &[T]| u.cpu_read("swiglu", |y: &[T]| g.cpu_read("swiglu", |gs: &[T]| cpu::swiglu_bwd(x, y, gs))))???;
                    (cpu_tensor(da, a.shape())?, cpu_tensor(du, a.shape())?)
                }),
                Device::Gpu => kernels::swiglu_bwd(&a, &u, &g)?,
            };
            Ok(vec![Some(da), Some(du)])
        }))
    }
}

//! RMSNorm over the last dimension, fused forward and backward. The forward saves the
//! reciprocal RMS per row; the backward reuses it.

use super::{check, cpu_tensor, last_dim, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

impl Tensor {
    /// y = x / sqrt(mean(x^2, -1) + eps) * weight, weight of shape (C,).
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(self.rms_norm_with_rstd(weight, eps)?.0)
    }

    /// As [`Tensor::rms_norm`], also returning the saved reciprocal RMS (rows,).
    pub fn rms_norm_with_rstd(&self, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        let (dev, dt) = check("rms_norm", &[self, weight])?;
        let c = last_dim("rms_norm", self)?;
        if weight.shape() != [c] {
            return Err(Error::shape(
                "rms_norm",
                "weight must be (C,) for input (..., C)",
                self.shape(),
                weight.shape(),
            ));
        }
        if c == 0 {
            return Err(Error::bad_shape(
                "rms_norm",
                "the normalised dimension is empty",
                self.shape(),
            ));
        }
        let rows = self.numel() / c;
        let (x, w) = (self.contiguous()?, weight.contiguous()?);
        let (y, rstd) = match dev {
            Device::Cpu => with_real!("rms_norm", dt, T => {
                let (y, r) = x.cpu_read("rms_norm", |xs: &[T]| w.cpu_read("rms_norm", |ws: &[T]| cpu::rmsnorm(xs, ws, c, eps as f64)))??;
                (cpu_tensor(y, self.shape())?, cpu_tensor(r, &[rows])?)
            }),
            Device::Gpu => kernels::rmsnorm(&x, &w, c, eps)?,
        };
        let saved = rstd.clone();
        let out = record(y, "rms_norm", &[self, weight], move |g| {
            // backward (see cpu::rmsnorm_bwd): dx = rstd*g*w - x*rstd^3*mean(g*w*x); dw = sum g*x*rstd
            let g = g.contiguous()?;
            let (dx, dw) = match g.device() {
                Device::Cpu => with_real!("rms_norm", g.dtype(), T => {
                    let (dx, dw) = x.cpu_read("rms_norm", |xs: &[T]| w.cpu_read("rms_norm", |ws: &[T]| saved.cpu_read("rms_norm", |rs: &[T]| g.cpu_read("rms_norm", |gs: &[T]| cpu::rmsnorm_bwd(xs, ws, rs, gs, c)))))????;
                    (cpu_tensor(dx, x.shape())?, cpu_tensor(dw, &[c])?)
                }),
                Device::Gpu => kernels::rmsnorm_bwd(&x, &w, &saved, &g, c)?,
            };
            Ok(vec![Some(dx), Some(dw)])
        });
        Ok((out, rstd))
    }
}

//! The AdamW update, applied in place to a parameter's storage (PyTorch semantics).

pub use crate::backend::AdamW;
use crate::backend::{cpu, gpu::kernels};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// One AdamW step on `param` in place, with moments `m`, `v` (same shape, updated in place).
pub fn adamw_step(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, h: &AdamW) -> Result<()> {
    adamw_step_clipped(param, grad, m, v, h, None)
}

/// [`adamw_step`] with the gradient scaled by `clip[0]` first (a `(1,)` tensor on the
/// parameter's device: the clipping coefficient, which then never leaves the device and
/// costs no dispatch of its own on the GPU).
pub fn adamw_step_clipped(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &AdamW,
    clip: Option<&Tensor>,
) -> Result<()> {
    let dev = super::same_device("adamw", &[param, grad, m, v])?;
    super::same_float("adamw", &[param, grad, m, v])?;
    for t in [grad, m, v] {
        if t.shape() != param.shape() {
            return Err(Error::shape(
                "adamw",
                "state and gradient must match the parameter",
                param.shape(),
                t.shape(),
            ));
        }
    }
    for t in [param, m, v] {
        if !t.is_contiguous() || t.layout().offset != 0 {
            return Err(Error::invalid(
                "adamw",
                "parameters and moments must own dense storage",
            ));
        }
    }
    let g = match (clip, dev) {
        (Some(c), Device::Cpu) => grad.mul(c)?.contiguous()?,
        _ => grad.contiguous()?,
    };
    match dev {
        Device::Cpu => {
            use std::sync::Arc;
            let (ps, ms, vs) = (param.storage(), m.storage(), v.storage());
            if Arc::ptr_eq(ps, ms) || Arc::ptr_eq(ps, vs) || Arc::ptr_eq(ms, vs) {
                return Err(Error::invalid(
                    "adamw",
                    "parameter and moments must not share storage",
                ));
            }
            let n = param.numel();
            super::with_real!("adamw", param.dtype(), T => {
                let gv: Vec<T> = g.cpu_read("adamw", |s: &[T]| s.to_vec())?;
                param.with_cpu_data_mut(|pd, _| m.with_cpu_data_mut(|md, _| v.with_cpu_data_mut(|vd, _| {
                    match (T::slice_mut(pd), T::slice_mut(md), T::slice_mut(vd)) {
                        (Some(p), Some(mm), Some(vv)) => {
                            cpu::adamw(h, &mut p[..n], &gv, &mut mm[..n], &mut vv[..n]);
                            Ok(())
                        }
                        _ => Err(Error::invalid("adamw", "parameter and moments must share one dtype")),
                    }
                })))
            })
        }
        Device::Gpu => kernels::adamw(param, &g, m, v, h, clip),
    }
}

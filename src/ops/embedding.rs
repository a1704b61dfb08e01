//! Embedding lookup; its backward is a scatter-add into the table.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{CpuData, Device, Tensor};

impl Tensor {
    /// Rows of the table `self` (V, C) picked by `ids` (u32, any shape): out (..ids, C).
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if matches!(self.dtype(), DType::F16 | DType::BF16) {
            return self.embedding_16bit(ids);
        }
        let (dev, dt) = check("embedding", &[self])?;
        super::same_device("embedding", &[self, ids])?;
        if self.rank() != 2 {
            return Err(Error::bad_shape(
                "embedding",
                "table must be (V, C)",
                self.shape(),
            ));
        }
        if !matches!(ids.dtype(), DType::U32 | DType::I32) {
            return Err(Error::DTypeMismatch {
                op: "embedding",
                expected: DType::U32,
                got: ids.dtype(),
            });
        }
        let (v, c) = (self.shape()[0], self.shape()[1]);
        let mut shape = ids.shape().to_vec();
        shape.push(c);
        let ids = ids.contiguous()?;
        let w = self.contiguous()?;
        let out = match dev {
            Device::Cpu => {
                let idv = ids.cpu_ids("embedding")?;
                if let Some(bad) = idv.iter().find(|&&i| i as usize >= v) {
                    return Err(Error::invalid(
                        "embedding",
                        format!(
                            "token id {} is out of range for a vocabulary of {v}",
                            *bad as i32
                        ),
                    ));
                }
                with_real!("embedding", dt, T => cpu_tensor(w.cpu_read("embedding", |ws: &[T]| cpu::embedding(ws, &idv, c))?, &shape)?)
            }
            Device::Gpu => kernels::embedding(&w, &ids, c)?.reshape(&shape)?,
        };
        Ok(record(out, "embedding", &[self], move |g| {
            // backward: dW[ids[n], :] += g[n, :]
            let g = g.contiguous()?;
            let dw = match g.device() {
                Device::Cpu => with_real!("embedding", g.dtype(), T => {
                    let idv = ids.cpu_ids("embedding")?;
                    cpu_tensor(g.cpu_read("embedding", |gs: &[T]| cpu::embedding_bwd(gs, &idv, v, c))?, &[v, c])?
                }),
                Device::Gpu => kernels::embedding_bwd(&g, &ids, v, c)?,
            };
            Ok(vec![Some(dw)])
        }))
    }

    /// Lookup in a frozen 16-bit table: rows widened to f32, no gradient.
    fn embedding_16bit(&self, ids: &Tensor) -> Result<Tensor> {
        super::same_device("embedding", &[self, ids])?;
        if self.requires_grad() {
            return Err(Error::invalid(
                "embedding",
                "a 16-bit table is frozen and cannot take a gradient; cast it to f32 to train it",
            ));
        }
        if self.rank() != 2 {
            return Err(Error::bad_shape(
                "embedding",
                "table must be (V, C)",
                self.shape(),
            ));
        }
        let (v, c) = (self.shape()[0], self.shape()[1]);
        let mut shape = ids.shape().to_vec();
        shape.push(c);
        let ids = ids.contiguous()?;
        let w = self.contiguous()?;
        match w.device() {
            Device::Cpu => {
                let idv = ids.cpu_ids("embedding")?;
                if let Some(bad) = idv.iter().find(|&&i| i as usize >= v) {
                    return Err(Error::invalid(
                        "embedding",
                        format!(
                            "token id {} is out of range for a vocabulary of {v}",
                            *bad as i32
                        ),
                    ));
                }
                let out = w.with_cpu_data(|d, l| {
                    let mut out = Vec::with_capacity(idv.len() * c);
                    for &id in &idv {
                        let r = l.offset + id as usize * c;
                        match d {
                            CpuData::F16(x) => out.extend(x[r..r + c].iter().map(|h| h.to_f32())),
                            CpuData::BF16(x) => out.extend(x[r..r + c].iter().map(|h| h.to_f32())),
                            _ => unreachable!("16-bit table"),
                        }
                    }
                    out
                });
                Tensor::from_vec(out, &shape, Device::Cpu)
            }
            Device::Gpu => kernels::embedding(&w, &ids, c)?.reshape(&shape),
        }
    }
}

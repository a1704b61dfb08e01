//! Casts between float dtypes: f16/bf16 weights widen to f32 for compute; f32 narrows to
//! f16/bf16 for storage. f64 exists on the CPU only.

use half::{bf16, f16};

use crate::autograd::record;
use crate::backend::gpu::kernels;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{CpuData, Device, Tensor};

fn convert(d: &CpuData, to: DType) -> Option<CpuData> {
    let f32s: Vec<f32> = match d {
        CpuData::F32(v) => v.clone(),
        CpuData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        CpuData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        CpuData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        CpuData::U32(v) => v.iter().map(|&x| x as f32).collect(),
        CpuData::I32(v) => v.iter().map(|&x| x as f32).collect(),
    };
    Some(match to {
        DType::F32 => CpuData::F32(f32s),
        DType::F64 => match d {
            CpuData::F64(v) => CpuData::F64(v.clone()),
            _ => CpuData::F64(f32s.into_iter().map(|x| x as f64).collect()),
        },
        DType::F16 => CpuData::F16(f32s.into_iter().map(f16::from_f32).collect()),
        DType::BF16 => CpuData::BF16(f32s.into_iter().map(bf16::from_f32).collect()),
        _ => return None,
    })
}

impl Tensor {
    /// Convert to `dtype` (a float type). Differentiable: the gradient is cast back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let bad = || {
            Error::invalid(
                "to_dtype",
                format!(
                    "cannot cast {} to {} on the {}",
                    self.dtype(),
                    dtype,
                    self.device()
                ),
            )
        };
        if !dtype.is_float() {
            return Err(bad());
        }
        let x = self.contiguous()?;
        let out = match x.device() {
            Device::Cpu => {
                let data = x.with_cpu_data(|d, l| {
                    let part = convert(d, dtype)?;
                    Some(slice_part(part, l.offset, l.numel()))
                });
                Tensor::from_cpu_data(data.ok_or_else(bad)?, self.shape())?
            }
            Device::Gpu => kernels::cast(&x, dtype)?,
        };
        let src = self.dtype();
        if !src.is_float() {
            return Ok(out);
        }
        Ok(record(out, "to_dtype", &[self], move |g| {
            Ok(vec![Some(g.to_dtype(src)?)])
        }))
    }
}

fn slice_part(d: CpuData, off: usize, n: usize) -> CpuData {
    match d {
        CpuData::F32(v) => CpuData::F32(v[off..off + n].to_vec()),
        CpuData::F64(v) => CpuData::F64(v[off..off + n].to_vec()),
        CpuData::F16(v) => CpuData::F16(v[off..off + n].to_vec()),
        CpuData::BF16(v) => CpuData::BF16(v[off..off + n].to_vec()),
        CpuData::U32(v) => CpuData::U32(v[off..off + n].to_vec()),
        CpuData::I32(v) => CpuData::I32(v[off..off + n].to_vec()),
    }
}

//! Dtype casts (`shaders/cast.wgsl`).

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, grid_1d, split, Uniform};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let (from, n) = (x.dtype(), x.numel());
    let entry = match (from, to) {
        (DType::F16, DType::F32) => "f16_to_f32",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (DType::F32, DType::F16) => "f32_to_f16",
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::U32, DType::F32) => "u32_to_f32",
        (DType::I32, DType::F32) => "i32_to_f32",
        _ => {
            return Err(Error::invalid(
                "to_dtype",
                format!("cannot cast {from} to {to} on the gpu"),
            ))
        }
    };
    let out = empty(x.shape(), to)?;
    // the source may start anywhere (its offset goes in the uniform); the output is
    // dense from 0 and cut in blocks of 128 elements, so its windows start on a word
    let ops = [
        split::Operand::dense(1, buf(x), from.size(), x.layout().offset, &[n]),
        split::Operand::dense(2, buf(&out), to.size(), 0, &[n]),
    ];
    let ctx = context()?;
    for b in split::plan(&[n], &ops, 128)? {
        if b.offs[1] != 0 {
            return Err(Error::Gpu(
                "split: a cast block does not start its window".into(),
            ));
        }
        let len = b.shape[0];
        let u = Uniform::new().u(len).u(b.offs[0]).u(0).u(0);
        let threads = if to.size() == 2 { len.div_ceil(2) } else { len };
        crate::backend::gpu::profile::cost(0.0, (len * (from.size() + to.size())) as f64);
        ctx.dispatch_bound("cast", entry, &[], &u.0, &b.binds, grid_1d(threads, WG))?;
    }
    Ok(out)
}

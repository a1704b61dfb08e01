//! The quick self-check behind `ponder info`: a few kernels on the GPU against the CPU
//! reference, on small awkward shapes with random inputs.

use crate::error::Result;
use crate::ops::attention::AttnOpts;
use crate::tensor::{Device, Tensor};

pub struct Check {
    pub name: &'static str,
    pub max_diff: f64,
    pub pass: bool,
}

fn compare(
    name: &'static str,
    tol: f64,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Check> {
    let cpu = f(inputs)?.to_vec_f32()?;
    let on_gpu: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(Device::Gpu))
        .collect::<Result<_>>()?;
    let gpu = f(&on_gpu)?.to_vec_f32()?;
    let max_diff = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    Ok(Check {
        name,
        max_diff,
        pass: max_diff <= tol,
    })
}

pub fn run() -> Result<Vec<Check>> {
    crate::backend::gpu::context()?;
    crate::backend::gpu::set_poison(true);
    let r = |shape: &[usize], seed| Tensor::randn(shape, 1.0, seed, Device::Cpu);
    let out = vec![
        compare(
            "matmul 33x65x17",
            1e-3,
            &[r(&[33, 17], 1)?, r(&[17, 65], 2)?],
            |t| t[0].matmul(&t[1]),
        )?,
        compare("softmax 7x129", 1e-5, &[r(&[7, 129], 3)?], |t| {
            t[0].softmax()
        })?,
        compare(
            "rms_norm 7x33",
            1e-4,
            &[r(&[7, 33], 4)?, r(&[33], 5)?],
            |t| t[0].rms_norm(&t[1], 1e-6),
        )?,
        compare(
            "attention causal gqa",
            1e-4,
            &[
                r(&[1, 9, 4, 16], 6)?,
                r(&[1, 9, 2, 16], 7)?,
                r(&[1, 9, 2, 16], 8)?,
            ],
            |t| {
                Tensor::attention(
                    &t[0],
                    &t[1],
                    &t[2],
                    &AttnOpts {
                        causal: true,
                        ..Default::default()
                    },
                )
            },
        )?,
        compare(
            "swiglu 7x33",
            1e-5,
            &[r(&[7, 33], 9)?, r(&[7, 33], 10)?],
            |t| t[0].swiglu(&t[1]),
        )?,
    ];
    crate::backend::gpu::set_poison(false);
    Ok(out)
}

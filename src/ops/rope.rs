//! Rotary position embedding in the Hugging Face `rotate_half` convention. The cos/sin
//! tables are inputs, so rope-scaling variants only change how the table is built.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

pub use crate::backend::RopeDims;

fn rope_apply(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    d: RopeDims,
    backward: bool,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    match x.device() {
        Device::Cpu => with_real!("rope", x.dtype(), T => {
            let v = x.cpu_read("rope", |xs: &[T]| cos.cpu_read("rope", |cs: &[T]| sin.cpu_read("rope", |ss: &[T]| {
                cpu::rope(xs, cs, ss, d.b, d.t, d.h, d.hd, d.table_batched, backward)
            })))???;
            cpu_tensor(v, x.shape())
        }),
        Device::Gpu => kernels::rope(&x, cos, sin, d, backward),
    }
}

impl Tensor {
    /// Apply rotary embedding to x `(B, T, H, HD)` with cos/sin tables `(T, HD)` or
    /// `(1|B, T, HD)`: y = x * cos + rotate_half(x) * sin. The tables get no gradient.
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        check("rope", &[self, cos, sin])?;
        if self.rank() != 4 {
            return Err(Error::bad_shape(
                "rope",
                "x must be (B, T, H, HD)",
                self.shape(),
            ));
        }
        let (b, t, h, hd) = (
            self.shape()[0],
            self.shape()[1],
            self.shape()[2],
            self.shape()[3],
        );
        if hd % 2 != 0 {
            return Err(Error::bad_shape(
                "rope",
                "head dim must be even",
                self.shape(),
            ));
        }
        let tb = match cos.shape() {
            [tt, dd] if *tt == t && *dd == hd => 1,
            [bb, tt, dd] if (*bb == 1 || *bb == b) && *tt == t && *dd == hd => *bb,
            _ => {
                return Err(Error::shape(
                    "rope",
                    "cos/sin must be (T, HD) or (1|B, T, HD)",
                    self.shape(),
                    cos.shape(),
                ))
            }
        };
        if sin.shape() != cos.shape() {
            return Err(Error::shape(
                "rope",
                "cos and sin differ",
                cos.shape(),
                sin.shape(),
            ));
        }
        let d = RopeDims {
            b,
            t,
            h,
            hd,
            table_batched: tb == b && b > 1,
        };
        let (cos, sin) = (cos.contiguous()?.detach(), sin.contiguous()?.detach());
        let out = rope_apply(self, &cos, &sin, d, false)?;
        Ok(record(out, "rope", &[self], move |g| {
            // backward: the transpose of the rotation, dx = g*cos + cat((g sin)[h:], -(g sin)[:h])
            Ok(vec![Some(rope_apply(g, &cos, &sin, d, true)?)])
        }))
    }
}

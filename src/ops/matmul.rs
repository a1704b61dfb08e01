//! Batched matrix multiply. Transposed operands are strided views, never copies: the
//! kernels take (batch, row, col) strides, so `a.matmul(&w.t())` reads `w` in place.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::cpu::matmul::gemm_f32;
use crate::backend::cpu::skinny;
use crate::backend::{gpu::kernels, Gemm, Operand};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::CpuData;
use crate::tensor::{Device, Tensor};

/// If dims (shape, strides) can be walked with one stride, (count, stride).
fn fold(shape: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let dims: Vec<(usize, usize)> = shape
        .iter()
        .zip(strides)
        .map(|(&s, &t)| (s, t))
        .filter(|&(s, _)| s != 1)
        .collect();
    let count = shape.iter().product();
    match dims.last() {
        None => Some((count, 0)),
        Some(&(_, inner)) => {
            for w in dims.windows(2) {
                if w[0].1 != w[1].0 * w[1].1 {
                    return None;
                }
            }
            Some((count, inner))
        }
    }
}

impl Tensor {
    /// `self @ w^T` for each weight `w` `(N_i, K)`: several linear layers over the same
    /// input (a layer's q, k and v projections, or its gate and up projections). While
    /// decoding on the CPU with no gradient recorded, one pass packs the input once and
    /// splits the rows of every weight over the threads together (one wake-up, not one
    /// per weight); each result holds the same bits as `self.matmul(&w.t()?)`, which is
    /// what it computes everywhere else.
    pub fn linear_many(&self, weights: &[&Tensor]) -> Result<Vec<Tensor>> {
        let k = self.shape().last().copied().unwrap_or(0);
        let m = self.numel().checked_div(k).unwrap_or(0);
        let taped = crate::tensor::grad_enabled()
            && (self.requires_grad() || weights.iter().any(|w| w.requires_grad()));
        let one_pass = weights.len() > 1
            && !taped
            && self.device() == Device::Cpu
            && self.dtype() == DType::F32
            && self.rank() >= 2
            && weights.iter().all(|w| {
                w.device() == Device::Cpu
                    && w.dtype() == DType::F32
                    && w.rank() == 2
                    && w.is_contiguous()
                    && w.shape()[1] == k
                    && skinny::applies(m, w.shape()[0], k)
            });
        if !one_pass {
            return weights.iter().map(|w| self.matmul(&w.t()?)).collect();
        }
        let flops: usize = weights.iter().map(|w| 2 * m * k * w.shape()[0]).sum();
        let outs = self.cpu_read("matmul", |x: &[f32]| {
            crate::backend::cpu::profile::flops(flops as f64);
            crate::backend::cpu::with_f32_storages("matmul", weights, |ws| {
                let rows: Vec<skinny::WeightRows> = ws
                    .iter()
                    .zip(weights)
                    .map(|(&(w, off), t)| skinny::WeightRows {
                        w,
                        off,
                        stride: k,
                        n: t.shape()[0],
                    })
                    .collect();
                skinny::skinny_many(x, m, k, &rows)
            })
        })??;
        let lead = &self.shape()[..self.rank() - 1];
        outs.into_iter()
            .zip(weights)
            .map(|(v, w)| {
                let mut shape = lead.to_vec();
                shape.push(w.shape()[0]);
                cpu_tensor(v, &shape)
            })
            .collect()
    }
}

impl Tensor {
    /// `(..., M, K) @ (..., K, N)`. The right side may be 2-D (shared by every batch), the
    /// left side may be 2-D against a batched right side; otherwise batch dims must match.
    ///
    /// The right side may also be stored in f16/bf16 against an f32 left side (frozen
    /// weights read directly by the kernels, accumulating in f32); it then takes no gradient.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let half_rhs = matches!(rhs.dtype(), DType::F16 | DType::BF16);
        let (dev, dt) = if half_rhs {
            super::same_device("matmul", &[self, rhs])?;
            if self.dtype() != DType::F32 {
                return Err(Error::DTypeMismatch {
                    op: "matmul",
                    expected: DType::F32,
                    got: self.dtype(),
                });
            }
            if rhs.requires_grad() {
                return Err(Error::invalid("matmul", "a 16-bit right operand is a frozen weight and cannot take a gradient; cast it to f32 to train it"));
            }
            (self.device(), DType::F32)
        } else {
            check("matmul", &[self, rhs])?
        };
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(Error::shape(
                "matmul",
                "both operands need rank >= 2",
                self.shape(),
                rhs.shape(),
            ));
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (rhs.shape()[rb - 2], rhs.shape()[rb - 1]);
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!("inner dimensions differ ({k} vs {k2})"),
                self.shape(),
                rhs.shape(),
            ));
        }
        let (abatch, bbatch) = (&self.shape()[..ra - 2], &rhs.shape()[..rb - 2]);
        if ra > 2 && rb > 2 && abatch != bbatch {
            return Err(Error::shape(
                "matmul",
                "batch dimensions differ",
                self.shape(),
                rhs.shape(),
            ));
        }
        let batch_shape = if ra > 2 {
            abatch.to_vec()
        } else {
            bbatch.to_vec()
        };
        let mut out_shape = batch_shape.clone();
        out_shape.extend([m, n]);

        // Build strided operands; copy only a view whose batch dims cannot be folded.
        let mut a = self.clone();
        let mut b = rhs.clone();
        let gemm = loop {
            let (la, lb) = (a.layout(), b.layout());
            let (sa, sb) = (&la.strides, &lb.strides);
            let a_rows = (sa[ra - 2], sa[ra - 1]);
            let b_rows = (sb[rb - 2], sb[rb - 1]);
            // A batched left side against a shared right side folds batch into M.
            if rb == 2 {
                if let Some((mm, sr)) = fold(&la.shape[..ra - 1], &sa[..ra - 1]) {
                    let sr = if mm <= 1 { a_rows.0 } else { sr };
                    break Gemm {
                        batch: 1,
                        m: mm,
                        n,
                        k,
                        a: Operand {
                            off: la.offset,
                            sb: 0,
                            sr,
                            sc: a_rows.1,
                        },
                        b: Operand {
                            off: lb.offset,
                            sb: 0,
                            sr: b_rows.0,
                            sc: b_rows.1,
                        },
                    };
                }
                a = a.contiguous()?;
                continue;
            }
            let fa = if ra == 2 {
                Some((1, 0))
            } else {
                fold(&la.shape[..ra - 2], &sa[..ra - 2])
            };
            let fb = fold(&lb.shape[..rb - 2], &sb[..rb - 2]);
            match (fa, fb) {
                (Some((_, sba)), Some((nb, sbb))) => {
                    break Gemm {
                        batch: nb,
                        m,
                        n,
                        k,
                        a: Operand {
                            off: la.offset,
                            sb: sba,
                            sr: a_rows.0,
                            sc: a_rows.1,
                        },
                        b: Operand {
                            off: lb.offset,
                            sb: sbb,
                            sr: b_rows.0,
                            sc: b_rows.1,
                        },
                    }
                }
                (None, _) => a = a.contiguous()?,
                (_, None) => b = b.contiguous()?,
            }
        };
        let flops = 2.0 * (gemm.batch * gemm.m * gemm.n * gemm.k) as f64;
        let out = match dev {
            Device::Cpu if half_rhs => {
                let v = a.cpu_strided("matmul", |xa: &[f32], _| {
                    crate::backend::cpu::profile::flops(flops);
                    b.with_cpu_data(|d, _| match d {
                        CpuData::F16(xb) => gemm_f32(&gemm, xa, xb),
                        CpuData::BF16(xb) => gemm_f32(&gemm, xa, xb),
                        _ => unreachable!("checked 16-bit above"),
                    })
                })?;
                cpu_tensor(v, &out_shape)?
            }
            Device::Cpu => with_real!("matmul", dt, T => {
                let v = a.cpu_strided("matmul", |xa: &[T], _| {
                    crate::backend::cpu::profile::flops(flops);
                    b.cpu_strided("matmul", |xb: &[T], _| T::gemm(&gemm, xa, xb))
                })??;
                cpu_tensor(v, &out_shape)?
            }),
            Device::Gpu => kernels::gemm(&gemm, &a, &b)?.reshape(&out_shape)?,
        };
        let (x, w) = (self.clone(), rhs.clone());
        Ok(record(out, "matmul", &[self, rhs], move |g| {
            // backward of C = A B:  dA = dC B^T,  dB = A^T dC
            let da = g.matmul(&w.t()?)?.sum_to(x.shape())?;
            if matches!(w.dtype(), DType::F16 | DType::BF16) {
                return Ok(vec![Some(da), None]);
            }
            let db = if w.rank() == 2 && x.rank() > 2 {
                // shared right side: fold the batch into rows so dB is one product
                let kk = x.shape()[x.rank() - 1];
                let nn = g.shape()[g.rank() - 1];
                let x2 = x.reshape(&[x.numel() / kk.max(1), kk])?;
                let g2 = g.reshape(&[g.numel() / nn.max(1), nn])?;
                x2.t()?.matmul(&g2)?
            } else {
                x.t()?.matmul(g)?.sum_to(w.shape())?
            };
            Ok(vec![Some(da), Some(db)])
        }))
    }
}

impl Tensor {
    /// `self += a @ b` in place, for 2-D `a (M, K)` and `b (K, N)` (strided views are
    /// read in place) into this dense `(M, N)`. Nothing is recorded: it is for gradient
    /// sums inside a hand-written backward. On the GPU the GEMM accumulates into `self`
    /// itself, so no `(M, N)` temporary exists (the LM head's dW over sequence chunks).
    pub fn add_matmul_(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        let (dev, dt) = check("matmul", &[self, a, b])?;
        if a.rank() != 2 || b.rank() != 2 || a.shape()[1] != b.shape()[0] {
            return Err(Error::shape(
                "add_matmul_",
                "2-D operands with matching inner dimensions",
                a.shape(),
                b.shape(),
            ));
        }
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        if self.shape() != [m, n] || !self.is_contiguous() || self.layout().offset != 0 {
            return Err(Error::shape(
                "add_matmul_",
                format!("a dense ({m}, {n}) accumulator"),
                self.shape(),
                &[m, n],
            ));
        }
        let operand = |t: &Tensor| Operand {
            off: t.layout().offset,
            sb: 0,
            sr: t.layout().strides[0],
            sc: t.layout().strides[1],
        };
        let gemm = Gemm {
            batch: 1,
            m,
            n,
            k,
            a: operand(a),
            b: operand(b),
        };
        match dev {
            Device::Gpu => kernels::gemm_acc(&gemm, a, b, self),
            // f32 into an accumulator of its own: the product is added in place, with no
            // (M, N) temporary (the LM head's dW is V x C)
            Device::Cpu
                if dt == DType::F32
                    && !std::ptr::eq(&**self.storage(), &**a.storage())
                    && !std::ptr::eq(&**self.storage(), &**b.storage()) =>
            {
                let _span = crate::backend::cpu::profile::span("add_matmul_", false);
                a.cpu_strided("matmul", |xa: &[f32], _| {
                    crate::backend::cpu::profile::flops(2.0 * (m * n * k) as f64);
                    b.cpu_strided("matmul", |xb: &[f32], _| {
                        self.with_cpu_data_mut(|d, _| match d {
                            CpuData::F32(out) => {
                                crate::backend::cpu::matmul::gemm_f32_acc(
                                    &gemm,
                                    xa,
                                    xb,
                                    &mut out[..m * n],
                                );
                                Ok(())
                            }
                            _ => Err(Error::invalid(
                                "add_matmul_",
                                "accumulator storage is not its dtype",
                            )),
                        })
                    })
                })??
            }
            Device::Cpu => with_real!("add_matmul_", dt, T => {
                let _span = crate::backend::cpu::profile::span("add_matmul_", false);
                let v = a.cpu_strided("matmul", |xa: &[T], _| {
                    crate::backend::cpu::profile::flops(2.0 * (m * n * k) as f64);
                    b.cpu_strided("matmul", |xb: &[T], _| T::gemm(&gemm, xa, xb))
                })??;
                self.with_cpu_data_mut(|d, _| match T::slice_mut(d) {
                    Some(out) => {
                        for (o, x) in out.iter_mut().zip(&v) {
                            *o += *x;
                        }
                        Ok(())
                    }
                    None => Err(Error::invalid("add_matmul_", "accumulator storage is not its dtype")),
                })
            }),
        }
    }
}

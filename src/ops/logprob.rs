//! Fused token log-probabilities, `log_softmax(logits)[target]` per position, and the
//! cross-entropy built on it. The fused op never materialises the (N, V) log-softmax.

use super::{check, cpu_tensor, last_dim, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// The kernels under [`Tensor::token_logprobs`], without autograd: contiguous logits
/// `(N, V)` (any leading shape) and targets give (log p(target), logsumexp), both flat.
pub(crate) fn logprobs_fwd(x: &Tensor, tg: &Tensor, v: usize) -> Result<(Tensor, Tensor)> {
    let n = x.numel() / v.max(1);
    match x.device() {
        Device::Cpu => {
            let ids: Vec<i32> = tg
                .cpu_ids("token_logprobs")?
                .into_iter()
                .map(|i| i as i32)
                .collect();
            if let Some(bad) = ids.iter().find(|&&i| i >= 0 && i as usize >= v) {
                return Err(Error::invalid(
                    "token_logprobs",
                    format!("target {bad} is out of range for a vocabulary of {v}"),
                ));
            }
            with_real!("token_logprobs", x.dtype(), T => {
                let (lp, lse) = x.cpu_read("token_logprobs", |xs: &[T]| cpu::token_logprobs(xs, &ids, v))?;
                Ok((cpu_tensor(lp, &[n])?, cpu_tensor(lse, &[n])?))
            })
        }
        Device::Gpu => {
            let (lp, lse) = kernels::token_logprobs(x, tg, v)?;
            Ok((lp.reshape(&[n])?, lse.reshape(&[n])?))
        }
    }
}

/// Its backward: dlogits[n, j] = g_n * ([j == t_n] - softmax(x_n)_j), 0 for ignored rows.
pub(crate) fn logprobs_bwd(
    x: &Tensor,
    tg: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    v: usize,
) -> Result<Tensor> {
    let g = g.contiguous()?;
    Ok(match g.device() {
        Device::Cpu => with_real!("token_logprobs", g.dtype(), T => {
            let ids: Vec<i32> = tg.cpu_ids("token_logprobs")?.into_iter().map(|i| i as i32).collect();
            let v2 = x.cpu_read("token_logprobs", |xs: &[T]| lse.cpu_read("token_logprobs", |ls: &[T]| g.cpu_read("token_logprobs", |gs: &[T]| cpu::token_logprobs_bwd(xs, &ids, ls, gs, v))))???;
            cpu_tensor(v2, x.shape())?
        }),
        Device::Gpu => kernels::token_logprobs_bwd(x, tg, lse, &g, v)?,
    })
}

impl Tensor {
    /// Per-position log p(target): logits `(..., V)`, targets `(...)` i32 or u32. A negative
    /// target (e.g. -100) marks an ignored position, which gives 0 and no gradient.
    pub fn token_logprobs(&self, targets: &Tensor) -> Result<Tensor> {
        check("token_logprobs", &[self])?;
        super::same_device("token_logprobs", &[self, targets])?;
        let v = last_dim("token_logprobs", self)?;
        if targets.shape() != &self.shape()[..self.rank() - 1] {
            return Err(Error::shape(
                "token_logprobs",
                "targets must be logits' shape without V",
                self.shape(),
                targets.shape(),
            ));
        }
        if !matches!(targets.dtype(), DType::I32 | DType::U32) {
            return Err(Error::DTypeMismatch {
                op: "token_logprobs",
                expected: DType::I32,
                got: targets.dtype(),
            });
        }
        if v == 0 {
            return Err(Error::bad_shape(
                "token_logprobs",
                "vocabulary is empty",
                self.shape(),
            ));
        }
        let x = self.contiguous()?;
        let tg = targets.contiguous()?;
        let shape = targets.shape().to_vec();
        let (lp, lse) = logprobs_fwd(&x, &tg, v)?;
        let (lp, lse) = (lp.reshape(&shape)?, lse.reshape(&shape)?);
        Ok(record(lp, "token_logprobs", &[self], move |g| {
            Ok(vec![Some(logprobs_bwd(&x, &tg, &lse, g, v)?)])
        }))
    }
    /// Mean negative log-likelihood over positions whose target is not `ignore_index`
    /// (which must be negative, as PyTorch's default -100).
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i32) -> Result<Tensor> {
        if ignore_index >= 0 {
            return Err(Error::invalid(
                "cross_entropy",
                "ignore_index must be negative (e.g. -100)",
            ));
        }
        let lp = self.token_logprobs(targets)?;
        let count = match targets.device() {
            Device::Cpu => targets
                .cpu_ids("cross_entropy")?
                .iter()
                .filter(|&&i| (i as i32) >= 0)
                .count(),
            // counting needs the ids on the host: an explicit, small readback, which also
            // checks them against the vocabulary (a kernel cannot return an error)
            Device::Gpu => {
                let ids = targets.to_vec_u32()?;
                let v = *self.shape().last().unwrap_or(&0);
                if let Some(bad) = ids.iter().find(|&&i| (i as i32) >= 0 && i as usize >= v) {
                    return Err(Error::invalid(
                        "cross_entropy",
                        format!("target {bad} is out of range for a vocabulary of {v}"),
                    ));
                }
                ids.iter().filter(|&&i| (i as i32) >= 0).count()
            }
        };
        lp.sum_all()?.scale(-1.0 / count.max(1) as f64)
    }
}

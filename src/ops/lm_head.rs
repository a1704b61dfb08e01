//! The LM head, log-softmax and target gather, chunk by chunk over the rows, forward and
//! backward, so that no `(K, V)` logits tensor ever exists: peak memory is
//! `O(chunk x V)`. Training, the reference pass and scoring go through it.
//!
//! Forward, per chunk of rows `c`:
//!   logits_c = h_c @ W^T                      (c, V), dropped after the chunk
//!   lp_c     = logits_c[t] - logsumexp(logits_c)
//! saving only h, W, the targets and the `(K,)` logsumexp.
//! Backward, per chunk, recomputing logits_c (or reading them back when all K x V of
//! them fit [`KEEP_BYTES`]: a short batch then skips one of the head's three GEMMs):
//!   dlogits_c = g_c * (onehot(t) - exp(logits_c - lse_c))
//!   dh_c      = dlogits_c @ W
//!   dW       += dlogits_c^T @ h_c
//! The softmax gradient is the fused log-prob kernel's own backward.

use super::logprob::{logprobs_bwd, logprobs_fwd};
use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Bytes of one chunk's logits that [`default_chunk`] aims for.
pub const CHUNK_BYTES: usize = 64 << 20;

/// The forward keeps its logits for the backward, instead of recomputing them, when all
/// `K x V` f32 of them fit this many bytes (and something needs a gradient): on the GPU,
/// and on a CPU with little memory free.
pub const KEEP_BYTES: usize = 256 << 20;

/// On the CPU the budget grows with the memory free at the first call, a sixteenth of it,
/// up to this: a packed batch of long chains (3,400 completion tokens of a 49,152-token
/// vocabulary, 0.66 GB of logits) then skips the head's recomputation, a fifth of its cost.
pub const KEEP_BYTES_CPU_MAX: usize = 1 << 30;

/// The byte budget under which [`lm_head_logprobs`] keeps its logits on `dev` (see
/// [`KEEP_BYTES`]). `PONDER_LOGITS_KEEP` (bytes) overrides it; 0 always recomputes.
pub fn keep_bytes(dev: crate::tensor::Device) -> usize {
    if let Some(b) = std::env::var("PONDER_LOGITS_KEEP")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        return b;
    }
    static CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match dev {
        crate::tensor::Device::Gpu => KEEP_BYTES,
        crate::tensor::Device::Cpu => *CPU.get_or_init(|| {
            let free = crate::util::available().unwrap_or(0) as usize;
            (free / 16).clamp(KEEP_BYTES, KEEP_BYTES_CPU_MAX)
        }),
    }
}

/// Rows per chunk for a vocabulary of `v`: `CHUNK_BYTES` of f32 logits, at least one
/// row. `PONDER_LOGITS_CHUNK` overrides it (tests, and a smaller GPU).
pub fn default_chunk(v: usize) -> usize {
    if let Some(c) = std::env::var("PONDER_LOGITS_CHUNK")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return c;
    }
    (CHUNK_BYTES / (4 * v.max(1))).max(1)
}

/// Log p(target) of every row of `h` `(K, C)` under the head `w` `(V, C)` (a weight
/// applied as `h @ w^T`, f32 or 16-bit), with targets `(K,)` i32/u32, in chunks of
/// `chunk` rows. Also returns, when `logit_sums`, each row's sum of logits over the
/// vocabulary (detached; TRL's logits/* metrics). Differentiable in `h` and `w`. When
/// all `K x V` logits take at most `keep` bytes, the forward keeps them for the backward
/// ([`keep_bytes`] gives the default budget).
pub fn lm_head_logprobs(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk: usize,
    keep: usize,
    logit_sums: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (k, c) = match h.shape() {
        [k, c] => (*k, *c),
        s => return Err(Error::bad_shape("lm_head_logprobs", "h must be (K, C)", s)),
    };
    let v = match w.shape() {
        [v, wc] if *wc == c => *v,
        s => {
            return Err(Error::shape(
                "lm_head_logprobs",
                "w must be (V, C) with h's C",
                h.shape(),
                s,
            ))
        }
    };
    if targets.shape() != [k] || k == 0 || v == 0 {
        return Err(Error::shape(
            "lm_head_logprobs",
            "targets must be (K,), K and V at least 1",
            h.shape(),
            targets.shape(),
        ));
    }
    let chunk = chunk.max(1);
    let hd = h.detach();
    let wd = w.detach();
    let tg = targets.contiguous()?;
    let need_dw = w.requires_grad();
    let keep = crate::tensor::grad_enabled()
        && (h.requires_grad() || need_dw)
        && k.saturating_mul(v).saturating_mul(4) <= keep;
    let mut kept = Vec::new(); // each chunk's logits, when `keep`
    let (lp, lse, sums) = no_grad(|| -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let wt = wd.t()?;
        let (mut lps, mut lses, mut ss) = (Vec::new(), Vec::new(), Vec::new());
        let mut r0 = 0;
        while r0 < k {
            let n = chunk.min(k - r0);
            let logits = hd.narrow(0, r0, n)?.matmul(&wt)?; // (n, V)
            let (lp, lse) = logprobs_fwd(&logits, &tg.narrow(0, r0, n)?.contiguous()?, v)?;
            lps.push(lp);
            lses.push(lse);
            if logit_sums {
                ss.push(logits.sum(-1, false)?);
            }
            if keep {
                kept.push(logits);
            }
            r0 += n;
        }
        let cat = |v: &[Tensor]| -> Result<Tensor> {
            if v.len() == 1 {
                Ok(v[0].clone())
            } else {
                Tensor::cat(&v.iter().collect::<Vec<_>>(), 0)
            }
        };
        Ok((
            cat(&lps)?,
            cat(&lses)?,
            if logit_sums { Some(cat(&ss)?) } else { None },
        ))
    })?;
    let kept = std::sync::Mutex::new(kept);
    let lp = record(lp, "lm_head_logprobs", &[h, w], move |g| {
        no_grad(|| {
            let g = g.contiguous()?;
            let wt = wd.t()?;
            let mut dh_parts = Vec::new();
            let mut dw: Option<Tensor> = None;
            let mut r0 = 0;
            // taken, so that each chunk's logits are freed once used
            let mut kept = std::mem::take(&mut *kept.lock().unwrap()).into_iter();
            while r0 < k {
                let n = chunk.min(k - r0);
                let hc = hd.narrow(0, r0, n)?;
                let logits = match kept.next() {
                    Some(l) => l,
                    None => hc.matmul(&wt)?, // recomputed (n, V)
                };
                let dlogits = logprobs_bwd(
                    &logits,
                    &tg.narrow(0, r0, n)?.contiguous()?,
                    &lse.narrow(0, r0, n)?.contiguous()?,
                    &g.narrow(0, r0, n)?,
                    v,
                )?;
                // dh_c = dlogits_c @ W: W is (V, C) as stored
                dh_parts.push(dlogits.matmul(&wd)?);
                // dW += dlogits_c^T @ h_c (skipped for a frozen head), summed in place
                // so that no second (V, C) exists
                if need_dw {
                    match &dw {
                        Some(acc) => acc.add_matmul_(&dlogits.t()?, &hc)?,
                        None => dw = Some(dlogits.t()?.matmul(&hc)?),
                    }
                }
                r0 += n;
            }
            let dh = if dh_parts.len() == 1 {
                dh_parts.pop().unwrap()
            } else {
                Tensor::cat(&dh_parts.iter().collect::<Vec<_>>(), 0)?
            };
            Ok(vec![Some(dh), dw])
        })
    });
    Ok((lp, sums))
}

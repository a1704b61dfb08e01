//! Completion log-probabilities of token sequences, and the SFT and DPO-family losses.

use super::data::Seq;
use super::pack::{pack, pack_free, pack_shared, PackedRow};
use crate::error::{Error, Result};
use crate::model::transformer::{Forward, LinearCtx, Transformer};
use crate::tensor::{CpuData, Tensor};

/// Log-probs of a batch of sequences under a model, over completion tokens only.
pub struct SeqLogps {
    /// `(K,)` log p of each completion token, sequence by sequence. Differentiable.
    pub per_token: Tensor,
    /// `(N,)` sums over each completion. Differentiable.
    pub sum: Tensor,
    /// Completion tokens per sequence (they partition `per_token`).
    pub counts: Vec<usize>,
    /// `(K,)` each completion position's sum of logits over the vocabulary (detached; when
    /// asked for): TRL's logits/chosen is their mean over positions, divided by V. Kept on
    /// the device until the step's one readback.
    pub logit_rows: Option<Tensor>,
    pub vocab_size: usize,
}

impl SeqLogps {
    /// Per sequence: the sum over its completion positions of the mean logit over the
    /// vocabulary, from the read-back `logit_rows`.
    pub fn logit_sums(&self, rows: &[f32]) -> Vec<f64> {
        let v = self.vocab_size as f64;
        let mut at = 0;
        self.counts
            .iter()
            .map(|&c| {
                let s = rows[at..at + c].iter().map(|&m| m as f64 / v).sum();
                at += c;
                s
            })
            .collect()
    }
}

/// Forward `seqs`, projecting only the positions that predict completion tokens, and
/// gather their log-probs (fused log-softmax + gather); per-sequence sums are one small
/// matmul with a 0/1 segment matrix. With `net.padding_free` the sequences lie end to end
/// in one row ([`pack_free`]): block-diagonal causal attention, RoPE restarting at each
/// sequence; with `net.shared_prompt` too, sequences with the same prompt compute it once
/// ([`pack_shared`]); otherwise they are right-padded to the longest ([`pack`]).
pub fn sequence_logps(
    net: &Transformer,
    seqs: &[&Seq],
    linear: LinearCtx,
    want_logits: bool,
) -> Result<SeqLogps> {
    if seqs.is_empty() {
        return Err(Error::invalid("logps", "empty batch"));
    }
    let n = seqs.len();
    let mut linear = linear;
    let shared = (net.padding_free && net.shared_prompt)
        .then(|| pack_shared(seqs))
        .filter(|p| p.saved > 0);
    // one packed row and its per-query key ranges ((1, T, 2), or (1, T, 4) with holes)
    let one_row = |p: PackedRow, r: Vec<u32>| -> Result<_> {
        let w = r.len() / p.t.max(1);
        let r = Tensor::from_u32(r, &[1, p.t, w], net.device)?;
        Ok((
            p.ids,
            1,
            p.t,
            p.rows,
            p.targets,
            Some(vec![p.positions]),
            Some(r),
        ))
    };
    let (ids, b, t, rows, targets, positions, kv_ranges) = if let Some(p) = shared {
        if linear.dropout_seed.is_some() && linear.token_keys.is_none() {
            linear.token_keys = Some(p.token_keys.into());
        }
        let r = crate::ops::attention::AttnOpts::shared_ranges(&[p.groups], p.row.t);
        one_row(p.row, r)?
    } else if net.padding_free {
        let p = pack_free(seqs);
        let r = crate::ops::attention::AttnOpts::packed_ranges(
            std::slice::from_ref(&p.cu_seqlens),
            p.t,
        );
        one_row(p, r)?
    } else {
        let (ids, t, rows, targets) = pack(seqs);
        (ids, n, t, rows, targets, None, None)
    };
    let k = rows.len();
    if k == 0 {
        return Err(Error::invalid("logps", "no completion tokens in the batch"));
    }
    let out = net.forward(
        &ids,
        b,
        t,
        Forward {
            linear,
            logit_rows: Some(rows),
            no_head: true,
            positions,
            kv_ranges,
            ..Default::default()
        },
    )?;
    let h = out.logits; // (K, C): the head runs chunk by chunk below, never (K, V) at once
    let dev = net.device;
    let tg = Tensor::from_cpu_data(CpuData::I32(targets), &[k])?.to_device(dev)?;
    let v = net.cfg.vocab_size;
    let (per_token, logit_rows) = crate::ops::lm_head::lm_head_logprobs(
        &h,
        net.head_weight()?,
        &tg,
        crate::ops::lm_head::default_chunk(v),
        crate::ops::lm_head::keep_bytes(net.device),
        want_logits,
    )?; // (K,)
    let counts: Vec<usize> = seqs.iter().map(|s| s.completion_len()).collect();
    // per-sequence sums: gather each sequence's tokens into a zero-padded (N, L) table and
    // reduce it (the same f64-accumulated sum the reference cache uses)
    let lmax = counts.iter().copied().max().unwrap_or(1);
    let mut idx = vec![k as u32; n * lmax];
    let mut at = 0;
    for (r, &c) in counts.iter().enumerate() {
        for j in 0..c {
            idx[r * lmax + j] = (at + j) as u32;
        }
        at += c;
    }
    let zero = Tensor::zeros(&[1], dev)?;
    let table = Tensor::cat(&[&per_token, &zero], 0)?.reshape(&[k + 1, 1])?;
    let idx = Tensor::from_u32(idx, &[n, lmax], dev)?;
    let sum = table.embedding(&idx)?.reshape(&[n, lmax])?.sum(-1, false)?;
    Ok(SeqLogps {
        per_token,
        sum,
        counts,
        logit_rows,
        vocab_size: net.cfg.vocab_size,
    })
}

/// The DPO-family losses, as TRL defines them, with
/// `z = beta * ((pi_c - pi_r) - (ref_c - ref_r))` from completion log-probs:
/// - `sigmoid` (DPO): `-(1-e) log sigmoid(z) - e log sigmoid(-z)`, e = label smoothing;
/// - `ipo`: `(h - 1/(2 beta))^2` with `h = z / beta` on log-probs averaged over tokens;
/// - `hinge` (SLiC): `relu(1 - z)`;
/// - `robust` (rDPO): `(-(1-e) log sigmoid(z) + e log sigmoid(-z)) / (1 - 2e)`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

#[derive(Clone, Copy, Debug)]
pub struct DpoParams {
    pub beta: f64,
    pub loss_type: LossType,
    pub label_smoothing: f64,
    /// Adds `rpo_alpha * NLL(chosen)` (mean over chosen completion tokens), as TRL's RPO.
    pub rpo_alpha: Option<f64>,
    /// Average log-probs over completion tokens instead of summing (length-normalised).
    pub length_normalize: bool,
}

impl DpoParams {
    /// TRL's default loss: sigmoid, no label smoothing, no NLL term, summed log-probs.
    pub fn sigmoid(beta: f64) -> DpoParams {
        DpoParams {
            beta,
            loss_type: LossType::Sigmoid,
            label_smoothing: 0.0,
            rpo_alpha: None,
            length_normalize: false,
        }
    }
}

/// Host-side numbers of one DPO batch, for metrics.
#[derive(Clone, Debug, Default)]
pub struct DpoBatchStats {
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
    pub logps_chosen: Vec<f64>,
    pub logps_rejected: Vec<f64>,
    /// (sum of mean logits over completion positions, positions) for chosen and rejected.
    pub logits_chosen: (f64, usize),
    pub logits_rejected: (f64, usize),
    pub tokens: usize,
}

/// DPO loss (mean over the pairs) from policy log-prob sums (`2N`: chosen then rejected)
/// and the reference's per-sequence sums. Counts are completion lengths.
pub fn dpo_loss(
    policy: &SeqLogps,
    ref_c: &[f64],
    ref_r: &[f64],
    p: &DpoParams,
) -> Result<(Tensor, DpoBatchStats)> {
    let loss = dpo_objective(policy, ref_c, ref_r, p)?;
    let sums = crate::autograd::no_grad(|| policy.sum.detach().to_vec_f64())?;
    let rows = match &policy.logit_rows {
        Some(t) => Some(t.to_vec_f32()?),
        None => None,
    };
    let st = dpo_stats(policy, &sums, rows.as_deref(), ref_c, ref_r, p.beta);
    Ok((loss, st))
}

/// The DPO loss alone, left on the device (see [`dpo_loss`]), from reference sums on the
/// host (a cached reference).
pub fn dpo_objective(
    policy: &SeqLogps,
    ref_c: &[f64],
    ref_r: &[f64],
    p: &DpoParams,
) -> Result<Tensor> {
    let n = ref_c.len();
    let dev = policy.sum.device();
    let (pol, inv) = policy_sums(policy, p)?;
    let (mut rc, mut rr) = (ref_c.to_vec(), ref_r.to_vec());
    if inv.is_some() {
        for i in 0..n {
            rc[i] /= (policy.counts[i] as f64).max(1.0);
            rr[i] /= (policy.counts[n + i] as f64).max(1.0);
        }
    }
    // the difference in f64 before it goes up as f32
    let ref_diff: Vec<f32> = (0..n).map(|i| (rc[i] - rr[i]) as f32).collect();
    dpo_from_diffs(policy, &pol, &Tensor::from_vec(ref_diff, &[n], dev)?, p)
}

/// [`dpo_objective`] with the reference's sums `(2N,)` (chosen then rejected) still on
/// the device, as a live reference leaves them: nothing is read back for them.
pub fn dpo_objective_live(policy: &SeqLogps, ref_sums: &Tensor, p: &DpoParams) -> Result<Tensor> {
    let n = policy.counts.len() / 2;
    if ref_sums.shape() != [2 * n] {
        return Err(Error::bad_shape(
            "dpo",
            format!("reference sums for {n} pairs, (2N,)"),
            ref_sums.shape(),
        ));
    }
    let (pol, inv) = policy_sums(policy, p)?;
    let r = ref_sums.detach();
    let r = match &inv {
        Some(inv) => r.mul(inv)?,
        None => r,
    };
    let ref_diff = r.narrow(0, 0, n)?.sub(&r.narrow(0, n, n)?)?;
    dpo_from_diffs(policy, &pol, &ref_diff, p)
}

/// The policy's sums as the loss compares them, averaged over each completion for IPO and
/// length-normalised losses (then also the `(2N,)` reciprocal counts used).
fn policy_sums(policy: &SeqLogps, p: &DpoParams) -> Result<(Tensor, Option<Tensor>)> {
    if !(p.length_normalize || p.loss_type == LossType::Ipo) {
        return Ok((policy.sum.clone(), None));
    }
    let inv: Vec<f32> = policy
        .counts
        .iter()
        .map(|&c| 1.0 / (c as f64).max(1.0) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, &[policy.counts.len()], policy.sum.device())?;
    Ok((policy.sum.mul(&inv)?, Some(inv)))
}

/// The loss from the policy's compared sums `pol` `(2N,)` and the reference's chosen minus
/// rejected `(N,)`.
fn dpo_from_diffs(
    policy: &SeqLogps,
    pol: &Tensor,
    ref_diff: &Tensor,
    p: &DpoParams,
) -> Result<Tensor> {
    let n = policy.counts.len() / 2;
    let (pc, pr) = (pol.narrow(0, 0, n)?, pol.narrow(0, n, n)?);
    // h = (pi_c - pi_r) - (ref_c - ref_r)
    let h = pc.sub(&pr)?.sub(ref_diff)?;
    let (b, e) = (p.beta, p.label_smoothing);
    let z = h.scale(b)?;
    let losses = match p.loss_type {
        LossType::Sigmoid => z
            .log_sigmoid()?
            .scale(-(1.0 - e))?
            .add(&z.neg()?.log_sigmoid()?.scale(-e)?)?,
        LossType::Ipo => h.add_scalar(-1.0 / (2.0 * b))?.powf(2.0)?,
        LossType::Hinge => z.affine(-1.0, 1.0)?.relu()?,
        LossType::Robust => z
            .log_sigmoid()?
            .scale(-(1.0 - e))?
            .add(&z.neg()?.log_sigmoid()?.scale(e)?)?
            .scale(1.0 / (1.0 - 2.0 * e))?,
    };
    let mut loss = losses.mean_all()?;
    if let Some(a) = p.rpo_alpha {
        let chosen_tokens: usize = policy.counts[..n].iter().sum();
        let nll = policy
            .sum
            .narrow(0, 0, n)?
            .sum_all()?
            .scale(-1.0 / chosen_tokens.max(1) as f64)?;
        loss = loss.add(&nll.scale(a)?)?;
    }
    Ok(loss)
}

/// The metrics of a DPO micro-batch from its read-back policy sums (`2N`) and logit rows.
/// Rewards are beta times the summed log-ratios, as TRL 1.x logs them (also for IPO and
/// length-normalised losses, whose loss compares averages).
pub fn dpo_stats(
    policy: &SeqLogps,
    sums: &[f64],
    logit_rows: Option<&[f32]>,
    ref_c: &[f64],
    ref_r: &[f64],
    b: f64,
) -> DpoBatchStats {
    let n = ref_c.len();
    let mut st = DpoBatchStats {
        tokens: policy.counts.iter().sum(),
        ..Default::default()
    };
    for i in 0..n {
        st.chosen_rewards.push(b * (sums[i] - ref_c[i]));
        st.rejected_rewards.push(b * (sums[n + i] - ref_r[i]));
        st.logps_chosen.push(sums[i]);
        st.logps_rejected.push(sums[n + i]);
    }
    let ls = logit_rows
        .map(|r| policy.logit_sums(r))
        .unwrap_or_else(|| vec![0.0; 2 * n]);
    st.logits_chosen = (ls[..n].iter().sum(), policy.counts[..n].iter().sum());
    st.logits_rejected = (ls[n..].iter().sum(), policy.counts[n..].iter().sum());
    st
}

/// SFT loss contribution of a micro-batch: summed completion NLL divided by `denom` (the
/// completion tokens of the whole optimizer step, so micro-batches add up to the mean).
pub fn sft_loss(policy: &SeqLogps, denom: usize) -> Result<Tensor> {
    policy.sum.sum_all()?.scale(-1.0 / denom.max(1) as f64)
}

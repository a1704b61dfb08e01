//! One optimizer step of SFT or DPO, written once: [`Trainer::step`] is what `ponder
//! sft|dpo`, `ponder bench dpo`, the tests and the recipes all call. The trainer owns the
//! policy, its optimizer and schedule, and a live reference when there is no cached or
//! recorded one.

use std::time::Instant;

use serde_json::{json, Map};

use super::data::{Pair, Seq};
use super::loss::{self, DpoBatchStats, DpoParams};
use super::optim::{Optimizer, Schedule};
use crate::error::{Error, Result};
use crate::model::transformer::LinearCtx;
use crate::model::Transformer;
use crate::tensor::Tensor;

/// A reference computed on the fly (no cache, no recorded log-probs).
pub enum LiveReference {
    /// A separate frozen model.
    Model(Box<Transformer>),
    /// The policy itself with its LoRA adapters off.
    Adapters,
}

/// One micro-batch. A step accumulates the gradients of several.
pub enum MicroBatch<'a> {
    Sft(Vec<&'a Seq>),
    /// Preference pairs with the reference's summed log-probs (chosen, rejected), from a
    /// cache or recorded while sampling; `None` computes them with the live reference.
    Dpo {
        pairs: Vec<&'a Pair>,
        reference: Option<(Vec<f64>, Vec<f64>)>,
    },
}

impl MicroBatch<'_> {
    fn len(&self) -> usize {
        match self {
            MicroBatch::Sft(v) => v.len(),
            MicroBatch::Dpo { pairs, .. } => pairs.len(),
        }
    }
}

/// What one step did, under TRL's metric names (see [`StepStats::metrics`]).
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// Optimizer steps done, this one included.
    pub step: usize,
    pub loss: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub tokens: usize,
    pub seconds: f64,
    /// Reference forward passes this step ran.
    pub ref_forwards: usize,
    /// DPO only.
    pub dpo: Option<DpoBatchStats>,
    /// Data-parallel runs: the gradient all-reduce's bytes and times on this rank.
    pub allreduce: super::optim::AllReduceTimes,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl StepStats {
    /// Mean reward margin and accuracy (DPO).
    pub fn margin_accuracy(&self) -> Option<(f64, f64)> {
        let d = self.dpo.as_ref()?;
        let (c, r) = (&d.chosen_rewards, &d.rejected_rewards);
        let margins: Vec<f64> = c.iter().zip(r).map(|(a, b)| a - b).collect();
        let acc: Vec<f64> = c.iter().zip(r).map(|(a, b)| (a > b) as u8 as f64).collect();
        Some((mean(&margins), mean(&acc)))
    }

    /// One metrics.jsonl row, with TRL's names.
    pub fn metrics(&self, epoch: f64) -> Map<String, serde_json::Value> {
        let mut row = Map::new();
        row.insert("step".into(), json!(self.step));
        row.insert("epoch".into(), json!(epoch));
        row.insert("loss".into(), json!(self.loss));
        row.insert("grad_norm".into(), json!(self.grad_norm));
        row.insert("learning_rate".into(), json!(self.learning_rate));
        if let (Some(d), Some((margin, acc))) = (&self.dpo, self.margin_accuracy()) {
            row.insert("rewards/chosen".into(), json!(mean(&d.chosen_rewards)));
            row.insert("rewards/rejected".into(), json!(mean(&d.rejected_rewards)));
            row.insert("rewards/margins".into(), json!(margin));
            row.insert("rewards/accuracies".into(), json!(acc));
            row.insert("logps/chosen".into(), json!(mean(&d.logps_chosen)));
            row.insert("logps/rejected".into(), json!(mean(&d.logps_rejected)));
            row.insert(
                "logits/chosen".into(),
                json!(d.logits_chosen.0 / d.logits_chosen.1.max(1) as f64),
            );
            row.insert(
                "logits/rejected".into(),
                json!(d.logits_rejected.0 / d.logits_rejected.1.max(1) as f64),
            );
        }
        row.insert(
            "tokens_per_second".into(),
            json!(self.tokens as f64 / self.seconds.max(1e-9)),
        );
        row
    }
}

/// A DPO micro-batch's reference sums: given (cached), or from a live reference and
/// still on the device, `(2N,)`.
enum PairRefs {
    Host(Vec<f64>, Vec<f64>),
    Device(Tensor),
}

/// The policy, its optimizer and schedule, and how a step is taken.
pub struct Trainer {
    pub net: Transformer,
    pub opt: Optimizer,
    pub schedule: Schedule,
    pub dpo: DpoParams,
    /// Clip the global gradient norm to this (0: off).
    pub max_grad_norm: f64,
    /// Seeds LoRA dropout, counter-based with (step, micro-batch).
    pub seed: u64,
    pub reference: Option<LiveReference>,
}

/// Reference log-prob sums (chosen, rejected) of a batch of pairs, on the fly, read back.
pub fn reference_sums(
    net: &Transformer,
    pairs: &[&Pair],
    adapters_off: bool,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let sums = reference_logps(net, pairs, adapters_off)?.to_vec_f64()?;
    let n = pairs.len();
    Ok((sums[..n].to_vec(), sums[n..].to_vec()))
}

/// [`reference_sums`] left on the device: `(2N,)`, the chosen then the rejected.
pub fn reference_logps(net: &Transformer, pairs: &[&Pair], adapters_off: bool) -> Result<Tensor> {
    let _ng = crate::autograd::NoGradGuard::new();
    let seqs: Vec<&Seq> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let lp = loss::sequence_logps(
        net,
        &seqs,
        LinearCtx {
            disable_adapters: adapters_off,
            dropout_seed: None,
            token_keys: None,
        },
        false,
    )?;
    Ok(lp.sum.detach())
}

impl Trainer {
    /// A trainer over `net`'s trainable parameters (the LoRA adapters when `lora`).
    pub fn new(
        mut net: Transformer,
        lora: bool,
        schedule: Schedule,
        weight_decay: f32,
        max_grad_norm: f64,
        dpo: DpoParams,
        seed: u64,
    ) -> Result<Trainer> {
        // on the GPU the optimizer moves the trainable tensors into its arena
        let opt = Optimizer::new(net.trainable_mut(lora)?, weight_decay)?;
        Ok(Trainer {
            opt,
            net,
            schedule,
            dpo,
            max_grad_norm,
            seed,
            reference: None,
        })
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> usize {
        self.opt.step as usize
    }

    /// One optimizer step over `batches` (gradient accumulation across them): forward,
    /// loss, backward per micro-batch, then the global norm, clipping and AdamW at the
    /// schedule's learning rate. SFT averages the loss over every completion token of the
    /// step; DPO weights each micro-batch by its share of the pairs.
    pub fn step(&mut self, batches: &[MicroBatch<'_>]) -> Result<StepStats> {
        let t0 = Instant::now();
        let step = self.steps_done();
        let items: usize = batches.iter().map(|b| b.len()).sum();
        if items == 0 {
            return Err(Error::invalid("train", "a step needs at least one example"));
        }
        let sft_denom: usize = batches
            .iter()
            .map(|b| match b {
                MicroBatch::Sft(v) => v.iter().map(|s| s.completion_len()).sum(),
                MicroBatch::Dpo { .. } => 0,
            })
            .sum();
        let mut st = StepStats::default();
        // Everything the metrics need stays on the device until one readback after the
        // optimizer step: [grad norm^2, each micro-batch's loss, then per DPO micro-batch
        // its policy sums (2N), logit rows (K) and, from a live reference, its sums (2N)].
        let mut pack: Vec<Tensor> = Vec::new();
        let mut dpo_pending: Vec<(loss::SeqLogps, PairRefs)> = Vec::new();
        // of several ranks, each takes a contiguous share of the step's micro-batches; the
        // loss weights above and the dropout seeds below stay those of the whole step
        let mine = crate::dist::share(batches.len());
        for (mbi, b) in batches.iter().enumerate() {
            if !mine.contains(&mbi) {
                continue;
            }
            let linear = LinearCtx {
                disable_adapters: false,
                dropout_seed: Some(
                    self.seed
                        ^ ((step * batches.len() + mbi) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
                ),
                token_keys: None,
            };
            match b {
                MicroBatch::Sft(seqs) => {
                    st.tokens += seqs.iter().map(|s| s.ids.len()).sum::<usize>();
                    let lp = loss::sequence_logps(&self.net, seqs, linear, false)?;
                    let l = loss::sft_loss(&lp, sft_denom)?;
                    pack.push(l.detach().reshape(&[1])?);
                    l.backward()?;
                }
                MicroBatch::Dpo { pairs, reference } => {
                    // a live reference's sums stay on the device until the step's readback
                    let live = match (reference, &self.reference) {
                        (Some(_), _) => None,
                        (None, Some(LiveReference::Model(net))) => {
                            Some(reference_logps(net, pairs, true)?)
                        }
                        (None, Some(LiveReference::Adapters)) => {
                            Some(reference_logps(&self.net, pairs, true)?)
                        }
                        (None, None) => return Err(Error::invalid(
                            "dpo",
                            "a DPO micro-batch without reference log-probs needs a live reference",
                        )),
                    };
                    st.ref_forwards += live.is_some() as usize;
                    if let Some((rc, rr)) = reference {
                        if rc.len() != pairs.len() || rr.len() != pairs.len() {
                            return Err(Error::invalid(
                                "dpo",
                                format!(
                                    "{} pairs but {} / {} reference sums",
                                    pairs.len(),
                                    rc.len(),
                                    rr.len()
                                ),
                            ));
                        }
                    }
                    let seqs: Vec<&Seq> = pairs
                        .iter()
                        .map(|p| &p.chosen)
                        .chain(pairs.iter().map(|p| &p.rejected))
                        .collect();
                    st.tokens += seqs.iter().map(|s| s.ids.len()).sum::<usize>();
                    let lp = loss::sequence_logps(&self.net, &seqs, linear, true)?;
                    let (l, refs) = match (reference, live) {
                        (Some((rc, rr)), _) => (
                            loss::dpo_objective(&lp, rc, rr, &self.dpo)?,
                            PairRefs::Host(rc.clone(), rr.clone()),
                        ),
                        (None, Some(t)) => (
                            loss::dpo_objective_live(&lp, &t, &self.dpo)?,
                            PairRefs::Device(t),
                        ),
                        (None, None) => unreachable!("checked above"),
                    };
                    let l = l.scale(pairs.len() as f64 / items as f64)?;
                    pack.push(l.detach().reshape(&[1])?);
                    l.backward()?;
                    dpo_pending.push((lp, refs));
                }
            }
        }
        st.allreduce = self.opt.all_reduce_grads()?;
        let norm_sq = match self.opt.grad_norm_sq()? {
            Some(t) => t,
            None => Tensor::zeros(&[1], self.net.device)?,
        };
        self.opt.clip_on_device(&norm_sq, self.max_grad_norm)?;
        let lr = self.schedule.lr_at(step);
        self.opt.step(lr)?;
        // the one readback of the step
        let mut parts: Vec<&Tensor> = vec![&norm_sq];
        parts.extend(pack.iter());
        let mut extra = Vec::new();
        for (lp, refs) in &dpo_pending {
            extra.push(lp.sum.detach());
            if let Some(r) = &lp.logit_rows {
                extra.push(r.clone());
            }
            if let PairRefs::Device(t) = refs {
                extra.push(t.clone());
            }
        }
        parts.extend(extra.iter());
        let packed = crate::autograd::no_grad(|| Tensor::cat(&parts, 0)?.to_vec_f64())?;
        let grad_norm = packed[0].sqrt();
        st.loss = packed[1..1 + pack.len()].iter().sum();
        let mut at = 1 + pack.len();
        let mut dstats: Option<DpoBatchStats> = None;
        for (lp, refs) in &dpo_pending {
            let n2 = lp.counts.len();
            let sums = &packed[at..at + n2];
            at += n2;
            let rows: Option<Vec<f32>> = lp.logit_rows.as_ref().map(|r| {
                let k = r.numel();
                let v = packed[at..at + k].iter().map(|&x| x as f32).collect();
                at += k;
                v
            });
            let (rc, rr) = match refs {
                PairRefs::Host(rc, rr) => (rc.clone(), rr.clone()),
                PairRefs::Device(_) => {
                    let r = &packed[at..at + n2];
                    at += n2;
                    (r[..n2 / 2].to_vec(), r[n2 / 2..].to_vec())
                }
            };
            let s = loss::dpo_stats(lp, sums, rows.as_deref(), &rc, &rr, self.dpo.beta);
            let d = dstats.get_or_insert_with(Default::default);
            d.chosen_rewards.extend(s.chosen_rewards);
            d.rejected_rewards.extend(s.rejected_rewards);
            d.logps_chosen.extend(s.logps_chosen);
            d.logps_rejected.extend(s.logps_rejected);
            d.logits_chosen.0 += s.logits_chosen.0;
            d.logits_chosen.1 += s.logits_chosen.1;
            d.logits_rejected.0 += s.logits_rejected.0;
            d.logits_rejected.1 += s.logits_rejected.1;
        }
        if crate::dist::size() > 1 {
            merge_ranks(&mut st, &mut dstats)?;
        }
        if !grad_norm.is_finite() || !st.loss.is_finite() {
            // the update already ran on the device; the caller stops and saves nothing
            return Err(Error::invalid(
                "train",
                format!(
                    "step {}: training diverged: gradient norm {grad_norm}, loss {}; lower --lr?",
                    step + 1,
                    st.loss
                ),
            ));
        }
        st.step = step + 1;
        st.grad_norm = grad_norm;
        st.learning_rate = lr;
        st.dpo = dstats;
        st.seconds = t0.elapsed().as_secs_f64();
        Ok(st)
    }
}

/// A DP step's stats over every rank: the loss summed, the tokens and reference passes
/// counted, the DPO per-pair values concatenated in rank order (the step's micro-batch
/// order, as the shares are contiguous). One all-gather of a flat f64 record per rank.
fn merge_ranks(st: &mut StepStats, dstats: &mut Option<DpoBatchStats>) -> Result<()> {
    let mut rec = vec![st.loss, st.tokens as f64, st.ref_forwards as f64];
    if let Some(d) = dstats.as_ref() {
        rec.push(d.chosen_rewards.len() as f64);
        for v in [
            &d.chosen_rewards,
            &d.rejected_rewards,
            &d.logps_chosen,
            &d.logps_rejected,
        ] {
            rec.extend(v.iter().copied());
        }
        rec.extend([
            d.logits_chosen.0,
            d.logits_chosen.1 as f64,
            d.logits_rejected.0,
            d.logits_rejected.1 as f64,
        ]);
    }
    let bytes: Vec<u8> = bytemuck::cast_slice(&rec).to_vec();
    let all = crate::dist::all_gather_bytes(&bytes);
    st.loss = 0.0;
    st.tokens = 0;
    st.ref_forwards = 0;
    let mut merged: Option<DpoBatchStats> = None;
    for b in &all {
        let r: Vec<f64> = b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if r.len() < 3 {
            return Err(Error::invalid("mpi", "a rank sent a short step record"));
        }
        st.loss += r[0];
        st.tokens += r[1] as usize;
        st.ref_forwards += r[2] as usize;
        if r.len() > 3 {
            let n = r[3] as usize;
            let d = merged.get_or_insert_with(Default::default);
            let v = |k: usize| r[4 + k * n..4 + (k + 1) * n].iter().copied();
            d.chosen_rewards.extend(v(0));
            d.rejected_rewards.extend(v(1));
            d.logps_chosen.extend(v(2));
            d.logps_rejected.extend(v(3));
            let t = &r[4 + 4 * n..];
            d.logits_chosen.0 += t[0];
            d.logits_chosen.1 += t[1] as usize;
            d.logits_rejected.0 += t[2];
            d.logits_rejected.1 += t[3] as usize;
        }
    }
    *dstats = merged;
    Ok(())
}

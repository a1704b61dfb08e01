//! Training on data already in memory: epochs of shuffled micro-batches through
//! [`Trainer::step`], for the recipes, which build SFT sets and preference pairs as they
//! go and never write them to a file first.

use super::data::{Pair, Seq};
use super::loss::{DpoParams, LossType};
use super::optim::{Schedule, Scheduler};
use super::step::{MicroBatch, StepStats, Trainer};
use crate::error::{Error, Result};
use crate::model::Transformer;

/// How a model is fitted to an in-memory set.
#[derive(Clone, Debug)]
pub struct FitOpts {
    pub epochs: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub scheduler: Scheduler,
    pub warmup_ratio: f64,
    /// Floor of cosine_with_min_lr, as a fraction of lr.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub beta: f64,
    pub loss_type: LossType,
    /// DPO only: add this times the NLL of the chosen completions (TRL's rpo_alpha).
    pub rpo_alpha: Option<f64>,
    pub seed: u64,
    /// Progress bar label; hidden when `quiet`.
    pub label: String,
    pub quiet: bool,
    /// Lay each micro-batch's sequences end to end instead of padding them (see
    /// [`Transformer::padding_free`]). On by default: the recipes' sets mix long and short
    /// completions, and where they do not the packed pass costs what the padded one does.
    pub padding_free: bool,
    /// With `padding_free`, each prompt is computed once per micro-batch for the answers
    /// that share it (see [`Transformer::shared_prompt`]). On by default: a pair's chosen
    /// and rejected, and a question's several samples, share their prompt; on answers of
    /// self-training's and TPO's lengths it saves a fifth of the tokens and of the step.
    pub shared_prompt: bool,
}

impl Default for FitOpts {
    fn default() -> Self {
        FitOpts {
            epochs: 1.0,
            batch_size: 8,
            lr: 1e-4,
            scheduler: Scheduler::Cosine,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            beta: 0.1,
            loss_type: LossType::Sigmoid,
            rpo_alpha: None,
            seed: 0,
            label: "train".into(),
            quiet: true,
            padding_free: true,
            shared_prompt: true,
        }
    }
}

/// A value out of range, named by its flag, with the accepted range.
pub fn range_error(
    what: &'static str,
    flag: &str,
    v: impl std::fmt::Display,
    accepted: &str,
) -> Error {
    Error::invalid(
        what,
        format!("--{flag} {v} is out of range: accepted {accepted}"),
    )
}

/// The largest learning rate accepted: beyond it a step of AdamW moves each weight by
/// about lr, and the model's logits overflow instead of training.
pub const MAX_LR: f64 = 1.0;

impl FitOpts {
    /// Range and finiteness of every setting, checked before any sampling or training, so
    /// nothing trains on NaN, divides by zero or allocates without bound. `what` names
    /// the command and `prefix` the flags' prefix (`dpo-` for `--dpo-lr`).
    pub fn validate(&self, what: &'static str, prefix: &str, epochs_flag: &str) -> Result<()> {
        let err = |flag: &str, v: f64, acc: &str| {
            Err(range_error(what, &format!("{prefix}{flag}"), v, acc))
        };
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= MAX_LR) {
            return err("lr", self.lr, &format!("0 < x <= {MAX_LR}"));
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0 && self.epochs <= 1e4) {
            return Err(range_error(
                what,
                epochs_flag,
                self.epochs,
                "0 < x <= 10000",
            ));
        }
        if !(1..=1 << 16).contains(&self.batch_size) {
            return Err(range_error(
                what,
                "batch-size",
                self.batch_size,
                "1..=65536",
            ));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(range_error(what, "beta", self.beta, "a finite number > 0"));
        }
        if let Some(a) = self.rpo_alpha {
            if !(a.is_finite() && a >= 0.0) {
                return Err(range_error(what, "rpo-alpha", a, "a finite number >= 0"));
            }
        }
        for (name, v) in [
            ("warmup-ratio", self.warmup_ratio),
            ("min-lr-ratio", self.min_lr_ratio),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return err(name, v, "0 <= x <= 1");
            }
        }
        for (name, v) in [
            ("weight-decay", self.weight_decay),
            ("max-grad-norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(name, v, "a finite number >= 0");
            }
        }
        Ok(())
    }
}

/// Micro-batches of `n` items for `epochs` passes, shuffled per epoch with a seeded
/// counter-based order (the same for a seed on every run).
fn batches(n: usize, bs: usize, epochs: f64, seed: u64) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let per_epoch = n.div_ceil(bs);
    let total = ((epochs * per_epoch as f64).ceil() as usize).max(1);
    let mut out = Vec::with_capacity(total);
    let mut epoch = 0u64;
    while out.len() < total {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut crate::util::rng(
            seed ^ (epoch + 1).wrapping_mul(0xA24B_AED4_963E_E407),
        ));
        for c in idx.chunks(bs) {
            if out.len() < total {
                out.push(c.to_vec());
            }
        }
        epoch += 1;
    }
    out
}

fn trainer(net: Transformer, o: &FitOpts, steps: usize) -> Result<Trainer> {
    let schedule = Schedule {
        kind: o.scheduler,
        lr: o.lr,
        warmup_steps: (o.warmup_ratio * steps as f64).ceil() as usize,
        total_steps: steps,
        min_lr: o.min_lr_ratio * o.lr,
    };
    let dpo = DpoParams {
        beta: o.beta,
        loss_type: o.loss_type,
        label_smoothing: 0.0,
        rpo_alpha: o.rpo_alpha,
        length_normalize: false,
    };
    Trainer::new(
        net,
        false,
        schedule,
        o.weight_decay as f32,
        o.max_grad_norm,
        dpo,
        o.seed,
    )
}

fn run<'d>(
    mut t: Trainer,
    plan: &[Vec<usize>],
    o: &FitOpts,
    mut make: impl FnMut(&[usize]) -> MicroBatch<'d>,
) -> Result<(Transformer, Vec<StepStats>)> {
    let bar = crate::util::progress_bar(plan.len() as u64, &o.label, o.quiet);
    let mut stats = Vec::with_capacity(plan.len());
    let ranks = crate::dist::size();
    for b in plan {
        // of several MPI ranks, each computes one contiguous share of the step's examples
        // (data-parallel, the gradients summed); alone, the step is one micro-batch
        let micro: Vec<MicroBatch> = (0..ranks)
            .map(|r| crate::dist::share_of(b.len(), r, ranks))
            .filter(|s| !s.is_empty())
            .map(|s| make(&b[s]))
            .collect();
        let st = t.step(&micro)?;
        bar.set_message(format!("loss {:.4}", st.loss));
        bar.inc(1);
        stats.push(st);
    }
    bar.finish_and_clear();
    Ok((t.net, stats))
}

/// Refuse, before the first step allocates, training that would not fit in memory on the
/// CPU (see [`super::memory`]).
fn fits(net: &Transformer, lens: &[usize], bs: usize) -> Result<()> {
    if !matches!(net.device, crate::tensor::Device::Cpu) {
        return Ok(());
    }
    // the largest micro-batch: bs sequences padded to the longest, or the bs longest end
    // to end in one row
    let mut lens = lens.to_vec();
    lens.sort_unstable_by(|a, b| b.cmp(a));
    let (rows, t) = if net.padding_free {
        (1, lens.iter().take(bs).sum::<usize>())
    } else {
        (bs, lens.first().copied().unwrap_or(0))
    };
    let p = net.num_parameters() as u64;
    super::memory::check_training(
        "fit",
        &net.cfg,
        p,
        false,
        rows as u64,
        t as u64,
        net.gradient_checkpointing,
        super::memory::available(),
    )
}

/// SFT of `net` (every parameter trainable) on `data`.
pub fn sft(
    mut net: Transformer,
    data: &[Seq],
    o: &FitOpts,
) -> Result<(Transformer, Vec<StepStats>)> {
    if data.is_empty() {
        return Err(Error::invalid("fit", "no SFT examples"));
    }
    o.validate("fit", "", "epochs")?;
    net.padding_free = o.padding_free;
    net.shared_prompt = o.shared_prompt;
    let lens: Vec<usize> = data.iter().map(|s| s.ids.len()).collect();
    fits(&net, &lens, o.batch_size)?;
    let plan = batches(data.len(), o.batch_size, o.epochs, o.seed);
    let t = trainer(net, o, plan.len())?;
    run(t, &plan, o, |b| {
        MicroBatch::Sft(b.iter().map(|&i| &data[i]).collect())
    })
}

/// DPO of `net` on `pairs`, whose reference log-prob sums (chosen, rejected) are given
/// (recorded while sampling, or from a reference pass before training).
pub fn dpo(
    mut net: Transformer,
    pairs: &[Pair],
    refs: &[(f64, f64)],
    o: &FitOpts,
) -> Result<(Transformer, Vec<StepStats>)> {
    if pairs.is_empty() || pairs.len() != refs.len() {
        return Err(Error::invalid(
            "fit",
            format!("{} pairs with {} reference sums", pairs.len(), refs.len()),
        ));
    }
    o.validate("fit", "", "epochs")?;
    net.padding_free = o.padding_free;
    net.shared_prompt = o.shared_prompt;
    let lens: Vec<usize> = pairs
        .iter()
        .flat_map(|p| [p.chosen.ids.len(), p.rejected.ids.len()])
        .collect();
    fits(&net, &lens, 2 * o.batch_size)?;
    let plan = batches(pairs.len(), o.batch_size, o.epochs, o.seed);
    let t = trainer(net, o, plan.len())?;
    run(t, &plan, o, |b| MicroBatch::Dpo {
        pairs: b.iter().map(|&i| &pairs[i]).collect(),
        reference: Some(b.iter().map(|&i| refs[i]).unzip()),
    })
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn batches_cover_each_epoch_once_and_are_seeded() {
        let b = batches(10, 3, 2.0, 7);
        assert_eq!(b.len(), 8);
        let mut first: Vec<usize> = b[..4].concat();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(b, batches(10, 3, 2.0, 7));
        assert_ne!(b, batches(10, 3, 2.0, 8));
        assert_eq!(batches(10, 3, 0.5, 1).len(), 2);
    }
}

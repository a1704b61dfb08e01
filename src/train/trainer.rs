//! The SFT and DPO trainers: one loop, two losses. The same [`TrainArgs`] come from the
//! command line or from a TOML file (`--config`) that uses the flag names as keys.

use std::path::Path;

use serde_json::{json, Value};

pub use super::args::{config_to_args, Mode, SaveDType, TrainArgs};
use super::checkpoint::{
    fingerprint, list_checkpoints, load_checkpoint, remove_orphans, resolve_resume,
    save_checkpoint, State,
};
use super::data::{self, Pair, Seq, Truncation};
use super::loss::{DpoParams, LossType};
use super::metrics::{self, MetricsWriter};
use super::optim::Schedule;
use super::refcache::KeyHasher;
use super::reference::{build_cache, cached_sums};
use super::report::progress;
pub use super::report::Summary;
use super::step::{LiveReference, MicroBatch, Trainer};
use crate::error::{Error, Result};
use crate::model::{LoadOpts, Model, Transformer};
use crate::tensor::Device;

/// The training examples of either mode.
enum Examples {
    Sft(Vec<Seq>),
    Dpo(Vec<Pair>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Sft(v) => v.len(),
            Examples::Dpo(v) => v.len(),
        }
    }
}

impl Examples {
    /// Token counts of example `i`'s sequences (a pair's chosen and rejected); with
    /// `shared` prompts, a pair's rejected counts its completion alone when the two share
    /// their prompt.
    fn lens(&self, i: usize, shared: bool) -> Vec<usize> {
        match self {
            Examples::Sft(v) => vec![v[i].ids.len()],
            Examples::Dpo(v) => {
                let (c, r) = (&v[i].chosen, &v[i].rejected);
                let same = shared
                    && r.prompt_len > 0
                    && c.ids.get(..c.prompt_len) == r.ids.get(..r.prompt_len);
                let r_len = if same {
                    r.completion_len()
                } else {
                    r.ids.len()
                };
                vec![c.ids.len(), r_len]
            }
        }
    }
}

/// Tokens a micro-batch of sequences of these lengths computes on: their sum laid end to
/// end, or rows x the longest when padded.
fn batch_tokens(lens: &[usize], padding_free: bool) -> usize {
    if padding_free {
        lens.iter().sum()
    } else {
        lens.len() * lens.iter().copied().max().unwrap_or(0)
    }
}

/// One step's examples `idx` split into micro-batches of at most `budget` tokens
/// (first fit, longest first; an example over the budget alone). The step's examples and
/// so its loss are the same whatever the split.
fn by_tokens(
    idx: &[usize],
    budget: usize,
    padding_free: bool,
    lens: impl Fn(usize) -> Vec<usize>,
) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, Vec<usize>)> = idx.iter().map(|&i| (i, lens(i))).collect();
    order.sort_by_key(|(i, l)| (std::cmp::Reverse(l.iter().sum::<usize>()), *i));
    // each bin: its examples, and its sequences' count, total and longest length
    let mut bins: Vec<(Vec<usize>, [usize; 3])> = Vec::new();
    for (i, l) in order {
        let (n, sum, max) = (
            l.len(),
            l.iter().sum::<usize>(),
            l.iter().copied().max().unwrap_or(0),
        );
        let with = |[bn, bs, bm]: [usize; 3]| [bn + n, bs + sum, bm.max(max)];
        let tokens = |[bn, bs, bm]: [usize; 3]| if padding_free { bs } else { bn * bm };
        match bins.iter_mut().find(|(_, st)| tokens(with(*st)) <= budget) {
            Some((b, st)) => {
                b.push(i);
                *st = with(*st);
            }
            None => bins.push((vec![i], [n, sum, max])),
        }
    }
    bins.into_iter().map(|(b, _)| b).collect()
}

/// The (rows, T) of the largest micro-batch the run can form, for the memory check: a
/// padded batch holds bs examples' rows each padded at most to the longest in the data;
/// a padding-free one is one row of at most the bs longest examples end to end. A token
/// budget bounds either (past it, an example is a batch of its own).
fn largest_micro_batch(examples: &Examples, bs: usize, args: &TrainArgs) -> (usize, usize) {
    let mut lens: Vec<Vec<usize>> = (0..examples.len())
        .map(|i| examples.lens(i, args.shared_prompt))
        .collect();
    lens.sort_by_key(|l| std::cmp::Reverse(l.iter().sum::<usize>()));
    let per = lens.first().map_or(1, |l| l.len());
    let longest_seq = lens.iter().flatten().copied().max().unwrap_or(0);
    let (rows, t) = if args.padding_free {
        let top: usize = lens.iter().take(bs).flatten().sum();
        (1, top)
    } else {
        (bs * per, longest_seq)
    };
    match args.max_tokens_per_batch {
        None => (rows, t),
        Some(budget) => {
            let one = batch_tokens(lens.first().map_or(&[][..], |l| &l[..]), args.padding_free);
            if args.padding_free {
                (1, t.min(budget.max(one)))
            } else {
                // rows of the longest sequence that fit the budget, at least one example's
                let fit = (budget / longest_seq.max(1)).max(per);
                (rows.min(fit), longest_seq)
            }
        }
    }
}

/// Run messages go to stderr (the progress bar, hidden by --quiet, draws there too).
fn log(msg: impl std::fmt::Display) {
    if crate::dist::is_root() {
        eprintln!("{msg}");
    }
}

/// Micro-batches of one epoch: indices into the examples, in order or shuffled.
fn epoch_batches(n: usize, bs: usize, shuffle: bool, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        use rand::seq::SliceRandom;
        idx.shuffle(&mut crate::util::rng(
            seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
        ));
    }
    idx.chunks(bs.max(1)).map(|c| c.to_vec()).collect()
}

/// `PONDER_TEST_STEP_DELAY_MS`: sleep this long in every step. Only for tests that kill a
/// running job at an arbitrary point and resume it.
fn step_delay() -> Option<u64> {
    std::env::var("PONDER_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------------------------------ the loop

/// Run SFT or DPO as `args` say.
pub fn train(mode: Mode, args: &TrainArgs) -> Result<Summary> {
    args.validate()?;
    // --shared-prompt packs
    let packed;
    let args = if args.shared_prompt && !args.padding_free {
        packed = TrainArgs {
            padding_free: true,
            ..args.clone()
        };
        &packed
    } else {
        args
    };
    let device = match &args.device {
        Some(d) => Device::parse(d),
        None => Device::from_env(),
    }?;
    let lora = args.lora_r.is_some();
    // the weights and optimizer alone must fit before anything is loaded
    let on_cpu = matches!(device, Device::Cpu);
    let avail = on_cpu.then(super::memory::available).flatten();
    {
        let cfg = crate::model::config::Config::load(&args.model)?;
        let p = super::memory::parameter_count(&cfg);
        let e = super::memory::estimate(&cfg, if lora { 0 } else { p }, lora, 0, 0, false);
        super::memory::check("train", &e, 0, 0, avail)?;
    }
    // the trainable policy: f32 leaves, or a frozen (16-bit kept) base with f32 adapters
    let mut m = Model::load(
        &args.model,
        LoadOpts {
            device,
            keep_16bit: lora,
            trainable: !lora,
        },
    )?;
    if let Some(r) = args.lora_r {
        m.net.add_lora(
            &args.lora_targets,
            r,
            args.lora_alpha,
            args.lora_dropout,
            args.seed,
        )?;
    }
    m.net.gradient_checkpointing = args.gradient_checkpointing;
    m.net.padding_free = args.padding_free;
    m.net.shared_prompt = args.shared_prompt;
    let tok = m.tokenizer()?;
    let max_pos = m.net.cfg.max_position_embeddings;
    if let Some(l) = args.max_length.filter(|&l| l > max_pos) {
        return Err(Error::invalid(
            "train",
            format!("--max-length {l} is past the model's max_position_embeddings = {max_pos}"),
        ));
    }
    let trunc = Truncation {
        max_prompt_length: args.max_prompt_length,
        // TRL's default bound, never past the model's positions
        max_length: Some(
            args.max_length
                .unwrap_or(super::args::DEFAULT_MAX_LENGTH.min(max_pos)),
        ),
        mode: args.truncation_mode,
    };
    let (examples, stats) = match mode {
        Mode::Sft => {
            let (v, s) = data::load_sft(&args.data, tok, &trunc)?;
            (Examples::Sft(v), s)
        }
        Mode::Dpo => {
            let (v, s) = data::load_pairs(&args.data, tok, &trunc)?;
            (Examples::Dpo(v), s)
        }
    };
    log(format!("data {}: {stats}", args.data.display()));
    let bs = args.batch_size.max(1);
    {
        let (rows, t) = largest_micro_batch(&examples, bs, args);
        let trainable: usize = if lora {
            m.net.lora_parameters().iter().map(|(_, p)| p.numel()).sum()
        } else {
            m.net.num_parameters()
        };
        super::memory::check_training(
            "train",
            &m.net.cfg,
            trainable as u64,
            lora,
            rows as u64,
            t as u64,
            args.gradient_checkpointing,
            avail,
        )?;
    }
    let data_hash = {
        let mut h = KeyHasher::default();
        match &examples {
            Examples::Sft(v) => h.seqs(v),
            Examples::Dpo(v) => h.pairs(v),
        };
        h.finish()
    };
    // which starting weights: a resume from another model's checkpoint is refused
    let model_hash = KeyHasher::default().model_dir(&args.model)?.finish();
    let n = examples.len();
    // of N MPI ranks each takes a share of the step's micro-batches: the step is that of
    // one process accumulating N x --grad-accum of them
    let ranks = crate::dist::size();
    let ga = args.grad_accum.max(1) * ranks;
    let mb_per_epoch = n.div_ceil(bs);
    let steps_per_epoch = mb_per_epoch.div_ceil(ga).max(1);
    let total_steps = match args.steps {
        Some(s) => s,
        None => ((args.epochs.unwrap_or(1.0) * steps_per_epoch as f64).ceil() as usize).max(1),
    };
    let lr = args
        .lr
        .unwrap_or(if mode == Mode::Dpo { 1e-6 } else { 2e-5 });
    let warmup = match (args.warmup_steps, args.warmup_ratio) {
        (Some(w), _) => w,
        (None, Some(r)) => (r * total_steps as f64).ceil() as usize,
        (None, None) => 0,
    };
    let schedule = Schedule {
        kind: args.lr_scheduler,
        lr,
        warmup_steps: warmup,
        total_steps,
        min_lr: args.min_lr.unwrap_or(0.1 * lr),
    };
    let params = if lora {
        m.net.lora_parameters()
    } else {
        m.net.named_parameters()
    };
    let trainable: usize = params.iter().map(|(_, p)| p.numel()).sum();
    log(format!("{:?} on {device}: {} parameters, {trainable} trainable{}; {total_steps} steps of {ga} x {bs}{}", mode, m.net.num_parameters(), if lora { " (LoRA)" } else { "" }, if ranks > 1 { format!(" over {ranks} MPI ranks, data-parallel") } else { String::new() }));
    let mut summary = Summary {
        out: args.out.clone(),
        ..Default::default()
    };
    // new, empty or this command's own; one run at a time per output directory (the OS
    // drops the lock if this process dies)
    let command = if mode == Mode::Dpo { "dpo" } else { "sft" };
    // (of several ranks, rank 0 alone writes there)
    let _lock = crate::dist::root_outcome(|| {
        let lock = crate::files::claim_out_dir(&args.out, command)?;
        remove_orphans(&args.out);
        Ok(lock)
    })?;
    crate::files::failpoint("start");

    // reference for DPO
    let dpo = DpoParams {
        beta: args.beta,
        loss_type: args.loss_type,
        label_smoothing: args.label_smoothing,
        rpo_alpha: args.rpo_alpha,
        length_normalize: args.length_normalize,
    };
    if args.loss_type == LossType::Robust && !(0.0..0.5).contains(&args.label_smoothing) {
        return Err(Error::invalid(
            "dpo",
            "the robust loss needs 0 <= label_smoothing < 0.5",
        ));
    }
    let (cache, live) = match &examples {
        Examples::Sft(_) => (None, None),
        Examples::Dpo(pairs) => {
            let ref_dir = args.ref_model.clone().unwrap_or_else(|| args.model.clone());
            let frozen = |dir: &Path| -> Result<Transformer> {
                let mut net = Model::load(
                    dir,
                    LoadOpts {
                        device,
                        keep_16bit: true,
                        trainable: false,
                    },
                )?
                .net;
                net.padding_free = args.padding_free;
                net.shared_prompt = args.shared_prompt;
                Ok(net)
            };
            if args.no_ref_cache {
                log("reference: computed on the fly (--no-ref-cache)");
                let live = match (&args.ref_model, lora) {
                    (None, true) => LiveReference::Adapters,
                    _ => LiveReference::Model(Box::new(frozen(&ref_dir)?)),
                };
                (None, Some(live))
            } else {
                let mut key = KeyHasher::default();
                key.model_dir(&ref_dir)?;
                // the tokenizer that made the ids: a GGUF file carries its own, already
                // hashed above when the policy is its own reference
                if !crate::model::gguf::is_gguf(&args.model) {
                    key.file(&args.model.join("tokenizer.json"))?;
                } else if ref_dir != args.model {
                    key.model_dir(&args.model)?;
                }
                key.pairs(pairs);
                key.bytes(format!("{trunc:?}").as_bytes());
                let key = key.finish();
                let cache = if args.ref_model.is_none() {
                    // the starting policy is the reference: compute with it before training
                    // (adapters are zero-initialised, so the LoRA policy equals its base)
                    let net = m.net.clone();
                    build_cache(
                        args,
                        key,
                        pairs,
                        &move || Ok(net.clone()),
                        true,
                        &mut summary,
                    )?
                } else {
                    build_cache(args, key, pairs, &|| frozen(&ref_dir), true, &mut summary)?
                };
                (Some(cache), None)
            }
        }
    };
    if ranks > 1 {
        // the reference cache's passes of every rank (a step's live passes come merged)
        let mut n = [summary.ref_forwards as f64];
        crate::dist::all_reduce_f64(&mut n);
        summary.ref_forwards = n[0] as usize;
    }
    let mut trainer = Trainer::new(
        m.net,
        lora,
        schedule,
        args.weight_decay as f32,
        args.max_grad_norm,
        dpo,
        args.seed,
    )?;
    trainer.reference = live;

    // resume
    let metrics_path = args
        .metrics
        .clone()
        .unwrap_or_else(|| args.out.join("metrics.jsonl"));
    crate::files::check_not_input(&metrics_path, &[("--data", args.data.as_path())])?;
    let mut start_step = 0;
    let mut keep_lines = 0;
    if let Some(r) = &args.resume {
        let dir = resolve_resume(r)?;
        let st = load_checkpoint(&dir, &mut trainer.opt)?;
        if st.mode != mode {
            return Err(Error::file(
                &dir,
                format!("checkpoint is from a {:?} run, not {:?}", st.mode, mode),
            ));
        }
        if st.seed != args.seed {
            return Err(Error::file(
                &dir,
                format!("checkpoint used --seed {}, this run {}", st.seed, args.seed),
            ));
        }
        let now = fingerprint(args, model_hash, data_hash, total_steps, lr, warmup);
        let differ: Vec<String> = now
            .iter()
            .filter(|(k, v)| st.fingerprint.get(*k).is_some_and(|old| old != *v))
            .map(|(k, v)| format!("{k}: checkpoint {} vs now {v}", st.fingerprint[k]))
            .collect();
        if !differ.is_empty() {
            return Err(Error::file(&dir, format!("this run's settings differ from the checkpoint's, so resuming would change the trajectory ({})", differ.join("; "))));
        }
        start_step = st.step;
        keep_lines = st.metrics_lines;
        log(format!(
            "resumed from {} at step {start_step}",
            dir.display()
        ));
    }
    if args.resume.is_none() {
        if let Some(&old) = list_checkpoints(&args.out).iter().max() {
            return Err(Error::file(
                &args.out,
                format!("already holds checkpoints of an earlier run (checkpoint-{old}); pass --resume {} to continue it, or choose another --out", args.out.display()),
            ));
        }
    }
    let mut mw = crate::dist::root_outcome(|| MetricsWriter::open(&metrics_path, keep_lines))?;

    // micro-batch stream (per epoch, counter-based shuffles); one epoch's order is built
    // once and kept until the stream moves past it
    let mut epoch_cache: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut mb_at = |k: usize| -> Vec<usize> {
        let (epoch, i) = (k / mb_per_epoch, k % mb_per_epoch);
        if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            epoch_cache = Some((epoch, epoch_batches(n, bs, args.shuffle, args.seed, epoch)));
        }
        epoch_cache.as_ref().unwrap().1[i].clone()
    };
    let bar = progress(
        args,
        total_steps as u64,
        &format!("{mode:?}").to_lowercase(),
    );
    bar.set_position(start_step as u64);
    let mut last_loss = f64::NAN;
    // data-parallel: (step seconds, all-reduce times) summed over this run's steps
    let mut dp_time = (0.0f64, super::optim::AllReduceTimes::default());
    for step in start_step..total_steps {
        let mut batches: Vec<Vec<usize>> = (step * ga..(step + 1) * ga).map(&mut mb_at).collect();
        if let Some(budget) = args.max_tokens_per_batch {
            batches = by_tokens(&batches.concat(), budget, args.padding_free, |i| {
                examples.lens(i, args.shared_prompt)
            });
        }
        let micro: Vec<MicroBatch> = batches
            .iter()
            .map(|b| match (&examples, &cache) {
                (Examples::Sft(v), _) => MicroBatch::Sft(b.iter().map(|&i| &v[i]).collect()),
                (Examples::Dpo(pairs), c) => MicroBatch::Dpo {
                    pairs: b.iter().map(|&i| &pairs[i]).collect(),
                    reference: c.as_ref().map(|c| cached_sums(c, b)),
                },
            })
            .collect();
        if let Some(ms) = step_delay() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let st = trainer.step(&micro)?;
        summary.ref_forwards += st.ref_forwards;
        last_loss = st.loss;
        dp_time.0 += st.seconds;
        dp_time.1 += st.allreduce;
        if let Some(mw) = &mut mw {
            mw.write(&st.metrics(((step + 1) * ga) as f64 / mb_per_epoch as f64))?;
        }
        crate::files::failpoint("step-logged");
        bar.set_message(match st.margin_accuracy() {
            Some((m, a)) => format!("loss {:.4} margin {m:.4} acc {a:.2}", st.loss),
            None => format!("loss {:.4}", st.loss),
        });
        bar.inc(1);
        if args.save_every > 0 && (step + 1) % args.save_every == 0 && step + 1 < total_steps {
            let Some(mw) = &mw else { continue };
            let st = State {
                step: step + 1,
                metrics_lines: mw.lines,
                seed: args.seed,
                rng: "counter-based (seed, step, micro-batch)".into(),
                mode,
                fingerprint: fingerprint(args, model_hash, data_hash, total_steps, lr, warmup),
            };
            save_checkpoint(&args.out, &trainer.opt, &st)?;
        }
    }
    bar.finish_and_clear();
    summary.steps = total_steps;
    summary.final_loss = last_loss;
    if !crate::dist::is_root() {
        return Ok(summary);
    }
    if ranks > 1 {
        let steps = (total_steps - start_step).max(1) as f64;
        let (t, a) = dp_time;
        let pct = |x: f64| 100.0 * x / t.max(1e-9);
        log(format!(
            "data-parallel over {ranks} ranks, per step on rank 0: {:.3} s, of which the gradient all-reduce {:.3} s ({:.1}%: {:.1} MB, {:.2} GB/s), waiting for the slowest rank {:.3} s ({:.1}%), staging through host memory {:.3} s ({:.1}%)",
            t / steps,
            a.reduce_s / steps,
            pct(a.reduce_s),
            a.bytes as f64 / 1e6 / steps,
            a.bytes as f64 / 1e9 / a.reduce_s.max(1e-9),
            a.wait_s / steps,
            pct(a.wait_s),
            a.stage_s / steps,
            pct(a.stage_s),
        ));
    }

    // the trained model, or the adapter
    if lora && !args.merge_lora {
        save_adapter(&trainer.net, args)?;
        log(format!(
            "saved LoRA adapter (PEFT format) to {}",
            args.out.display()
        ));
    } else {
        if lora {
            trainer.net.merge_lora()?;
        }
        crate::model::save::save_model(
            &trainer.net,
            Some(&args.model),
            &args.out,
            args.save_dtype.dtype(),
        )?;
        log(format!("saved model to {}", args.out.display()));
    }
    let rows = metrics::read(&metrics_path)?;
    let keys: &[&str] = if mode == Mode::Dpo {
        &["loss", "rewards/margins", "rewards/accuracies"]
    } else {
        &["loss", "grad_norm"]
    };
    let plot_path = metrics_path.with_extension("svg");
    if crate::plot::foreign_file(&plot_path) {
        // `--metrics NAME.jsonl` beside a user's NAME.svg: keep the user's file
        log(format!(
            "metrics: {} ({} steps); plot not written: {} exists and is not a ponder plot \
             (name the metrics file differently to get one)",
            metrics_path.display(),
            rows.len(),
            plot_path.display()
        ));
    } else {
        metrics::plot(&rows, keys, &plot_path)?;
        log(format!(
            "metrics: {} ({} steps), plot: {}",
            metrics_path.display(),
            rows.len(),
            plot_path.display()
        ));
    }
    Ok(summary)
}

/// PEFT's adapter format: adapter_model.safetensors + adapter_config.json.
fn save_adapter(net: &Transformer, args: &TrainArgs) -> Result<()> {
    let params = net.lora_parameters();
    crate::files::write_atomic(
        &args.out.join("adapter_model.safetensors"),
        &crate::model::save::safetensors_bytes(&params, args.save_dtype.dtype())?,
    )?;
    let targets = crate::model::transformer::lora_target_names(&args.lora_targets);
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone()).display().to_string(),
        "r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": Value::Null,
        "use_rslora": false,
        "use_dora": false,
    });
    crate::files::write_atomic(
        &args.out.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    // the tokenizer travels with the adapter, as PEFT users expect
    for (f, bytes) in crate::model::save::tokenizer_files(&args.model)? {
        crate::files::write_atomic(&args.out.join(f), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{batch_tokens, by_tokens};

    #[test]
    fn token_budget_micro_batches_cover_the_step_and_keep_to_the_budget() {
        // example i's sequences: a long chosen and a short rejected, one over the budget
        let lens = |i: usize| {
            vec![
                [300, 40, 120, 900, 10, 75, 60][i],
                [5, 30, 8, 12, 4, 6, 9][i],
            ]
        };
        let idx: Vec<usize> = (0..7).collect();
        for free in [true, false] {
            let bins = by_tokens(&idx, 320, free, lens);
            let mut all: Vec<usize> = bins.concat();
            all.sort();
            assert_eq!(all, idx, "every example once (padding-free {free})");
            for b in &bins {
                let l: Vec<usize> = b.iter().flat_map(|&i| lens(i)).collect();
                assert!(
                    batch_tokens(&l, free) <= 320 || b.len() == 1,
                    "{b:?} is over the budget (padding-free {free})"
                );
            }
            assert!(bins.contains(&vec![3]), "the 912-token example alone");
        }
        // padding-free packs tighter: fewer micro-batches than padded
        assert!(by_tokens(&idx, 320, true, lens).len() < by_tokens(&idx, 320, false, lens).len());
        assert_eq!(by_tokens(&idx, 320, true, lens).len(), 4);
    }
}

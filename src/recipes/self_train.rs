//! DPO-augmented self-training, after Wang et al. 2024 ("Self-Training with Direct
//! Preference Optimization Improves Chain-of-Thought Reasoning"), and its plain
//! self-training baseline (`no_dpo`).
//!
//! Each round starts from the round's SFT model M:
//! 1. DPO step (skipped by the baseline): sample K rationales per training question from
//!    M (calculator on), label them by their answers; positives = correct samples + the
//!    gold rationale, negatives = wrong samples, each side deduplicated by token-set
//!    Jaccard >= 0.7; questions without a negative are skipped; the 3 least similar
//!    positive x negative pairs per question are kept; DPO (sigmoid, beta 0.1) from M
//!    with M as the reference gives D. Sampled completions carry M's log-probs, so only
//!    the gold rationales need a reference forward.
//! 2. SFT step: sample from D (the baseline: from M), keep correct samples + the gold
//!    rationale, deduplicate, cap each question at the 90th percentile of the counts,
//!    add them to the positives of all earlier rounds, and retrain SFT from the base
//!    model on that union: the next round's M.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use super::answer;
use super::data::{write_jsonl, Example};
use super::pairs::{dedup, least_similar_pairs, percentile_cap};
use super::run::{eval, load_trainable, log, read_limited, save, RunDir};
use super::sample::{sample, Sample, SampleOpts};
use crate::error::{Error, Result};
use crate::model::score::completion_sums;
use crate::model::{Tok, Transformer};
use crate::tensor::Device;
use crate::train::data::{sft_example, Pair, Seq, Truncation, TruncationMode};
use crate::train::fit::{self, FitOpts};
use crate::train::optim::Scheduler;

/// The command whose output directory this recipe writes.
const COMMAND: &str = "self-train";

#[derive(Clone, Debug)]
pub struct SelfTrainOpts {
    /// The SFT model the first round starts from.
    pub model: PathBuf,
    /// The model SFT is retrained from each round (default: `model`).
    pub base: Option<PathBuf>,
    /// Training questions with gold rationales.
    pub data: PathBuf,
    /// Held-out questions for the per-round evaluation.
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
    pub rounds: usize,
    /// Plain self-training: no DPO step.
    pub no_dpo: bool,
    pub sampling: SampleOpts,
    pub jaccard: f64,
    pub pairs_per_question: usize,
    pub cap_percentile: f64,
    pub dpo: FitOpts,
    pub sft: FitOpts,
    /// Use only the first N training / evaluation questions.
    pub limit: Option<usize>,
    pub eval_limit: Option<usize>,
    pub eval_max_new_tokens: usize,
    /// Ask every question as a user message in the model's chat template (an instruct
    /// model), instead of as raw text.
    pub chat: bool,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
}

impl Default for SelfTrainOpts {
    fn default() -> Self {
        let common = FitOpts {
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            scheduler: Scheduler::CosineWithMinLr,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        SelfTrainOpts {
            model: PathBuf::new(),
            base: None,
            data: PathBuf::new(),
            eval_data: None,
            out: PathBuf::new(),
            rounds: 3,
            no_dpo: false,
            sampling: SampleOpts {
                k: 5,
                temperature: 0.7,
                max_new_tokens: 300,
                calculator: true,
                ..Default::default()
            },
            jaccard: 0.7,
            pairs_per_question: 3,
            cap_percentile: 90.0,
            dpo: FitOpts {
                beta: 0.1,
                lr: 1e-6,
                epochs: 1.0,
                label: "dpo".into(),
                ..common.clone()
            },
            sft: FitOpts {
                lr: 1e-5,
                epochs: 1.0,
                label: "sft".into(),
                ..common
            },
            limit: None,
            eval_limit: None,
            eval_max_new_tokens: 300,
            chat: false,
            device: Device::Cpu,
            resume: false,
            quiet: false,
        }
    }
}

/// A positive kept for SFT: question index and the sequence.
#[derive(Clone)]
struct Positive {
    question: usize,
    seq: Seq,
}

fn completion(s: &Seq) -> &[u32] {
    &s.ids[s.prompt_len..]
}

/// The gold rationale of each question as a training sequence.
fn gold_seqs(tok: &Tok, qs: &[Example]) -> Result<Vec<Option<Seq>>> {
    let t = Truncation {
        max_prompt_length: None,
        max_length: Some(crate::train::args::DEFAULT_MAX_LENGTH),
        mode: TruncationMode::KeepStart,
    };
    qs.iter()
        .map(|q| match &q.rationale {
            Some(r) => sft_example(tok, &q.prompt, r, &t),
            None => Ok(None),
        })
        .collect()
}

/// One side of a question's pairs: a sequence and where its reference sum comes from.
#[derive(Clone)]
enum Side {
    Sampled(Sample),
    Gold(usize),
}

/// Pairs, their reference sums (chosen, rejected), and the reference forwards saved.
type PairsWithRefs = (Vec<Pair>, Vec<(f64, f64)>, usize);

/// The DPO step's pairs, with their reference sums, and how many reference forwards the
/// recorded log-probs saved.
fn build_pairs(
    net: &Transformer,
    samples: &[Vec<Sample>],
    qs: &[Example],
    gold: &[Option<Seq>],
    o: &SelfTrainOpts,
) -> Result<PairsWithRefs> {
    let mut plan: Vec<(Side, Side)> = Vec::new();
    for (qi, ss) in samples.iter().enumerate() {
        let (mut pos, mut neg): (Vec<Side>, Vec<Side>) = (Vec::new(), Vec::new());
        for s in ss {
            if answer::check(&s.text, &qs[qi].answer).1 {
                pos.push(Side::Sampled(s.clone()));
            } else {
                neg.push(Side::Sampled(s.clone()));
            }
        }
        if gold[qi].is_some() {
            pos.push(Side::Gold(qi));
        }
        let ids = |s: &Side| -> Vec<u32> {
            match s {
                Side::Sampled(x) => x.ids.clone(),
                Side::Gold(q) => completion(gold[*q].as_ref().expect("gold")).to_vec(),
            }
        };
        let (pi, ni): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
            (pos.iter().map(ids).collect(), neg.iter().map(ids).collect());
        let pk = dedup(
            &pi.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
            o.jaccard,
        );
        let nk = dedup(
            &ni.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
            o.jaccard,
        );
        if nk.is_empty() || pk.is_empty() {
            continue;
        }
        let pv: Vec<&[u32]> = pk.iter().map(|&i| pi[i].as_slice()).collect();
        let nv: Vec<&[u32]> = nk.iter().map(|&i| ni[i].as_slice()).collect();
        for (a, b) in least_similar_pairs(&pv, &nv, o.pairs_per_question) {
            plan.push((pos[pk[a]].clone(), neg[nk[b]].clone()));
        }
    }
    // reference sums: recorded for sampled sides, one forward for each gold rationale used
    let golds: Vec<usize> = {
        let mut g: Vec<usize> = plan
            .iter()
            .filter_map(|(c, _)| match c {
                Side::Gold(q) => Some(*q),
                _ => None,
            })
            .collect();
        g.sort();
        g.dedup();
        g
    };
    let gseqs: Vec<&Seq> = golds
        .iter()
        .map(|&q| gold[q].as_ref().expect("gold"))
        .collect();
    let gsums: HashMap<usize, f64> = golds
        .iter()
        .copied()
        .zip(completion_sums(net, &gseqs, 16)?)
        .collect();
    let mut saved = 0;
    let (mut pairs, mut refs) = (Vec::new(), Vec::new());
    for (c, r) in plan {
        let mut side = |s: &Side| -> (Seq, f64) {
            match s {
                Side::Sampled(x) => {
                    saved += 1;
                    (x.seq(), x.logprob_sum())
                }
                Side::Gold(q) => (gold[*q].clone().expect("gold"), gsums[q]),
            }
        };
        let (cs, cr) = side(&c);
        let (rs, rr) = side(&r);
        pairs.push(Pair {
            chosen: cs,
            rejected: rs,
        });
        refs.push((cr, rr));
    }
    Ok((pairs, refs, saved))
}

/// The SFT step's new positives: correct samples + gold, deduplicated, capped.
fn new_positives(
    samples: &[Vec<Sample>],
    qs: &[Example],
    gold: &[Option<Seq>],
    o: &SelfTrainOpts,
) -> Vec<Positive> {
    let mut per_q: Vec<Vec<Seq>> = Vec::new();
    for (qi, ss) in samples.iter().enumerate() {
        let mut seqs: Vec<Seq> = ss
            .iter()
            .filter(|s| answer::check(&s.text, &qs[qi].answer).1)
            .map(|s| s.seq())
            .collect();
        if let Some(g) = &gold[qi] {
            seqs.push(g.clone());
        }
        let keep = dedup(&seqs.iter().map(completion).collect::<Vec<_>>(), o.jaccard);
        per_q.push(keep.into_iter().map(|i| seqs[i].clone()).collect());
    }
    let counts: Vec<usize> = per_q.iter().map(|v| v.len()).filter(|&c| c > 0).collect();
    let cap = percentile_cap(&counts, o.cap_percentile).max(1);
    per_q
        .into_iter()
        .enumerate()
        .flat_map(|(q, v)| {
            v.into_iter()
                .take(cap)
                .map(move |seq| Positive { question: q, seq })
        })
        .collect()
}

fn positives_rows(ps: &[Positive]) -> Vec<Value> {
    ps.iter()
        .map(|p| json!({"question": p.question, "ids": p.seq.ids, "prompt_len": p.seq.prompt_len}))
        .collect()
}

fn read_positives(path: &std::path::Path) -> Result<Vec<Positive>> {
    crate::train::data::read_jsonl_own(path)?
        .into_iter()
        .map(|(line, o)| {
            let bad = || Error::file(path, format!("line {line}: not a positives line"));
            let ids: Vec<u32> = serde_json::from_value(o.get("ids").cloned().ok_or_else(bad)?)
                .map_err(|_| bad())?;
            let prompt_len = o
                .get("prompt_len")
                .and_then(|v| v.as_u64())
                .ok_or_else(bad)? as usize;
            let question = o.get("question").and_then(|v| v.as_u64()).ok_or_else(bad)? as usize;
            if prompt_len == 0 || prompt_len >= ids.len() {
                return Err(bad());
            }
            Ok(Positive {
                question,
                seq: Seq { ids, prompt_len },
            })
        })
        .collect()
}

/// What a finished run measured.
#[derive(Clone, Debug, Default)]
pub struct SelfTrainSummary {
    /// Held-out accuracy and mean tokens after each round (the round's SFT model).
    pub accuracy: Vec<f64>,
    pub mean_tokens: Vec<f64>,
    pub reference_forwards_saved: usize,
    pub final_model: PathBuf,
}

impl SelfTrainOpts {
    /// Every setting in range, checked before a file is read or written.
    pub fn validate(&self) -> Result<()> {
        super::run::check_rounds(COMMAND, self.rounds)?;
        self.sampling.validate(COMMAND)?;
        self.dpo.validate(COMMAND, "dpo-", "dpo-epochs")?;
        self.sft.validate(COMMAND, "sft-", "sft-epochs")?;
        if self.eval_max_new_tokens > 1 << 20 {
            return Err(crate::train::fit::range_error(
                COMMAND,
                "max-new-tokens",
                self.eval_max_new_tokens,
                "0..=1048576",
            ));
        }
        let in_range = self.jaccard.is_finite()
            && (0.0..=1.0).contains(&self.jaccard)
            && self.cap_percentile.is_finite()
            && (0.0..=100.0).contains(&self.cap_percentile)
            && self.pairs_per_question > 0;
        if !in_range {
            return Err(Error::invalid(
                COMMAND,
                "jaccard must be in 0..=1, cap_percentile in 0..=100, pairs_per_question >= 1",
            ));
        }
        Ok(())
    }
}

/// Run the rounds.
pub fn run(o: &SelfTrainOpts) -> Result<SelfTrainSummary> {
    o.validate()?;
    let mut dir = RunDir::open(&o.out, COMMAND, o.resume)?;
    let mut qs = read_limited(Some(&o.data), o.limit)?;
    let mut test = read_limited(o.eval_data.as_deref(), o.eval_limit)?;
    let base_dir = o.base.clone().unwrap_or_else(|| o.model.clone());
    let tok_dir = o.model.clone();
    let (mut m, tok) = load_trainable(&o.model, o.device)?;
    if o.chat {
        // the rendered conversation up to the assistant's turn is the prompt from here on:
        // sampling, pairs, SFT and evaluation all see the same text
        for q in qs.iter_mut().chain(test.iter_mut()) {
            q.prompt = tok.apply_chat_template(
                &[crate::model::chat::Message::new("user", &q.prompt)],
                true,
            )?;
        }
    }
    let gold = gold_seqs(&tok, &qs)?;
    let prompts: Vec<String> = qs.iter().map(|q| q.prompt.clone()).collect();
    let name = if o.no_dpo { "self-train" } else { "dpo-st" };
    let mut positives: Vec<Positive> = Vec::new();
    let mut summary = SelfTrainSummary::default();
    let done = dir.rows().len();
    if done > 0 {
        // continue after the last finished round: its model and the positives so far
        let last = dir.round_dir(done);
        m = load_trainable(&last.join("model"), o.device)?.0;
        positives = read_positives(&last.join("positives.jsonl"))?;
        // the positives so far were asked in one prompt format: the rounds to come must be too
        let before = dir.rows()[0]
            .get("chat")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if before != o.chat {
            return Err(Error::invalid(
                COMMAND,
                format!(
                    "{}: its rounds so far were run {} --chat; resume {} it",
                    o.out.display(),
                    if before { "with" } else { "without" },
                    if before { "with" } else { "without" }
                ),
            ));
        }
        log(format!("{name}: resuming after round {done}"));
        // the summary covers every round, those finished before the resume included, so
        // that round n is reported as round n
        for r in dir.rows() {
            if let (Some(a), Some(t)) = (
                r.get("accuracy").and_then(Value::as_f64),
                r.get("mean_tokens").and_then(Value::as_f64),
            ) {
                summary.accuracy.push(a);
                summary.mean_tokens.push(t);
            }
        }
    }
    let title = if o.no_dpo {
        "Self-training"
    } else {
        "DPO-augmented self-training"
    };
    dir.describe(COMMAND, title, o);
    if done == 0 && !test.is_empty() {
        // round 0: the starting model, so the plot and the report show what the rounds changed
        let t0 = Instant::now();
        let r = eval(
            &m,
            &tok,
            &test,
            o.sampling.calculator,
            o.eval_max_new_tokens,
            o.quiet,
            "round 0 eval",
        )?;
        log(format!(
            "{name} round 0 (the starting model): accuracy {:.4}, mean tokens {:.1}",
            r.accuracy,
            r.mean_tokens.unwrap_or(0.0)
        ));
        let mut start = super::run::start_row(&r);
        start.insert("seconds_eval".into(), json!(t0.elapsed().as_secs_f64()));
        dir.record_start(start)?;
    }
    for round in done + 1..=o.rounds {
        let t0 = Instant::now();
        let rdir = dir.round_dir(round);
        let mut so = o.sampling.clone();
        so.seed = o.sampling.seed ^ (round as u64) << 20;
        so.quiet = o.quiet;
        let mut row = serde_json::Map::new();
        row.insert("step".into(), json!(round));
        row.insert("round".into(), json!(round));
        row.insert("chat".into(), json!(o.chat));
        // seconds per phase, for the report's time table
        let mut lap = Instant::now();
        let mut phase = |row: &mut serde_json::Map<String, Value>, name: &str| {
            row.insert(
                format!("seconds_{name}"),
                json!(lap.elapsed().as_secs_f64()),
            );
            lap = Instant::now();
        };
        // 1. DPO step
        let gen_net = if o.no_dpo {
            m
        } else {
            so.label = format!("round {round} sampling (dpo)");
            let (samples, calls) = sample(&m, &tok, &prompts, &so)?;
            phase(&mut row, "sample_dpo");
            let (pairs, refs, saved) = build_pairs(&m, &samples, &qs, &gold, o)?;
            summary.reference_forwards_saved += saved;
            row.insert("dpo_pairs".into(), json!(pairs.len()));
            row.insert("calculator_calls".into(), json!(calls));
            row.insert("reference_forwards_saved".into(), json!(saved));
            // each pair's question (found by its sampled side's prompt) and texts, for the report
            let by_prompt: HashMap<&[u32], usize> = samples
                .iter()
                .enumerate()
                .filter_map(|(q, ss)| Some((ss.first()?.prompt_ids.as_slice(), q)))
                .collect();
            let text = |s: &Seq| tok.decode(&s.ids[s.prompt_len..], true).unwrap_or_default();
            let rows: Vec<Value> = pairs
                .iter()
                .zip(&refs)
                .map(|(p, r)| {
                    let q = by_prompt.get(&p.rejected.ids[..p.rejected.prompt_len]).copied();
                    json!({"chosen": p.chosen.ids, "rejected": p.rejected.ids, "prompt_len": p.chosen.prompt_len, "ref_chosen": r.0, "ref_rejected": r.1,
                        "question": q, "prompt": q.map(|q| &qs[q].prompt), "answer": q.map(|q| &qs[q].answer),
                        "chosen_text": text(&p.chosen), "rejected_text": text(&p.rejected), "chosen_tokens": p.chosen.completion_len(), "rejected_tokens": p.rejected.completion_len()})
                })
                .collect();
            write_jsonl(&rdir.join("pairs.jsonl"), &rows)?;
            if pairs.is_empty() {
                log(format!(
                    "round {round}: no question had both a correct and a wrong sample; DPO skipped"
                ));
                phase(&mut row, "dpo");
                m
            } else {
                let mut fo = o.dpo.clone();
                fo.quiet = o.quiet;
                fo.seed ^= round as u64;
                fo.label = format!("round {round} dpo");
                let (d, stats) = fit::dpo(m, &pairs, &refs, &fo)?;
                if let Some((margin, acc)) = stats.last().and_then(|s| s.margin_accuracy()) {
                    row.insert("dpo_last_margin".into(), json!(margin));
                    row.insert("dpo_last_accuracy".into(), json!(acc));
                }
                phase(&mut row, "dpo");
                d
            }
        };
        // 2. SFT step
        so.label = format!("round {round} sampling (sft)");
        so.seed ^= 0x5F;
        let (samples, _) = sample(&gen_net, &tok, &prompts, &so)?;
        phase(&mut row, "sample_sft");
        drop(gen_net);
        let new = new_positives(&samples, &qs, &gold, o);
        row.insert("new_positives".into(), json!(new.len()));
        positives.extend(new);
        row.insert("positives".into(), json!(positives.len()));
        let (base, _) = load_trainable(&base_dir, o.device)?;
        let data: Vec<Seq> = positives.iter().map(|p| p.seq.clone()).collect();
        let mut fo = o.sft.clone();
        fo.quiet = o.quiet;
        fo.seed ^= round as u64;
        fo.label = format!("round {round} sft");
        m = if data.is_empty() {
            log(format!(
                "round {round}: no correct sample yet; SFT skipped (the base model carries on)"
            ));
            base
        } else {
            fit::sft(base, &data, &fo)?.0
        };
        phase(&mut row, "sft");
        save(&m, &tok_dir, &rdir.join("model"))?;
        write_jsonl(&rdir.join("positives.jsonl"), &positives_rows(&positives))?;
        phase(&mut row, "save");
        if !test.is_empty() {
            let r = eval(
                &m,
                &tok,
                &test,
                so.calculator,
                o.eval_max_new_tokens,
                o.quiet,
                &format!("round {round} eval"),
            )?;
            row.insert("accuracy".into(), json!(r.accuracy));
            row.insert("mean_tokens".into(), json!(r.mean_tokens.unwrap_or(0.0)));
            phase(&mut row, "eval");
            summary.accuracy.push(r.accuracy);
            summary.mean_tokens.push(r.mean_tokens.unwrap_or(0.0));
            log(format!(
                "{name} round {round}: accuracy {:.4}, mean tokens {:.1}",
                r.accuracy,
                r.mean_tokens.unwrap_or(0.0)
            ));
        }
        row.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
        dir.finish_round(row, &["accuracy", "mean_tokens", "positives"])?;
    }
    summary.final_model = dir.round_dir(o.rounds).join("model");
    Ok(summary)
}

//! Thinking Preference Optimization, after Yang et al. 2025 ("Thinking Preference
//! Optimization"): a model already fine-tuned on long chain-of-thought answers is trained
//! with DPO to prefer the long answer to a short one for the same question.
//!
//! - Chosen: the long-CoT answer from the data. Rejected: a short answer, sampled from a
//!   short-CoT model (T = 0.7, top-p 0.9) or read from a file.
//! - A pair is kept when both answers are correct; `keep_format_correct` also keeps those
//!   whose short answer is well-formed (an answer can be extracted) but wrong;
//!   `max_length_gap` keeps only pairs whose long answer is at most that many tokens
//!   longer than the short one (the paper found smaller gaps work best).
//! - DPO: sigmoid, beta 0.01, cosine schedule, warmup ratio 0.1, one epoch; the reference
//!   is the starting long-CoT model. The long answers are not sampled, and the short ones
//!   come from another model, so both sides need a reference forward here, unless the
//!   short model is the starting model itself, whose recorded log-probs are then used.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::answer;
use super::data::{write_jsonl, Example};
use super::run::{eval, load_trainable, log, read_limited, save, RunDir};
use super::sample::{sample, SampleOpts};
use crate::error::{Error, Result};
use crate::model::Tok;
use crate::tensor::Device;
use crate::train::data::{Pair, Seq, Truncation, TruncationMode};
use crate::train::fit::{self, FitOpts};
use crate::train::optim::Scheduler;

#[derive(Clone, Debug)]
pub struct ThinkPoOpts {
    /// The long-CoT SFT model (policy and reference).
    pub model: PathBuf,
    /// Long-CoT data: {"prompt"|"question", "completion" (long answer), "answer"}.
    pub data: PathBuf,
    /// Where the short answers come from: a short-CoT model to sample...
    pub short_model: Option<PathBuf>,
    /// ...or a file of {"prompt"|"question", "completion"} lines (matched by prompt).
    pub short_data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
    pub keep_format_correct: bool,
    pub max_length_gap: Option<usize>,
    pub sampling: SampleOpts,
    pub dpo: FitOpts,
    pub limit: Option<usize>,
    pub eval_limit: Option<usize>,
    pub eval_max_new_tokens: usize,
    /// Evaluate with calculator decoding.
    pub calculator: bool,
    pub device: Device,
    pub quiet: bool,
}

impl Default for ThinkPoOpts {
    fn default() -> Self {
        ThinkPoOpts {
            model: PathBuf::new(),
            data: PathBuf::new(),
            short_model: None,
            short_data: None,
            eval_data: None,
            out: PathBuf::new(),
            keep_format_correct: false,
            max_length_gap: None,
            sampling: SampleOpts {
                k: 1,
                temperature: 0.7,
                top_p: 0.9,
                max_new_tokens: 300,
                ..Default::default()
            },
            dpo: FitOpts {
                beta: 0.01,
                lr: 1e-6,
                epochs: 1.0,
                scheduler: Scheduler::Cosine,
                warmup_ratio: 0.1,
                label: "thinkpo dpo".into(),
                // a long chosen and a short rejected after a short prompt: computing the
                // prompt once saved 4.5% of the tokens and no time on SmolLM2-135M
                // (2 pairs, chosen 200-1,900, rejected 4-50: 25.3 and 21.7 s a step
                // packed, 25.4 and 22.4 s shared), so ThinkPO packs without it
                shared_prompt: false,
                ..Default::default()
            },
            limit: None,
            eval_limit: None,
            eval_max_new_tokens: 400,
            calculator: false,
            device: Device::Cpu,
            quiet: false,
        }
    }
}

/// Before and after, on the held-out questions.
#[derive(Clone, Debug, Default)]
pub struct ThinkPoSummary {
    pub pairs: usize,
    pub skipped_wrong: usize,
    pub skipped_gap: usize,
    pub mean_chosen_tokens: f64,
    pub mean_rejected_tokens: f64,
    pub before: Option<(f64, f64)>,
    pub after: Option<(f64, f64)>,
    pub reference_forwards: usize,
    pub model: PathBuf,
}

fn truncation() -> Truncation {
    Truncation {
        max_prompt_length: None,
        max_length: Some(crate::train::args::DEFAULT_MAX_LENGTH),
        mode: TruncationMode::KeepStart,
    }
}

/// The short answer of every question, as text.
fn short_answers(o: &ThinkPoOpts, qs: &[Example]) -> Result<Vec<Option<String>>> {
    match (&o.short_model, &o.short_data) {
        (Some(dir), None) => {
            let (net, tok) = load_trainable(dir, o.device)?;
            let prompts: Vec<String> = qs.iter().map(|q| q.prompt.clone()).collect();
            let mut so = o.sampling.clone();
            so.k = 1;
            so.quiet = o.quiet;
            so.label = "short answers".into();
            let (s, _) = sample(&net, &tok, &prompts, &so)?;
            Ok(s.into_iter()
                .map(|v| v.into_iter().next().map(|x| x.text))
                .collect())
        }
        (None, Some(path)) => {
            let rows = read_examples_loose(path)?;
            let by_prompt: std::collections::HashMap<&str, &str> =
                rows.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
            Ok(qs
                .iter()
                .map(|q| by_prompt.get(q.prompt.as_str()).map(|c| c.to_string()))
                .collect())
        }
        _ => Err(Error::invalid(
            "thinkpo",
            "give exactly one of --short-model DIR and --short-data FILE",
        )),
    }
}

/// (prompt, completion) of every line of a short-answer file.
fn read_examples_loose(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    crate::train::data::read_jsonl(path)?
        .into_iter()
        .map(|(line, o)| {
            // a number is its text (a bare answer), another type is named in the error
            let get = |ks: &[&str]| super::data::text_field(path, line, &o, ks);
            Ok((get(&["prompt", "question"])?, get(&["completion"])?))
        })
        .collect()
}

/// Build the pairs (chosen = long, rejected = short) under the filters.
fn build_pairs(
    tok: &Tok,
    qs: &[Example],
    shorts: &[Option<String>],
    o: &ThinkPoOpts,
    s: &mut ThinkPoSummary,
) -> Result<Vec<Pair>> {
    let t = truncation();
    let mut pairs = Vec::new();
    let (mut lc, mut lr) = (0usize, 0usize);
    for (q, short) in qs.iter().zip(shorts) {
        let (Some(long), Some(short)) = (&q.rationale, short) else {
            continue;
        };
        let long_ok = answer::check(long, &q.answer).1;
        let (extracted, short_ok) = answer::check(short, &q.answer);
        let keep = long_ok && (short_ok || (o.keep_format_correct && extracted.is_some()));
        if !keep {
            s.skipped_wrong += 1;
            continue;
        }
        let Some(pair) = crate::train::data::pair_example(tok, &q.prompt, long, short, &t)? else {
            continue;
        };
        let (cl, rl) = (pair.chosen.completion_len(), pair.rejected.completion_len());
        if o.max_length_gap.is_some_and(|g| cl.saturating_sub(rl) > g) {
            s.skipped_gap += 1;
            continue;
        }
        lc += cl;
        lr += rl;
        pairs.push(pair);
    }
    let n = pairs.len().max(1) as f64;
    s.mean_chosen_tokens = lc as f64 / n;
    s.mean_rejected_tokens = lr as f64 / n;
    Ok(pairs)
}

impl ThinkPoOpts {
    /// Every setting in range, checked before a file is read or written.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate("thinkpo")?;
        self.dpo.validate("thinkpo", "", "epochs")?;
        if self.eval_max_new_tokens > 1 << 20 {
            return Err(crate::train::fit::range_error(
                "thinkpo",
                "max-new-tokens",
                self.eval_max_new_tokens,
                "0..=1048576",
            ));
        }
        Ok(())
    }
}

/// Run ThinkPO.
pub fn run(o: &ThinkPoOpts) -> Result<ThinkPoSummary> {
    let t0 = Instant::now();
    o.validate()?;
    let mut dir = RunDir::open(&o.out, "thinkpo", false)?;
    dir.describe("thinkpo", "Thinking Preference Optimization (ThinkPO)", o);
    let qs = read_limited(Some(&o.data), o.limit)?;
    let test = read_limited(o.eval_data.as_deref(), o.eval_limit)?;
    let mut s = ThinkPoSummary::default();
    let shorts = short_answers(o, &qs)?;
    let (net, tok) = load_trainable(&o.model, o.device)?;
    let pairs = build_pairs(&tok, &qs, &shorts, o, &mut s)?;
    s.pairs = pairs.len();
    log(format!(
        "thinkpo: {} pairs (mean chosen {:.1} tokens, rejected {:.1}); skipped {} with a wrong answer, {} over the length gap",
        s.pairs, s.mean_chosen_tokens, s.mean_rejected_tokens, s.skipped_wrong, s.skipped_gap
    ));
    if pairs.is_empty() {
        return Err(Error::invalid("thinkpo", "no pair survived the filters"));
    }
    // with each question's gold answer (found by its prompt) and each side's length, for the report
    let gold: std::collections::HashMap<&str, &str> = qs
        .iter()
        .map(|q| (q.prompt.as_str(), q.answer.as_str()))
        .collect();
    let rows: Vec<serde_json::Value> = pairs
        .iter()
        .map(|p| {
            let prompt = tok.decode(&p.chosen.ids[..p.chosen.prompt_len], false).unwrap_or_default();
            json!({"answer": gold.get(prompt.as_str()), "prompt": prompt, "chosen": tok.decode(&p.chosen.ids[p.chosen.prompt_len..], true).unwrap_or_default(), "rejected": tok.decode(&p.rejected.ids[p.rejected.prompt_len..], true).unwrap_or_default(),
                "chosen_tokens": p.chosen.completion_len(), "rejected_tokens": p.rejected.completion_len()})
        })
        .collect();
    write_jsonl(&o.out.join("pairs.jsonl"), &rows)?;
    if !test.is_empty() {
        let r = eval(
            &net,
            &tok,
            &test,
            o.calculator,
            o.eval_max_new_tokens,
            o.quiet,
            "eval before",
        )?;
        s.before = Some((r.accuracy, r.mean_tokens.unwrap_or(0.0)));
        dir.record_start(super::run::start_row(&r))?;
    }
    // reference: the starting model, one forward per side
    let seqs: Vec<&Seq> = pairs
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .collect();
    let mut net = net;
    net.padding_free = o.dpo.padding_free;
    net.shared_prompt = o.dpo.shared_prompt;
    let sums = crate::model::score::completion_sums(&net, &seqs, 16)?;
    s.reference_forwards = seqs.len().div_ceil(16);
    let refs: Vec<(f64, f64)> = sums.chunks(2).map(|c| (c[0], c[1])).collect();
    let mut fo = o.dpo.clone();
    fo.quiet = o.quiet;
    let (net, stats) = fit::dpo(net, &pairs, &refs, &fo)?;
    let model = o.out.join("model");
    save(&net, &o.model, &model)?;
    s.model = model;
    let mut row = serde_json::Map::new();
    row.insert("step".into(), json!(1));
    row.insert("pairs".into(), json!(s.pairs));
    row.insert("mean_chosen_tokens".into(), json!(s.mean_chosen_tokens));
    row.insert("mean_rejected_tokens".into(), json!(s.mean_rejected_tokens));
    if let Some((m, a)) = stats.last().and_then(|x| x.margin_accuracy()) {
        row.insert("dpo_last_margin".into(), json!(m));
        row.insert("dpo_last_accuracy".into(), json!(a));
    }
    if !test.is_empty() {
        let r = eval(
            &net,
            &tok,
            &test,
            o.calculator,
            o.eval_max_new_tokens,
            o.quiet,
            "eval after",
        )?;
        s.after = Some((r.accuracy, r.mean_tokens.unwrap_or(0.0)));
        let (b, a) = (s.before.unwrap_or_default(), s.after.unwrap_or_default());
        row.insert("accuracy_before".into(), json!(b.0));
        row.insert("mean_tokens_before".into(), json!(b.1));
        row.insert("accuracy".into(), json!(a.0));
        row.insert("mean_tokens".into(), json!(a.1));
    }
    row.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    dir.finish_round(row, &["accuracy", "mean_tokens"])?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_answers_may_be_numbers_and_other_types_are_named() {
        let dir = std::env::temp_dir().join(format!("ponder-thinkpo-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("short.jsonl");
        std::fs::write(
            &ok,
            "{\"prompt\": \"What is 6 x 7?\", \"completion\": 42}\n{\"question\": \"1 + 1?\", \"completion\": \"2\"}\n",
        )
        .unwrap();
        let got = super::read_examples_loose(&ok).unwrap();
        assert_eq!(got[0], ("What is 6 x 7?".into(), "42".into()));
        assert_eq!(got[1], ("1 + 1?".into(), "2".into()));
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"prompt\": \"p\", \"completion\": [1, 2]}\n").unwrap();
        let e = super::read_examples_loose(&bad).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("`completion`") && e.contains("expected a string"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

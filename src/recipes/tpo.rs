//! Thought Preference Optimization, after Wu et al. 2024 ("Thinking LLMs: General
//! Instruction Following with Thought Generation").
//!
//! Each round, on fresh instructions: wrap each in a thought prompt, sample K outputs,
//! split each into thought and response, let a judge score the responses only, and pair
//! the best with the worst under a length penalty: per instruction, scores and response
//! lengths are z-normalised and s = norm(score) - rho * norm(length); chosen = argmax s,
//! rejected = argmin s. An output that cannot be split is a rejected candidate (at most
//! 10% of the pairs). Pairs keep the thought prompt and the whole output, and DPO uses
//! the round's starting model as the reference, whose log-probs were recorded while
//! sampling: no reference forward at all. After each round the new model is kept only if
//! it does at least as well on the validation set.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::data::{read_examples, write_jsonl};
use super::judges::{verify, PairwiseJudge};
use super::run::{eval, load_trainable, log, read_limited, save, RunDir};
use super::sample::{sample, Sample, SampleOpts};
use crate::error::{Error, Result};
use crate::tensor::Device;
use crate::train::data::Pair;
use crate::train::fit::{self, FitOpts};

/// How an instruction is wrapped, and where the response starts in an output.
/// The command whose output directory this recipe writes.
const COMMAND: &str = "tpo";

#[derive(Clone, Debug)]
pub struct ThoughtTemplate {
    /// Holds `{instruction}`.
    pub text: String,
    /// The response is what follows the last occurrence of this.
    pub response_delimiter: String,
    /// Whether the delimiter belongs to the response (as `####` does in a GSM8K-style
    /// answer line) or is dropped (as "Here is my response:" is).
    pub keep_delimiter: bool,
}

impl ThoughtTemplate {
    /// The paper's generic thought prompt, in our words, around its two delimiters.
    pub fn generic() -> ThoughtTemplate {
        ThoughtTemplate {
            text: "{instruction}\n\nThink before you reply. Write your private reasoning first, starting with the line \"Here is my thought process:\". Then write what the user will read, starting with the line \"Here is my response:\". Only the part after that line is shown to the user.\n".into(),
            response_delimiter: "Here is my response:".into(),
            keep_delimiter: false,
        }
    }

    /// The paper's specific thought prompt (draft, evaluate, then respond after <R>), in
    /// our words.
    pub fn specific() -> ThoughtTemplate {
        ThoughtTemplate {
            text: "{instruction}\n\nBefore replying, draft a response, judge the draft critically, and improve it. Then write your final reply after the tag <R>. Nothing before <R> is shown to the user.\n".into(),
            response_delimiter: "<R>".into(),
            keep_delimiter: false,
        }
    }

    /// A model's own rationale format: the instruction as is, the thought is the working
    /// and the response is the final `#### N` line (the synthetic task's models).
    pub fn answer_line() -> ThoughtTemplate {
        ThoughtTemplate {
            text: "{instruction}".into(),
            response_delimiter: "####".into(),
            keep_delimiter: true,
        }
    }

    /// The largest template accepted, and how often it may hold `{instruction}`: a
    /// template repeating it without bound would make every prompt as large.
    pub const MAX_BYTES: usize = 64 << 10;
    pub const MAX_INSTRUCTIONS: usize = 4;

    /// A template that can render: `{instruction}` 1..=4 times, at most 64 KiB, and a
    /// non-empty response delimiter.
    pub fn validate(&self) -> Result<()> {
        let n = self.text.matches("{instruction}").count();
        if self.text.len() > Self::MAX_BYTES {
            return Err(Error::invalid(
                "tpo",
                format!(
                    "the thought template is {} bytes; at most {} are accepted",
                    self.text.len(),
                    Self::MAX_BYTES
                ),
            ));
        }
        if !(1..=Self::MAX_INSTRUCTIONS).contains(&n) {
            return Err(Error::invalid(
                "tpo",
                format!(
                    "the thought template holds {{instruction}} {n} times; it must hold it 1 to {} times",
                    Self::MAX_INSTRUCTIONS
                ),
            ));
        }
        if self.response_delimiter.trim().is_empty() || self.response_delimiter.len() > 1024 {
            return Err(Error::invalid(
                "tpo",
                "the response delimiter must be non-blank text of at most 1,024 bytes (--response-delimiter)",
            ));
        }
        Ok(())
    }

    pub fn render(&self, instruction: &str) -> String {
        self.text.replace("{instruction}", instruction)
    }

    /// (thought, response), or None when the output has no response delimiter.
    pub fn split<'a>(&self, output: &'a str) -> Option<(&'a str, &'a str)> {
        let at = output.rfind(&self.response_delimiter)?;
        let resp_at = if self.keep_delimiter {
            at
        } else {
            at + self.response_delimiter.len()
        };
        let resp = output[resp_at..].trim();
        (!resp.is_empty()).then_some((&output[..at], resp))
    }
}

#[derive(Clone, Debug)]
pub enum JudgeKind {
    Verifier,
    Pairwise(PathBuf),
    /// A `...ForSequenceClassification` checkpoint: one score per (instruction, response).
    RewardModel(PathBuf),
}

#[derive(Clone, Debug)]
pub struct TpoOpts {
    pub model: PathBuf,
    /// Instructions: {"prompt"|"question", "answer"?} (answer needed by the verifier).
    pub data: PathBuf,
    /// Validation questions for checkpoint selection (and the table's accuracy).
    pub val_data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
    pub template: ThoughtTemplate,
    pub judge: JudgeKind,
    pub rounds: usize,
    /// Fresh instructions per round.
    pub per_round: usize,
    pub sampling: SampleOpts,
    /// Length penalty; None picks the smallest of a grid that keeps the mean chosen
    /// response no longer than the mean rejected one.
    pub rho: Option<f64>,
    /// Largest share of pairs whose rejected output failed to parse.
    pub max_parse_fail_share: f64,
    pub dpo: FitOpts,
    pub eval_limit: Option<usize>,
    pub eval_max_new_tokens: usize,
    pub calculator: bool,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
}

impl Default for TpoOpts {
    fn default() -> Self {
        TpoOpts {
            model: PathBuf::new(),
            data: PathBuf::new(),
            val_data: None,
            eval_data: None,
            out: PathBuf::new(),
            template: ThoughtTemplate::generic(),
            judge: JudgeKind::Verifier,
            rounds: 3,
            per_round: 200,
            sampling: SampleOpts {
                k: 8,
                temperature: 0.8,
                top_p: 0.95,
                max_new_tokens: 300,
                ..Default::default()
            },
            rho: None,
            max_parse_fail_share: 0.1,
            dpo: FitOpts {
                beta: 0.1,
                lr: 1e-6,
                epochs: 1.0,
                label: "tpo dpo".into(),
                ..Default::default()
            },
            eval_limit: None,
            eval_max_new_tokens: 300,
            calculator: false,
            device: Device::Cpu,
            resume: false,
            quiet: false,
        }
    }
}

/// `(x - mean) / std` over one instruction's samples (all 0 when std is 0).
fn znorm(x: &[f64]) -> Vec<f64> {
    let n = x.len().max(1) as f64;
    let m = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt();
    x.iter()
        .map(|v| if sd > 1e-12 { (v - m) / sd } else { 0.0 })
        .collect()
}

/// One instruction's judged samples.
struct Judged {
    samples: Vec<Sample>,
    /// Judge score; None when the output did not parse.
    scores: Vec<Option<f64>>,
    /// Response length in tokens (the whole output's when unparsed).
    lengths: Vec<f64>,
}

/// (chosen, rejected, rejected_unparsed) for one instruction under `rho`.
fn choose(j: &Judged, rho: f64) -> Option<(usize, usize, bool)> {
    let parsed: Vec<usize> = (0..j.samples.len())
        .filter(|&i| j.scores[i].is_some())
        .collect();
    if parsed.is_empty() {
        return None;
    }
    let sc: Vec<f64> = parsed.iter().map(|&i| j.scores[i].unwrap_or(0.0)).collect();
    let ln: Vec<f64> = parsed.iter().map(|&i| j.lengths[i]).collect();
    let (zs, zl) = (znorm(&sc), znorm(&ln));
    let s: Vec<f64> = zs.iter().zip(&zl).map(|(a, b)| a - rho * b).collect();
    let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))?;
    let worst = (0..s.len()).min_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)))?;
    // an unparsed output is the natural rejected one
    if let Some(u) = (0..j.samples.len()).find(|&i| j.scores[i].is_none()) {
        return Some((parsed[best], u, true));
    }
    (s[best] > s[worst]).then_some((parsed[best], parsed[worst], false))
}

/// The pairs of one round under `rho`, with the share of unparsed rejections capped.
fn select(judged: &[Judged], rho: f64, cap: f64) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut unparsed = Vec::new();
    for (q, j) in judged.iter().enumerate() {
        match choose(j, rho) {
            Some((c, r, true)) => unparsed.push((q, c, r)),
            Some((c, r, false)) => out.push((q, c, r)),
            None => {}
        }
    }
    // unparsed rejections may make up at most `cap` of the pairs
    let room = ((cap * out.len() as f64) / (1.0 - cap).max(1e-9)).floor() as usize;
    out.extend(unparsed.into_iter().take(room));
    out.sort();
    out
}

fn mean_lengths(judged: &[Judged], pairs: &[(usize, usize, usize)]) -> (f64, f64) {
    let n = pairs.len().max(1) as f64;
    let c: f64 = pairs.iter().map(|&(q, c, _)| judged[q].lengths[c]).sum();
    let r: f64 = pairs.iter().map(|&(q, _, r)| judged[q].lengths[r]).sum();
    (c / n, r / n)
}

/// The smallest rho of a grid with mean chosen length <= mean rejected length.
fn auto_rho(judged: &[Judged], cap: f64) -> f64 {
    for rho in [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0] {
        let p = select(judged, rho, cap);
        let (c, r) = mean_lengths(judged, &p);
        if c <= r {
            return rho;
        }
    }
    4.0
}

#[derive(Clone, Debug, Default)]
pub struct TpoSummary {
    /// Per round: (pairs, rho, mean chosen length, mean rejected length, accuracy, kept).
    pub rounds: Vec<serde_json::Map<String, serde_json::Value>>,
    pub accuracy: Option<f64>,
    pub mean_tokens: Option<f64>,
    pub model: PathBuf,
    pub reference_forwards_saved: usize,
}

/// Run TPO.
impl TpoOpts {
    /// Every setting in range, checked before a file is read or written.
    pub fn validate(&self) -> Result<()> {
        use crate::train::fit::range_error;
        super::run::check_rounds(COMMAND, self.rounds)?;
        if !(1..=1 << 24).contains(&self.per_round) {
            return Err(range_error(
                COMMAND,
                "per-round",
                self.per_round,
                "1..=16777216",
            ));
        }
        self.sampling.validate(COMMAND)?;
        if self.sampling.k < 2 {
            return Err(range_error(
                COMMAND,
                "k",
                self.sampling.k,
                "2..=1024 (a pair needs two samples)",
            ));
        }
        self.dpo.validate(COMMAND, "", "epochs-per-round")?;
        if let Some(r) = self.rho {
            if !(r.is_finite() && r >= 0.0) {
                return Err(range_error(COMMAND, "rho", r, "a finite number >= 0"));
            }
        }
        if !(self.max_parse_fail_share.is_finite()
            && (0.0..=1.0).contains(&self.max_parse_fail_share))
        {
            return Err(Error::invalid(
                COMMAND,
                "max_parse_fail_share must be in 0..=1",
            ));
        }
        if self.eval_max_new_tokens > 1 << 20 {
            return Err(range_error(
                COMMAND,
                "max-new-tokens",
                self.eval_max_new_tokens,
                "0..=1048576",
            ));
        }
        self.template.validate()
    }
}

pub fn run(o: &TpoOpts) -> Result<TpoSummary> {
    o.validate()?;
    let mut dir = RunDir::open(&o.out, COMMAND, o.resume)?;
    let data = read_examples(&o.data)?;
    let needed = o.rounds.saturating_mul(o.per_round);
    if data.len() < needed {
        return Err(Error::file(
            &o.data,
            format!(
                "{} instructions, but {} rounds x {} fresh instructions need {needed}",
                data.len(),
                o.rounds,
                o.per_round
            ),
        ));
    }
    let val = read_limited(o.val_data.as_deref(), o.eval_limit)?;
    let test = read_limited(o.eval_data.as_deref(), o.eval_limit)?;
    let (mut net, tok) = load_trainable(&o.model, o.device)?;
    let pairwise = match &o.judge {
        JudgeKind::Pairwise(d) => {
            let (jn, jt) = load_trainable(d, o.device)?;
            Some(PairwiseJudge::new(jn, jt)?)
        }
        _ => None,
    };
    let reward_model = match &o.judge {
        JudgeKind::RewardModel(d) => {
            let rm = crate::model::reward::RewardModel::load(d, o.device)?;
            if rm.num_labels() != 1 {
                return Err(Error::file(
                    d.join("config.json"),
                    format!(
                        "has {} labels; a reward-model judge needs num_labels 1",
                        rm.num_labels()
                    ),
                ));
            }
            Some(rm)
        }
        _ => None,
    };
    let mut s = TpoSummary::default();
    let done = dir.rows().len();
    if done > 0 {
        net = load_trainable(&dir.round_dir(done).join("model"), o.device)?.0;
        log(format!("tpo: resuming after round {done}"));
    }
    let mut val_acc = if val.is_empty() {
        None
    } else {
        Some(
            eval(
                &net,
                &tok,
                &val,
                o.calculator,
                o.eval_max_new_tokens,
                o.quiet,
                "validation",
            )?
            .accuracy,
        )
    };
    dir.describe(COMMAND, "Thought Preference Optimization (TPO)", o);
    if done == 0 {
        // round 0: the starting model, so the plot and the report show what the rounds changed
        let mut row = serde_json::Map::new();
        if !test.is_empty() {
            let r = eval(
                &net,
                &tok,
                &test,
                o.calculator,
                o.eval_max_new_tokens,
                o.quiet,
                "round 0 eval",
            )?;
            row = super::run::start_row(&r);
        }
        if let Some(a) = val_acc {
            row.insert("val_accuracy".into(), json!(a));
        }
        if !row.is_empty() {
            dir.record_start(row)?;
        }
    }
    for round in done + 1..=o.rounds {
        let t0 = Instant::now();
        let batch = &data[(round - 1) * o.per_round..round * o.per_round];
        let prompts: Vec<String> = batch.iter().map(|e| o.template.render(&e.prompt)).collect();
        let mut so = o.sampling.clone();
        so.seed ^= (round as u64) << 24;
        so.quiet = o.quiet;
        so.label = format!("round {round} sampling");
        let (samples, _) = sample(&net, &tok, &prompts, &so)?;
        let bar = crate::util::progress_bar(
            batch.len() as u64,
            &format!("round {round} judging"),
            o.quiet,
        );
        // an output's response part, or None where the template's split fails
        let parts_of = |ss: &[Sample]| -> Vec<Option<String>> {
            ss.iter()
                .map(|x| o.template.split(&x.text).map(|p| p.1.to_string()))
                .collect()
        };
        let score = |q: usize, parts: &[Option<String>]| -> Result<Vec<Option<f64>>> {
            Ok(match (&pairwise, &reward_model) {
                // the reward model sees the bare instruction and the response, no thought
                (None, Some(rm)) => parts
                    .iter()
                    .map(|p| {
                        p.as_deref()
                            .map(|r| rm.score(&batch[q].prompt, r))
                            .transpose()
                    })
                    .collect::<Result<_>>()?,
                (None, None) => parts
                    .iter()
                    .map(|p| p.as_deref().map(|r| verify(r, &batch[q].answer)))
                    .collect(),
                (Some(j), _) => {
                    let ok: Vec<String> = parts.iter().flatten().cloned().collect();
                    let elo = j.elo(&batch[q].prompt, &ok)?;
                    let mut it = elo.into_iter();
                    parts
                        .iter()
                        .map(|p| p.as_ref().and_then(|_| it.next()))
                        .collect()
                }
            })
        };
        // of several MPI ranks, each judges a contiguous share of the instructions and
        // every rank gets every score (as bits, so that each comes back exactly)
        let parts: Vec<Vec<Option<String>>> = samples.iter().map(|ss| parts_of(ss)).collect();
        let mine = crate::dist::share(samples.len());
        let mut my_scores: Vec<Vec<Option<u64>>> = Vec::with_capacity(mine.len());
        for q in mine {
            let s = score(q, &parts[q])?;
            my_scores.push(s.iter().map(|x| x.map(f64::to_bits)).collect());
            bar.inc(1);
        }
        let all_scores: Vec<Vec<Option<u64>>> = if crate::dist::size() > 1 {
            crate::dist::all_gather_json(&my_scores)?.concat()
        } else {
            my_scores
        };
        let mut judged = Vec::with_capacity(batch.len());
        for ((ss, bits), parts) in samples.into_iter().zip(all_scores).zip(parts) {
            // an unparsed output is all response: its length is the whole output's
            let lengths: Vec<f64> = parts
                .iter()
                .zip(&ss)
                .map(|(p, x)| match p {
                    Some(r) => tok.encode(r, false).map(|v| v.len() as f64).unwrap_or(0.0),
                    None => x.len_tokens(&tok.eos_ids) as f64,
                })
                .collect();
            let scores = bits.iter().map(|b| b.map(f64::from_bits)).collect();
            judged.push(Judged {
                samples: ss,
                scores,
                lengths,
            });
        }
        bar.finish_and_clear();
        let rho = o
            .rho
            .unwrap_or_else(|| auto_rho(&judged, o.max_parse_fail_share));
        let chosen = select(&judged, rho, o.max_parse_fail_share);
        let (mc, mr) = mean_lengths(&judged, &chosen);
        let parsed_share = judged
            .iter()
            .flat_map(|j| &j.scores)
            .filter(|x| x.is_some())
            .count() as f64
            / judged.iter().map(|j| j.scores.len()).sum::<usize>().max(1) as f64;
        let judge_mean = judged
            .iter()
            .flat_map(|j| j.scores.iter().flatten())
            .sum::<f64>()
            / judged
                .iter()
                .flat_map(|j| j.scores.iter().flatten())
                .count()
                .max(1) as f64;
        let mut pairs = Vec::with_capacity(chosen.len());
        let mut refs = Vec::with_capacity(chosen.len());
        for &(q, c, r) in &chosen {
            let (cs, rs) = (&judged[q].samples[c], &judged[q].samples[r]);
            pairs.push(Pair {
                chosen: cs.seq(),
                rejected: rs.seq(),
            });
            refs.push((cs.logprob_sum(), rs.logprob_sum()));
        }
        s.reference_forwards_saved += 2 * pairs.len();
        let rdir = dir.round_dir(round);
        // with the gold answer, each side's thought and response apart and its length, for the report
        let split = |q: usize, i: usize| o.template.split(&judged[q].samples[i].text);
        let len = |q: usize, i: usize| judged[q].samples[i].len_tokens(&tok.eos_ids);
        let rows: Vec<serde_json::Value> = chosen
            .iter()
            .map(|&(q, c, r)| {
                let (cs, rs) = (split(q, c), split(q, r));
                json!({"prompt": prompts[q], "chosen": judged[q].samples[c].text, "rejected": judged[q].samples[r].text, "chosen_score": judged[q].scores[c], "rejected_score": judged[q].scores[r],
                    "answer": batch[q].answer, "chosen_thought": cs.map(|x| x.0), "chosen_response": cs.map(|x| x.1), "rejected_thought": rs.map(|x| x.0), "rejected_response": rs.map(|x| x.1),
                    "chosen_tokens": len(q, c), "rejected_tokens": len(q, r)})
            })
            .collect();
        write_jsonl(&rdir.join("pairs.jsonl"), &rows)?;
        let mut row = serde_json::Map::new();
        row.insert("step".into(), json!(round));
        row.insert("round".into(), json!(round));
        row.insert("pairs".into(), json!(pairs.len()));
        row.insert("rho".into(), json!(rho));
        // a round without pairs (or without a scored sample) has no mean: null, not the
        // -0.0 an empty float sum gives
        let lens = (!pairs.is_empty()).then_some((mc, mr));
        let scored = judged
            .iter()
            .flat_map(|j| j.scores.iter().flatten())
            .count();
        let judge_mean = (scored > 0).then_some(judge_mean);
        row.insert("mean_chosen_length".into(), json!(lens.map(|l| l.0)));
        row.insert("mean_rejected_length".into(), json!(lens.map(|l| l.1)));
        row.insert("judge_score".into(), json!(judge_mean));
        row.insert("parsed_share".into(), json!(parsed_share));
        let lens_text = match lens {
            Some((c, r)) => format!("mean response length chosen {c:.1} vs rejected {r:.1}"),
            None => "no pair to train on".to_string(),
        };
        let judge_text = match judge_mean {
            Some(j) => format!("{j:.3}"),
            None => "- (nothing scored)".to_string(),
        };
        log(format!(
            "tpo round {round}: {} pairs, rho {rho}, {lens_text}, judge mean {judge_text}",
            pairs.len()
        ));
        // checkpoint selection: keep the new model unless it is worse on validation
        net = if pairs.is_empty() {
            net
        } else {
            let mut fo = o.dpo.clone();
            fo.quiet = o.quiet;
            fo.seed ^= round as u64;
            fo.label = format!("round {round} dpo");
            let new = fit::dpo(net, &pairs, &refs, &fo)?.0;
            if val.is_empty() {
                new
            } else {
                let a = eval(
                    &new,
                    &tok,
                    &val,
                    o.calculator,
                    o.eval_max_new_tokens,
                    o.quiet,
                    "validation",
                )?
                .accuracy;
                row.insert("val_accuracy".into(), json!(a));
                let kept = a >= val_acc.unwrap_or(f64::NEG_INFINITY);
                row.insert("kept".into(), json!(kept));
                if kept {
                    val_acc = Some(a);
                    new
                } else {
                    log(format!("tpo round {round}: validation accuracy fell to {a:.4}; keeping the round's starting model"));
                    let prev = if round == 1 {
                        o.model.clone()
                    } else {
                        dir.round_dir(round - 1).join("model")
                    };
                    load_trainable(&prev, o.device)?.0
                }
            }
        };
        if !test.is_empty() {
            let r = eval(
                &net,
                &tok,
                &test,
                o.calculator,
                o.eval_max_new_tokens,
                o.quiet,
                &format!("round {round} eval"),
            )?;
            row.insert("accuracy".into(), json!(r.accuracy));
            row.insert("mean_tokens".into(), json!(r.mean_tokens.unwrap_or(0.0)));
            s.accuracy = Some(r.accuracy);
            s.mean_tokens = r.mean_tokens;
        }
        save(&net, &o.model, &rdir.join("model"))?;
        row.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
        s.rounds.push(row.clone());
        dir.finish_round(
            row,
            &[
                "accuracy",
                "judge_score",
                "mean_chosen_length|mean_rejected_length",
            ],
        )?;
    }
    s.model = dir.round_dir(o.rounds).join("model");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_thought_from_response() {
        let g = ThoughtTemplate::generic();
        let out = "Here is my thought process: it is 4.\nHere is my response: The answer is 4.";
        assert_eq!(g.split(out).unwrap().1, "The answer is 4.");
        assert!(g.split("no delimiter here").is_none());
        let s = ThoughtTemplate::specific();
        assert_eq!(s.split("draft... <R> Final.").unwrap().1, "Final.");
        let a = ThoughtTemplate::answer_line();
        assert_eq!(
            a.split("2 + 2 = 4\n#### 4").unwrap(),
            ("2 + 2 = 4\n", "#### 4")
        );
        assert!(g.render("Q?").starts_with("Q?\n"));
    }

    #[test]
    fn znorm_and_length_penalty() {
        assert_eq!(znorm(&[1.0, 1.0]), vec![0.0, 0.0]);
        let z = znorm(&[1.0, 3.0]);
        assert!((z[0] + 1.0).abs() < 1e-12 && (z[1] - 1.0).abs() < 1e-12);
    }
}

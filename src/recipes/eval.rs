//! Evaluation: generate (or read) completions for question/answer data, check each
//! answer, and report accuracy, pass@K, mean completion length and parse failures.

use serde::Serialize;
use serde_json::json;

use super::answer;
use super::data::Example;
use super::Calculator;
use crate::error::{Error, Result};
use crate::model::chat::Message;
use crate::model::generate::{generate_with, Hooks, SamplingParams, Sequence, Steer};
use crate::model::{Tok, Transformer};

/// How completions are produced.
#[derive(Clone, Debug)]
pub struct EvalOpts {
    /// Samples per question (pass@K when > 1).
    pub samples: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub calculator: bool,
    /// Wrap each prompt as a user message in the chat template.
    pub chat: bool,
    pub seed: u64,
    /// Questions generated together in one batch (times `samples` rows).
    pub batch: usize,
}

impl Default for EvalOpts {
    fn default() -> Self {
        EvalOpts {
            samples: 1,
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 256,
            calculator: false,
            chat: false,
            seed: 0,
            batch: 32,
        }
    }
}

/// Bounds shared by sampling and evaluation, checked before a model is loaded: each
/// error names the flag and the accepted range.
pub fn check_sampling(
    what: &'static str,
    k: (&str, usize),
    temperature: f32,
    top_p: f32,
    max_new_tokens: usize,
    batch: usize,
) -> Result<()> {
    use crate::train::fit::range_error;
    if !(1..=1024).contains(&k.1) {
        return Err(range_error(what, k.0, k.1, "1..=1024"));
    }
    if !(temperature.is_finite() && (0.0..=100.0).contains(&temperature)) {
        return Err(range_error(
            what,
            "temperature",
            temperature,
            "0 <= x <= 100",
        ));
    }
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return Err(range_error(what, "top-p", top_p, "0 < x <= 1"));
    }
    if max_new_tokens > 1 << 20 {
        return Err(range_error(
            what,
            "max-new-tokens",
            max_new_tokens,
            "0..=1048576",
        ));
    }
    if !(1..=1 << 16).contains(&batch) || batch.saturating_mul(k.1) > 1 << 16 {
        return Err(Error::invalid(
            what,
            format!(
                "{batch} questions x {} samples per batch is out of range: at most 65,536 rows",
                k.1
            ),
        ));
    }
    Ok(())
}

/// One checked completion.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub index: usize,
    pub sample: usize,
    pub completion: String,
    pub extracted: Option<String>,
    pub gold: String,
    pub correct: bool,
    /// Completion length in tokens (without a final EOS), when a tokenizer is known.
    pub tokens: Option<usize>,
}

/// What an evaluation measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Questions.
    pub n: usize,
    pub samples: usize,
    /// Fraction of completions that are correct.
    pub accuracy: f64,
    /// Fraction of questions with at least one correct completion (= accuracy for K = 1).
    pub pass_at_k: f64,
    pub mean_tokens: Option<f64>,
    /// Fraction of completions from which no answer could be extracted.
    pub parse_failures: f64,
    /// Results the calculator forced (calculator decoding only).
    pub calculator_calls: usize,
}

impl Report {
    /// Summarise checked records.
    pub fn from_records(n: usize, samples: usize, recs: &[Record]) -> Report {
        let total = recs.len().max(1) as f64;
        let mut any = vec![false; n];
        for r in recs {
            if r.correct && r.index < n {
                any[r.index] = true;
            }
        }
        let lens: Vec<usize> = recs.iter().filter_map(|r| r.tokens).collect();
        Report {
            n,
            samples,
            accuracy: recs.iter().filter(|r| r.correct).count() as f64 / total,
            pass_at_k: any.iter().filter(|&&a| a).count() as f64 / n.max(1) as f64,
            mean_tokens: (!lens.is_empty())
                .then(|| lens.iter().sum::<usize>() as f64 / lens.len() as f64),
            parse_failures: recs.iter().filter(|r| r.extracted.is_none()).count() as f64 / total,
            calculator_calls: 0,
        }
    }

    /// A small table for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("questions        {}\n", self.n));
        s.push_str(&format!("samples each     {}\n", self.samples));
        s.push_str(&format!("accuracy         {:.4}\n", self.accuracy));
        if self.samples > 1 {
            s.push_str(&format!(
                "pass@{:<11} {:.4}\n",
                self.samples, self.pass_at_k
            ));
        }
        match self.mean_tokens {
            Some(m) => s.push_str(&format!("mean tokens      {m:.1}\n")),
            None => s.push_str("mean tokens      - (no tokenizer)\n"),
        }
        s.push_str(&format!("parse failures   {:.4}\n", self.parse_failures));
        if self.calculator_calls > 0 {
            s.push_str(&format!("calculator calls {}\n", self.calculator_calls));
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!(self)
    }
}

fn record(
    index: usize,
    sample: usize,
    completion: String,
    gold: &str,
    tokens: Option<usize>,
) -> Record {
    let (extracted, correct) = answer::check(&completion, gold);
    Record {
        index,
        sample,
        completion,
        extracted,
        gold: gold.to_string(),
        correct,
        tokens,
    }
}

/// Score completions produced elsewhere (line i answers example i). With a tokenizer, the
/// lengths are counted in its tokens.
pub fn score_predictions(
    examples: &[Example],
    completions: &[String],
    tok: Option<&Tok>,
) -> Result<(Report, Vec<Record>)> {
    if examples.len() != completions.len() {
        return Err(Error::invalid(
            "eval",
            format!(
                "{} predictions for {} questions: line i of --predictions must answer line i of --data",
                completions.len(),
                examples.len()
            ),
        ));
    }
    let mut recs = Vec::with_capacity(examples.len());
    for (i, (ex, c)) in examples.iter().zip(completions).enumerate() {
        let tokens = match tok {
            Some(t) => Some(t.encode(c, false)?.len()),
            None => None,
        };
        recs.push(record(i, 0, c.clone(), &ex.answer, tokens));
    }
    Ok((Report::from_records(examples.len(), 1, &recs), recs))
}

/// The ids a prompt is generated from.
pub fn prompt_ids(tok: &Tok, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        return tok.encode_chat(&[Message::new("user", prompt)], true);
    }
    let mut ids = tok.encode(prompt, false)?;
    if let Some((_, bos)) = &tok.bos {
        if ids.first() != Some(bos) {
            ids.insert(0, *bos);
        }
    }
    Ok(ids)
}

/// Generate `opts.samples` completions for every example with `net` and check them.
/// `progress(done)` is called after each batch with the number of questions done.
pub fn evaluate(
    net: &Transformer,
    tok: &Tok,
    examples: &[Example],
    opts: &EvalOpts,
    progress: &mut dyn FnMut(usize),
) -> Result<(Report, Vec<Record>)> {
    check_sampling(
        "eval",
        ("samples", opts.samples),
        opts.temperature,
        opts.top_p,
        opts.max_new_tokens,
        opts.batch,
    )?;
    let p = SamplingParams {
        temperature: opts.temperature,
        top_p: opts.top_p,
        max_new_tokens: opts.max_new_tokens,
        seed: opts.seed,
        eos_ids: tok.eos_ids.clone(),
        ..Default::default()
    };
    let p = SamplingParams {
        rows: opts.batch * opts.samples,
        ..p
    };
    let prompts: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| prompt_ids(tok, &e.prompt, opts.chat))
        .collect::<Result<_>>()?;
    let (seqs, fired) = run_questions(
        net,
        tok,
        &prompts,
        opts.samples,
        &p,
        opts.calculator,
        progress,
    )?;
    let mut recs = Vec::with_capacity(examples.len() * opts.samples);
    for s in seqs {
        let mut ids = s.ids.as_slice();
        if let Some((&last, rest)) = ids.split_last() {
            if tok.eos_ids.contains(&last) {
                ids = rest;
            }
        }
        let text = tok.decode(ids, true)?;
        recs.push(record(
            s.prompt,
            s.sample,
            text,
            &examples[s.prompt].answer,
            Some(ids.len()),
        ));
    }
    let mut rep = Report::from_records(examples.len(), opts.samples, &recs);
    rep.calculator_calls = fired;
    Ok((rep, recs))
}

/// `--out` lines: `{"index", "completion", "extracted", "gold", "correct"}` (plus `sample`
/// and `tokens`).
pub fn record_rows(recs: &[Record]) -> Vec<serde_json::Value> {
    recs.iter().map(|r| json!(r)).collect()
}

/// Every question's `k` samples in one engine run (`p.rows` rows decode at once, and a row
/// that ends takes the next sample), with calculator decoding when asked.
/// `progress(done)` is called each time all samples of one more question have ended.
/// Returns the sequences in item order and the calculator's count of forced results.
pub(crate) fn run_questions(
    net: &Transformer,
    tok: &Tok,
    prompts: &[Vec<u32>],
    k: usize,
    p: &SamplingParams,
    calculator: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Sequence>, usize)> {
    let mut calc = Calculator::new(tok);
    let mut hook = |_: usize, text: &str| calc.force(text);
    let mut left = vec![k; prompts.len()];
    let mut done = 0;
    let mut on_finish = |s: &Sequence| {
        left[s.prompt] -= 1;
        if left[s.prompt] == 0 {
            done += 1;
            progress(done);
        }
    };
    let mut hooks = Hooks {
        on_token: &mut |_, _| {},
        on_finish: Some(&mut on_finish),
        steer: if calculator {
            Some(&mut hook as &mut Steer<'_>)
        } else {
            None
        },
    };
    // of several MPI ranks, each runs a contiguous share of the questions (its draws
    // numbered as in the whole run), then every rank gets every sequence
    let mine = crate::dist::share(prompts.len());
    let p = SamplingParams {
        item_offset: p.item_offset + mine.start * k,
        ..p.clone()
    };
    let (seqs, _) = generate_with(net, &prompts[mine.clone()], k, &p, Some(tok), &mut hooks)?;
    if crate::dist::size() == 1 {
        return Ok((seqs, calc.fired));
    }
    let wire: Vec<Wire> = seqs
        .into_iter()
        .map(|s| Wire {
            prompt: s.prompt + mine.start,
            sample: s.sample,
            ids: s.ids,
            logprob_bits: s.logprobs.into_iter().map(f32::to_bits).collect(),
            forced: s.forced,
            finish: s.finish,
        })
        .collect();
    let all = crate::dist::all_gather_json(&(wire, calc.fired))?;
    let fired = all.iter().map(|(_, f)| f).sum();
    let seqs = all
        .into_iter()
        .flat_map(|(w, _)| w)
        .map(|w| Sequence {
            prompt: w.prompt,
            sample: w.sample,
            ids: w.ids,
            logprobs: w.logprob_bits.into_iter().map(f32::from_bits).collect(),
            forced: w.forced,
            finish: w.finish,
        })
        .collect();
    Ok((seqs, fired))
}

/// A [`Sequence`] as it travels between MPI ranks: its log-probs as bits, so that each
/// comes back exactly (a decimal f32 parsed through f64 can round twice).
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    prompt: usize,
    sample: usize,
    ids: Vec<u32>,
    logprob_bits: Vec<u32>,
    forced: usize,
    finish: crate::model::generate::Finish,
}

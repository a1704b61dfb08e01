//! Sampling K completions for many questions at once, with the log-prob of every sampled
//! token recorded: those are the sampling model's own log-probs, so a sample used in a
//! preference pair needs no reference forward when that model is the reference.

use super::eval::prompt_ids;
use crate::error::Result;
use crate::model::generate::{Finish, SamplingParams};
use crate::model::{Tok, Transformer};
use crate::train::data::Seq;

#[derive(Clone, Debug)]
pub struct SampleOpts {
    /// Samples per question.
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub calculator: bool,
    pub seed: u64,
    /// Questions per generation batch (times k rows).
    pub batch: usize,
    pub label: String,
    pub quiet: bool,
}

impl Default for SampleOpts {
    fn default() -> Self {
        SampleOpts {
            k: 4,
            temperature: 0.7,
            top_p: 1.0,
            max_new_tokens: 300,
            calculator: false,
            seed: 0,
            batch: 16,
            label: "sampling".into(),
            quiet: true,
        }
    }
}

impl SampleOpts {
    pub fn validate(&self, what: &'static str) -> Result<()> {
        super::eval::check_sampling(
            what,
            ("k", self.k),
            self.temperature,
            self.top_p,
            self.max_new_tokens,
            self.batch,
        )
    }
}

/// One sampled completion.
#[derive(Clone, Debug)]
pub struct Sample {
    pub question: usize,
    /// The prompt's ids and the sampled ids (an EOS that ended it included).
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    /// The text of the sampled ids, special tokens left out.
    pub text: String,
    /// Untempered log-prob of each sampled id under the model that sampled it.
    pub logprobs: Vec<f32>,
    pub finished: bool,
}

impl Sample {
    /// The sample as a training sequence: exactly the ids that were sampled, so that its
    /// recorded log-probs are its reference log-probs.
    pub fn seq(&self) -> Seq {
        Seq {
            ids: [self.prompt_ids.as_slice(), &self.ids].concat(),
            prompt_len: self.prompt_ids.len(),
        }
    }

    /// Sum of the recorded log-probs (f64 accumulation, an f32 result, as the policy's).
    pub fn logprob_sum(&self) -> f64 {
        self.logprobs.iter().map(|&x| x as f64).sum::<f64>() as f32 as f64
    }

    /// Completion length in tokens, without a final EOS.
    pub fn len_tokens(&self, eos: &[u32]) -> usize {
        match self.ids.last() {
            Some(l) if eos.contains(l) => self.ids.len() - 1,
            _ => self.ids.len(),
        }
    }
}

/// `o.k` samples of every prompt; `out[i]` holds question i's samples.
pub fn sample(
    net: &Transformer,
    tok: &Tok,
    prompts: &[String],
    o: &SampleOpts,
) -> Result<(Vec<Vec<Sample>>, usize)> {
    let p = SamplingParams {
        temperature: o.temperature,
        top_p: o.top_p,
        max_new_tokens: o.max_new_tokens,
        seed: o.seed,
        eos_ids: tok.eos_ids.clone(),
        ..Default::default()
    };
    let bar = crate::util::progress_bar(prompts.len() as u64, &o.label, o.quiet);
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|q| prompt_ids(tok, q, false))
        .collect::<Result<_>>()?;
    let p = SamplingParams {
        rows: o.batch.max(1) * o.k,
        ..p
    };
    let (seqs, fired) =
        super::eval::run_questions(net, tok, &ids, o.k, &p, o.calculator, &mut |done| {
            bar.set_position(done as u64)
        })?;
    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); prompts.len()];
    for s in seqs {
        let q = s.prompt;
        out[q].push(Sample {
            question: q,
            prompt_ids: ids[q].clone(),
            text: tok.decode(&s.ids, true)?,
            ids: s.ids,
            logprobs: s.logprobs,
            finished: s.finish == Finish::Eos,
        });
    }
    bar.finish_and_clear();
    Ok((out, fired))
}

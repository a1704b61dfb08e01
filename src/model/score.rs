//! Scoring completions with a model: the log-probability of each completion token given
//! everything before it, and their sum. Judges, evaluation and reference passes use it;
//! the training losses use the differentiable form underneath
//! ([`crate::train::loss::sequence_logps`]).

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::train::data::Seq;

/// The scores of one completion.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionScore {
    /// log p(token | everything before it), one per completion token.
    pub per_token: Vec<f32>,
    /// Their sum (f64 accumulation).
    pub sum: f64,
}

/// Score `(prompt, completion)` id pairs in batches of `batch`, without recording a
/// gradient. Every prompt and completion must hold at least one token.
pub fn score_completions(
    net: &Transformer,
    items: &[(&[u32], &[u32])],
    batch: usize,
) -> Result<Vec<CompletionScore>> {
    let _ng = crate::autograd::NoGradGuard::new();
    let seqs: Vec<Seq> = items
        .iter()
        .enumerate()
        .map(|(i, (p, c))| {
            if p.is_empty() || c.is_empty() {
                return Err(Error::invalid(
                    "score",
                    format!("item {i}: the prompt and the completion need at least one token each"),
                ));
            }
            Ok(Seq {
                ids: [*p, *c].concat(),
                prompt_len: p.len(),
            })
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch.max(1)) {
        let refs: Vec<&Seq> = chunk.iter().collect();
        let lp = crate::train::loss::sequence_logps(net, &refs, Default::default(), false)?;
        let per = lp.per_token.to_vec_f32()?;
        let mut at = 0;
        for &n in &lp.counts {
            let v = per[at..at + n].to_vec();
            at += n;
            out.push(CompletionScore {
                sum: v.iter().map(|&x| x as f64).sum(),
                per_token: v,
            });
        }
    }
    Ok(out)
}

/// Summed completion log-probs of training sequences, each rounded to f32 as the policy's
/// sums are (f64 accumulation, an f32 result), so a reference computed here and a
/// policy's own sum agree bit for bit when the weights are the same.
pub fn completion_sums(net: &Transformer, seqs: &[&Seq], batch: usize) -> Result<Vec<f64>> {
    let items: Vec<(&[u32], &[u32])> = seqs
        .iter()
        .map(|s| (&s.ids[..s.prompt_len], &s.ids[s.prompt_len..]))
        .collect();
    Ok(score_completions(net, &items, batch)?
        .into_iter()
        .map(|c| c.sum as f32 as f64)
        .collect())
}
